"""Shadowed routes and unreachable subsets, computed from the compiled route tables.

A route is *shadowed* when an earlier route of its virtual host matches every request it
matches: Envoy takes the first matching route, so the later one is never used. Only what is
provable is reported: the earlier route's path match covers the later one's (exact, prefix,
path-separated prefix), its header and query-parameter matchers are a subset of the later
route's (identical matchers), and it has no other condition (runtime fraction, gRPC, TLS,
metadata); case-insensitive matching is compared as such.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from meshcore._core.route import RouteTable

_OTHER_CONDITIONS = ("runtime_fraction", "grpc", "tls_context", "path_match_policy",
                     "connect_matcher")  # fmt: skip


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """One route of a compiled table, in the order Envoy tries it."""

    config: str  # the RouteConfiguration's name
    virtual_host: str
    index: int  # within the virtual host
    route: rc.Route


@dataclass(frozen=True, slots=True)
class Shadowed:
    route: CompiledRoute
    by: CompiledRoute


def compiled_routes(config: route_pb2.RouteConfiguration) -> Iterator[CompiledRoute]:
    """The routes of ``config`` as the compiled table (meshcore._core.route) orders them."""
    table = RouteTable.from_proto(config)
    first: dict[int, int] = {}
    for m in table.routes:
        vh = first.setdefault(m.virtual_host_index, m.route_index)
        yield CompiledRoute(
            table.name, m.virtual_host, m.route_index - vh, rc.Route.FromString(m.proto)
        )


def _has_other(match: rc.RouteMatch) -> bool:
    return (any(match.HasField(f) for f in _OTHER_CONDITIONS)
            or bool(match.dynamic_metadata) or bool(match.filter_state))  # fmt: skip


def _case_sensitive(match: rc.RouteMatch) -> bool:
    return match.case_sensitive.value if match.HasField("case_sensitive") else True


def _path_covers(a: rc.RouteMatch, b: rc.RouteMatch) -> bool:
    ka, kb = a.WhichOneof("path_specifier"), b.WhichOneof("path_specifier")
    if ka == "prefix" and a.prefix in ("", "/"):
        return True  # every path starts with "/" (whatever the case)
    if _case_sensitive(a) != _case_sensitive(b):
        return False

    def norm(s: str) -> str:
        return s if _case_sensitive(a) else s.lower()

    va = norm(getattr(a, ka)) if ka else ""
    vb = norm(getattr(b, kb)) if kb in ("prefix", "path", "path_separated_prefix") else None
    if vb is None:
        return False
    if ka == "prefix":
        return vb.startswith(va)
    if ka == "path":
        return kb == "path" and vb == va
    if ka == "path_separated_prefix":
        if kb in ("path", "path_separated_prefix"):
            return vb == va or vb.startswith(va + "/")
        return vb.startswith(va + "/")
    return False


def _subset(mine: Iterable[object], theirs: Iterable[object]) -> bool:
    other = list(theirs)
    return all(m in other for m in mine)


def covers(a: rc.Route, b: rc.Route) -> bool:
    """True when every request ``b`` matches is matched by ``a`` (provably)."""
    ma, mb = a.match, b.match
    if _has_other(ma):
        return False
    if not _path_covers(ma, mb):
        return False
    return _subset(ma.headers, mb.headers) and _subset(ma.query_parameters, mb.query_parameters)


def shadowed(routes: Iterable[CompiledRoute]) -> list[Shadowed]:
    """The routes that an earlier route of the same virtual host covers."""
    out: list[Shadowed] = []
    earlier: dict[tuple[str, str], list[CompiledRoute]] = {}
    for r in routes:
        before = earlier.setdefault((r.config, r.virtual_host), [])
        by = next((e for e in before if covers(e.route, r.route)), None)
        if by is not None:
            out.append(Shadowed(r, by))
        before.append(r)
    return out


def clusters_of(route: rc.Route) -> list[str]:
    """The clusters a route can send to (weighted clusters of weight 0 are never chosen)."""
    if not route.HasField("route"):
        return []
    action = route.route
    if action.cluster:
        return [action.cluster]
    return [c.name for c in action.weighted_clusters.clusters if c.weight.value > 0]
