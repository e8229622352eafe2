"""Listeners (LDS): outbound per port on the proxy's outbound address (an HTTP connection
manager using RDS, or tcp_proxy for TCP ports; for proxyless gRPC clients an ``api_listener``
``HOST:PORT``), inbound per workload port on the workload's address with its authorization
filters (:class:`meshcore.security.authz.Authorizer`) after the JWT filter of its
RequestAuthentications (:mod:`meshcore.xds.jwt`) and TLS per PeerAuthentication, and the
MeshConfig's access logs and tracing on each (:mod:`meshcore.xds.telemetry`).

Outbound listeners are built once per mesh and outbound address; authorization filters once per
set of selecting policies; inbound listeners (and the inbound clusters to the app) per workload.
A new mesh keeps outbound listeners when the hosts are equal, authorization filters when the
AuthorizationPolicies, Services and extension providers are, and inbound listeners when the
PeerAuthentications are too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from meshcore.config.meshconfig import MeshConfig
from meshcore.config.model import DestinationRule, ServicePort, WorkloadEntry
from meshcore.config.telemetry import TelemetryPolicy
from meshcore.config.values import selector_matches
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.names import (
    CORS_NAME,
    FAULT_NAME,
    HCM_NAME,
    HTTP_RBAC,
    INBOUND,
    OUTBOUND,
    ROUTER_NAME,
    SDS_CERT,
    SDS_ROOT,
    TCP_PROXY_NAME,
    TCP_RBAC,
    TLS_INSPECTOR_NAME,
    cluster_name,
)
from meshcore.xds.clusters import inbound_cluster
from meshcore.xds.common import (
    Invalid,
    ads,
    checked_of,
    copy_message,
    duration,
    duration_ns,
    endpoint_port,
    is_http,
    pack,
    port_protocol,
    sds,
    socket_address,
    tls_socket,
)
from meshcore.xds.index import MeshIndex
from meshcore.xds.jwt import JwksFetcher, jwt_filter
from meshcore.xds.node import Proxy
from meshcore.xds.problems import ProblemLog
from meshcore.xds.telemetry import (
    TelemetryScope,
    agent_collects,
    istio_stats_http,
    istio_stats_tcp,
    observe,
)


class ListenerBuilder:
    """The mesh's outbound listeners, authorization filters and per-workload inbound side, with
    the problems met building them."""

    def __init__(
        self,
        index: MeshIndex,
        log: ProblemLog,
        providers: Any,
        mesh_config: MeshConfig | None,
        jwks: JwksFetcher | None = None,
    ) -> None:
        self.index = index
        self.jwks = jwks if jwks is not None else JwksFetcher()
        # jwt_authn filters by the RequestAuthentications selecting a workload (not inherited:
        # fetched JWKS may have been refreshed since the last mesh).
        self._jwt: dict[tuple[Any, ...], Message | None] = {}
        self._jwt_problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}
        self.mesh = index.mesh
        self.log = log
        self.providers = providers
        self.mesh_config = mesh_config
        # Telemetry resources (telemetry.istio.io), and each workload's scope from them.
        self._telemetries = [r for r in self.mesh.resources if r.kind == "Telemetry"]
        self._scopes: dict[tuple[Any, ...], TelemetryScope] = {}
        self._registry: list[str] | None = None
        self._outbound: dict[tuple[Any, ...], dict[str, Message]] = {}
        self.outbound_problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}
        self._authz: dict[tuple[Any, ...], tuple[list[Message], list[Message]]] = {}
        self._authz_problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}
        self._policy_selection: dict[tuple[Any, ...], list[Any]] = {}
        self._inbound: dict[
            tuple[Any, ...],
            tuple[Any, tuple[dict[str, Message], dict[str, Message], list[ConfigProblem]]],
        ] = {}

    def inherit(self, prev: ListenerBuilder, same: Mapping[str, bool]) -> None:
        """Keeps what the change does not touch, compared by value (see the module's doc)."""
        # (DestinationRules: the TCP proxies' idle timeout and connection duration.)
        if same["services"] and same["service_entries"] and same["destination_rules"]:
            self._outbound = prev._outbound
            self.outbound_problems = prev.outbound_problems
        if same["authorization_policies"] and same["services"] and prev.providers == self.providers:
            self._authz = prev._authz
            self._authz_problems = prev._authz_problems
            self._policy_selection = prev._policy_selection
            if same["peer_authentications"] and same["request_authentications"]:
                # Inbound listeners depend on the workload (in the key), the Services that
                # select it, its PeerAuthentication, its JWT filter (also compared on reuse:
                # JWKS are refreshed) and its authorization filters.
                self._inbound = prev._inbound

    def outbound_key(self, proxy: Proxy) -> tuple[Any, ...]:
        """What a proxy's outbound listeners (and their problems) depend on: its kind of
        client, its outbound address, its Sidecar scope (compared by value) and its telemetry
        scope."""
        sidecar = self.index.sidecar_scope(proxy.namespace, proxy.labels)
        return (proxy.proxyless, proxy.outbound_address, sidecar, self.scope(proxy).key)

    def scope(self, proxy: Proxy) -> TelemetryScope:
        """The proxy's telemetry (MeshConfig with the Telemetry resources selecting it)."""
        agent = agent_collects(proxy.metadata)
        if not self._telemetries:
            return TelemetryScope(self.mesh_config, agent=agent)
        key = (proxy.namespace, tuple(sorted(proxy.labels.items())), agent)
        found = self._scopes.get(key)
        if found is None:
            policy = TelemetryPolicy.resolve(
                self._telemetries, self.mesh.root_namespace, proxy.namespace, proxy.labels
            )
            found = self._scopes[key] = TelemetryScope(self.mesh_config, policy, agent)
        return found

    def _telemetry_problems(self, scope: TelemetryScope) -> None:
        providers = self.mesh_config.providers if self.mesh_config is not None else None
        if providers is None or not scope.policy.sources:
            return
        for field, name in scope.policy.unknown_providers(providers):
            for source in scope.policy.sources:
                ns, _, res_name = source.partition("/")
                res = self.mesh.get("Telemetry", ns, res_name)
                if res is not None and name in str(res.spec.get(field)):
                    self.log.problem(res, f"spec.{field}", f"no {field} extension provider "
                                     f"named {name!r} in the MeshConfig: left out")  # fmt: skip

    def outbound_listeners(self, proxy: Proxy) -> dict[str, Message]:
        key = self.outbound_key(proxy)
        found = self._outbound.get(key)  # the common case, without building a closure
        if found is None:
            found = self.log.cached(
                self._outbound,
                self.outbound_problems,
                key,
                lambda: self._build_outbound_listeners(proxy),
            )
        return found

    def _build_outbound_listeners(self, proxy: Proxy) -> dict[str, Message]:
        out: dict[str, Message] = {}
        sidecar = self.outbound_key(proxy)[2]
        by_port = self.index.by_port
        if sidecar is not None:
            by_port = {
                port: kept
                for port, group in by_port.items()
                if (kept := [ps for ps in group if sidecar.routes_to(ps.service.hostname, port)])
            }
        if proxy.proxyless:
            for port in sorted(by_port):
                for ps in by_port[port]:
                    if is_http(ps.protocol):
                        name = f"{ps.service.hostname}:{port}"
                        out[name] = _api_listener(name)
            return dict(sorted(out.items()))
        address = proxy.outbound_address
        scope = self.scope(proxy)
        self._telemetry_problems(scope)
        for port in sorted(by_port):
            group = by_port[port]
            name = f"{address}_{port}"
            http = [ps for ps in group if is_http(ps.protocol)]
            tcp = [ps for ps in group if not is_http(ps.protocol)]
            if http:
                out[name] = _outbound_http_listener(name, address, port, scope)
                for ps in tcp:
                    self.log.problem(
                        ps.service,
                        f"spec.ports[{ps.port.name or ps.port.port}]",
                        f"TCP port {port} shares its outbound address with HTTP services on the"
                        " same port (no per-service VIPs in the loopback layout); it gets no"
                        " outbound listener",
                        severity="warning",
                    )
            elif tcp:
                first = tcp[0]
                cluster = cluster_name(OUTBOUND, port, "", first.service.hostname)
                dr = self.mesh.destination_rule_for(first.service.hostname)
                out[name] = _outbound_tcp_listener(
                    name, address, port, cluster, scope, _tcp_proxy_timeouts(dr)
                )
                for ps in tcp[1:]:
                    self.log.problem(
                        ps.service,
                        f"spec.ports[{ps.port.name or ps.port.port}]",
                        f"TCP port {port} is already served on the outbound address by"
                        f" {first.service.hostname}; this service gets no outbound listener",
                        severity="warning",
                    )
        return dict(sorted(out.items()))

    def _provider_registry(self) -> list[str] | None:
        """``namespace/hostname`` of every Service: where ext_authz providers are looked up."""
        if self.providers is None:
            return None
        if self._registry is None:
            self._registry = [f"{s.namespace}/{s.hostname}" for s in self.index.services]
        return self._registry

    def authz_filters(self, proxy: Proxy) -> tuple[list[Message], list[Message]]:
        from meshcore.security.authz import GATEWAY_NAME_LABEL, Authorizer

        selection = (proxy.namespace, tuple(sorted(proxy.labels.items())))
        policies = self._policy_selection.get(selection)
        if policies is None:
            # MeshModel.authorization_policies_for scans every policy; this is per namespace.
            spaces = dict.fromkeys((self.mesh.root_namespace, proxy.namespace))
            policies = self._policy_selection[selection] = [
                pol
                for ns in spaces
                for pol in self.index.policies_by_ns.get(ns, ())
                if selector_matches(pol.selector, proxy.labels)
            ]
        # The filters depend on the labels only through which policies select the workload
        # (and the gateway label, for targetRefs): workloads sharing them share the filters.
        key = (
            proxy.namespace,
            tuple(pol.key for pol in policies),
            proxy.labels.get(GATEWAY_NAME_LABEL, ""),
        )
        if key in self._authz:
            self.log.emit(self._authz_problems[key])
            return self._authz[key]
        met: list[ConfigProblem] = []
        try:
            authz = Authorizer.from_policies(
                policies,
                namespace=proxy.namespace,
                labels=proxy.labels,
                trust_domain=self.mesh.domain,
                root_namespace=self.mesh.root_namespace,
                providers=self.providers,
                services=self._provider_registry(),
            )
            http, tcp = authz.filters(), authz.filters(tcp=True)
            met.extend(authz.problems)
        except ConfigError as exc:
            met.extend(exc.errors())
            # Fail closed: a policy that cannot be built must not let anyone in.
            http, tcp = _deny_all_filters()
        self._authz[key] = (http, tcp)
        self._authz_problems[key] = met
        self.log.emit(met)
        return self._authz[key]

    def jwt_filter(self, proxy: Proxy) -> Message | None:
        """The jwt_authn filter of the RequestAuthentications selecting the proxy's workload
        (its namespace's and the root namespace's, as Istio), or None."""
        from meshcore.security.authz import _selects

        spaces = dict.fromkeys((self.mesh.root_namespace, proxy.namespace))
        policies = [
            ra
            for ns in spaces
            for ra in self.index.request_authns_by_ns.get(ns, ())
            if _selects(ra.spec, ra.namespace, proxy.namespace, proxy.labels)
        ]
        key = tuple(ra.key for ra in policies)
        if key in self._jwt:
            self.log.emit(self._jwt_problems[key])
            return self._jwt[key]
        with self.log.capture() as met:
            self._jwt[key] = jwt_filter(policies, self.jwks, self.log)
        self._jwt_problems[key] = met
        return self._jwt[key]

    def inbound(
        self, proxy: Proxy
    ) -> tuple[dict[str, Message], dict[str, Message], list[ConfigProblem]]:
        """Inbound listeners and clusters for the proxy's workload, and their problems."""
        w = proxy.workload
        if w is None or not w.address or proxy.proxyless:
            return {}, {}, []
        key = (
            w.key,
            proxy.app_address,
            tuple(sorted(proxy.labels.items())),
            self.scope(proxy).key,
        )
        found = self._inbound.get(key)
        with self.log.capture() as jwt_met:
            jwt = self.jwt_filter(proxy)
        sidecar = self.index.sidecar_for(proxy.namespace, proxy.labels)
        ingress = tuple(sidecar.spec.get("ingress") or ()) if sidecar is not None else ()
        seen = (w.spec, w.labels, None if jwt is None else jwt.SerializeToString(), ingress)
        # specs are read-only mappings (unhashable): compared by value beside the key
        if found is None or found[0] != seen:
            with self.log.capture() as met:
                listeners, clusters = self._build_inbound(proxy, w, jwt, ingress)
            found = self._inbound[key] = (seen, (listeners, clusters, [*jwt_met, *met]))
        return found[1]

    def _build_inbound(
        self, proxy: Proxy, w: WorkloadEntry, jwt: Message | None, ingress: tuple[Any, ...] = ()
    ) -> tuple[dict[str, Message], dict[str, Message]]:
        listeners: dict[str, Message] = {}
        clusters: dict[str, Message] = {}
        ports: dict[int, str] = {}
        services: dict[int, list[str]] = {}  # the Services each port serves (for metrics)
        for svc in self.index.services_of(w):
            for sp in svc.ports:
                target = endpoint_port(w, sp)
                proto = port_protocol(sp)
                if target is None or proto == "udp":
                    continue
                ports.setdefault(target, proto)
                services.setdefault(target, []).append(svc.hostname)
        scope = self.scope(proxy)
        self._telemetry_problems(scope)
        # The app's port behind each inbound port: the same, unless the workload's Sidecar has
        # ingress listeners, which then are its inbound ports (Istio: port, defaultEndpoint).
        app_ports = {target: target for target in ports}
        if ingress:
            ports, app_ports = sidecar_ingress_ports(ingress, ports)
        for target in sorted(ports):
            cluster = cluster_name(INBOUND, target, "", "")
            clusters[cluster] = inbound_cluster(cluster, proxy.app_address, app_ports[target])
            name = f"{w.address}_{target}"
            mode = self.index.mtls_mode(w, target)
            http_filters, tcp_filters = self.authz_filters(proxy)
            if jwt is not None:  # tokens verified before the authorization filters read them
                http_filters = [jwt, *http_filters]
            listeners[name] = _inbound_listener(
                name,
                w.address,
                target,
                cluster,
                http=is_http(ports[target]),
                mode=mode,
                http_filters=http_filters,
                tcp_filters=tcp_filters,
                scope=scope,
                services=sorted(set(services.get(target, ()))),
            )
        return listeners, clusters


def sidecar_ingress_ports(
    ingress: tuple[Any, ...], service_ports: Mapping[int, str]
) -> tuple[dict[int, str], dict[int, int]]:
    """A Sidecar's ingress listeners as inbound ports: port -> protocol, and port -> the app's
    port (``defaultEndpoint``'s, else the same: Istio forwards to the original destination).
    An empty protocol is sniffed by Istio: here the workload's service port's, else TCP."""
    protocols: dict[int, str] = {}
    app_ports: dict[int, int] = {}
    for listener in ingress:
        port = listener.get("port") or {}
        number = int(port.get("number") or 0)
        name = str(port.get("protocol") or "").lower()
        protocols[number] = (
            port_protocol(ServicePort(name=name, port=number, target_port=number, protocol="TCP"))
            if name
            else service_ports.get(number, "tcp")
        )
        endpoint = str(listener.get("defaultEndpoint") or "")
        app_ports[number] = int(endpoint.rpartition(":")[2]) if endpoint else number
    return protocols, app_ports


def _deny_all_filters() -> tuple[list[Message], list[Message]]:
    from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2

    http = hcm_pb2.HttpFilter(name=HTTP_RBAC, typed_config=pack(http_rbac_pb2.RBAC(rules={})))
    tcp = listener_components_pb2.Filter(
        name=TCP_RBAC,
        typed_config=pack(net_rbac_pb2.RBAC(rules={}, stat_prefix="tcp.")),
    )
    return [http], [tcp]


def _router() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=ROUTER_NAME, typed_config=pack(router_pb2.Router()))


