"""The data plane's compiled view of its xDS resources: one immutable object per config.

Everything a decision needs is built here, once per resource version, from the very protos
Envoy receives: outbound listeners by port with their HCM options, each RouteConfiguration
compiled into a :class:`meshcore.RouteTable` (and each route's action decoded: weighted
clusters, timeout, retry and hash policies), inbound listeners with their RBAC/ext_authz filters
compiled into an :class:`~meshcore.security.authz.AuthzChain`, clusters (LB policy, outlier
detection, TLS) and their endpoints. A new :class:`CompiledConfig` replaces the old one by
reference, so a decision never sees half a config.
"""

from __future__ import annotations

import re
import types as pytypes
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf.message import DecodeError, Message

from meshcore._core.route import RouteTable
from meshcore.dataplane.routeactions import (
    HashPolicy,
    RetryPolicy,
    hash_policies,
    retry_policy,
    rewrite_from,
)
from meshcore.errors import ConfigError, ConfigProblem, UnsupportedFeatureError
from meshcore.names import (
    HCM_NAME,
    JWT_AUTHN_NAME,
    RE2_MAX_PROGRAM_SIZE,
    TCP_PROXY_NAME,
    TLS_SOCKET,
    parse_cluster_name,
)
from meshcore.names import TRANSPORT_SOCKET_MATCH_KEY as TLS_MODE_KEY
from meshcore.security.authz import AuthzChain
from meshcore.xds import types

# A path without these is already normalised (no percent-escapes, backslashes, dot segments,
# fragments, or bytes the URL canonicaliser escapes): the common case skips the core.
_PLAIN = re.compile(r'[^\x21-\x7e]|[%\\#"<>^`{|}]|/\.')

# Envoy's defaults: a route's timeout is 15 s when unset (0 disables it); outlier detection.
DEFAULT_ROUTE_TIMEOUT = 15.0
DEFAULT_RING_SIZE = 1024
DEFAULT_MAGLEV_TABLE = 65537

_LB_NAMES = {
    cluster_pb2.Cluster.ROUND_ROBIN: "ROUND_ROBIN",
    cluster_pb2.Cluster.LEAST_REQUEST: "LEAST_REQUEST",
    cluster_pb2.Cluster.RANDOM: "RANDOM",
    cluster_pb2.Cluster.RING_HASH: "RING_HASH",
    cluster_pb2.Cluster.MAGLEV: "MAGLEV",
}


def _seconds(d: Any) -> float:
    return float(d.seconds) + float(d.nanos) / 1e9


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream host of a cluster; ``tls`` when the cluster's TLS applies to it (Istio's
    auto mTLS: endpoints labelled ``tlsMode: istio``)."""

    address: str
    port: int
    weight: int = 1
    tls: bool = False
    locality: str = ""

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int = 5
    enforcing_consecutive_5xx: int = 100
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_gateway_failure: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """The TLS a cluster speaks to its endpoints: SNI and the peer SANs to verify (URI SANs:
    SPIFFE ids; empty means any identity the trust bundle vouches for)."""

    sni: str
    sans: tuple[str, ...]
    alpn: tuple[str, ...] = ()
    auto: bool = False  # only to endpoints with tlsMode: istio (else to every endpoint)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    lb_policy: str
    eds_name: str | None  # the ClusterLoadAssignment to subscribe to (EDS clusters)
    static_endpoints: tuple[Endpoint, ...] | None
    outlier: OutlierDetection | None
    tls: UpstreamTls | None
    connect_timeout: float
    ring_size: int = DEFAULT_RING_SIZE
    maglev_table_size: int = DEFAULT_MAGLEV_TABLE
    panic_threshold: float = 50.0

    @property
    def service(self) -> str:
        """The service host of an Istio cluster name (``outbound|PORT|SUBSET|HOST``)."""
        parsed = parse_cluster_name(self.name)
        return parsed.host if parsed is not None else self.name


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """A route's action, decoded once: what the data plane does with a match."""

    name: str
    kind: str  # route, redirect, direct_response, ...
    cluster: str | None
    weighted: tuple[tuple[str, int], ...]
    total_weight: int
    timeout: float | None  # None: no timeout
    retry_policy: RetryPolicy | None
    hash_policies: tuple[HashPolicy, ...]
    direct_status: int | None = None
    direct_body: bytes = b""
    prefix_rewrite: str = ""
    host_rewrite: str = ""
    # What prefix_rewrite replaces: the route's prefix (or whole path) match; None otherwise
    # (Envoy applies prefix_rewrite to prefix and path matches only).
    rewrite_from: str | None = None


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """The HCM options that change what the router sees (passed to RouteTable.route)."""

    normalize_path: bool = False
    merge_slashes: bool = False
    path_with_escaped_slashes_action: int = 0


