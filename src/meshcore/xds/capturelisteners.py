"""Istio's capture layout: what a sidecar behind iptables REDIRECT gets (node metadata
``INTERCEPTION_MODE: REDIRECT``; see :mod:`meshcore.xds.node`).

The app dials a service by name (its VIP, :mod:`meshcore.xds.vips`) or any address; the pod's
rules (``meshcore iptables``) send the connection to 15001, inbound ones to 15006:

- ``virtualOutbound`` on 0.0.0.0:15001 with ``use_original_dst``: Envoy hands each connection
  to the listener of its original destination, else keeps it on its own filter chains:
  ``virtualOutbound-blackhole`` (a connection to 15001 itself: a loop) and
  ``virtualOutbound-catchall-tcp`` to ``PassthroughCluster`` (``outboundTrafficPolicy``
  ALLOW_ANY, the default) or ``BlackHoleCluster`` (REGISTRY_ONLY): the proxy's Sidecar's
  policy if it sets one, else MeshConfig's;
- ``0.0.0.0_PORT`` (``bind_to_port: false``) per HTTP service port: the HTTP connection manager
  with RDS ``PORT``, whose virtual hosts also answer to the services' VIPs and end with Istio's
  ``allow_any`` (to PassthroughCluster) or ``block_all`` (502) virtual host;
- ``VIP_PORT`` (not bound) per TCP service port with a VIP (ServiceEntry ``addresses`` too):
  tcp_proxy to ``outbound|PORT||HOST``; a TCP port of a host without an address gets
  ``0.0.0.0_PORT`` when no HTTP service has the port;
- ``virtualInbound`` on 0.0.0.0:15006 with the original_dst and TLS inspector listener filters:
  per inbound port a filter chain matching its destination port (``0.0.0.0_PORT``, and for
  PERMISSIVE ``0.0.0.0_PORT-plaintext`` told apart by the TLS inspector) with the workload's
  authorization filters and TLS per PeerAuthentication, as the loopback layout's inbound
  listeners (:func:`meshcore.xds.listeners.inbound_chains`); ``virtualInbound-blackhole`` for a
  connection to 15006 itself; ``virtualInbound-catchall-tcp`` (and ``-plaintext``) to
  ``InboundPassthroughCluster`` for ports no Service declares, under the workload's mode;
- ServiceEntry hosts with ``resolution: NONE``, and the subsets and ports a DestinationRule
  gives ``loadBalancer.simple: PASSTHROUGH``: ORIGINAL_DST clusters ``outbound|PORT|SUBSET|HOST``
  (their other settings, such as ``tls.mode: SIMPLE``, as usual; a DestinationRule with a
  workloadSelector in its host's place for the proxies it selects), HTTP ports as virtual hosts
  of the port's route configuration (with the host's VirtualService routes, as Istio's),
  TCP ports on their ``addresses`` (or ``0.0.0.0_PORT``);
  loopback proxies are told these need original-destination routing, capture ones are not;
- clusters ``inbound|PORT||`` and ``InboundPassthroughCluster``: ORIGINAL_DST, connecting to the
  app at the pod address from 127.0.0.6 (the address Istio's rules let out of the capture);
  ``PassthroughCluster`` (ORIGINAL_DST) and ``BlackHoleCluster`` (no endpoints).

Outbound clusters and endpoints are the mesh's shared ones, the same as loopback proxies get:
endpoints are the workloads' addresses (pod IPs) at the target port, which peers' 15006 capture.
Built once per mesh (outbound listeners, route configurations per route key) and per workload
(inbound); nothing is carried over to the next mesh.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf.message import Message

from meshcore.config.meshconfig import MeshConfig
from meshcore.config.model import DestinationRule
from meshcore.errors import ConfigProblem
from meshcore.names import INBOUND, OUTBOUND, TCP_PROXY_NAME, TLS_INSPECTOR_NAME, cluster_name
from meshcore.xds.clusters import ClusterBuilder, _override_key
from meshcore.xds.common import (
    DEFAULT_CONNECT_TIMEOUT_NS,
    duration_ns,
    endpoint_port,
    is_http,
    pack,
    port_protocol,
    socket_address,
)
from meshcore.xds.index import MeshIndex, Overrides, PortService, SeHost
from meshcore.xds.listeners import (
    ListenerBuilder,
    _outbound_http_listener,
    _outbound_tcp_listener,
    inbound_chains,
)
from meshcore.xds.node import Proxy
from meshcore.xds.problems import ProblemLog
from meshcore.xds.routes import RouteBuilder
from meshcore.xds.telemetry import TelemetryScope
from meshcore.xds.trafficpolicy import effective_policy
from meshcore.xds.vips import service_vips

__all__ = [
    "BLACKHOLE_CLUSTER",
    "INBOUND_PASSTHROUGH_CLUSTER",
    "INBOUND_PORT",
    "OUTBOUND_PORT",
    "PASSTHROUGH_CLUSTER",
    "VIRTUAL_INBOUND",
    "VIRTUAL_OUTBOUND",
    "CaptureBuilder",
]

VIRTUAL_OUTBOUND = "virtualOutbound"
VIRTUAL_INBOUND = "virtualInbound"
PASSTHROUGH_CLUSTER = "PassthroughCluster"
BLACKHOLE_CLUSTER = "BlackHoleCluster"
INBOUND_PASSTHROUGH_CLUSTER = "InboundPassthroughCluster"
OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
# Istio's inbound source address: its rules return (leave uncaptured) traffic from it on lo.
INBOUND_SOURCE = "127.0.0.6"
ORIGINAL_DST_NAME = "envoy.filters.listener.original_dst"
WILDCARD = "0.0.0.0"


class CaptureBuilder:
    """One mesh's capture-layout listeners, route configurations and clusters."""

    def __init__(
        self,
        index: MeshIndex,
        log: ProblemLog,
        listeners: ListenerBuilder,
        routes: RouteBuilder,
        clusters: ClusterBuilder,
        mesh_config: MeshConfig | None,
    ) -> None:
        self.cluster_builder = clusters
        self.index = index
        self.log = log
        self.listeners = listeners
        self.routes = routes
        self.mesh_config = mesh_config
        self.allow_any = (
            mesh_config is None or mesh_config.outbound_traffic_policy != "REGISTRY_ONLY"
        )
        self._vips: dict[str, str] | None = None
        self._vip_problems: list[ConfigProblem] | None = None
        self._outbound: dict[tuple[Any, ...], dict[str, Message]] = {}
        self.outbound_problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}
        self._routes: dict[tuple[Any, ...], dict[str, Message]] = {}
        self._route_problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}
        self._clusters: dict[str, Message] | None = None
        self._inbound: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._passthrough: dict[tuple[Any, ...], dict[str, Message]] = {}
        self._passthrough_problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}

    # --- VIPs --------------------------------------------------------------------------------

    def vips(self) -> dict[str, str]:
        """The Services' VIPs by hostname (:func:`meshcore.xds.vips.service_vips`); an unusable
        ``clusterIP`` is reported with the outbound listeners."""
        if self._vips is None:
            self._vips, _ = service_vips(self.index.services)
        return self._vips

    def _addresses(self, ps: PortService) -> list[str]:
        svc = ps.service
        if isinstance(svc, SeHost):
            return [a for a in svc.spec.get("addresses") or () if "/" not in str(a)]
        vip = self.vips().get(svc.hostname)
        return [vip] if vip else []

    # --- outbound ----------------------------------------------------------------------------

    def outbound_listeners(self, proxy: Proxy) -> dict[str, Message]:
        scope = self.listeners.scope(proxy)  # telemetry: one set of listeners per scope
        allow_any = self.allow_any_for(proxy)
        key = (allow_any, scope.key)
        found = self._outbound.get(key)
        if found is None:
            found = self.log.cached(
                self._outbound,
                self.outbound_problems,
                key,
                lambda: self._build_outbound(scope, allow_any),
            )
        return found

    def allow_any_for(self, proxy: Proxy) -> bool:
        """Whether the proxy passes traffic to unknown destinations through (ALLOW_ANY): its
        Sidecar's ``outboundTrafficPolicy`` if it sets one, else MeshConfig's."""
        scope = self.index.sidecar_scope(proxy.namespace, proxy.labels)
        if scope is not None and scope.registry_only is not None:
            return not scope.registry_only
        return self.allow_any

    def problems(self, proxy: Proxy) -> list[ConfigProblem]:
        """The problems of the proxy's outbound listeners and route configurations."""
        allow_any = self.allow_any_for(proxy)
        key = (allow_any, self.listeners.scope(proxy).key)
        routes = self._route_problems.get((self.routes.route_key(proxy), allow_any), [])
        return [*self.outbound_problems.get(key, []), *routes]

    def inherit_vips(self, prev: CaptureBuilder) -> None:
        """Keeps ``prev``'s :meth:`vip_problems` (the Services are the same)."""
        self._vip_problems = prev._vip_problems

    def vip_problems(self) -> list[ConfigProblem]:
        """An unusable ``clusterIP`` per Service (reported at load time too: ``meshcore
        validate`` shows it whatever the proxies' layout)."""
        if self._vip_problems is None:
            _, errors = service_vips(self.index.services)
            with self.log.capture() as self._vip_problems:
                for svc in self.index.services:
                    if svc.hostname in errors:
                        self.log.problem(
                            svc,
                            "spec.clusterIP",
                            f"{errors[svc.hostname]}; a VIP is allocated instead",
                        )
        else:
            self.log.emit(self._vip_problems)
        return self._vip_problems

    def _build_outbound(self, scope: TelemetryScope, allow_any: bool) -> dict[str, Message]:
        self.vip_problems()
        out: dict[str, Message] = {VIRTUAL_OUTBOUND: self._virtual_outbound(scope, allow_any)}
        for port in sorted(self.index.by_port):
            group = self.index.by_port[port]
            wildcard = f"{WILDCARD}_{port}"
            if any(is_http(ps.protocol) for ps in group):
                out[wildcard] = _unbound(_outbound_http_listener(wildcard, WILDCARD, port, scope))
            for ps in group:
                if is_http(ps.protocol):
                    continue
                cluster = cluster_name(OUTBOUND, port, "", ps.service.hostname)
                addresses = self._addresses(ps) or [WILDCARD]
                for address in addresses:
                    name = f"{address}_{port}"
                    if name in out:
                        self.log.problem(
                            ps.service,
                            f"spec.ports[{ps.port.name or ps.port.port}]",
                            f"TCP port {port} has no address of its own ({name} is already"
                            " taken); this host gets no outbound listener for it",
                            severity="warning",
                        )
                        continue
                    out[name] = _unbound(
                        _outbound_tcp_listener(name, address, port, cluster, scope)
                    )
        for ps in self._passthrough_ports():
            port = ps.port.port
            wildcard = f"{WILDCARD}_{port}"
            if is_http(ps.protocol):
                if wildcard not in out:
                    out[wildcard] = _unbound(
                        _outbound_http_listener(wildcard, WILDCARD, port, scope)
                    )
                continue
            cluster = cluster_name(OUTBOUND, port, "", ps.service.hostname)
            for address in self._addresses(ps) or [WILDCARD]:
                name = f"{address}_{port}"
                if name in out:
                    self.log.problem(
                        ps.service,
                        f"spec.ports[{ps.port.name}]",
                        f"TCP port {port} has no address of its own ({name} is already taken);"
                        " this host gets no outbound listener for it",
                        severity="warning",
                    )
                    continue
                out[name] = _unbound(_outbound_tcp_listener(name, address, port, cluster, scope))
        return dict(sorted(out.items()))

    def _passthrough_ports(self) -> list[PortService]:
        """The ports of ServiceEntry hosts with resolution NONE (original destination)."""
        return [
            PortService(host, sp, port_protocol(sp))
            for host in self.index.passthrough_hosts
            for sp in host.ports
            if port_protocol(sp) != "udp"
        ]

    def passthrough_clusters(self, overrides: Overrides = ()) -> dict[str, Message]:
        """ORIGINAL_DST clusters: every port of a resolution NONE host, and the subsets and
        ports whose DestinationRule asks for PASSTHROUGH load balancing (the rest of their
        policy, e.g. SIMPLE TLS, applies as usual). ``overrides`` (the DestinationRules with a
        workloadSelector that select the proxy, :meth:`MeshIndex.overrides`) take their hosts'
        place, as for the shared clusters."""
        key = _override_key(overrides)
        found = self._passthrough.get(key)
        if found is None:
            found = self.log.cached(
                self._passthrough,
                self._passthrough_problems,
                key,
                lambda: self._build_passthrough(dict(overrides)),
            )
        return found

    def passthrough_problems(self, overrides: Overrides = ()) -> list[ConfigProblem]:
        self.passthrough_clusters(overrides)
        return self._passthrough_problems[_override_key(overrides)]

    def _build_passthrough(self, selected: dict[str, DestinationRule]) -> dict[str, Message]:
        mesh = self.index.mesh
        groups: list[tuple[PortService, list[str], DestinationRule | None]] = []
        for ps in self._passthrough_ports():
            host = ps.service.hostname
            if host in selected:
                groups.append((ps, ["", *sorted(selected[host].subsets)], selected[host]))
            else:
                subsets = ["", *sorted(self.index.subsets(host))]
                groups.append((ps, subsets, mesh.destination_rule_for(host)))
        for ps, subsets in self.index.port_groups():
            host = ps.service.hostname
            dr: DestinationRule | None = selected.get(host)
            if dr is not None:
                subsets = ["", *sorted(dr.subsets)]
            else:
                dr = mesh.destination_rule_for(host)
            picked = [s for s in subsets if _passthrough_lb(dr, s, ps.port.port)]
            if picked:
                groups.append((ps, picked, dr))
        built: dict[str, Message] = {}
        for ps, subsets, dr in groups:
            for subset in subsets:
                name = cluster_name(OUTBOUND, ps.port.port, subset, ps.service.hostname)
                c = self.cluster_builder._outbound_cluster(name, ps, subset, False, dr, True)
                if c is not None:
                    built[name] = c
        return dict(sorted(built.items()))

    def _virtual_outbound(self, scope: TelemetryScope, allow_any: bool) -> listener_pb2.Listener:
        listener = listener_pb2.Listener(
            name=VIRTUAL_OUTBOUND,
            address=socket_address(WILDCARD, OUTBOUND_PORT),
            traffic_direction=base_pb2.OUTBOUND,
        )
        listener.use_original_dst.value = True
        loop = listener.filter_chains.add(name=f"{VIRTUAL_OUTBOUND}-blackhole")
        loop.filter_chain_match.destination_port.value = OUTBOUND_PORT
        loop.filters.append(_tcp_proxy(BLACKHOLE_CLUSTER, scope, OUTBOUND))
        catchall = listener.filter_chains.add(name=f"{VIRTUAL_OUTBOUND}-catchall-tcp")
        target = PASSTHROUGH_CLUSTER if allow_any else BLACKHOLE_CLUSTER
        catchall.filters.append(_tcp_proxy(target, scope, OUTBOUND))
        return listener

    def route_configs(self, proxy: Proxy) -> dict[str, Message]:
        """The mesh's route configurations for the proxy, with VIP domains, the HTTP ports of
        resolution NONE hosts (their VirtualService's routes, else the default route, to their
        ORIGINAL_DST clusters) and Istio's ``allow_any`` / ``block_all`` virtual host last."""
        allow_any = self.allow_any_for(proxy)
        key = (self.routes.route_key(proxy), allow_any)
        found = self._routes.get(key)
        if found is None:
            found = self.log.cached(
                self._routes,
                self._route_problems,
                key,
                lambda: self._build_routes(proxy, allow_any),
            )
        return found

    def _build_routes(self, proxy: Proxy, allow_any: bool) -> dict[str, Message]:
        vips = self.vips()
        found: dict[str, Message] = {}
        passthrough: dict[str, list[Any]] = {}
        for ps in self._passthrough_ports():
            if is_http(ps.protocol):
                vh = self.routes._virtual_host(ps, proxy)
                # Its addresses answer for it too (Istio's domains include a host's addresses).
                for address in self._addresses(ps):
                    vh.domains.extend((address, f"{address}:{ps.port.port}"))
                passthrough.setdefault(str(ps.port.port), []).append(vh)
        shared_configs = dict(self.routes.route_configs(proxy))
        for port_name in passthrough:
            if port_name not in shared_configs:
                empty = route_pb2.RouteConfiguration(name=port_name)
                empty.validate_clusters.value = False
                shared_configs[port_name] = empty
        for name, shared in sorted(shared_configs.items()):
            rcfg = route_pb2.RouteConfiguration()
            rcfg.CopyFrom(shared)
            for vh in rcfg.virtual_hosts:
                host, _, port = vh.name.rpartition(":")
                vip = vips.get(host)
                if vip:
                    vh.domains.extend((vip, f"{vip}:{port}"))
            rcfg.virtual_hosts.extend(passthrough.get(name, ()))
            rcfg.virtual_hosts.append(self._fallback_host(allow_any))
            found[name] = rcfg
        return found

    def _fallback_host(self, allow_any: bool) -> Any:
        if allow_any:
            vh = route_pb2.RouteConfiguration().virtual_hosts.add(name="allow_any", domains=["*"])
            route = vh.routes.add(name="allow_any")
            route.match.prefix = "/"
            route.route.cluster = PASSTHROUGH_CLUSTER
            route.route.timeout.CopyFrom(duration_ns(0))
            return vh
        vh = route_pb2.RouteConfiguration().virtual_hosts.add(name="block_all", domains=["*"])
        route = vh.routes.add(name="block_all")
        route.match.prefix = "/"
        route.direct_response.status = 502
        return vh

    def clusters(self) -> dict[str, Message]:
        """PassthroughCluster, BlackHoleCluster and InboundPassthroughCluster."""
        if self._clusters is None:
            blackhole = cluster_pb2.Cluster(
                name=BLACKHOLE_CLUSTER,
                type=cluster_pb2.Cluster.STATIC,
                connect_timeout=duration_ns(DEFAULT_CONNECT_TIMEOUT_NS),
            )
            self._clusters = {
                BLACKHOLE_CLUSTER: blackhole,
                INBOUND_PASSTHROUGH_CLUSTER: original_dst_cluster(
                    INBOUND_PASSTHROUGH_CLUSTER, INBOUND_SOURCE
                ),
                PASSTHROUGH_CLUSTER: original_dst_cluster(PASSTHROUGH_CLUSTER),
            }
        return self._clusters

    # --- inbound -----------------------------------------------------------------------------

    def inbound(
        self, proxy: Proxy
    ) -> tuple[dict[str, Message], dict[str, Message], list[ConfigProblem]]:
        """``virtualInbound`` and the inbound clusters of the proxy's workload (a proxy without
        a workload gets them too, with only the catch-all chains), and their problems."""
        w = proxy.workload
        if proxy.proxyless:
            return {}, {}, []
        with self.log.capture() as jwt_met:
            jwt = self.listeners.jwt_filter(proxy)
        key = (
            None if w is None else w.key,
            proxy.namespace,
            tuple(sorted(proxy.labels.items())),
        )
        seen = (
            None if w is None else (w.spec, w.labels),
            None if jwt is None else jwt.SerializeToString(),
        )
        found = self._inbound.get(key)
        if found is None or found[0] != seen:
            with self.log.capture() as met:
                listeners, clusters = self._build_inbound(proxy, jwt)
            found = self._inbound[key] = (seen, (listeners, clusters, [*jwt_met, *met]))
        result: tuple[dict[str, Message], dict[str, Message], list[ConfigProblem]] = found[1]
        return result

    def _build_inbound(
        self, proxy: Proxy, jwt: Message | None
    ) -> tuple[dict[str, Message], dict[str, Message]]:
        w = proxy.workload
        scope = self.listeners.scope(proxy)
        ports: dict[int, str] = {}
        services: dict[int, list[str]] = {}  # the Services each port serves (for metrics)
        if w is not None:
            for svc in self.index.services_of(w):
                for sp in svc.ports:
                    target = endpoint_port(w, sp)
                    proto = port_protocol(sp)
                    if target is None or proto == "udp":
                        continue
                    ports.setdefault(target, proto)
                    services.setdefault(target, []).append(svc.hostname)
        http_filters, tcp_filters = self.listeners.authz_filters(proxy)
        if jwt is not None:  # tokens verified before the authorization filters read them
            http_filters = [jwt, *http_filters]
        listener = listener_pb2.Listener(
            name=VIRTUAL_INBOUND,
            address=socket_address(WILDCARD, INBOUND_PORT),
            traffic_direction=base_pb2.INBOUND,
        )
        listener.listener_filters.add(
            name=ORIGINAL_DST_NAME, typed_config=pack(original_dst_pb2.OriginalDst())
        )
        listener.listener_filters.add(
            name=TLS_INSPECTOR_NAME, typed_config=pack(tls_inspector_pb2.TlsInspector())
        )
        loop = listener.filter_chains.add(name=f"{VIRTUAL_INBOUND}-blackhole")
        loop.filter_chain_match.destination_port.value = INBOUND_PORT
        loop.filters.append(_tcp_proxy(BLACKHOLE_CLUSTER, scope, INBOUND))
        clusters: dict[str, Message] = {}
        for target in sorted(ports):
            cluster = cluster_name(INBOUND, target, "", "")
            clusters[cluster] = original_dst_cluster(cluster, INBOUND_SOURCE)
            chain_name = f"{WILDCARD}_{target}"
            mode = self.index.mtls_mode(w, target) if w is not None else "PERMISSIVE"
            for chain in inbound_chains(
                chain_name,
                target,
                cluster,
                http=is_http(ports[target]),
                mode=mode,
                http_filters=http_filters,
                tcp_filters=tcp_filters,
                scope=scope,
                services=sorted(set(services[target])),
                names=(chain_name, f"{chain_name}-plaintext"),
            ):
                chain.filter_chain_match.destination_port.value = target
                listener.filter_chains.append(chain)
        # Ports no Service declares: passed on to the app under the workload's own mode.
        catchall = f"{VIRTUAL_INBOUND}-catchall-tcp"
        mode = self._workload_mode(proxy)
        listener.filter_chains.extend(
            inbound_chains(
                catchall,
                0,
                INBOUND_PASSTHROUGH_CLUSTER,
                http=False,
                mode=mode,
                http_filters=http_filters,
                tcp_filters=tcp_filters,
                scope=scope,
                services=[],
                names=(catchall, f"{catchall}-plaintext"),
            )
        )
        return {VIRTUAL_INBOUND: listener}, clusters

    def _workload_mode(self, proxy: Proxy) -> str:
        w = proxy.workload
        if w is not None:
            return self.index.mtls_mode(w, 0)
        return self.index.mesh.mtls_mode(proxy.namespace, proxy.labels)


def original_dst_cluster(name: str, source: str = "") -> cluster_pb2.Cluster:
    """A cluster connecting to the connection's original destination (``source``: the local
    address to connect from)."""
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.ORIGINAL_DST,
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        connect_timeout=duration_ns(DEFAULT_CONNECT_TIMEOUT_NS),
    )
    if source:
        c.upstream_bind_config.source_address.address = source
        c.upstream_bind_config.source_address.port_value = 0
    return c


def _passthrough_lb(dr: Any, subset: str, port: int) -> bool:
    lb = effective_policy(dr, subset, port).get("loadBalancer") or {}
    return bool(lb.get("simple") == "PASSTHROUGH")


def _unbound(listener: listener_pb2.Listener) -> listener_pb2.Listener:
    listener.bind_to_port.value = False
    return listener


def _tcp_proxy(
    cluster: str, scope: TelemetryScope, direction: str
) -> listener_components_pb2.Filter:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    proxy.access_log.extend(scope.access_logs(direction))
    return listener_components_pb2.Filter(name=TCP_PROXY_NAME, typed_config=pack(proxy))