def _hcm_filter(hcm: hcm_pb2.HttpConnectionManager) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(name=HCM_NAME, typed_config=pack(hcm))


def _outbound_http_listener(
    name: str, address: str, port: int, scope: TelemetryScope
) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=f"outbound_{name}")
    observe(hcm, scope, OUTBOUND)
    if scope.metrics(OUTBOUND):
        istio_stats_http(hcm, OUTBOUND, disabled=scope.disabled_metrics(OUTBOUND))
    hcm.rds.route_config_name = str(port)
    hcm.rds.config_source.CopyFrom(ads())
    hcm.normalize_path.value = True
    # The fault and CORS filters do nothing unless a route configures them (per-route config).
    hcm.http_filters.append(
        hcm_pb2.HttpFilter(name=FAULT_NAME, typed_config=pack(fault_pb2.HTTPFault()))
    )
    hcm.http_filters.append(hcm_pb2.HttpFilter(name=CORS_NAME, typed_config=pack(cors_pb2.Cors())))
    hcm.http_filters.append(_router())
    listener = listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        traffic_direction=base_pb2.OUTBOUND,
    )
    listener.filter_chains.add().filters.append(_hcm_filter(hcm))
    return listener


def _tcp_proxy_timeouts(dr: DestinationRule | None) -> tuple[Duration | None, Duration | None]:
    """Istio's TCP proxy: the host's DestinationRule's tcp idleTimeout and maxConnectionDuration
    (its top-level trafficPolicy), as the loader parsed them; none from a DestinationRule whose
    policy is dropped (its clusters report why)."""
    if dr is None:
        return None, None
    tcp = (dr.traffic_policy.get("connectionPool") or {}).get("tcp") or {}
    path = "spec.trafficPolicy.connectionPool.tcp."
    try:
        checked = checked_of(dr)
        idle, longest = (
            duration(tcp[k], path + k, checked) if tcp.get(k) is not None else None
            for k in ("idleTimeout", "maxConnectionDuration")
        )
    except Invalid:
        return None, None
    return idle, longest