@dataclass(frozen=True, slots=True)
class CompiledRoutes:
    name: str
    version: str
    table: RouteTable
    routes: Mapping[int, RouteInfo]  # by RouteMatch.route_index
    raw: bytes = b""

    def with_options(self, options: HttpOptions) -> CompiledRoutes:
        """The same routes with the HCM's path options compiled into the table (so that a
        decision passes no per-call options)."""
        if options == HttpOptions():
            return self
        return replace(self, table=_table(self.raw, self.name, options))


@dataclass(frozen=True, slots=True)
class OutboundListener:
    name: str
    address: str
    port: int
    route_config: str | None  # RDS name (HTTP)
    inline_routes: CompiledRoutes | None
    tcp_cluster: str | None  # tcp_proxy
    options: HttpOptions
    normalizer: RouteTable | None = None  # the HCM's path normalisation (see InboundListener)

    def normalized_path(self, path: str) -> str | None:
        """The path the router matches and the upstream sees; None when Envoy answers 400."""
        return _normalized(self.normalizer, self.options, path)


@dataclass(frozen=True, slots=True)
class InboundListener:
    name: str
    address: str
    port: int
    cluster: str | None  # where allowed requests go (the inbound cluster)
    authz: AuthzChain | None  # None: neither HTTP nor TCP proxy (nothing is let through)
    mtls_mode: str  # STRICT, PERMISSIVE or DISABLE, read from the filter chains
    options: HttpOptions
    # The HCM's path normalisation, as the core does it for routing: the RBAC filters see the
    # normalised path (checking the raw one would let /api/../admin past a DENY on /admin).
    normalizer: RouteTable | None = None

    def normalized_path(self, path: str) -> str | None:
        """The path the filters and the app see; None when Envoy answers 400 instead."""
        return _normalized(self.normalizer, self.options, path)


def _normalized(normalizer: RouteTable | None, options: HttpOptions, path: str) -> str | None:
    """The connection manager's path (the core's normalisation, through a one-route table
    compiled with the HCM's options); None when Envoy answers 400 instead."""
    if normalizer is None:
        return path if "#" not in path else None
    if _PLAIN.search(path) is None and not (options.merge_slashes and "//" in path):
        return path  # nothing normalisation would change: no escapes, dots or odd bytes
    out = normalizer.explain("_", path).get("path")
    return out if isinstance(out, str) else None


@dataclass(frozen=True, slots=True)
class CompiledConfig:
    """One consistent, immutable data-plane config (replace the reference to update)."""

    versions: Mapping[str, Mapping[str, str]]  # type URL -> name -> version
    outbound: Mapping[int, OutboundListener]
    inbound: Mapping[int, InboundListener]
    routes: Mapping[str, CompiledRoutes]
    clusters: Mapping[str, ClusterConfig]
    endpoints: Mapping[str, tuple[Endpoint, ...]]  # by cluster name
    # Each HTTP outbound listener's routes by port, compiled with its HCM options.
    listener_routes: Mapping[int, CompiledRoutes] = field(default_factory=dict)
    generation: int = 0
    problems: tuple[str, ...] = field(default=())

    def endpoints_of(self, cluster: ClusterConfig) -> tuple[Endpoint, ...]:
        if cluster.static_endpoints is not None:
            return cluster.static_endpoints
        return self.endpoints.get(cluster.name, ())

    def eds_names(self) -> set[str]:
        return {c.eds_name for c in self.clusters.values() if c.eds_name}

    def rds_names(self) -> set[str]:
        return {lst.route_config for lst in self.outbound.values() if lst.route_config}


