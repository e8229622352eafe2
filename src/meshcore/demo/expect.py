"""What the tour expects of a demo mesh, read from its config (``meshcore demo --config DIR``
runs other meshes of frontend/reviews/ratings workloads): the canary split of the route the
frontend's calls take to reviews, and a header route pinning a tester to a subset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshcore.config import MeshModel

# The header the frontend app passes on to reviews (meshcore.demo.apps).
PROPAGATED_HEADER = "x-user"


@dataclass(frozen=True)
class CanaryRoute:
    """The weighted default route to reviews: where it is written, and its weights."""

    file: str
    namespace: str
    name: str  # the VirtualService
    index: int  # in spec.http
    weights: dict[str, int]  # subset -> weight, in the route's order

    @property
    def label(self) -> str:
        return "/".join(str(w) for w in self.weights.values())

    def share(self, subset: str) -> float:
        total = sum(self.weights.values())
        return self.weights.get(subset, 0) / total if total else 0.0

    def even(self) -> dict[str, int]:
        """The live change the tour makes: the same subsets, evenly weighted (summing to 100)."""
        n = len(self.weights)
        return {s: 100 // n + (i < 100 % n) for i, s in enumerate(self.weights)}


@dataclass(frozen=True)
class HeaderRoute:
    header: str
    value: str
    subset: str

    @property
    def label(self) -> str:
        return f"{self.header}: {self.value} → {self.subset}"


@dataclass(frozen=True)
class Expectations:
    canary: CanaryRoute | None
    header: HeaderRoute | None


def expectations(mesh: MeshModel, namespace: str = "default") -> Expectations:
    """From the reviews VirtualService: the first route without a match that splits traffic
    between subsets, and the first route matching only an exact ``x-user`` header."""
    svc = mesh.service("reviews", namespace)
    canary: CanaryRoute | None = None
    header: HeaderRoute | None = None
    for vs in mesh.virtual_services_for(svc.hostname) if svc is not None else ():
        for index, route in enumerate(vs.http):
            dests: Sequence[Any] = route.get("route") or ()
            subsets = [d["destination"].get("subset") for d in dests]
            if not dests or None in subsets:
                continue
            matches: Sequence[Any] = route.get("match") or ()
            if not matches and canary is None and len(dests) > 1:
                weights = {str(d["destination"]["subset"]): int(d.get("weight", 0)) for d in dests}
                canary = CanaryRoute(vs.file or "", vs.namespace, vs.name, index, weights)
            elif header is None and len(dests) == 1 and len(matches) == 1:
                headers = dict(matches[0].get("headers") or {})
                exact = (headers.get(PROPAGATED_HEADER) or {}).get("exact")
                if set(matches[0]) == {"headers"} and len(headers) == 1 and exact is not None:
                    header = HeaderRoute(PROPAGATED_HEADER, str(exact), str(subsets[0]))
    return Expectations(canary, header)