def _outbound_tcp_listener(
    name: str,
    address: str,
    port: int,
    cluster: str,
    scope: TelemetryScope,
    timeouts: tuple[Duration | None, Duration | None] = (None, None),
) -> listener_pb2.Listener:
    """``timeouts``: the TCP proxy's idle timeout and maximum connection duration."""
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    idle, longest = timeouts
    if idle is not None:
        proxy.idle_timeout.CopyFrom(idle)
    if longest is not None:
        proxy.max_downstream_connection_duration.CopyFrom(longest)
    proxy.access_log.extend(scope.access_logs(OUTBOUND))
    if scope.metrics(OUTBOUND):
        istio_stats_tcp(proxy, OUTBOUND, disabled=scope.disabled_metrics(OUTBOUND))
    listener = listener_pb2.Listener(
        name=name, address=socket_address(address, port), traffic_direction=base_pb2.OUTBOUND
    )
    listener.filter_chains.add().filters.append(
        listener_components_pb2.Filter(name=TCP_PROXY_NAME, typed_config=pack(proxy))
    )
    return listener


def _api_listener(name: str) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = name
    hcm.rds.config_source.CopyFrom(ads())
    hcm.http_filters.append(
        hcm_pb2.HttpFilter(name=FAULT_NAME, typed_config=pack(fault_pb2.HTTPFault()))
    )
    hcm.http_filters.append(_router())
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=pack(hcm))
    )


