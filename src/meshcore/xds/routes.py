"""Route configurations (RDS): per outbound HTTP port a RouteConfiguration named by the port
(``"9080"``) with one virtual host ``HOST:PORT`` per service, its routes from the host's
VirtualService (:mod:`meshcore.xds.virtualservice`), else Istio's ``default`` route; for
proxyless gRPC clients one RouteConfiguration ``HOST:PORT`` per service port.

Virtual hosts are built once per mesh and shared by the namespaces for which they are the same;
route configurations once per namespace (and, when VirtualServices match on source labels, per
label set). A new mesh keeps them all when its Services, ServiceEntries, VirtualServices and
DestinationRules are equal to the previous mesh's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from meshcore.config.model import Service
from meshcore.errors import ConfigProblem
from meshcore.names import OUTBOUND, cluster_name
from meshcore.xds.common import Invalid, checked_of, duration_ns, is_http
from meshcore.xds.index import Host, MeshIndex, PortService
from meshcore.xds.node import Proxy
from meshcore.xds.problems import ProblemLog
from meshcore.xds.trafficpolicy import effective_policy, hash_policies
from meshcore.xds.virtualservice import VsRoutes, default_retry

ENVOY_DEFAULT_MAX_BODY = 4096


class RouteBuilder:
    """The mesh's route configurations, per route key (namespace, labels when they matter,
    kind of client), with the problems met building them."""

    def __init__(self, index: MeshIndex, log: ProblemLog) -> None:
        self.index = index
        self.mesh = index.mesh
        self.log = log
        self._routes: dict[tuple[Any, ...], dict[str, Message]] = {}
        self.problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}
        self._vs_routes: dict[tuple[Any, ...], list[rc.Route] | None] = {}
        self._vs_problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}
        self._vhost_bytes: dict[tuple[Any, ...], bytes] = {}
        self._vhost_body: dict[bytes, int] = {}
        self._hash_policies: dict[tuple[str, str, int], list[rc.RouteAction.HashPolicy]] = {}

    def inherit(self, prev: RouteBuilder, same: Mapping[str, bool]) -> None:
        """Keeps everything when what routes are built from is equal (by value): the hosts
        (Services and ServiceEntries), VirtualServices and DestinationRules."""
        if (
            same["services"]
            and same["service_entries"]
            and same["virtual_services"]
            and same["destination_rules"]
        ):
            self._vs_routes = prev._vs_routes
            self._vs_problems = prev._vs_problems
            self._vhost_bytes = prev._vhost_bytes
            self._vhost_body = prev._vhost_body
            self._routes = prev._routes
            self.problems = prev.problems
            self._hash_policies = prev._hash_policies

    def route_key(self, proxy: Proxy) -> tuple[Any, ...]:
        labels = tuple(sorted(proxy.labels.items())) if self.index.uses_source_match else ()
        # The proxy's Sidecar scope (compared by value) decides which virtual hosts it gets.
        scope = self.index.sidecar_scope(proxy.namespace, proxy.labels)
        return (proxy.namespace, labels, proxy.proxyless, scope)

    def route_configs(self, proxy: Proxy) -> dict[str, Message]:
        key = self.route_key(proxy)
        found = self._routes.get(key)  # the common case, without building a closure
        if found is None:
            found = self.log.cached(
                self._routes, self.problems, key, lambda: self._build_route_configs(proxy)
            )
        return found

    def _build_route_configs(self, proxy: Proxy) -> dict[str, Message]:
        built: dict[str, Message] = {}
        scope = self.route_key(proxy)[3]
        if proxy.proxyless:
            for port in sorted(self.index.by_port):
                for ps in self.index.by_port[port]:
                    if not is_http(ps.protocol):
                        continue
                    if scope is not None and not scope.routes_to(ps.service.hostname, port):
                        continue
                    name = f"{ps.service.hostname}:{port}"
                    rcfg = route_pb2.RouteConfiguration(
                        name=name, validate_clusters=wrappers_pb2.BoolValue(value=False)
                    )
                    rcfg.virtual_hosts.append(self._virtual_host(ps, proxy, grpc=True))
                    _allow_bodies(rcfg, _max_body(rcfg.virtual_hosts[0]))
                    built[name] = rcfg
        else:
            for port in sorted(self.index.by_port):
                http = [
                    ps
                    for ps in self.index.by_port[port]
                    if is_http(ps.protocol)
                    and (scope is None or scope.routes_to(ps.service.hostname, port))
                ]
                if not http:
                    continue
                # validate_clusters off: a route to a cluster not (yet) sent must not get
                # the whole RouteConfiguration rejected (Istio does the same).
                # Serialized messages concatenate into one whose repeated fields are the
                # concatenation: virtual hosts are built once per mesh and assembled per
                # namespace by the C parser instead of being copied field by field.
                hosts = [self._virtual_host_bytes(ps, proxy) for ps in http]
                head = route_pb2.RouteConfiguration(
                    name=str(port), validate_clusters=wrappers_pb2.BoolValue(value=False)
                )
                _allow_bodies(head, max(self._vhost_body[h] for h in hosts))
                chunks = [head.SerializeToString(deterministic=True), *hosts]
                built[str(port)] = route_pb2.RouteConfiguration.FromString(b"".join(chunks))
        return dict(sorted(built.items()))

    def _virtual_host_bytes(self, ps: PortService, proxy: Proxy) -> bytes:
        """A RouteConfiguration holding just this virtual host, serialized; shared by every
        namespace for which the virtual host is the same (only short-name domains differ)."""
        local = ps.service.namespace == proxy.namespace
        source = (
            (proxy.namespace, *self.route_key(proxy)[1:]) if self.index.uses_source_match else ()
        )
        key = (ps.service.hostname, ps.port.port, local, source)
        found = self._vhost_bytes.get(key)
        if found is None:
            one = route_pb2.RouteConfiguration(virtual_hosts=[self._virtual_host(ps, proxy)])
            found = self._vhost_bytes[key] = one.SerializeToString(deterministic=True)
            self._vhost_body[found] = _max_body(one.virtual_hosts[0])
        return found

    def _domains(self, svc: Host, port: int, namespace: str, grpc: bool) -> list[str]:
        host = svc.hostname
        names = [host]
        if not grpc and isinstance(svc, Service):
            if svc.namespace == namespace:
                names.append(svc.name)
            names += [f"{svc.name}.{svc.namespace}", f"{svc.name}.{svc.namespace}.svc"]
        out: list[str] = []
        for n in names:
            out += [n, f"{n}:{port}"]
        return out

    def _virtual_host(self, ps: PortService, proxy: Proxy, grpc: bool = False) -> rc.VirtualHost:
        svc, port = ps.service, ps.port.port
        vh = rc.VirtualHost(
            name=f"{svc.hostname}:{port}",
            domains=self._domains(svc, port, proxy.namespace, grpc),
        )
        routes = self._routes_for_host(svc, port, proxy, grpc)
        if routes is None:
            vh.routes.append(self._default_route(svc.hostname, port))
        else:
            vh.routes.extend(routes)
        return vh

    def _default_route(self, host: str, port: int) -> rc.Route:
        r = rc.Route(name="default")
        r.match.prefix = "/"
        r.route.cluster = cluster_name(OUTBOUND, port, "", host)
        r.route.timeout.CopyFrom(duration_ns(0))
        r.route.retry_policy.CopyFrom(default_retry())
        r.route.hash_policy.extend(self.hash_policies_for(host, "", port))
        return r

    def _routes_for_host(
        self, svc: Host, port: int, proxy: Proxy, grpc: bool
    ) -> list[rc.Route] | None:
        """The VirtualService's routes for one host and port; None means the default route."""
        candidates = [
            vs
            for vs in self.mesh.virtual_services_for(svc.hostname)
            if not vs.gateways or "mesh" in vs.gateways
        ]
        if not candidates:
            # Istio: a VirtualService for "*.ns.svc.cluster.local" applies to the services it
            # covers that have no VirtualService of their own; the longest suffix wins.
            candidates = [
                vs for suffix, vs in self.index.wildcard_vs if svc.hostname.endswith(suffix)
            ]
        if not candidates:
            return None
        vs = candidates[0]
        for other in candidates[1:]:
            self.log.problem(
                other,
                "spec.hosts",
                f"host {svc.hostname} is also claimed by VirtualService {vs.namespace}/{vs.name},"
                " which is used for sidecars (Istio keeps the first)",
                severity="warning",
            )
        # Routes depend on the proxy only through source matches (labels, namespace).
        source = (
            (proxy.namespace, *self.route_key(proxy)[1:]) if self.index.uses_source_match else ()
        )
        key = (vs.namespace, vs.name, svc.hostname, port, grpc, source)
        if key in self._vs_routes:
            self.log.emit(self._vs_problems[key])
            return self._vs_routes[key]
        with self.log.capture() as met:
            try:
                built = VsRoutes(self, vs, svc, port, proxy, grpc).build()
            except Invalid as bad:
                self.log.problem(
                    vs,
                    bad.path,
                    f"{bad.message}; this VirtualService's routes for {svc.hostname}:{port}"
                    " are left out and the default route is used",
                )
                built = None
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self.log.problem(
                    vs,
                    "spec.http",
                    f"cannot be translated ({exc}); this VirtualService's routes for"
                    f" {svc.hostname}:{port} are left out and the default route is used",
                )
                built = None
        self._vs_routes[key] = built
        self._vs_problems[key] = met
        self.log.emit(met)
        return built

    def hash_policies_for(
        self, host: str, subset: str, port: int
    ) -> list[rc.RouteAction.HashPolicy]:
        """The route hash policies of the DestinationRule's consistentHash for a destination;
        none when that DestinationRule's policy is dropped (its clusters report why)."""
        key = (host, subset, port)
        if key not in self._hash_policies:
            dr = self.mesh.destination_rule_for(host)
            lb = effective_policy(dr, subset, port).get("loadBalancer") or {}
            try:
                found = (
                    hash_policies(lb, "spec.trafficPolicy.loadBalancer", checked_of(dr))
                    if dr
                    else []
                )
            except Invalid:
                found = []
            self._hash_policies[key] = found
        return self._hash_policies[key]


def _max_body(vh: rc.VirtualHost) -> int:
    """The largest direct-response body of a virtual host's routes."""
    sizes = [
        len(r.direct_response.body.inline_string.encode() or r.direct_response.body.inline_bytes)
        for r in vh.routes
        if r.HasField("direct_response")
    ]
    return max(sizes, default=0)


def _allow_bodies(rcfg: route_pb2.RouteConfiguration, size: int) -> None:
    # Envoy rejects a RouteConfiguration with a direct-response body over 4 KiB unless the
    # limit is raised; raise it only when needed so that other configurations stay unchanged.
    if size > ENVOY_DEFAULT_MAX_BODY:
        rcfg.max_direct_response_body_size_bytes.value = size