EMPTY = CompiledConfig({}, {}, {}, {}, {}, {})


def _freeze(d: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return pytypes.MappingProxyType(dict(d))


def _error(type_url: str, name: str, path: str, message: str) -> ConfigError:
    kind = types.SHORT_NAMES.get(type_url, type_url)
    return ConfigError([ConfigProblem(message, path, kind=kind, name=name)])


def _rename(exc: ConfigError, type_url: str, name: str, prefix: str = "") -> ConfigError:
    """The core's problems, named by the resource they are in."""
    kind = types.SHORT_NAMES.get(type_url, type_url)
    problems = [
        ConfigProblem(
            p.message,
            f"{prefix}{p.path}" if p.path else prefix.rstrip("."),
            kind=kind,
            name=name,
            severity=p.severity,
        )
        for p in exc.errors()
    ]
    cls = UnsupportedFeatureError if isinstance(exc, UnsupportedFeatureError) else ConfigError
    return cls(problems)


def _parse(cls: type[Message], data: bytes, type_url: str, name: str) -> Any:
    try:
        return cls.FromString(data)
    except DecodeError as exc:
        raise _error(type_url, name, "", f"cannot decode: {exc}") from None


# --- routes -------------------------------------------------------------------------------------


def _table(raw: bytes, name: str, options: HttpOptions | None = None) -> RouteTable:
    o = options or HttpOptions()
    try:
        return RouteTable.from_proto(
            raw,
            normalize_path=o.normalize_path,
            merge_slashes=o.merge_slashes,
            path_with_escaped_slashes_action=o.path_with_escaped_slashes_action or None,
            max_program_size=RE2_MAX_PROGRAM_SIZE,  # what meshcore's Envoys accept
        )
    except ConfigError as exc:
        raise _rename(exc, types.ROUTE, name) from None


def compile_routes(
    name: str, version: str, data: bytes | Message, options: HttpOptions | None = None
) -> CompiledRoutes:
    """A RouteConfiguration compiled into a RouteTable, with each route's action decoded."""
    raw = data if isinstance(data, bytes) else data.SerializeToString()
    table = _table(raw, name, options)  # the one decoder of RouteConfigurations
    infos: dict[int, RouteInfo] = {}
    first: dict[int, int] = {}  # virtual host index -> its first route's index
    for m in table.routes:
        vh_i = m.virtual_host_index
        r_i = m.route_index - first.setdefault(vh_i, m.route_index)
        path = f"virtual_hosts[{vh_i}].routes[{r_i}]"
        action = m.action
        kind = str(action.get("kind"))
        if kind == "route":
            if action.get("cluster_header"):
                raise UnsupportedFeatureError(
                    [
                        ConfigProblem(
                            "cluster_header is not supported by meshcore.dataplane",
                            f"{path}.route.cluster_header",
                            kind="RDS",
                            name=name,
                        )
                    ]
                )
            weighted = tuple((str(c), int(w)) for c, w in action["weighted_clusters"])  # type: ignore[attr-defined]
            timeout_s = action.get("timeout")
            timeout = (
                DEFAULT_ROUTE_TIMEOUT
                if timeout_s is None
                else (None if float(timeout_s) == 0 else float(timeout_s))  # type: ignore[arg-type]
            )
            prefix_rewrite = str(action["prefix_rewrite"] or "")
            infos[m.route_index] = RouteInfo(
                name=m.name,
                kind=kind,
                cluster=str(action["cluster"] or "") or None,
                weighted=weighted,
                total_weight=sum(w for _, w in weighted),
                timeout=timeout,
                retry_policy=retry_policy(action),
                hash_policies=hash_policies(action, path, name),
                prefix_rewrite=prefix_rewrite,
                host_rewrite=str(action["host_rewrite_literal"] or ""),
                rewrite_from=rewrite_from(m.path_match) if prefix_rewrite else None,
            )
        elif kind == "direct_response":
            body = action.get("body")
            infos[m.route_index] = RouteInfo(
                m.name, kind, None, (), 0, None, None, (),
                direct_status=int(action["status"]),  # type: ignore[call-overload]
                direct_body=bytes(body) if isinstance(body, bytes) else b"",
            )  # fmt: skip
        else:
            infos[m.route_index] = RouteInfo(m.name, kind, None, (), 0, None, None, ())
    return CompiledRoutes(name, version, table, _freeze(infos), raw)


# --- listeners ----------------------------------------------------------------------------------


def _hcm_options(hcm: hcm_pb2.HttpConnectionManager) -> HttpOptions:
    return HttpOptions(
        normalize_path=hcm.normalize_path.value,
        merge_slashes=hcm.merge_slashes,
        path_with_escaped_slashes_action=int(hcm.path_with_escaped_slashes_action),
    )


def _network_filter(chain: listener_pb2.FilterChain, name: str) -> Message | None:
    for f in chain.filters:
        if f.name == HCM_NAME and name == HCM_NAME:
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            out: Message = hcm
            return out
        if f.name == TCP_PROXY_NAME and name == TCP_PROXY_NAME:
            tcp = tcp_proxy_pb2.TcpProxy()
            f.typed_config.Unpack(tcp)
            found: Message = tcp
            return found
    return None


def compile_listener(
    name: str, version: str, data: bytes | Message
) -> OutboundListener | InboundListener | None:
    """An outbound or inbound listener; None for listeners a data plane has no use for (API
    listeners, listeners without a socket address)."""
    raw = data if isinstance(data, bytes) else data.SerializeToString()
    lst = _parse(listener_pb2.Listener, raw, types.LISTENER, name)
    if not lst.HasField("address") or not lst.address.HasField("socket_address"):
        return None
    sa = lst.address.socket_address
    inbound = lst.traffic_direction == 1  # core.v3.TrafficDirection.INBOUND
    if not lst.filter_chains:
        raise _error(types.LISTENER, name, "filter_chains", "a listener needs a filter chain")
    chain = lst.filter_chains[0]
    hcm = _network_filter(chain, HCM_NAME)
    tcp = _network_filter(chain, TCP_PROXY_NAME)
    if not inbound:
        if isinstance(hcm, hcm_pb2.HttpConnectionManager):
            inline = None
            rds = None
            if hcm.HasField("rds"):
                rds = hcm.rds.route_config_name
            elif hcm.HasField("route_config"):
                inline = compile_routes(
                    hcm.route_config.name, version, hcm.route_config, _hcm_options(hcm)
                )
            else:
                raise _error(
                    types.LISTENER,
                    name,
                    "filter_chains[0].filters[0].typed_config.route_specifier",
                    "the HTTP connection manager has neither rds nor route_config",
                )
            options = _hcm_options(hcm)
            return OutboundListener(
                name, sa.address, sa.port_value, rds, inline, None, options, _normalizer(options)
            )
        cluster = tcp.cluster if isinstance(tcp, tcp_proxy_pb2.TcpProxy) else None
        return OutboundListener(name, sa.address, sa.port_value, None, None, cluster, HttpOptions())
    # Inbound: STRICT has only a TLS chain, DISABLE only plaintext, PERMISSIVE both.
    tls_chains = [c for c in lst.filter_chains if c.HasField("transport_socket")]
    plain_chains = [c for c in lst.filter_chains if not c.HasField("transport_socket")]
    mode = "PERMISSIVE" if tls_chains and plain_chains else ("STRICT" if tls_chains else "DISABLE")
    authz: AuthzChain | None = None
    cluster_name: str | None = None
    options = HttpOptions()
    if isinstance(hcm, hcm_pb2.HttpConnectionManager):
        _refuse_jwt(lst)
        try:
            authz = AuthzChain.from_filters(hcm.http_filters)
        except ConfigError as exc:
            raise _rename(exc, types.LISTENER, name, "filter_chains[0].http_filters.") from None
        options = _hcm_options(hcm)
        rc = hcm.route_config
        for vh in rc.virtual_hosts:
            for r in vh.routes:
                if r.route.cluster:
                    cluster_name = r.route.cluster
                    break
            if cluster_name:
                break
    elif isinstance(tcp, tcp_proxy_pb2.TcpProxy):
        cluster_name = tcp.cluster
        try:  # the network RBAC filters before tcp_proxy: a TCP listener is authorized too
            authz = AuthzChain.from_filters(chain.filters)
        except ConfigError as exc:
            raise _rename(exc, types.LISTENER, name, "filter_chains[0].filters.") from None
    return InboundListener(
        name, sa.address, sa.port_value, cluster_name, authz, mode, options, _normalizer(options)
    )


def _refuse_jwt(lst: listener_pb2.Listener) -> None:
    """This data plane does not verify JWTs: a listener that asks for it (a RequestAuthentication
    selects the workload) is refused, never served without the check (fail closed: the update
    is NACKed and the last good listeners, if any, stay)."""
    for i, chain in enumerate(lst.filter_chains):
        for j, f in enumerate(chain.filters):
            if f.name != HCM_NAME:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            for k, hf in enumerate(hcm.http_filters):
                if hf.name == JWT_AUTHN_NAME:
                    raise UnsupportedFeatureError(
                        [
                            ConfigProblem(
                                "JWT authentication (RequestAuthentication) is not supported by"
                                " meshcore's data plane: the listener is refused; run real Envoy"
                                " for workloads that RequestAuthentications select",
                                f"filter_chains[{i}].filters[{j}].typed_config.http_filters[{k}]",
                                kind=types.SHORT_NAMES.get(types.LISTENER, types.LISTENER),
                                name=lst.name,
                            )
                        ]
                    )


def _normalizer(options: HttpOptions) -> RouteTable | None:
    if options == HttpOptions():
        return None
    rc = route_pb2.RouteConfiguration(name="normalize")
    vh = rc.virtual_hosts.add(name="all", domains=["*"])
    r = vh.routes.add(name="all")
    r.match.prefix = "/"
    r.direct_response.status = 200
    return _table(rc.SerializeToString(), "normalize", options)


# --- clusters and endpoints --------------------------------------------------------------------


def _upstream_tls(socket: Any, auto: bool) -> UpstreamTls | None:
    if socket.name != TLS_SOCKET:
        return None
    ctx = tls_pb2.UpstreamTlsContext()
    socket.typed_config.Unpack(ctx)
    common = ctx.common_tls_context
    matchers = list(common.validation_context.match_typed_subject_alt_names) + list(
        common.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    )
    sans = tuple(m.matcher.exact for m in matchers if m.matcher.exact)
    return UpstreamTls(ctx.sni, sans, tuple(common.alpn_protocols), auto)


def _address(lb: Any) -> tuple[str, int]:
    sa = lb.endpoint.address.socket_address
    return sa.address, sa.port_value


def _endpoints(cla: endpoint_pb2.ClusterLoadAssignment) -> tuple[Endpoint, ...]:
    out = []
    for group in cla.endpoints:
        loc = group.locality
        locality = "/".join(x for x in (loc.region, loc.zone, loc.sub_zone) if x)
        for lb in group.lb_endpoints:
            if lb.health_status in (2, 3, 5):  # UNHEALTHY, DRAINING, DEGRADED are not picked
                continue
            address, port = _address(lb)
            meta = lb.metadata.filter_metadata.get(TLS_MODE_KEY)
            tls = meta is not None and meta.fields["tlsMode"].string_value == "istio"
            weight = lb.load_balancing_weight.value or 1
            out.append(Endpoint(address, port, weight, tls, locality))
    return tuple(out)


def compile_cluster(name: str, version: str, data: bytes | Message) -> ClusterConfig:
    del version
    raw = data if isinstance(data, bytes) else data.SerializeToString()
    c = _parse(cluster_pb2.Cluster, raw, types.CLUSTER, name)
    policy = _LB_NAMES.get(c.lb_policy)
    if policy is None:
        raise UnsupportedFeatureError(
            [
                ConfigProblem(
                    f"lb_policy {cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy)} is not"
                    " supported by meshcore.dataplane",
                    "lb_policy",
                    kind="CDS",
                    name=name,
                )
            ]
        )
    outlier = None
    if c.HasField("outlier_detection"):
        od = c.outlier_detection

        def val(field_name: str, default: int) -> int:
            return int(getattr(od, field_name).value) if od.HasField(field_name) else default

        outlier = OutlierDetection(
            consecutive_5xx=val("consecutive_5xx", 5),
            enforcing_consecutive_5xx=val("enforcing_consecutive_5xx", 100),
            consecutive_gateway_failure=val("consecutive_gateway_failure", 5),
            enforcing_consecutive_gateway_failure=val("enforcing_consecutive_gateway_failure", 0),
            interval=_seconds(od.interval) if od.HasField("interval") else 10.0,
            base_ejection_time=_seconds(od.base_ejection_time)
            if od.HasField("base_ejection_time")
            else 30.0,
            max_ejection_time=_seconds(od.max_ejection_time)
            if od.HasField("max_ejection_time")
            else 300.0,
            max_ejection_percent=val("max_ejection_percent", 10),
        )
    tls = None
    if c.HasField("transport_socket"):
        tls = _upstream_tls(c.transport_socket, auto=False)
    else:
        for match in c.transport_socket_matches:
            if match.match.fields.get("tlsMode") and (
                match.match.fields["tlsMode"].string_value == "istio"
            ):
                tls = _upstream_tls(match.transport_socket, auto=True)
    eds_name = None
    static = None
    if c.type == cluster_pb2.Cluster.EDS:
        eds_name = c.eds_cluster_config.service_name or name
    else:
        static = _endpoints(c.load_assignment)
    ring = c.ring_hash_lb_config.minimum_ring_size.value or DEFAULT_RING_SIZE
    maglev = c.maglev_lb_config.table_size.value or DEFAULT_MAGLEV_TABLE
    panic = (
        c.common_lb_config.healthy_panic_threshold.value
        if c.common_lb_config.HasField("healthy_panic_threshold")
        else 50.0
    )
    return ClusterConfig(
        name=name,
        lb_policy=policy,
        eds_name=eds_name,
        static_endpoints=static,
        outlier=outlier,
        tls=tls,
        connect_timeout=_seconds(c.connect_timeout) if c.HasField("connect_timeout") else 5.0,
        ring_size=int(ring),
        maglev_table_size=int(maglev),
        panic_threshold=float(panic),
    )


def compile_endpoints(name: str, version: str, data: bytes | Message) -> tuple[Endpoint, ...]:
    del version
    raw = data if isinstance(data, bytes) else data.SerializeToString()
    return _endpoints(_parse(endpoint_pb2.ClusterLoadAssignment, raw, types.ENDPOINT, name))


# --- the whole config ---------------------------------------------------------------------------

# What the ADS client holds: type URL -> name -> (version, serialized resource).
Received = Mapping[str, Mapping[str, tuple[str, bytes]]]


class Compiler:
    """Compiles resources into CompiledConfig, reusing what it compiled for unchanged
    (name, version) pairs. Not thread-safe: one per ADS client."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str], Any] = {}
        self._variants: dict[tuple[str, str, str, HttpOptions], CompiledRoutes] = {}
        self._generation = 0

    def _one(self, type_url: str, name: str, version: str, data: bytes) -> Any:
        key = (type_url, name, version)
        if key in self._cache:
            return self._cache[key]
        fn = {
            types.CLUSTER: compile_cluster,
            types.ENDPOINT: compile_endpoints,
            types.LISTENER: compile_listener,
            types.ROUTE: compile_routes,
        }[type_url]
        out = fn(name, version, data)
        self._cache[key] = out
        return out

    def compile(self, resources: Received) -> CompiledConfig:
        """Raises ConfigError naming every resource that does not compile."""
        problems: list[ConfigProblem] = []
        built: dict[str, dict[str, Any]] = {}
        for type_url in (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE):
            out: dict[str, Any] = {}
            for name, (version, data) in resources.get(type_url, {}).items():
                try:
                    out[name] = self._one(type_url, name, version, data)
                except ConfigError as exc:
                    problems.extend(exc.errors())
            built[type_url] = out
        if problems:
            unsupported = any("not supported" in p.message for p in problems)
            raise (UnsupportedFeatureError if unsupported else ConfigError)(problems)
        # Forget what is no longer held (the cache only serves the current resources).
        live = {(t, n, v) for t, by_name in resources.items() for n, (v, _) in by_name.items()}
        for key in [k for k in self._cache if k not in live]:
            del self._cache[key]
        outbound: dict[int, OutboundListener] = {}
        inbound: dict[int, InboundListener] = {}
        for lst in built[types.LISTENER].values():
            if isinstance(lst, OutboundListener):
                outbound[lst.port] = lst
            elif isinstance(lst, InboundListener):
                inbound[lst.port] = lst
        clusters: dict[str, ClusterConfig] = built[types.CLUSTER]
        by_eds: dict[str, tuple[Endpoint, ...]] = built[types.ENDPOINT]
        endpoints = {
            c.name: by_eds[c.eds_name]
            for c in clusters.values()
            if c.eds_name is not None and c.eds_name in by_eds
        }
        routes: dict[str, CompiledRoutes] = built[types.ROUTE]
        listener_routes: dict[int, CompiledRoutes] = {}
        for port, lst in outbound.items():
            if lst.inline_routes is not None:  # compiled with the listener's options already
                listener_routes[port] = lst.inline_routes
                continue
            found = routes.get(lst.route_config or "")
            if found is None:
                continue
            variant_key = (types.ROUTE, found.name, found.version, lst.options)
            variant = self._variants.get(variant_key)
            if variant is None:
                variant = self._variants[variant_key] = found.with_options(lst.options)
            listener_routes[port] = variant
        for stale in [k for k in self._variants if (types.ROUTE, k[1], k[2]) not in live]:
            del self._variants[stale]
        self._generation += 1
        return CompiledConfig(
            versions=_freeze(
                {t: _freeze({n: v for n, (v, _) in r.items()}) for t, r in resources.items()}
            ),
            outbound=_freeze(outbound),
            inbound=_freeze(inbound),
            routes=_freeze(built[types.ROUTE]),
            clusters=_freeze(clusters),
            endpoints=_freeze(endpoints),
            listener_routes=_freeze(listener_routes),
            generation=self._generation,
        )


def describe(problems: Iterable[ConfigProblem]) -> str:
    return "; ".join(f"{p.kind} {p.name}: {p.path}: {p.message}" if p.path else
                     f"{p.kind} {p.name}: {p.message}" for p in problems)  # fmt: skip
