"""Route-table analyses for ``meshcore analyze``: shadowed routes (IST0130/IST0131) and
unreachable subsets (MC0002), computed from the route tables the proxies get."""

from __future__ import annotations

from collections.abc import Iterator

from envoy.config.route.v3 import route_pb2

from meshcore.config import MeshModel
from meshcore.config.model import Gateway, Resource, VirtualService
from meshcore.config.values import selector_matches
from meshcore.tools import messages as m
from meshcore.tools.messages import Message
from meshcore.tools.shadow import CompiledRoute, clusters_of, compiled_routes, shadowed
from meshcore.xds import types
from meshcore.xds.gateway import ROUTER
from meshcore.xds.node import Proxy
from meshcore.xds.translator import Translator


def route_configs(
    mesh: MeshModel, translator: Translator
) -> Iterator[route_pb2.RouteConfiguration]:
    """The route configurations of a sidecar of each namespace with workloads and of each
    Gateway's proxy (the proxies whose routes can differ)."""
    namespaces = {w.namespace for w in mesh.workload_entries} or {mesh.root_namespace}
    proxies = [Proxy(node_id="", ip="", name="", namespace=ns, workload=None, labels={})
               for ns in sorted(namespaces)]  # fmt: skip
    for gw in mesh.resources:
        if isinstance(gw, Gateway):
            spaces = {w.namespace for w in mesh.workload_entries
                      if selector_matches(gw.selector, w.workload_labels)} or {gw.namespace}  # fmt: skip
            proxies += [Proxy(node_id="", ip="", name="", namespace=ns, workload=None,
                              labels=dict(gw.selector), type=ROUTER) for ns in sorted(spaces)]  # fmt: skip
    seen: set[bytes] = set()
    for proxy in proxies:
        for config in translator.generate(mesh, proxy).resources.get(types.ROUTE, {}).values():
            assert isinstance(config, route_pb2.RouteConfiguration)
            key = config.SerializeToString(deterministic=True)
            if key not in seen:
                seen.add(key)
                yield config


def _rule_of(mesh: MeshModel, r: CompiledRoute) -> tuple[Resource | None, str]:
    """The VirtualService (and ``spec.http[i]``) a compiled route comes from, found by its
    virtual host's host and the route's name; (None, "") when not provable."""
    host = r.virtual_host.rsplit(":", 1)[0]
    rname = r.route.name.split(".")[0] if r.route.name else ""
    candidates: list[tuple[VirtualService, int]] = []
    for vs in mesh.virtual_services_for(host):
        for i, http in enumerate(vs.http):
            if str(http.get("name", "")) == rname or (not rname and not http.get("name")):
                candidates.append((vs, i))
    if len(candidates) == 1:
        return candidates[0][0], f"spec.http[{candidates[0][1]}]"
    vss = mesh.virtual_services_for(host)
    return (vss[0] if vss else None), ""


def route_messages(mesh: MeshModel, translator: Translator) -> list[Message]:
    routes = [r for config in route_configs(mesh, translator) for r in compiled_routes(config)]
    out: list[Message] = []
    dead = {(s.route.config, s.route.virtual_host, s.route.index) for s in shadowed(routes)}
    for s in shadowed(routes):
        res, path = _rule_of(mesh, s.route)
        text = (f"route {s.route.route.name or '#' + str(s.route.index)!s} of virtual host "
                f"{s.route.virtual_host} (route configuration {s.route.config}) is never used: "
                f"route {s.by.route.name or '#' + str(s.by.index)} before it matches every "
                "request it matches")  # fmt: skip
        kind = m.VS_INEFFECTIVE_MATCH if "." in s.route.route.name else m.VS_UNREACHABLE_RULE
        if res is None:
            out.append(m.Message(kind, text))
        else:
            out.append(m.about(kind, res, text, path))
    # Subsets: reachable when a live route sends to one of their clusters.
    live: set[str] = set()
    for r in routes:
        if (r.config, r.virtual_host, r.index) not in dead:
            live.update(clusters_of(r.route))
    for dr in mesh.destination_rules:
        svc = mesh.service(dr.host, dr.namespace)
        if svc is None:
            continue
        for i, name in enumerate(dr.subsets):
            clusters = {f"outbound|{p.port}|{name}|{svc.hostname}" for p in svc.ports}
            if clusters & live:
                continue
            out.append(m.about(m.UNREACHABLE_SUBSET, dr,
                               f"subset {name} of {svc.hostname} is unreachable: no route that "
                               "can be used sends traffic to it", f"spec.subsets[{i}]"))  # fmt: skip
    return out