def _downstream_tls(http: bool) -> tls_pb2.DownstreamTlsContext:
    ctx = tls_pb2.DownstreamTlsContext()
    ctx.require_client_certificate.value = True
    common = ctx.common_tls_context
    common.tls_certificate_sds_secret_configs.append(sds(SDS_CERT))
    cvc = common.combined_validation_context
    cvc.default_validation_context.SetInParent()
    cvc.validation_context_sds_secret_config.CopyFrom(sds(SDS_ROOT))
    if http:
        common.alpn_protocols.extend(("h2", "http/1.1"))
    common.tls_params.tls_minimum_protocol_version = tls_common_pb2.TlsParameters.TLSv1_2
    return ctx


def _inbound_listener(
    name: str,
    address: str,
    port: int,
    cluster: str,
    *,
    http: bool,
    mode: str,
    http_filters: list[Message],
    tcp_filters: list[Message],
    scope: TelemetryScope,
    services: list[str],
) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(
        name=name, address=socket_address(address, port), traffic_direction=base_pb2.INBOUND
    )
    chains = inbound_chains(
        name,
        port,
        cluster,
        http=http,
        mode=mode,
        http_filters=http_filters,
        tcp_filters=tcp_filters,
        scope=scope,
        services=services,
        names=("inbound_mtls", "inbound_plaintext"),
    )
    listener.filter_chains.extend(chains)
    if mode not in ("STRICT", "DISABLE"):
        listener.listener_filters.add(
            name=TLS_INSPECTOR_NAME, typed_config=pack(tls_inspector_pb2.TlsInspector())
        )
    return listener


