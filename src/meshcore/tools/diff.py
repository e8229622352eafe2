"""``meshcore diff OLD NEW``: a push-impact preview. For every proxy of either mesh (a sidecar
per WorkloadEntry, a gateway proxy per workload a Gateway selects), the resources it would be
sent after the change: added, changed and removed per xDS type, the bytes of what is sent, and
the estimated push time at the measured per-proxy push cost; a change touching every proxy is
flagged."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from meshcore.config import MeshModel
from meshcore.tools.constants import PUSH_COST_SECONDS
from meshcore.tools.nodes import node_id
from meshcore.xds import types
from meshcore.xds.node import proxy_for_node

TYPES = (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE, types.SECRET)


@dataclass(frozen=True, slots=True)
class TypeDiff:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    bytes: int = 0  # serialized size of the added and changed resources

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


@dataclass(frozen=True, slots=True)
class ProxyDiff:
    node_id: str
    types: Mapping[str, TypeDiff]  # short name (CDS, EDS, LDS, RDS, SDS) -> diff
    after: Mapping[str, frozenset[str]] = field(default_factory=dict)  # names held after

    @property
    def touched(self) -> bool:
        return any(self.types.values())

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.types.values())


@dataclass(frozen=True, slots=True)
class Preview:
    proxies: tuple[ProxyDiff, ...]
    push_cost: float = PUSH_COST_SECONDS

    @property
    def touched(self) -> list[ProxyDiff]:
        return [p for p in self.proxies if p.touched]

    @property
    def every_proxy(self) -> bool:
        return bool(self.proxies) and len(self.touched) == len(self.proxies)

    @property
    def push_seconds(self) -> float:
        return len(self.touched) * self.push_cost

    def to_dict(self) -> dict[str, Any]:
        """The stable ``-o json`` schema (see the README)."""
        return {
            "proxies": len(self.proxies),
            "touched": len(self.touched),
            "every_proxy": self.every_proxy,
            "bytes": sum(p.bytes for p in self.proxies),
            "push_cost_seconds": self.push_cost,
            "estimated_push_seconds": self.push_seconds,
            "by_proxy": [
                {"node_id": p.node_id, "bytes": p.bytes,
                 "types": {k: {"added": list(t.added), "changed": list(t.changed),
                               "removed": list(t.removed), "bytes": t.bytes}
                           for k, t in p.types.items() if t}}
                for p in self.touched
            ],
        }  # fmt: skip


def proxies_of(mesh: MeshModel) -> list[str]:
    """A node id per workload: a gateway proxy (``router``) when a Gateway selects it."""
    return [node_id(mesh, w) for w in mesh.workload_entries]


def _serialized(resources: Mapping[str, Mapping[str, Message]], url: str) -> dict[str, bytes]:
    return {n: m.SerializeToString(deterministic=True) for n, m in resources.get(url, {}).items()}


def preview(old: MeshModel, new: MeshModel, *, push_cost: float = PUSH_COST_SECONDS) -> Preview:
    from meshcore.xds.translator import Translator

    before, after = Translator(), Translator()
    nodes = sorted(set(proxies_of(old)) | set(proxies_of(new)))
    out = []
    for node in nodes:
        empty: dict[str, dict[str, Message]] = {}
        a = (before.generate(old, proxy_for_node(old, node)).resources
             if node in proxies_of(old) else empty)  # fmt: skip
        b = (after.generate(new, proxy_for_node(new, node)).resources
             if node in proxies_of(new) else empty)  # fmt: skip
        diffs: dict[str, TypeDiff] = {}
        held: dict[str, frozenset[str]] = {}
        for url in TYPES:
            x, y = _serialized(a, url), _serialized(b, url)
            added = sorted(set(y) - set(x))
            removed = sorted(set(x) - set(y))
            changed = sorted(n for n in set(x) & set(y) if x[n] != y[n])
            size = sum(len(y[n]) for n in (*added, *changed))
            diffs[types.SHORT_NAMES[url]] = TypeDiff(tuple(added), tuple(changed),
                                                     tuple(removed), size)  # fmt: skip
            held[types.SHORT_NAMES[url]] = frozenset(y)
        out.append(ProxyDiff(node, diffs, held))
    return Preview(tuple(out), push_cost)


def render(p: Preview) -> str:
    lines = []
    for d in p.touched:
        parts = []
        for k, t in d.types.items():
            if t:
                parts.append(f"{k} +{len(t.added)} ~{len(t.changed)} -{len(t.removed)}")
        lines.append(f"{d.node_id}: {', '.join(parts)} ({d.bytes} bytes)")
    total = sum(d.bytes for d in p.proxies)
    lines.append(
        f"{len(p.touched)} of {len(p.proxies)} proxies touched, {total} bytes, estimated push "
        f"{p.push_seconds * 1000:.2f} ms of control-plane CPU at {p.push_cost * 1000:.2f} ms per proxy"
    )
    if p.every_proxy:
        lines.append("warning: this change touches every proxy")
    return "\n".join(lines)


def applied(old: MeshModel, changes: MeshModel) -> MeshModel:
    """``old`` with the resources of ``changes`` applied (``meshcore apply``: a resource
    replaces the one of the same kind, namespace and name, or is added)."""
    keys = {r.key for r in changes.resources}
    kept = [r for r in old.resources if r.key not in keys]
    return MeshModel(
        (*kept, *changes.resources), domain=old.domain, root_namespace=old.root_namespace
    )