def inbound_chains(
    name: str,
    port: int,
    cluster: str,
    *,
    http: bool,
    mode: str,
    http_filters: list[Message],
    tcp_filters: list[Message],
    scope: TelemetryScope,
    services: list[str],
    names: tuple[str, str],
) -> list[listener_components_pb2.FilterChain]:
    """The filter chains of one inbound port, TLS per PeerAuthentication ``mode``: one mTLS
    chain (STRICT), one plaintext chain (DISABLE), or both told apart by the TLS inspector's
    transport protocol (PERMISSIVE; the listener needs the inspector). ``names`` are the mTLS
    and plaintext chains' names; ``name`` the HCM's stat prefix (after ``inbound_``); ``services`` the Services
    served (for Istio's metrics)."""
    stats = scope.metrics(INBOUND)
    disabled = scope.disabled_metrics(INBOUND)

    def filters() -> list[listener_components_pb2.Filter]:
        if not http:
            out = [copy_message(f) for f in tcp_filters]
            tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
            tcp.access_log.extend(scope.access_logs(INBOUND))
            if stats:
                istio_stats_tcp(tcp, INBOUND, services, disabled)
            out.append(listener_components_pb2.Filter(name=TCP_PROXY_NAME, typed_config=pack(tcp)))
            return out
        hcm = hcm_pb2.HttpConnectionManager(stat_prefix=f"inbound_{name}")
        observe(hcm, scope, INBOUND)
        if stats:
            istio_stats_http(hcm, INBOUND, services, disabled)
        rcfg = hcm.route_config
        rcfg.name = cluster
        rcfg.validate_clusters.value = False
        vh = rcfg.virtual_hosts.add(name=f"inbound|http|{port}", domains=["*"])
        route = vh.routes.add(name="default")
        route.match.prefix = "/"
        route.route.cluster = cluster
        route.route.timeout.CopyFrom(duration_ns(0))
        hcm.normalize_path.value = True
        hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.APPEND_FORWARD
        details = hcm.set_current_client_cert_details
        details.subject.value = True
        details.dns = True
        details.uri = True
        hcm.http_filters.extend(copy_message(f) for f in http_filters)
        hcm.http_filters.append(_router())
        return [_hcm_filter(hcm)]

    mtls_name, plain_name = names
    tls = tls_socket(_downstream_tls(http))
    if mode == "STRICT":
        chain = listener_components_pb2.FilterChain(name=mtls_name)
        chain.transport_socket.CopyFrom(tls)
        chain.filters.extend(filters())
        return [chain]
    if mode == "DISABLE":
        return [listener_components_pb2.FilterChain(name=plain_name, filters=filters())]
    # PERMISSIVE: TLS and plaintext told apart by the TLS inspector
    chain = listener_components_pb2.FilterChain(name=mtls_name)
    chain.filter_chain_match.transport_protocol = "tls"
    chain.transport_socket.CopyFrom(tls)
    chain.filters.extend(filters())
    plain = listener_components_pb2.FilterChain(name=plain_name, filters=filters())
    plain.filter_chain_match.transport_protocol = "raw_buffer"
    return [chain, plain]
