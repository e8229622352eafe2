"""MeshModel -> the Envoy xDS resources Istio would give one proxy.

``generate(mesh, proxy_for_node(mesh, node_id, metadata))`` returns, per type URL, a mapping
resource name -> Envoy protobuf message, plus the ConfigProblems met on the way. Names follow
Istio so that people can read them as they read istiod's output:

- clusters ``outbound|PORT|SUBSET|HOST`` (EDS over ADS) and ``inbound|PORT||`` (static, to the
  app); ClusterLoadAssignments named after their cluster;
- a RouteConfiguration per outbound HTTP port, named by the port (``"9080"``), with one virtual
  host ``HOST:PORT`` per service; routes from the host's VirtualService, else Istio's
  ``default`` route;
- listeners ``ADDRESS_PORT`` (Istio's per-port listener names), outbound with an HTTP
  connection manager using RDS (or tcp_proxy for TCP ports), inbound with the workload's
  RBAC/ext_authz filters and TLS per PeerAuthentication;
- ServiceEntry hosts as services: EDS clusters (STATIC) or STRICT_DNS / LOGICAL_DNS clusters;
- SDS secrets referenced by Istio's names, ``default`` (the workload certificate) and ``ROOTCA``
  (the trust bundle), fetched from the sidecar's agent over the bootstrap cluster ``sds-grpc``
  (:mod:`meshcore.ca.sds`, :mod:`meshcore.dataplane.agent`). This module does not produce the
  secrets themselves.

Loopback layout
---------------
Tests and the demo run without iptables, so interception is replaced by explicit addresses:

- each workload has its own 127.0.0.0/8 address A (its WorkloadEntry ``address``); its sidecar
  binds one inbound listener per workload port on A:TARGET_PORT, and other sidecars' EDS
  endpoints point there;
- the app listens on node metadata ``MESHCORE_APP_ADDRESS`` (default 127.0.0.1) at the target
  port; the inbound cluster ``inbound|PORT||`` points there;
- outbound listeners bind on node metadata ``MESHCORE_OUTBOUND_ADDRESS`` (default 127.0.0.1)
  at the service port; an app calls its own sidecar there with the service host in
  Host/:authority (``curl -H 'Host: reviews' http://OUTBOUND:9080/``).

Two sidecars on one machine therefore need different outbound and app addresses.

Node ids
--------
Sidecars identify as Istio's do: ``sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local``,
matched to a WorkloadEntry by name and namespace, else by address. Proxyless gRPC clients use
the same shape with node metadata ``GENERATOR: grpc`` (Istio's convention); they get, per
service port, a Listener ``FQDN:PORT`` holding an ``api_listener`` (HTTP connection manager
with RDS of the same name), which is what ``xds:///FQDN:PORT`` asks for.

Sharing and reuse
-----------------
Clusters, endpoints and VirtualService routes are built once per mesh and shared by its
proxies; route configurations once per namespace; authorization filters once per set of
selecting policies. When ``generate`` sees a new MeshModel it carries over from the previous
mesh's translation whatever the change does not touch (compared by value): routes when
Services, VirtualServices and DestinationRules are equal, authorization filters when the
AuthorizationPolicies are, clusters and endpoints per service when the Service, its
DestinationRule and its workloads are. So an endpoint change costs little more than one
service's clusters and endpoints, plus each proxy's own (inbound) part.

Messages (and the per-type mappings) returned for different proxies may be the same objects:
treat them as read-only. Any-packed fields are serialized deterministically and every
collection is built in sorted order, so identical input gives identical bytes.

For the ADS server
------------------
Sidecars reference the SDS secrets ``default`` and ``ROOTCA`` from their agent's SDS server,
through the bootstrap cluster ``sds-grpc`` (listeners with mTLS warm only once both arrive); their bootstrap needs ``BOOTSTRAP_RUNTIME`` (Istio's RE2
program-size limit), or Envoy NACKs RouteConfigurations with ordinary regexes. Proxyless gRPC
clients need certificate providers named ``default`` in their bootstrap when a
DestinationRule asks for ISTIO_MUTUAL.

Not translated, and reported as warnings when a mesh uses them: VirtualService tcp/tls routes
and ``exportTo`` visibility, locality load balancing settings, ServiceEntry resolution NONE and
wildcard hosts. Not built at all: inbound listeners for proxyless gRPC servers, gateway
proxies (VirtualServices bound only to gateways are, rightly, not applied to sidecars).
Endpoints are all HEALTHY (WorkloadEntry health checks are not modelled).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    health_check_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.config.trace.v3 import http_tracer_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2 as file_log_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from meshcore import _core
from meshcore.config.meshconfig import DEFAULT_JSON_FORMAT, DEFAULT_TEXT_FORMAT, MeshConfig
from meshcore.config.model import (
    DestinationRule,
    MeshModel,
    Service,
    ServiceEntry,
    ServicePort,
    VirtualService,
    WorkloadEntry,
    resolve_host,
    selector_matches,
)
from meshcore.config.validate import parse_duration
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.names import (
    BOOTSTRAP_RUNTIME,
    CORS_NAME,
    FAULT_NAME,
    FILE_LOG_NAME,
    HCM_NAME,
    HTTP_OPTIONS_KEY,
    HTTP_RBAC,
    INBOUND,
    OUTBOUND,
    RAW_BUFFER_SOCKET,
    ROUTER_NAME,
    SDS_CERT,
    SDS_CLUSTER,
    SDS_ROOT,
    TCP_PROXY_NAME,
    TCP_RBAC,
    TLS_INSPECTOR_NAME,
    TLS_SOCKET,
    TRANSPORT_SOCKET_MATCH_KEY,
    ZIPKIN_CLUSTER,
    ZIPKIN_TRACER_NAME,
    cluster_name,
)
from meshcore.xds import types
from meshcore.xds.cache import Layered
from meshcore.xds.node import Proxy, parse_node_id, proxy_for_node
from meshcore.xds.types import Resources

__all__ = [
    "BOOTSTRAP_RUNTIME",
    "Generated",
    "Proxy",
    "Resources",
    "clear_cache",
    "generate",
    "parse_node_id",
    "proxy_for_node",
    "render_static_bootstrap",
    "uses_source_match",
]

# Istio's defaults: an unset VirtualService timeout disables the route timeout; connections
# time out after 10 s; circuit breakers are effectively off but tracked.
DEFAULT_CONNECT_TIMEOUT_NS = 10 * 10**9
MAX_U32 = 4294967295
# Istio's retry policy for routes whose VirtualService says nothing about retries.
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
ISTIO_ALPN = ("istio-peer-exchange", "istio")
_GRPC_LB_POLICIES = frozenset({cluster_pb2.Cluster.ROUND_ROBIN, cluster_pb2.Cluster.RING_HASH})
_HEADER_NAME = re.compile(r"^:?[0-9A-Za-z!#$%&'*+\-.^_`|~]+$")
_HTTP_PROTOCOLS = frozenset({"http", "http2", "grpc", "grpc-web", "h2c"})
_HTTP2_PROTOCOLS = frozenset({"http2", "grpc", "grpc-web", "h2c"})
_TCP_PROTOCOLS = frozenset({"tcp", "tls", "https", "mongo", "redis", "mysql"})
_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}
_GRPC_CODES = {
    name: code
    for code, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}


# --- proxies ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Generated:
    """What ``generate`` returns: resources by type URL then name, and the problems met."""

    resources: Resources
    problems: list[ConfigProblem]


# --- small builders ----------------------------------------------------------------------------


class _Invalid(Exception):
    """One field of a VirtualService or DestinationRule cannot become valid Envoy config."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _pack(msg: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    # Deterministic so that the content hash of a resource depends only on its content.
    out.Pack(msg, deterministic=True)
    return out


def _duration_ns(ns: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ns // 10**9, nanos=ns % 10**9)


def _duration(text: Any, path: str) -> duration_pb2.Duration:
    ns = parse_duration(str(text)) if text is not None else None
    if ns is None or ns < 0:
        raise _Invalid(path, f"invalid duration {text!r}")
    if ns // 10**9 > 315576000000:
        raise _Invalid(path, f"duration {text!r} is longer than Envoy allows (10,000 years)")
    return _duration_ns(ns)


def _percent(value: Any, path: str) -> percent_pb2.FractionalPercent:
    """Istio's Percent (0-100, fractional) as Envoy's FractionalPercent per million."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Invalid(path, f"invalid percentage {value!r}") from None
    if not 0 <= number <= 100:
        raise _Invalid(path, f"percentage {value!r} must be in the range 0..100")
    return percent_pb2.FractionalPercent(
        numerator=round(number * 10000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def _percentage_of(spec: Mapping[str, Any], path: str) -> percent_pb2.FractionalPercent:
    if spec.get("percentage") is not None:
        return _percent((spec["percentage"] or {}).get("value", 0), path + ".percentage")
    if spec.get("percent") is not None:
        return _percent(spec["percent"], path + ".percent")
    return _percent(100, path)


def _regex(pattern: Any, path: str) -> regex_pb2.RegexMatcher:
    if not isinstance(pattern, str):
        raise _Invalid(path, f"regex must be a string, not {pattern!r}")
    try:
        _core.check_regex(pattern)
    except ValueError as exc:
        raise _Invalid(path, str(exc)) from None
    return regex_pb2.RegexMatcher(regex=pattern)


def _string_matcher(m: Mapping[str, Any], path: str) -> string_pb2.StringMatcher:
    if not isinstance(m, Mapping):
        raise _Invalid(path, "a StringMatch (exact, prefix or regex) is required")
    if m.get("exact") is not None:
        return string_pb2.StringMatcher(exact=str(m["exact"]))
    if m.get("prefix") is not None:
        return string_pb2.StringMatcher(prefix=str(m["prefix"]))
    if m.get("regex") is not None:
        return string_pb2.StringMatcher(safe_regex=_regex(m["regex"], path + ".regex"))
    raise _Invalid(path, "exactly one of exact, prefix or regex must be set")


def _header_name(name: Any, path: str) -> str:
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise _Invalid(path, f"invalid header name {name!r}")
    return name


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _sds(name: str) -> secret_pb2.SdsSecretConfig:
    """Istio's SDS reference: the secret comes from the sidecar's agent over the bootstrap's
    ``sds-grpc`` cluster (not from the control plane), and listeners wait for it as long as
    it takes (``initial_fetch_timeout: 0s``)."""
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    api = source.api_config_source
    api.api_type = config_source_pb2.ApiConfigSource.GRPC
    api.transport_api_version = config_source_pb2.V3
    api.set_node_on_first_message_only = True
    api.grpc_services.add().envoy_grpc.cluster_name = SDS_CLUSTER
    source.initial_fetch_timeout.SetInParent()
    return secret_pb2.SdsSecretConfig(name=name, sds_config=source)


def _socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def _port_protocol(port: ServicePort) -> str:
    """Istio's protocol selection: appProtocol, else the port name's prefix; unknown -> http.

    Istio sniffs unnamed ports; without sniffing, meshcore takes them as HTTP.
    """
    if port.protocol.upper() == "UDP":
        return "udp"
    proto = (port.app_protocol or port.name.partition("-")[0]).lower()
    if proto in _HTTP_PROTOCOLS or proto in _TCP_PROTOCOLS:
        return proto
    return "http"


def _is_http(proto: str) -> bool:
    return proto in _HTTP_PROTOCOLS


def _endpoint_port(workload: WorkloadEntry, port: ServicePort) -> int | None:
    """The port a workload serves a service port on (WorkloadEntry ports override)."""
    if port.name and port.name in workload.ports:
        return int(workload.ports[port.name])
    if isinstance(port.target_port, int):
        return port.target_port
    named = workload.ports.get(str(port.target_port))
    return int(named) if named is not None else None


def _spiffe(domain: str, namespace: str, sa: str) -> str:
    return f"spiffe://{domain}/ns/{namespace}/sa/{sa}"


# --- traffic policy (DestinationRule) ----------------------------------------------------------

_POLICY_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection", "tls")


def _effective_policy(dr: DestinationRule | None, subset: str, port: int) -> dict[str, Any]:
    """Istio's merge: DR policy, its port-level settings, then the subset's (field by field)."""
    out: dict[str, Any] = {}
    if dr is None:
        return out
    policies = [dr.traffic_policy]
    found = dr.subsets.get(subset) if subset else None  # .subsets rebuilds on each access
    if found is not None:
        policies.append(found.traffic_policy)
    for tp in policies:
        for key in _POLICY_FIELDS:
            if key in tp:
                out[key] = tp[key]
        for pls in tp.get("portLevelSettings", ()):
            if (pls.get("port") or {}).get("number") == port:
                for key in _POLICY_FIELDS:
                    if key in pls:
                        out[key] = pls[key]
    return out


def _apply_lb(cluster: cluster_pb2.Cluster, lb: Mapping[str, Any], path: str) -> None:
    ch = lb.get("consistentHash")
    if ch is not None:
        maglev = ch.get("maglev")
        if maglev is not None:
            cluster.lb_policy = cluster_pb2.Cluster.MAGLEV
            if maglev.get("tableSize"):
                cluster.maglev_lb_config.table_size.value = int(maglev["tableSize"])
        else:
            cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
            size = (ch.get("ringHash") or {}).get("minimumRingSize") or ch.get("minimumRingSize")
            if size:
                cluster.ring_hash_lb_config.minimum_ring_size.value = int(size)
        return
    simple = lb.get("simple", "UNSPECIFIED")
    if simple == "ROUND_ROBIN":
        cluster.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
    elif simple == "RANDOM":
        cluster.lb_policy = cluster_pb2.Cluster.RANDOM
    elif simple == "PASSTHROUGH":
        raise _Invalid(
            path + ".simple", "PASSTHROUGH needs original-destination routing (iptables)"
        )
    else:  # LEAST_REQUEST, LEAST_CONN and unset: Istio's default is LEAST_REQUEST
        cluster.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST


def _hash_policies(lb: Mapping[str, Any], path: str) -> list[rc.RouteAction.HashPolicy]:
    ch = lb.get("consistentHash")
    if ch is None:
        return []
    hp = rc.RouteAction.HashPolicy
    if ch.get("httpHeaderName"):
        return [hp(header=hp.Header(header_name=_header_name(ch["httpHeaderName"], path)))]
    if ch.get("httpCookie"):
        cookie = ch["httpCookie"]
        c = hp.Cookie(name=str(cookie.get("name", "")), path=str(cookie.get("path", "")))
        if cookie.get("ttl") is not None:
            c.ttl.CopyFrom(_duration(cookie["ttl"], path + ".httpCookie.ttl"))
        return [hp(cookie=c)]
    if ch.get("useSourceIp"):
        return [hp(connection_properties=hp.ConnectionProperties(source_ip=True))]
    if ch.get("httpQueryParameterName"):
        return [hp(query_parameter=hp.QueryParameter(name=str(ch["httpQueryParameterName"])))]
    return []


def _apply_connection_pool(
    cluster: cluster_pb2.Cluster,
    pool: Mapping[str, Any],
    options: http_protocol_options_pb2.HttpProtocolOptions,
    path: str,
) -> None:
    tcp = pool.get("tcp") or {}
    http = pool.get("http") or {}
    th = cluster.circuit_breakers.thresholds[0]
    if tcp.get("maxConnections"):
        th.max_connections.value = int(tcp["maxConnections"])
    if tcp.get("connectTimeout") is not None:
        cluster.connect_timeout.CopyFrom(_duration(tcp["connectTimeout"], path + ".tcp"))
    keepalive = tcp.get("tcpKeepalive")
    if keepalive is not None:
        ka = cluster.upstream_connection_options.tcp_keepalive
        if keepalive.get("probes"):
            ka.keepalive_probes.value = int(keepalive["probes"])
        for key, attr in (("time", "keepalive_time"), ("interval", "keepalive_interval")):
            if keepalive.get(key) is not None:
                d = _duration(keepalive[key], f"{path}.tcp.tcpKeepalive.{key}")
                getattr(ka, attr).value = max(1, d.seconds)
    if tcp.get("maxConnectionDuration") is not None:
        options.common_http_protocol_options.max_connection_duration.CopyFrom(
            _duration(tcp["maxConnectionDuration"], path + ".tcp.maxConnectionDuration")
        )
    if http.get("http1MaxPendingRequests"):
        th.max_pending_requests.value = int(http["http1MaxPendingRequests"])
    if http.get("http2MaxRequests"):
        th.max_requests.value = int(http["http2MaxRequests"])
    if http.get("maxRetries"):
        th.max_retries.value = int(http["maxRetries"])
    if http.get("maxRequestsPerConnection"):
        options.common_http_protocol_options.max_requests_per_connection.value = int(
            http["maxRequestsPerConnection"]
        )
    if http.get("idleTimeout") is not None:
        options.common_http_protocol_options.idle_timeout.CopyFrom(
            _duration(http["idleTimeout"], path + ".http.idleTimeout")
        )
    if http.get("useClientProtocol"):
        # Istio: speak upstream whatever the client spoke (HTTP/1.1 or HTTP/2).
        downstream = options.use_downstream_protocol_config
        downstream.http_protocol_options.SetInParent()
        downstream.http2_protocol_options.SetInParent()
    elif http.get("h2UpgradePolicy") == "UPGRADE":
        options.explicit_http_config.http2_protocol_options.SetInParent()
    if http.get("maxConcurrentStreams"):
        # Only meaningful for HTTP/2 upstreams; it must not turn an HTTP/1.1 upstream into h2.
        if options.explicit_http_config.HasField("http2_protocol_options"):
            h2 = options.explicit_http_config.http2_protocol_options
            h2.max_concurrent_streams.value = int(http["maxConcurrentStreams"])
        elif options.HasField("use_downstream_protocol_config"):
            h2 = options.use_downstream_protocol_config.http2_protocol_options
            h2.max_concurrent_streams.value = int(http["maxConcurrentStreams"])


def _apply_outlier(cluster: cluster_pb2.Cluster, od: Mapping[str, Any], path: str) -> None:
    out = cluster.outlier_detection
    # Istio turns off the checks it does not configure (success rate) and enforces the rest.
    out.enforcing_success_rate.value = 0
    five = od.get("consecutive5xxErrors", od.get("consecutiveErrors"))
    if five is not None:
        out.consecutive_5xx.value = int(five)
        out.enforcing_consecutive_5xx.value = 100 if int(five) > 0 else 0
    else:
        out.enforcing_consecutive_5xx.value = 0
    if od.get("consecutiveGatewayErrors") is not None:
        out.consecutive_gateway_failure.value = int(od["consecutiveGatewayErrors"])
        out.enforcing_consecutive_gateway_failure.value = 100
    if od.get("splitExternalLocalOriginErrors"):
        out.split_external_local_origin_errors = True
        if od.get("consecutiveLocalOriginFailures") is not None:
            out.consecutive_local_origin_failure.value = int(od["consecutiveLocalOriginFailures"])
    if od.get("interval") is not None:
        out.interval.CopyFrom(_duration(od["interval"], path + ".interval"))
    if od.get("baseEjectionTime") is not None:
        out.base_ejection_time.CopyFrom(
            _duration(od["baseEjectionTime"], path + ".baseEjectionTime")
        )
    if od.get("maxEjectionPercent") is not None:
        out.max_ejection_percent.value = int(od["maxEjectionPercent"])
    if od.get("minHealthPercent") is not None:
        cluster.common_lb_config.healthy_panic_threshold.value = float(od["minHealthPercent"])


def _upstream_tls(
    tls: Mapping[str, Any], sni: str, sans: Iterable[str], *, proxyless: bool, path: str
) -> tls_pb2.UpstreamTlsContext | None:
    mode = tls.get("mode", "DISABLE")
    if mode == "DISABLE":
        return None
    ctx = tls_pb2.UpstreamTlsContext(sni=str(tls.get("sni") or sni))
    common = ctx.common_tls_context
    san_list = [str(s) for s in tls.get("subjectAltNames", ())]
    if mode == "ISTIO_MUTUAL":
        common.alpn_protocols.extend(ISTIO_ALPN)
        san_list = san_list or sorted(set(sans))
        if proxyless:
            # gRPC reads certificates from its bootstrap's certificate providers, not SDS.
            common.tls_certificate_provider_instance.instance_name = SDS_CERT
            common.tls_certificate_provider_instance.certificate_name = SDS_CERT
            vc = common.validation_context
            vc.ca_certificate_provider_instance.instance_name = SDS_CERT
            vc.ca_certificate_provider_instance.certificate_name = SDS_ROOT
        else:
            common.tls_certificate_sds_secret_configs.append(_sds(SDS_CERT))
            cvc = common.combined_validation_context
            cvc.validation_context_sds_secret_config.CopyFrom(_sds(SDS_ROOT))
            vc = cvc.default_validation_context
            vc.SetInParent()  # required by Envoy even when there is no SAN to match
        for san in san_list:
            vc.match_typed_subject_alt_names.append(
                tls_common_pb2.SubjectAltNameMatcher(
                    san_type=tls_common_pb2.SubjectAltNameMatcher.URI,
                    matcher=string_pb2.StringMatcher(exact=san),
                )
            )
        return ctx
    if proxyless:
        raise _Invalid(path + ".mode", f"TLS mode {mode} is not supported for proxyless gRPC")
    # SIMPLE / MUTUAL: files on the sidecar, or a credential fetched by SDS.
    if tls.get("credentialName"):
        name = str(tls["credentialName"])
        if mode == "MUTUAL":
            common.tls_certificate_sds_secret_configs.append(_sds(name))
        common.combined_validation_context.validation_context_sds_secret_config.CopyFrom(
            _sds(name + "-cacert")
        )
        vc = common.combined_validation_context.default_validation_context
        vc.SetInParent()
    else:
        if mode == "MUTUAL":
            if not tls.get("clientCertificate") or not tls.get("privateKey"):
                raise _Invalid(path, "MUTUAL needs clientCertificate and privateKey")
            cert = common.tls_certificates.add()
            cert.certificate_chain.filename = str(tls["clientCertificate"])
            cert.private_key.filename = str(tls["privateKey"])
        vc = common.validation_context
        if tls.get("insecureSkipVerify"):
            return ctx  # Istio: no server verification at all
        if tls.get("caCertificates"):
            vc.trusted_ca.filename = str(tls["caCertificates"])
    for san in san_list:
        vc.match_typed_subject_alt_names.append(
            tls_common_pb2.SubjectAltNameMatcher(
                san_type=tls_common_pb2.SubjectAltNameMatcher.DNS
                if "://" not in san
                else tls_common_pb2.SubjectAltNameMatcher.URI,
                matcher=string_pb2.StringMatcher(exact=san),
            )
        )
    return ctx


def _tls_socket(ctx: Message, name: str = TLS_SOCKET) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=name, typed_config=_pack(ctx))


# --- the translator ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SeHost:
    """One host of a ServiceEntry, shaped like a Service for the translator."""

    entry: ServiceEntry
    hostname: str
    ports: tuple[ServicePort, ...]
    inline: tuple[WorkloadEntry, ...] | None  # spec.endpoints, as WorkloadEntries

    kind = "ServiceEntry"

    @property
    def name(self) -> str:
        return str(self.entry.name)

    @property
    def namespace(self) -> str:
        return str(self.entry.namespace)

    @property
    def file(self) -> str:
        return str(self.entry.file)

    @property
    def line(self) -> int:
        return int(self.entry.line)

    @property
    def spec(self) -> Mapping[str, Any]:
        spec: Mapping[str, Any] = self.entry.spec
        return spec

    @property
    def selector(self) -> Mapping[str, str]:
        labels: Mapping[str, str] = (self.entry.spec.get("workloadSelector") or {}).get(
            "labels"
        ) or {}
        return labels

    @property
    def dns(self) -> bool:
        return self.entry.resolution in ("DNS", "DNS_ROUND_ROBIN")


_Host = Service | _SeHost


@dataclass(slots=True)
class _PortService:
    service: _Host
    port: ServicePort
    protocol: str


class _Translator:
    """Everything about one mesh that does not depend on the proxy, built once and shared."""

    def __init__(
        self,
        mesh: MeshModel,
        previous: _Translator | None = None,
        providers: Any = None,
        mesh_config: MeshConfig | None = None,
    ) -> None:
        self.mesh = mesh
        self.providers = providers
        self.mesh_config = mesh_config
        self._registry: list[str] | None = None
        self._subset_cache: dict[str, Mapping[str, Any]] = {}
        self._inbound: dict[
            tuple[Any, ...],
            tuple[Any, tuple[dict[str, Message], dict[str, Message], list[ConfigProblem]]],
        ] = {}
        self._mtls_cache: dict[tuple[Any, ...], str] = {}
        self._pa_namespaces = {pa.namespace for pa in mesh.peer_authentications}
        self._lb_endpoints: dict[tuple[Any, ...], endpoint_components_pb2.LbEndpoint] = {}
        # Problems travel with what they were found building, so that a proxy is told exactly
        # the problems of the resources it gets, whatever was translated before it.
        self._captures: list[list[ConfigProblem]] = []
        self._global: list[ConfigProblem] = []
        self._captures.append(self._global)
        self._warn_untranslated()
        self.services = sorted(mesh.services, key=lambda s: s.hostname)
        self.by_port: dict[int, list[_PortService]] = {}
        for svc in self.services:
            for sp in sorted(svc.ports, key=lambda p: p.port):
                proto = _port_protocol(sp)
                if proto == "udp":
                    continue
                self.by_port.setdefault(sp.port, []).append(_PortService(svc, sp, proto))
        for se_host in self._service_entry_hosts():
            for sp in se_host.ports:
                proto = _port_protocol(sp)
                if proto != "udp":
                    self.by_port.setdefault(sp.port, []).append(_PortService(se_host, sp, proto))
        for group in self.by_port.values():
            group.sort(key=lambda ps: ps.service.hostname)
        self._captures.pop()  # the mesh-wide problems end here
        self.uses_source_match = uses_source_match(mesh)
        self._eps: dict[str, tuple[WorkloadEntry, ...]] = {}
        self._by_label: dict[tuple[str, str, str], list[WorkloadEntry]] = {}
        for w in mesh.workload_entries:
            for k, v in w.workload_labels.items():
                self._by_label.setdefault((w.namespace, k, v), []).append(w)
        self._svc_by_label: dict[tuple[str, str, str], list[int]] = {}
        for i, svc in enumerate(self.services):
            for k, v in svc.selector.items():
                self._svc_by_label.setdefault((svc.namespace, k, v), []).append(i)
        self._clusters: dict[bool, dict[str, Message]] = {}
        self._cluster_problems: dict[bool, list[ConfigProblem]] = {}
        self._outbound: dict[tuple[bool, str], dict[str, Message]] = {}
        self._outbound_problems: dict[tuple[bool, str], list[ConfigProblem]] = {}
        self._vhost_bytes: dict[tuple[Any, ...], bytes] = {}
        self._vhost_body: dict[bytes, int] = {}
        self._policies_by_ns: dict[str, list[Any]] = {}
        for pol in mesh.authorization_policies:
            self._policies_by_ns.setdefault(pol.namespace, []).append(pol)
        self._endpoints: dict[str, Message] | None = None
        self._routes: dict[tuple[Any, ...], dict[str, Message]] = {}
        self._route_problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}
        self._vs_routes: dict[tuple[Any, ...], list[rc.Route] | None] = {}
        self._vs_problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}
        self._authz: dict[tuple[Any, ...], tuple[list[Message], list[Message]]] = {}
        self._authz_problems: dict[tuple[Any, ...], list[ConfigProblem]] = {}
        self._policy_lb: dict[tuple[str, str, int], Mapping[str, Any]] = {}
        self._fingerprints: dict[str, tuple[Any, ...]] = {}
        self._wildcard_vs = sorted(
            (
                (host[1:], vs)
                for vs in mesh.virtual_services
                if not vs.gateways or "mesh" in vs.gateways
                for host in vs.hosts
                if host.startswith("*.")
            ),
            key=lambda e: -len(e[0]),
        )
        self._policy_selection: dict[tuple[Any, ...], list[Any]] = {}
        self._cluster_parts: dict[tuple[Any, ...], tuple[Any, dict[str, Message], list[Any]]] = {}
        self._cla_parts: dict[tuple[Any, ...], tuple[Any, dict[str, Message]]] = {}
        self._prev_cluster_parts: dict[tuple[Any, ...], Any] = {}
        self._prev_cla_parts: dict[tuple[Any, ...], Any] = {}
        self._state = {kind: _kind_state(mesh, kind) for kind in _KINDS}
        self._peer_auth_state = self._state["peer_authentications"]
        if previous is not None:
            self._inherit(previous)

    def _inherit(self, prev: _Translator) -> None:
        """Carry over from the previous mesh's translation what the change does not touch.

        Whole caches are kept when the kinds they are built from are equal (by value); clusters
        and endpoints are kept per service when the service, its DestinationRule and its
        workloads are equal. Problems found while building what is kept are kept with it.
        """
        if (prev.mesh.domain, prev.mesh.root_namespace) != (
            self.mesh.domain,
            self.mesh.root_namespace,
        ):
            return
        same_providers = prev.providers == self.providers
        same = {kind: prev._state[kind] == self._state[kind] for kind in _KINDS}
        # ServiceEntry hosts are services too (virtual hosts, listeners).
        hosts_same = same["services"] and same["service_entries"]
        if hosts_same and same["virtual_services"] and same["destination_rules"]:
            self._vs_routes = prev._vs_routes
            self._vs_problems = prev._vs_problems
            self._vhost_bytes = prev._vhost_bytes
            self._vhost_body = prev._vhost_body
            self._routes = prev._routes
            self._route_problems = prev._route_problems
            self._policy_lb = prev._policy_lb
        if hosts_same:
            self._outbound = prev._outbound
            self._outbound_problems = prev._outbound_problems
        if same["authorization_policies"] and same["services"] and same_providers:
            self._authz = prev._authz
            self._authz_problems = prev._authz_problems
            self._policy_selection = prev._policy_selection
            if same["peer_authentications"]:
                # Inbound listeners depend on the workload (in the key), the Services that
                # select it, its PeerAuthentication and its authorization filters.
                self._inbound = prev._inbound
        # Only the parts, never the previous translator: no chain of old meshes is kept alive.
        self._prev_cluster_parts = prev._cluster_parts
        self._prev_cla_parts = prev._cla_parts

    def _warn_untranslated(self) -> None:
        """Valid Istio fields this translator does not carry to Envoy: said, never ignored."""
        for res in (*self.mesh.virtual_services, *self.mesh.destination_rules):
            export = tuple(res.spec.get("exportTo", ()))
            if export and export != ("*",):
                self.problem(
                    res,
                    "spec.exportTo",
                    "not honoured by meshcore: visible to every namespace",
                    "warning",
                )
        for vs in self.mesh.virtual_services:
            for key in ("tcp", "tls"):
                if vs.spec.get(key):
                    self.problem(
                        vs,
                        f"spec.{key}",
                        f"{key} routes are not translated: TCP ports go to the destination"
                        " service's default cluster",
                        "warning",
                    )
            for i, http in enumerate(vs.http):
                if (http.get("retries") or {}).get("retryRemoteLocalities"):
                    self.problem(
                        vs,
                        f"spec.http[{i}].retries.retryRemoteLocalities",
                        "not translated (retries may stay in the local locality)",
                        "warning",
                    )
                if (http.get("corsPolicy") or {}).get("unmatchedPreflights"):
                    self.problem(
                        vs,
                        f"spec.http[{i}].corsPolicy.unmatchedPreflights",
                        "not translated (Envoy's default: preflights forwarded)",
                        "warning",
                    )
        for dr in self.mesh.destination_rules:
            policies = [("spec.trafficPolicy", dr.traffic_policy)]
            policies += [
                (f"spec.subsets[{s.name}].trafficPolicy", s.traffic_policy)
                for s in dr.subsets.values()
            ]
            for base, tp in policies:
                levels = [(base, tp)] + [
                    (f"{base}.portLevelSettings[{k}]", pls)
                    for k, pls in enumerate(tp.get("portLevelSettings", ()))
                ]
                for path, pol in levels:
                    lb = pol.get("loadBalancer") or {}
                    tls = pol.get("tls") or {}
                    fields = [
                        (lb, "localityLbSetting", ".loadBalancer"),
                        (lb, "warmupDurationSecs", ".loadBalancer"),
                        (lb, "warmup", ".loadBalancer"),
                        (tls, "caCrl", ".tls"),
                        (pol, "tunnel", ""),
                        (pol, "proxyProtocol", ""),
                    ]
                    for spec, name, sub in fields:
                        if spec.get(name):
                            self.problem(
                                dr, f"{path}{sub}.{name}", "not translated by meshcore", "warning"
                            )

    # problems are collected once per mesh and reported to every proxy they concern
    def problem(self, res: Any, path: str, message: str, severity: str = "error") -> ConfigProblem:
        p = ConfigProblem(
            message,
            path=path,
            kind=getattr(res, "kind", ""),
            namespace=getattr(res, "namespace", ""),
            name=getattr(res, "name", ""),
            file=getattr(res, "file", ""),
            line=getattr(res, "line", 0),
            severity=severity,
        )
        self._emit([p])
        return p

    def _emit(self, problems: Iterable[ConfigProblem]) -> None:
        """Hand problems to every build in progress (each cache keeps those it met)."""
        problems = list(problems)
        for capture in self._captures:
            capture.extend(problems)

    @contextlib.contextmanager
    def _capture(self) -> Iterator[list[ConfigProblem]]:
        got: list[ConfigProblem] = []
        self._captures.append(got)
        try:
            yield got
        finally:
            self._captures.pop()

    # --- clusters and endpoints --------------------------------------------------------------

    def _endpoint_sans(self, workloads: Iterable[WorkloadEntry]) -> list[str]:
        return sorted(
            {_spiffe(self.mesh.domain, w.namespace, w.service_account) for w in workloads}
        )

    def _subsets(self, host: str) -> Mapping[str, Any]:
        # DestinationRule.subsets builds a new mapping on every access.
        found = self._subset_cache.get(host)
        if found is None:
            found = self._subset_cache[host] = self.mesh.subsets(host)
        return found

    def _mtls_mode(self, w: WorkloadEntry, port: int) -> str:
        key = (w.namespace, tuple(sorted(w.workload_labels.items())), port)
        found = self._mtls_cache.get(key)
        if found is None:
            if not self._pa_namespaces & {w.namespace, self.mesh.root_namespace}:
                found = "PERMISSIVE"  # no PeerAuthentication applies: Istio's mesh default
            else:
                found = self.mesh.mtls_mode(w.namespace, w.workload_labels, port)
            self._mtls_cache[key] = found
        return found

    def _service_entry_hosts(self) -> list[_SeHost]:
        """ServiceEntry hosts the translator gives clusters (and routes, for HTTP ports)."""
        seen = {svc.hostname for svc in self.services}
        out: list[_SeHost] = []
        for se in sorted(self.mesh.service_entries, key=lambda e: (e.namespace, e.name)):
            if se.resolution not in ("STATIC", "DNS", "DNS_ROUND_ROBIN"):
                self.problem(
                    se,
                    "spec.resolution",
                    f"resolution {se.resolution} needs original-destination routing (iptables);"
                    " the ServiceEntry gets no cluster",
                    "warning",
                )
                continue
            ports = tuple(
                ServicePort(
                    name=str(p.get("name") or p["number"]),
                    port=int(p["number"]),
                    target_port=int(p.get("targetPort") or p["number"]),
                    protocol="TCP",
                    app_protocol=str(p.get("protocol", "")).lower(),
                )
                for p in se.spec.get("ports", ())
            )
            inline = None
            if se.spec.get("endpoints"):
                inline = tuple(
                    WorkloadEntry(
                        kind="WorkloadEntry",
                        api_version=se.api_version,
                        name=f"{se.name}[{i}]",
                        namespace=se.namespace,
                        spec=ep,
                        file=se.file,
                        line=se.line,
                    )
                    for i, ep in enumerate(se.spec["endpoints"])
                )
            for i, host in enumerate(se.hosts):
                if host.startswith("*"):
                    self.problem(
                        se,
                        f"spec.hosts[{i}]",
                        "wildcard hosts need a dynamic forward proxy; not translated",
                        "warning",
                    )
                elif host in seen:
                    self.problem(
                        se,
                        f"spec.hosts[{i}]",
                        f"host {host} is already defined by a Service or an earlier"
                        " ServiceEntry, which is used",
                        "warning",
                    )
                else:
                    seen.add(host)
                    out.append(_SeHost(se, host, ports, inline))
        return out

    def _selected(self, svc: _Host) -> tuple[WorkloadEntry, ...]:
        """The workloads a Service selects, through a label index (MeshModel scans)."""
        if isinstance(svc, _SeHost) and svc.inline is not None:
            return svc.inline
        found = self._eps.get(svc.hostname)
        if found is None:
            found = ()
            if svc.selector:
                lists = [
                    self._by_label.get((svc.namespace, k, v), []) for k, v in svc.selector.items()
                ]
                smallest = min(lists, key=len)
                found = tuple(
                    w for w in smallest if selector_matches(svc.selector, w.workload_labels)
                )
            self._eps[svc.hostname] = found
        return found

    def _services_of(self, w: WorkloadEntry) -> list[Service]:
        """The Services selecting a workload, in hostname order."""
        cands: set[int] = set()
        for k, v in w.workload_labels.items():
            cands.update(self._svc_by_label.get((w.namespace, k, v), ()))
        return [
            self.services[i]
            for i in sorted(cands)
            if selector_matches(self.services[i].selector, w.workload_labels)
        ]

    def _subset_workloads(self, svc: _Host, subset: str) -> tuple[WorkloadEntry, ...]:
        eps = self._selected(svc)
        if not subset:
            return eps
        sub = self._subsets(svc.hostname).get(subset)
        if sub is None:
            return ()
        return tuple(w for w in eps if selector_matches(sub.labels, w.workload_labels))

    def _fingerprint(self, svc: _Host) -> tuple[Any, ...]:
        """Everything a service's outbound clusters are built from (compared by value)."""
        found = self._fingerprints.get(svc.hostname)
        if found is None:
            dr = self.mesh.destination_rule_for(svc.hostname)
            found = (
                svc.spec,
                dr.spec if dr is not None else None,
                tuple((w.key, w.spec, w.labels) for w in self._selected(svc)),
            )
            self._fingerprints[svc.hostname] = found
        return found

    def _port_groups(self) -> list[tuple[_PortService, list[str]]]:
        return [
            (ps, ["", *sorted(self._subsets(ps.service.hostname))])
            for port in sorted(self.by_port)
            for ps in self.by_port[port]
        ]

    def clusters(self, proxyless: bool) -> dict[str, Message]:
        if proxyless not in self._clusters:
            built: dict[str, Message] = {}
            problems: list[ConfigProblem] = []
            for ps, subsets in self._port_groups():
                key = (proxyless, ps.service.hostname, ps.port.port)
                fp = self._fingerprint(ps.service)
                old = self._prev_cluster_parts.get(key)
                if old is not None and old[0] == fp:
                    # Nothing this service's clusters depend on changed: reuse them, and the
                    # problems met when building them.
                    part = old
                else:
                    made: dict[str, Message] = {}
                    with self._capture() as met:
                        for subset in subsets:
                            name = cluster_name(OUTBOUND, ps.port.port, subset, ps.service.hostname)
                            c = self._outbound_cluster(name, ps, subset, proxyless)
                            if c is not None:
                                made[name] = c
                    part = (fp, made, met)
                self._cluster_parts[key] = part
                built.update(part[1])
                problems.extend(part[2])
            if not proxyless and self.mesh_config is not None and self.mesh_config.tracing:
                built[ZIPKIN_CLUSTER] = _zipkin_cluster(self.mesh_config)
            self._clusters[proxyless] = dict(sorted(built.items()))
            self._cluster_problems[proxyless] = problems
        return self._clusters[proxyless]

    def lb_for(self, host: str, subset: str, port: int) -> Mapping[str, Any]:
        key = (host, subset, port)
        if key not in self._policy_lb:
            pol = _effective_policy(self.mesh.destination_rule_for(host), subset, port)
            self._policy_lb[key] = pol.get("loadBalancer") or {}
        return self._policy_lb[key]

    def _outbound_cluster(
        self, name: str, ps: _PortService, subset: str, proxyless: bool
    ) -> cluster_pb2.Cluster | None:
        svc, port = ps.service, ps.port
        dr = self.mesh.destination_rule_for(svc.hostname)
        policy = _effective_policy(dr, subset, port.port)
        c = cluster_pb2.Cluster(
            name=name,
            type=cluster_pb2.Cluster.EDS,
            connect_timeout=_duration_ns(DEFAULT_CONNECT_TIMEOUT_NS),
            # gRPC's xDS client rejects LEAST_REQUEST ("LB policy is not supported"): Istio
            # gives proxyless clients ROUND_ROBIN.
            lb_policy=cluster_pb2.Cluster.ROUND_ROBIN
            if proxyless
            else cluster_pb2.Cluster.LEAST_REQUEST,
        )
        c.eds_cluster_config.eds_config.CopyFrom(_ads())
        c.eds_cluster_config.service_name = name
        th = c.circuit_breakers.thresholds.add()
        for attr in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
            getattr(th, attr).value = MAX_U32
        th.track_remaining = True
        options = http_protocol_options_pb2.HttpProtocolOptions()
        if ps.protocol in _HTTP2_PROTOCOLS:
            options.explicit_http_config.http2_protocol_options.SetInParent()
        base = "spec.trafficPolicy" if not subset else f"spec.subsets[{subset}].trafficPolicy"
        try:
            if "loadBalancer" in policy:
                _apply_lb(c, policy["loadBalancer"], base + ".loadBalancer")
            if "connectionPool" in policy:
                _apply_connection_pool(
                    c, policy["connectionPool"], options, base + ".connectionPool"
                )
            if "outlierDetection" in policy:
                _apply_outlier(c, policy["outlierDetection"], base + ".outlierDetection")
            workloads = self._subset_workloads(svc, subset)
            sans = self._endpoint_sans(workloads)
            sni = f"outbound_.{port.port}_.{subset}_.{svc.hostname}"
            external = isinstance(svc, _SeHost) and svc.entry.location == "MESH_EXTERNAL"
            if "tls" in policy:
                mode = policy["tls"].get("mode", "DISABLE")
                ctx = _upstream_tls(
                    policy["tls"],
                    # Istio: SIMPLE and MUTUAL default the SNI to the host itself
                    sni if mode == "ISTIO_MUTUAL" else svc.hostname,
                    sans,
                    proxyless=proxyless,
                    path=base + ".tls",
                )
                if ctx is not None:
                    c.transport_socket.CopyFrom(_tls_socket(ctx))
            elif not proxyless and not external:
                # Istio's auto mTLS is for mesh workloads, never for MESH_EXTERNAL hosts.
                self._auto_mtls(c, sni, sans)
        except _Invalid as bad:
            # The DestinationRule's policy is dropped, not the cluster: traffic keeps flowing
            # with Istio's defaults, and the problem names the field.
            self.problem(dr, bad.path, bad.message + "; the cluster uses default settings")
            return self._dns_shaped(self._default_cluster(name, ps, proxyless), ps, subset)
        self._dns_shaped(c, ps, subset)
        if proxyless and c.lb_policy not in _GRPC_LB_POLICIES:
            # gRPC's xDS client NACKs the policies it lacks (least request, random, maglev);
            # Istio's proxyless default is round robin.
            if "loadBalancer" in policy:
                self.problem(
                    dr,
                    base + ".loadBalancer",
                    f"{cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy)} is not supported by"
                    " proxyless gRPC; its clients use ROUND_ROBIN",
                    "warning",
                )
            c.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
            c.ClearField("maglev_lb_config")
        if options.ByteSize():
            if options.WhichOneof("upstream_protocol_options") is None:
                # Envoy requires the upstream protocol once the options are given at all.
                options.explicit_http_config.http_protocol_options.SetInParent()
            c.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(_pack(options))
        return c

    def _dns_shaped(
        self, c: cluster_pb2.Cluster, ps: _PortService, subset: str
    ) -> cluster_pb2.Cluster:
        """A DNS-resolved ServiceEntry host: Envoy resolves the endpoints itself (no EDS)."""
        svc = ps.service
        if not isinstance(svc, _SeHost) or not svc.dns:
            return c
        c.type = (
            cluster_pb2.Cluster.LOGICAL_DNS
            if svc.entry.resolution == "DNS_ROUND_ROBIN"
            else cluster_pb2.Cluster.STRICT_DNS
        )
        c.ClearField("eds_cluster_config")
        c.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
        cla = self._load_assignment(c.name, ps, subset)
        if not cla.endpoints:  # no endpoints listed: the host itself is resolved
            lb = cla.endpoints.add().lb_endpoints.add()
            lb.endpoint.address.CopyFrom(_socket_address(svc.hostname, int(ps.port.target_port)))
        if c.type == cluster_pb2.Cluster.LOGICAL_DNS:
            # Envoy's LOGICAL_DNS takes exactly one endpoint: the first, as Istio does.
            first = type(cla.endpoints[0].lb_endpoints[0])()
            first.CopyFrom(cla.endpoints[0].lb_endpoints[0])
            del cla.endpoints[1:]
            del cla.endpoints[0].lb_endpoints[:]
            cla.endpoints[0].lb_endpoints.append(first)
        c.load_assignment.CopyFrom(cla)
        return c

    def _default_cluster(self, name: str, ps: _PortService, proxyless: bool) -> cluster_pb2.Cluster:
        del ps
        c = cluster_pb2.Cluster(
            name=name,
            type=cluster_pb2.Cluster.EDS,
            connect_timeout=_duration_ns(DEFAULT_CONNECT_TIMEOUT_NS),
            lb_policy=cluster_pb2.Cluster.ROUND_ROBIN
            if proxyless
            else cluster_pb2.Cluster.LEAST_REQUEST,
        )
        c.eds_cluster_config.eds_config.CopyFrom(_ads())
        c.eds_cluster_config.service_name = name
        return c

    def _auto_mtls(self, c: cluster_pb2.Cluster, sni: str, sans: list[str]) -> None:
        """Istio's auto mTLS: TLS to endpoints labelled ``tlsMode: istio`` (those whose
        PeerAuthentication is not DISABLE), plaintext to the rest."""
        ctx = _upstream_tls({"mode": "ISTIO_MUTUAL"}, sni, sans, proxyless=False, path="")
        assert ctx is not None
        tls_match = c.transport_socket_matches.add(name="tlsMode-istio")
        tls_match.match.fields["tlsMode"].string_value = "istio"
        tls_match.transport_socket.CopyFrom(_tls_socket(ctx))
        plain = c.transport_socket_matches.add(name="tlsMode-disabled")
        plain.match.SetInParent()
        plain.transport_socket.CopyFrom(_tls_socket(raw_buffer_pb2.RawBuffer(), RAW_BUFFER_SOCKET))

    def endpoints(self) -> dict[str, Message]:
        if self._endpoints is None:
            built: dict[str, Message] = {}
            for ps, subsets in self._port_groups():
                if isinstance(ps.service, _SeHost) and ps.service.dns:
                    continue  # endpoints inline in the DNS cluster, no EDS
                key = (ps.service.hostname, ps.port.port)
                # PeerAuthentications decide the endpoints' tlsMode metadata.
                fp = (self._fingerprint(ps.service), self._peer_auth_state)
                old = self._prev_cla_parts.get(key)
                if old is not None and old[0] == fp:
                    part = old
                else:
                    made: dict[str, Message] = {}
                    for subset in subsets:
                        name = cluster_name(OUTBOUND, ps.port.port, subset, ps.service.hostname)
                        made[name] = self._load_assignment(name, ps, subset)
                    part = (fp, made)
                self._cla_parts[key] = part
                built.update(part[1])
            self._endpoints = dict(sorted(built.items()))
        return self._endpoints

    def _load_assignment(
        self, name: str, ps: _PortService, subset: str
    ) -> endpoint_pb2.ClusterLoadAssignment:
        by_locality: dict[str, list[tuple[str, int, WorkloadEntry]]] = {}
        for w in self._subset_workloads(ps.service, subset):
            port = _endpoint_port(w, ps.port)
            if port is None or not w.address:
                continue
            by_locality.setdefault(w.locality, []).append((w.address, port, w))
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        for locality in sorted(by_locality):
            group = cla.endpoints.add()
            region, _, rest = locality.partition("/")
            zone, _, subzone = rest.partition("/")
            group.locality.region, group.locality.zone, group.locality.sub_zone = (
                region,
                zone,
                subzone,
            )
            group.lb_endpoints.extend(
                self._lb_endpoint(address, port, w)
                for address, port, w in sorted(by_locality[locality], key=lambda e: e[:2])
            )
            group.load_balancing_weight.value = sum(w.weight for _, _, w in by_locality[locality])
        return cla

    def _lb_endpoint(
        self, address: str, port: int, w: WorkloadEntry
    ) -> endpoint_components_pb2.LbEndpoint:
        """One workload as an endpoint; built once, as it appears in several clusters (the
        service's and its subset's)."""
        key = (w.key, address, port)
        found = self._lb_endpoints.get(key)
        if found is None:
            found = endpoint_components_pb2.LbEndpoint(health_status=health_check_pb2.HEALTHY)
            found.endpoint.address.CopyFrom(_socket_address(address, port))
            found.load_balancing_weight.value = w.weight
            if self._mtls_mode(w, port) != "DISABLE":
                meta = found.metadata.filter_metadata[TRANSPORT_SOCKET_MATCH_KEY]
                meta.fields["tlsMode"].string_value = "istio"
            self._lb_endpoints[key] = found
        return found

    # --- routes ----------------------------------------------------------------------------

    def route_key(self, proxy: Proxy) -> tuple[Any, ...]:
        labels = tuple(sorted(proxy.labels.items())) if self.uses_source_match else ()
        return (proxy.namespace, labels, proxy.proxyless)

    def route_configs(self, proxy: Proxy) -> dict[str, Message]:
        key = self.route_key(proxy)
        if key not in self._routes:
            with self._capture() as met:
                self._routes[key] = self._build_route_configs(proxy)
            self._route_problems[key] = met
        return self._routes[key]

    def _build_route_configs(self, proxy: Proxy) -> dict[str, Message]:
        built: dict[str, Message] = {}
        if proxy.proxyless:
            for port in sorted(self.by_port):
                for ps in self.by_port[port]:
                    if not _is_http(ps.protocol):
                        continue
                    name = f"{ps.service.hostname}:{port}"
                    rcfg = route_pb2.RouteConfiguration(
                        name=name, validate_clusters=wrappers_pb2.BoolValue(value=False)
                    )
                    rcfg.virtual_hosts.append(self._virtual_host(ps, proxy, grpc=True))
                    _allow_bodies(rcfg, _max_body(rcfg.virtual_hosts[0]))
                    built[name] = rcfg
        else:
            for port in sorted(self.by_port):
                http = [ps for ps in self.by_port[port] if _is_http(ps.protocol)]
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

    def _virtual_host_bytes(self, ps: _PortService, proxy: Proxy) -> bytes:
        """A RouteConfiguration holding just this virtual host, serialized; shared by every
        namespace for which the virtual host is the same (only short-name domains differ)."""
        local = ps.service.namespace == proxy.namespace
        source = (proxy.namespace, *self.route_key(proxy)[1:]) if self.uses_source_match else ()
        key = (ps.service.hostname, ps.port.port, local, source)
        found = self._vhost_bytes.get(key)
        if found is None:
            one = route_pb2.RouteConfiguration(virtual_hosts=[self._virtual_host(ps, proxy)])
            found = self._vhost_bytes[key] = one.SerializeToString(deterministic=True)
            self._vhost_body[found] = _max_body(one.virtual_hosts[0])
        return found

    def _domains(self, svc: _Host, port: int, namespace: str, grpc: bool) -> list[str]:
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

    def _virtual_host(self, ps: _PortService, proxy: Proxy, grpc: bool = False) -> rc.VirtualHost:
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
        r.route.timeout.CopyFrom(_duration_ns(0))
        r.route.retry_policy.CopyFrom(_default_retry())
        r.route.hash_policy.extend(_hash_policies(self.lb_for(host, "", port), ""))
        return r

    def _routes_for_host(
        self, svc: _Host, port: int, proxy: Proxy, grpc: bool
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
            candidates = [vs for suffix, vs in self._wildcard_vs if svc.hostname.endswith(suffix)]
        if not candidates:
            return None
        vs = candidates[0]
        for other in candidates[1:]:
            self.problem(
                other,
                "spec.hosts",
                f"host {svc.hostname} is also claimed by VirtualService {vs.namespace}/{vs.name},"
                " which is used for sidecars (Istio keeps the first)",
                severity="warning",
            )
        # Routes depend on the proxy only through source matches (labels, namespace).
        source = (proxy.namespace, *self.route_key(proxy)[1:]) if self.uses_source_match else ()
        key = (vs.namespace, vs.name, svc.hostname, port, grpc, source)
        if key in self._vs_routes:
            self._emit(self._vs_problems[key])
            return self._vs_routes[key]
        with self._capture() as met:
            try:
                built = _VsRoutes(self, vs, svc, port, proxy, grpc).build()
            except _Invalid as bad:
                self.problem(
                    vs,
                    bad.path,
                    f"{bad.message}; this VirtualService's routes for {svc.hostname}:{port}"
                    " are left out and the default route is used",
                )
                built = None
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self.problem(
                    vs,
                    "spec.http",
                    f"cannot be translated ({exc}); this VirtualService's routes for"
                    f" {svc.hostname}:{port} are left out and the default route is used",
                )
                built = None
        self._vs_routes[key] = built
        self._vs_problems[key] = met
        self._emit(met)
        return built

    # --- listeners ---------------------------------------------------------------------------

    def outbound_listeners(self, proxy: Proxy) -> dict[str, Message]:
        key = (proxy.proxyless, proxy.outbound_address)
        if key not in self._outbound:
            with self._capture() as met:
                self._outbound[key] = self._build_outbound_listeners(proxy)
            self._outbound_problems[key] = met
        return self._outbound[key]

    def _build_outbound_listeners(self, proxy: Proxy) -> dict[str, Message]:
        out: dict[str, Message] = {}
        if proxy.proxyless:
            for port in sorted(self.by_port):
                for ps in self.by_port[port]:
                    if _is_http(ps.protocol):
                        name = f"{ps.service.hostname}:{port}"
                        out[name] = _api_listener(name)
            return dict(sorted(out.items()))
        address = proxy.outbound_address
        for port in sorted(self.by_port):
            group = self.by_port[port]
            name = f"{address}_{port}"
            http = [ps for ps in group if _is_http(ps.protocol)]
            tcp = [ps for ps in group if not _is_http(ps.protocol)]
            if http:
                out[name] = _outbound_http_listener(name, address, port, self.mesh_config)
                for ps in tcp:
                    self.problem(
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
                out[name] = _outbound_tcp_listener(name, address, port, cluster, self.mesh_config)
                for ps in tcp[1:]:
                    self.problem(
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
            self._registry = [f"{s.namespace}/{s.hostname}" for s in self.services]
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
                for pol in self._policies_by_ns.get(ns, ())
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
            self._emit(self._authz_problems[key])
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
        self._emit(met)
        return self._authz[key]

    def inbound(
        self, proxy: Proxy
    ) -> tuple[dict[str, Message], dict[str, Message], list[ConfigProblem]]:
        """Inbound listeners and clusters for the proxy's workload, and their problems."""
        w = proxy.workload
        if w is None or not w.address or proxy.proxyless:
            return {}, {}, []
        key = (w.key, proxy.app_address, tuple(sorted(proxy.labels.items())))
        found = self._inbound.get(key)
        # specs are read-only mappings (unhashable): compared by value beside the key
        if found is None or found[0] != (w.spec, w.labels):
            with self._capture() as met:
                listeners, clusters = self._build_inbound(proxy, w)
            found = self._inbound[key] = ((w.spec, w.labels), (listeners, clusters, met))
        return found[1]

    def _build_inbound(
        self, proxy: Proxy, w: WorkloadEntry
    ) -> tuple[dict[str, Message], dict[str, Message]]:
        listeners: dict[str, Message] = {}
        clusters: dict[str, Message] = {}
        ports: dict[int, str] = {}
        for svc in self._services_of(w):
            for sp in svc.ports:
                target = _endpoint_port(w, sp)
                proto = _port_protocol(sp)
                if target is None or proto == "udp":
                    continue
                ports.setdefault(target, proto)
        for target in sorted(ports):
            cluster = cluster_name(INBOUND, target, "", "")
            clusters[cluster] = _inbound_cluster(cluster, proxy.app_address, target)
            name = f"{w.address}_{target}"
            mode = self._mtls_mode(w, target)
            http_filters, tcp_filters = self.authz_filters(proxy)
            listeners[name] = _inbound_listener(
                name,
                w.address,
                target,
                cluster,
                http=_is_http(ports[target]),
                mode=mode,
                http_filters=http_filters,
                tcp_filters=tcp_filters,
                mc=self.mesh_config,
            )
        return listeners, clusters


ENVOY_DEFAULT_MAX_BODY = 4096


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


def _default_retry() -> rc.RetryPolicy:
    rp = rc.RetryPolicy(
        retry_on=DEFAULT_RETRY_ON, host_selection_retry_max_attempts=5, retriable_status_codes=[503]
    )
    rp.num_retries.value = 2
    rp.retry_host_predicate.add(
        name="envoy.retry_host_predicates.previous_hosts",
        typed_config=_pack(previous_hosts_pb2.PreviousHostsPredicate()),
    )
    return rp


def _deny_all_filters() -> tuple[list[Message], list[Message]]:
    from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as net_rbac_pb2

    http = hcm_pb2.HttpFilter(name=HTTP_RBAC, typed_config=_pack(http_rbac_pb2.RBAC(rules={})))
    tcp = listener_components_pb2.Filter(
        name=TCP_RBAC,
        typed_config=_pack(net_rbac_pb2.RBAC(rules={}, stat_prefix="tcp.")),
    )
    return [http], [tcp]


# --- VirtualService routes ---------------------------------------------------------------------


class _VsRoutes:
    """One VirtualService's HTTP routes for one host and port, as Istio translates them."""

    def __init__(
        self, tr: _Translator, vs: VirtualService, svc: _Host, port: int, proxy: Proxy, grpc: bool
    ) -> None:
        self.tr, self.vs, self.svc, self.port, self.proxy, self.grpc = (
            tr,
            vs,
            svc,
            port,
            proxy,
            grpc,
        )

    def build(self) -> list[rc.Route] | None:
        routes: list[rc.Route] = []
        for i, http in enumerate(self.vs.http):
            path = f"spec.http[{i}]"
            if http.get("delegate"):
                raise _Invalid(path + ".delegate", "delegate is not supported for sidecars")
            matches = self._matches(http, path)
            if matches is None:
                continue
            for mname, match in matches:
                r = rc.Route(match=match)
                rname = str(http.get("name", ""))
                r.name = f"{rname}.{mname}" if rname and mname else rname or mname
                self._action(r, http, path)
                routes.append(r)
        return routes or None

    def _matches(
        self, http: Mapping[str, Any], path: str
    ) -> list[tuple[str, rc.RouteMatch]] | None:
        raw = http.get("match") or ()
        if not raw:
            m = rc.RouteMatch(prefix="/")
            return [("", m)]
        out: list[tuple[str, rc.RouteMatch]] = []
        for j, m in enumerate(raw):
            mp = f"{path}.match[{j}]"
            if m.get("port") is not None and int(m["port"]) != self.port:
                continue
            if m.get("gateways") and "mesh" not in m["gateways"]:
                continue
            if m.get("sourceLabels") and not selector_matches(m["sourceLabels"], self.proxy.labels):
                continue
            if m.get("sourceNamespace") and m["sourceNamespace"] != self.proxy.namespace:
                continue
            out.append((str(m.get("name", "")), self._match(m, mp)))
        return out or None

    def _match(self, m: Mapping[str, Any], path: str) -> rc.RouteMatch:
        rm = rc.RouteMatch()
        uri = m.get("uri")
        if uri is None:
            rm.prefix = "/"
        elif uri.get("exact") is not None:
            rm.path = str(uri["exact"])
        elif uri.get("prefix") is not None:
            rm.prefix = str(uri["prefix"])
        elif uri.get("regex") is not None:
            rm.safe_regex.CopyFrom(_regex(uri["regex"], path + ".uri.regex"))
        else:
            raise _Invalid(path + ".uri", "exactly one of exact, prefix or regex must be set")
        if m.get("ignoreUriCase"):
            rm.case_sensitive.value = False
        for field_name, header in (
            ("method", ":method"),
            ("authority", ":authority"),
            ("scheme", ":scheme"),
        ):
            if m.get(field_name) is not None:
                rm.headers.append(
                    rc.HeaderMatcher(
                        name=header,
                        string_match=_string_matcher(m[field_name], f"{path}.{field_name}"),
                    )
                )
        for group, invert in (("headers", False), ("withoutHeaders", True)):
            for name in sorted(m.get(group) or {}):
                hp = f"{path}.{group}.{name}"
                hm = rc.HeaderMatcher(name=_header_name(name, hp), invert_match=invert)
                spec = m[group][name]
                if not spec:
                    hm.present_match = True  # `{}`: the header is present (or, inverted, absent)
                else:
                    hm.string_match.CopyFrom(_string_matcher(spec, hp))
                rm.headers.append(hm)
        for name in sorted(m.get("queryParams") or {}):
            qp = f"{path}.queryParams.{name}"
            spec = m["queryParams"][name]
            q = rc.QueryParameterMatcher(name=str(name))
            if spec.get("exact") == "":
                q.present_match = True  # Istio: an empty exact value means "present"
            elif spec.get("prefix") is not None:
                raise _Invalid(qp + ".prefix", "query parameters match exact or regex only")
            else:
                q.string_match.CopyFrom(_string_matcher(spec, qp))
            rm.query_parameters.append(q)
        return rm

    def _destination_cluster(self, dest: Mapping[str, Any], path: str) -> tuple[str, str, int]:
        host = resolve_host(str(dest.get("host", "")), self.vs.namespace, self.tr.mesh.domain)
        if not host:
            raise _Invalid(path + ".host", "destination host is required")
        subset = str(dest.get("subset", ""))
        number = (dest.get("port") or {}).get("number")
        if number is None:
            target = self.tr.mesh.service(host)
            ports = [p.port for p in target.ports] if target is not None else []
            if self.port in ports or target is None:
                number = self.port
            elif len(ports) == 1:
                number = ports[0]
            else:
                raise _Invalid(
                    path + ".port",
                    f"destination {host} has several ports ({', '.join(map(str, ports))})"
                    " and none is chosen",
                )
        return cluster_name(OUTBOUND, int(number), subset, host), host, int(number)

    def _action(self, r: rc.Route, http: Mapping[str, Any], path: str) -> None:
        if http.get("redirect"):
            self._redirect(r, http["redirect"], path + ".redirect")
        elif http.get("directResponse"):
            d = http["directResponse"]
            status = int(d.get("status", 0))
            if not 200 <= status <= 599:
                raise _Invalid(path + ".directResponse.status", f"status {status} not in 200..599")
            r.direct_response.status = status
            body = d.get("body") or {}
            if body.get("string") is not None:
                r.direct_response.body.inline_string = str(body["string"])
            elif body.get("bytes") is not None:
                try:
                    r.direct_response.body.inline_bytes = base64.b64decode(
                        str(body["bytes"]), validate=True
                    )
                except ValueError:
                    raise _Invalid(
                        path + ".directResponse.body.bytes", "bytes must be base64"
                    ) from None
        elif http.get("route"):
            self._route(r, http, path)
        else:
            raise _Invalid(path, "an HTTP route needs route, redirect or directResponse")
        self._headers(r, http.get("headers") or {}, path + ".headers")
        if http.get("fault"):
            fault = self._fault(http["fault"], path + ".fault")
            r.typed_per_filter_config[FAULT_NAME].CopyFrom(_pack(fault))
        if http.get("corsPolicy") and not self.grpc:
            cors = self._cors(http["corsPolicy"], path + ".corsPolicy")
            r.typed_per_filter_config[CORS_NAME].CopyFrom(_pack(cors))

    def _redirect(self, r: rc.Route, red: Mapping[str, Any], path: str) -> None:
        ra = r.redirect
        if red.get("uri"):
            ra.path_redirect = str(red["uri"])
        if red.get("authority"):
            ra.host_redirect = str(red["authority"])
        if red.get("port"):
            ra.port_redirect = int(red["port"])
        if red.get("derivePort") == "FROM_REQUEST_PORT":
            raise _Invalid(path + ".derivePort", "FROM_REQUEST_PORT is not supported")
        if red.get("scheme"):
            ra.scheme_redirect = str(red["scheme"])
        code = int(red.get("redirectCode") or 301)
        if code not in _REDIRECT_CODES:
            raise _Invalid(path + ".redirectCode", f"redirect code {code} is not supported")
        ra.response_code = _REDIRECT_CODES[code]

    def _route(self, r: rc.Route, http: Mapping[str, Any], path: str) -> None:
        ra = r.route
        dests = [
            (k, d)
            for k, d in enumerate(http["route"])
            if len(http["route"]) == 1 or d.get("weight", 0)
        ]
        if not dests:
            raise _Invalid(path + ".route", "every destination has weight 0")
        first_host = first_subset = ""
        first_port = 0
        if len(dests) == 1:
            k, d = dests[0]
            dp = f"{path}.route[{k}]"
            ra.cluster, first_host, first_port = self._destination_cluster(
                d.get("destination") or {}, dp + ".destination"
            )
            first_subset = str((d.get("destination") or {}).get("subset", ""))
            self._headers(r, d.get("headers") or {}, dp + ".headers")
        else:
            for k, d in dests:
                dp = f"{path}.route[{k}]"
                name, host, port = self._destination_cluster(
                    d.get("destination") or {}, dp + ".destination"
                )
                weight = int(d.get("weight", 0))
                if weight < 0:
                    raise _Invalid(dp + ".weight", f"weight {weight} must not be negative")
                cw = ra.weighted_clusters.clusters.add(name=name)
                cw.weight.value = weight
                self._headers(cw, d.get("headers") or {}, dp + ".headers")
                if not first_host:
                    first_host, first_port = host, port
                    first_subset = str((d.get("destination") or {}).get("subset", ""))
        ra.timeout.CopyFrom(
            _duration(http["timeout"], path + ".timeout") if "timeout" in http else _duration_ns(0)
        )
        retries = http.get("retries")
        if retries is None:
            ra.retry_policy.CopyFrom(_default_retry())
        else:
            rp = self._retry(retries, path + ".retries")
            if rp is not None:
                ra.retry_policy.CopyFrom(rp)
        rw = http.get("rewrite") or {}
        if rw.get("uri") is not None:
            if r.match.WhichOneof("path_specifier") == "safe_regex":
                # Envoy's prefix_rewrite needs a prefix or path match; rewrite the whole path.
                ra.regex_rewrite.pattern.regex = ".*"
                ra.regex_rewrite.substitution = str(rw["uri"])
            else:
                ra.prefix_rewrite = str(rw["uri"])
        elif rw.get("uriRegexRewrite"):
            rr = rw["uriRegexRewrite"]
            ra.regex_rewrite.pattern.CopyFrom(
                _regex(rr.get("match"), path + ".rewrite.uriRegexRewrite.match")
            )
            ra.regex_rewrite.substitution = str(rr.get("rewrite", ""))
        if rw.get("authority"):
            ra.host_rewrite_literal = str(rw["authority"])
        mirrors: list[tuple[Mapping[str, Any], percent_pb2.FractionalPercent, str]] = []
        if http.get("mirror"):
            if http.get("mirrorPercentage") is not None:
                pct = _percent(
                    (http["mirrorPercentage"] or {}).get("value", 0), path + ".mirrorPercentage"
                )
            elif http.get("mirrorPercent") is not None or http.get("mirror_percent") is not None:
                legacy = http.get("mirrorPercent", http.get("mirror_percent"))
                pct = _percent(legacy, path + ".mirrorPercent")
            else:
                pct = _percent(100, path + ".mirror")
            mirrors.append((http["mirror"], pct, path + ".mirror"))
        for k, m in enumerate(http.get("mirrors") or ()):
            mp = f"{path}.mirrors[{k}]"
            pct = _percentage_of(m, mp)
            mirrors.append((m.get("destination") or {}, pct, mp + ".destination"))
        for dest, pct, mp in mirrors:
            cluster, _, _ = self._destination_cluster(dest, mp)
            policy = ra.request_mirror_policies.add(cluster=cluster)
            policy.runtime_fraction.default_value.CopyFrom(pct)
        if first_host:
            lb = self.tr.lb_for(first_host, first_subset, first_port)
            ra.hash_policy.extend(_hash_policies(lb, path))

    def _retry(self, retries: Mapping[str, Any], path: str) -> rc.RetryPolicy | None:
        attempts = int(retries.get("attempts", 2))
        if attempts < 0:
            raise _Invalid(path + ".attempts", "attempts must not be negative")
        if attempts == 0:
            return None  # Istio: zero attempts turns retries off
        rp = rc.RetryPolicy()
        rp.num_retries.value = attempts
        on = [p.strip() for p in str(retries.get("retryOn") or "").split(",") if p.strip()]
        codes = sorted({int(p) for p in on if p.isdigit()})
        policies = [p for p in on if not p.isdigit()]
        if codes and "retriable-status-codes" not in policies:
            policies.append("retriable-status-codes")
        rp.retry_on = ",".join(policies) if policies else DEFAULT_RETRY_ON
        if codes:
            rp.retriable_status_codes.extend(codes)
        elif not policies:
            rp.retriable_status_codes.append(503)
        if retries.get("perTryTimeout") is not None:
            rp.per_try_timeout.CopyFrom(
                _duration(retries["perTryTimeout"], path + ".perTryTimeout")
            )
        if retries.get("backoff") is not None:
            rp.retry_back_off.base_interval.CopyFrom(
                _duration(retries["backoff"], path + ".backoff")
            )
        if retries.get("retryIgnorePreviousHosts", True):
            rp.retry_host_predicate.add(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=_pack(previous_hosts_pb2.PreviousHostsPredicate()),
            )
            rp.host_selection_retry_max_attempts = 5
        return rp

    def _headers(self, target: Any, headers: Mapping[str, Any], path: str) -> None:
        """Header operations on a Route or a weighted cluster (both have the same fields)."""
        append = base_pb2.HeaderValueOption
        for side in ("request", "response"):
            ops = headers.get(side) or {}
            add_to = getattr(target, f"{side}_headers_to_add")
            for op, action in (
                ("set", append.OVERWRITE_IF_EXISTS_OR_ADD),
                ("add", append.APPEND_IF_EXISTS_OR_ADD),
            ):
                for name in sorted(ops.get(op) or {}):
                    hp = f"{path}.{side}.{op}.{name}"
                    _header_name(name, hp)
                    if name.startswith(":") or name.lower() == "host":
                        raise _Invalid(hp, f"header {name!r} cannot be modified")
                    add_to.append(
                        append(
                            header=base_pb2.HeaderValue(key=name, value=str(ops[op][name])),
                            append_action=action,
                        )
                    )
            for k, name in enumerate(ops.get("remove") or ()):
                _header_name(name, f"{path}.{side}.remove[{k}]")
                getattr(target, f"{side}_headers_to_remove").append(name)

    def _fault(self, fault: Mapping[str, Any], path: str) -> fault_pb2.HTTPFault:
        out = fault_pb2.HTTPFault()
        delay = fault.get("delay")
        if delay:
            if delay.get("fixedDelay") is None:
                raise _Invalid(path + ".delay.fixedDelay", "fixedDelay is required")
            out.delay.fixed_delay.CopyFrom(
                _duration(delay["fixedDelay"], path + ".delay.fixedDelay")
            )
            out.delay.percentage.CopyFrom(_percentage_of(delay, path + ".delay"))
        abort = fault.get("abort")
        if abort:
            if abort.get("httpStatus") is not None:
                status = int(abort["httpStatus"])
                if not 200 <= status <= 599:
                    raise _Invalid(path + ".abort.httpStatus", f"status {status} not in 200..599")
                out.abort.http_status = status
            elif abort.get("grpcStatus") is not None:
                code = _GRPC_CODES.get(str(abort["grpcStatus"]).upper())
                if code is None:
                    raise _Invalid(
                        path + ".abort.grpcStatus", f"unknown gRPC status {abort['grpcStatus']!r}"
                    )
                out.abort.grpc_status = code
            else:
                raise _Invalid(path + ".abort", "httpStatus or grpcStatus is required")
            out.abort.percentage.CopyFrom(_percentage_of(abort, path + ".abort"))
        return out

    def _cors(self, cors: Mapping[str, Any], path: str) -> cors_pb2.CorsPolicy:
        out = cors_pb2.CorsPolicy()
        for k, origin in enumerate(cors.get("allowOrigins") or ()):
            out.allow_origin_string_match.append(
                _string_matcher(origin, f"{path}.allowOrigins[{k}]")
            )
        for origin in cors.get("allowOrigin") or ():
            out.allow_origin_string_match.append(string_pb2.StringMatcher(exact=str(origin)))
        if cors.get("allowMethods"):
            out.allow_methods = ",".join(cors["allowMethods"])
        if cors.get("allowHeaders"):
            out.allow_headers = ",".join(cors["allowHeaders"])
        if cors.get("exposeHeaders"):
            out.expose_headers = ",".join(cors["exposeHeaders"])
        if cors.get("maxAge") is not None:
            out.max_age = str(_duration(cors["maxAge"], path + ".maxAge").seconds)
        if cors.get("allowCredentials") is not None:
            out.allow_credentials.value = bool(cors["allowCredentials"])
        return out


# --- listener builders ------------------------------------------------------------------------


def _router() -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=ROUTER_NAME, typed_config=_pack(router_pb2.Router()))


def _hcm_filter(hcm: hcm_pb2.HttpConnectionManager) -> listener_components_pb2.Filter:
    return listener_components_pb2.Filter(name=HCM_NAME, typed_config=_pack(hcm))


# --- MeshConfig: access logs and tracing ---------------------------------------------------------


def _access_logs(mc: MeshConfig | None) -> list[accesslog_pb2.AccessLog]:
    if mc is None or not mc.access_log_file:
        return []
    log = file_log_pb2.FileAccessLog(path=mc.access_log_file)
    if mc.access_log_encoding == "JSON":
        log.log_format.json_format.update(DEFAULT_JSON_FORMAT)
    else:
        log.log_format.text_format_source.inline_string = (
            mc.access_log_format or DEFAULT_TEXT_FORMAT
        )
    return [accesslog_pb2.AccessLog(name=FILE_LOG_NAME, typed_config=_pack(log))]


def _observe(hcm: hcm_pb2.HttpConnectionManager, mc: MeshConfig | None) -> None:
    """Access logs and tracing on an HTTP connection manager, per the MeshConfig."""
    hcm.access_log.extend(_access_logs(mc))
    if mc is None or not mc.tracing:
        return
    zipkin = zipkin_pb2.ZipkinConfig(
        collector_cluster=ZIPKIN_CLUSTER,
        collector_endpoint="/api/v2/spans",
        collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
        trace_id_128bit=True,
    )
    zipkin.shared_span_context.value = False
    hcm.tracing.provider.CopyFrom(
        http_tracer_pb2.Tracing.Http(name=ZIPKIN_TRACER_NAME, typed_config=_pack(zipkin))
    )
    hcm.tracing.random_sampling.value = mc.tracing_sampling


def _zipkin_cluster(mc: MeshConfig) -> cluster_pb2.Cluster:
    host, port = mc.zipkin_endpoint()
    c = cluster_pb2.Cluster(
        name=ZIPKIN_CLUSTER,
        type=cluster_pb2.Cluster.STATIC if _is_ip_literal(host) else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=_duration_ns(DEFAULT_CONNECT_TIMEOUT_NS),
    )
    c.load_assignment.cluster_name = ZIPKIN_CLUSTER
    c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        _socket_address(host, port)
    )
    return c


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _outbound_http_listener(
    name: str, address: str, port: int, mc: MeshConfig | None = None
) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=f"outbound_{name}")
    _observe(hcm, mc)
    hcm.rds.route_config_name = str(port)
    hcm.rds.config_source.CopyFrom(_ads())
    hcm.normalize_path.value = True
    # The fault and CORS filters do nothing unless a route configures them (per-route config).
    hcm.http_filters.append(
        hcm_pb2.HttpFilter(name=FAULT_NAME, typed_config=_pack(fault_pb2.HTTPFault()))
    )
    hcm.http_filters.append(hcm_pb2.HttpFilter(name=CORS_NAME, typed_config=_pack(cors_pb2.Cors())))
    hcm.http_filters.append(_router())
    listener = listener_pb2.Listener(
        name=name,
        address=_socket_address(address, port),
        traffic_direction=base_pb2.OUTBOUND,
    )
    listener.filter_chains.add().filters.append(_hcm_filter(hcm))
    return listener


def _outbound_tcp_listener(
    name: str, address: str, port: int, cluster: str, mc: MeshConfig | None = None
) -> listener_pb2.Listener:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
    proxy.access_log.extend(_access_logs(mc))
    listener = listener_pb2.Listener(
        name=name, address=_socket_address(address, port), traffic_direction=base_pb2.OUTBOUND
    )
    listener.filter_chains.add().filters.append(
        listener_components_pb2.Filter(name=TCP_PROXY_NAME, typed_config=_pack(proxy))
    )
    return listener


def _api_listener(name: str) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    hcm.rds.route_config_name = name
    hcm.rds.config_source.CopyFrom(_ads())
    hcm.http_filters.append(
        hcm_pb2.HttpFilter(name=FAULT_NAME, typed_config=_pack(fault_pb2.HTTPFault()))
    )
    hcm.http_filters.append(_router())
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=_pack(hcm))
    )


def _inbound_cluster(name: str, address: str, port: int) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=_duration_ns(DEFAULT_CONNECT_TIMEOUT_NS),
    )
    c.load_assignment.cluster_name = name
    c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        _socket_address(address, port)
    )
    return c


def _downstream_tls(http: bool) -> tls_pb2.DownstreamTlsContext:
    ctx = tls_pb2.DownstreamTlsContext()
    ctx.require_client_certificate.value = True
    common = ctx.common_tls_context
    common.tls_certificate_sds_secret_configs.append(_sds(SDS_CERT))
    cvc = common.combined_validation_context
    cvc.default_validation_context.SetInParent()
    cvc.validation_context_sds_secret_config.CopyFrom(_sds(SDS_ROOT))
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
    mc: MeshConfig | None = None,
) -> listener_pb2.Listener:
    def filters() -> list[listener_components_pb2.Filter]:
        if not http:
            out = [_copy(f) for f in tcp_filters]
            tcp = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
            tcp.access_log.extend(_access_logs(mc))
            out.append(listener_components_pb2.Filter(name=TCP_PROXY_NAME, typed_config=_pack(tcp)))
            return out
        hcm = hcm_pb2.HttpConnectionManager(stat_prefix=f"inbound_{name}")
        _observe(hcm, mc)
        rcfg = hcm.route_config
        rcfg.name = cluster
        rcfg.validate_clusters.value = False
        vh = rcfg.virtual_hosts.add(name=f"inbound|http|{port}", domains=["*"])
        route = vh.routes.add(name="default")
        route.match.prefix = "/"
        route.route.cluster = cluster
        route.route.timeout.CopyFrom(_duration_ns(0))
        hcm.normalize_path.value = True
        hcm.forward_client_cert_details = hcm_pb2.HttpConnectionManager.APPEND_FORWARD
        details = hcm.set_current_client_cert_details
        details.subject.value = True
        details.dns = True
        details.uri = True
        hcm.http_filters.extend(_copy(f) for f in http_filters)
        hcm.http_filters.append(_router())
        return [_hcm_filter(hcm)]

    listener = listener_pb2.Listener(
        name=name, address=_socket_address(address, port), traffic_direction=base_pb2.INBOUND
    )
    tls = _tls_socket(_downstream_tls(http))
    if mode == "STRICT":
        chain = listener.filter_chains.add(name="inbound_mtls")
        chain.transport_socket.CopyFrom(tls)
        chain.filters.extend(filters())
    elif mode == "DISABLE":
        listener.filter_chains.add(name="inbound_plaintext").filters.extend(filters())
    else:  # PERMISSIVE: TLS and plaintext told apart by the TLS inspector
        listener.listener_filters.add(
            name=TLS_INSPECTOR_NAME, typed_config=_pack(tls_inspector_pb2.TlsInspector())
        )
        chain = listener.filter_chains.add(name="inbound_mtls")
        chain.filter_chain_match.transport_protocol = "tls"
        chain.transport_socket.CopyFrom(tls)
        chain.filters.extend(filters())
        plain = listener.filter_chains.add(name="inbound_plaintext")
        plain.filter_chain_match.transport_protocol = "raw_buffer"
        plain.filters.extend(filters())
    return listener


def _copy(msg: Message) -> Any:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


# --- entry points -------------------------------------------------------------------------------

# The translator of the last mesh seen: proxies of one mesh share clusters, endpoints and routes.
_last: list[_Translator] = []


def _translator(mesh: MeshModel, providers: Any, mesh_config: MeshConfig | None) -> _Translator:
    prev = _last[0] if _last else None
    if (
        prev is not None
        and prev.mesh is mesh
        and prev.providers == providers
        and prev.mesh_config == mesh_config
    ):
        return prev
    # Listeners carry the MeshConfig's logging and tracing: a new one starts afresh.
    if prev is not None and prev.mesh_config != mesh_config:
        prev = None
    tr = _Translator(mesh, prev, providers, mesh_config)
    _last[:] = [tr]
    return tr


_KINDS = (
    "services",
    "service_entries",
    "workload_entries",
    "virtual_services",
    "destination_rules",
    "authorization_policies",
    "peer_authentications",
)


def _kind_state(mesh: MeshModel, kind: str) -> tuple[Any, ...]:
    """One kind of a mesh's resources, as a value that compares equal when nothing changed."""
    return tuple((r.key, r.spec, r.labels, r.annotations) for r in getattr(mesh, kind))


def uses_source_match(mesh: MeshModel) -> bool:
    """Whether route configurations depend on the proxy's labels (VirtualService matches on
    sourceLabels or sourceNamespace): it decides which proxies share route configurations."""
    return any(
        "sourceLabels" in m or "sourceNamespace" in m
        for vs in mesh.virtual_services
        for r in vs.http
        for m in r.get("match", ())
    )


def _problem_key(p: ConfigProblem) -> tuple[str, str, str, str, str]:
    return (p.kind, p.namespace, p.name, p.path, p.message)


def clear_cache() -> None:
    """Forget the shared translation of the last mesh (benchmarks measure cold translation)."""
    _last.clear()


def generate(
    mesh: MeshModel,
    proxy: Proxy,
    *,
    extension_providers: Any = None,
    mesh_config: MeshConfig | None = None,
) -> Generated:
    """The resources Istio would give ``proxy``: CDS, EDS, LDS and RDS, by type URL then name.

    ``extension_providers`` is MeshConfig's ``extensionProviders`` (ext_authz providers that
    CUSTOM AuthorizationPolicies name; see ``Authorizer.from_policies``), looked up among the
    mesh's Services.
    Problems (a VirtualService left out, a DestinationRule field dropped, an authorization
    policy that fails closed) are returned, never raised: a bad resource spoils only itself.
    They are the proxy's own: those of the resources it gets (and the mesh-wide warnings),
    sorted, the same whatever was translated before.
    """
    if extension_providers is None and mesh_config is not None and mesh_config.extension_providers:
        extension_providers = list(mesh_config.extension_providers)
    tr = _translator(mesh, extension_providers, mesh_config)
    inbound_listeners, inbound_clusters, inbound_problems = tr.inbound(proxy)
    # Each type is the proxy's own resources (its workload's inbound side) over resources
    # shared with other proxies, not merged: the snapshot store reuses a shared set for every
    # proxy that has it, and the control plane updates every holder of a shared set at once
    # (see meshcore.xds.deps). Shared mappings and messages are read-only.
    resources: Resources = {
        types.CLUSTER: Layered(inbound_clusters, tr.clusters(proxy.proxyless)),
        types.ENDPOINT: Layered({}, tr.endpoints()),
        types.LISTENER: Layered(inbound_listeners, tr.outbound_listeners(proxy)),
        types.ROUTE: Layered({}, tr.route_configs(proxy)),
    }
    problems = {
        _problem_key(p): p
        for group in (
            tr._global,
            tr._cluster_problems[proxy.proxyless],
            tr._route_problems[tr.route_key(proxy)],
            tr._outbound_problems[(proxy.proxyless, proxy.outbound_address)],
            inbound_problems,
            _duplicate_names(proxy, resources),
        )
        for p in group
    }
    return Generated(resources, [problems[k] for k in sorted(problems)])


def _duplicate_names(proxy: Proxy, resources: Resources) -> list[ConfigProblem]:
    """Names produced both for the proxy's own inbound side and for its outbound side (the
    xDS checklist: duplicate names across generators are found server-side): the inbound one
    is sent, and the clash is reported. It happens when a workload's address is the address
    its sidecar's outbound listeners bind to."""
    out = []
    w = proxy.workload
    for type_url in (types.LISTENER, types.CLUSTER):
        layers = resources[type_url]
        if not isinstance(layers, Layered) or not layers.own:
            continue
        for name in sorted(set(layers.own) & set(layers.shared)):
            out.append(
                ConfigProblem(
                    f"{types.SHORT_NAMES[type_url]} resource {name!r} is produced twice, for"
                    f" the workload's inbound side and for outbound traffic (its address is"
                    f" the outbound address {proxy.outbound_address}); the inbound one is"
                    " sent: give the sidecar another MESHCORE_OUTBOUND_ADDRESS",
                    path="spec.address",
                    kind="WorkloadEntry" if w is not None else "",
                    namespace=w.namespace if w is not None else proxy.namespace,
                    name=w.name if w is not None else proxy.name,
                    file=w.file if w is not None else "",
                    line=w.line if w is not None else 0,
                )
            )
    return out


# --- static bootstrap ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    # MessageToDict renders Any fields as OrderedDicts, which YAML dumpers refuse.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _to_dict(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = _plain(json_format.MessageToDict(msg, preserving_proto_field_name=True))
    return out


def _walk(value: Any, fn: Callable[[dict[str, Any]], None]) -> None:
    if isinstance(value, dict):
        fn(value)
        for v in value.values():
            _walk(v, fn)
    elif isinstance(value, list):
        for v in value:
            _walk(v, fn)


def render_static_bootstrap(
    result: Generated | Resources,
    node_id: str,
    admin_port: int,
    *,
    secrets: Iterable[Message] | None = None,
    admin_address: str = "127.0.0.1",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An Envoy bootstrap (a dict: dump it as YAML or JSON) with every resource inline.

    Routes are inlined into the HTTP connection managers that name them, endpoints into their
    clusters' ``load_assignment`` (EDS clusters become STATIC). ``secrets`` (Envoy ``Secret``
    messages named ``default`` and ``ROOTCA``) go into ``static_resources.secrets``, and every SDS
    reference is pointed at the static secrets (a static bootstrap has no agent to fetch them
    from): pass them whenever mTLS is in use. This is for checking a translation offline
    (``envoy --mode validate``, tests); sidecars run by :mod:`meshcore.dataplane.agent` get
    their config over ADS and their secrets over SDS instead.
    """
    resources = result.resources if isinstance(result, Generated) else result
    routes = {name: _to_dict(m) for name, m in resources.get(types.ROUTE, {}).items()}
    endpoints = {name: _to_dict(m) for name, m in resources.get(types.ENDPOINT, {}).items()}
    clusters = [_to_dict(m) for _, m in sorted(resources.get(types.CLUSTER, {}).items())]
    listeners = [_to_dict(m) for _, m in sorted(resources.get(types.LISTENER, {}).items())]
    static_secrets = [_to_dict(s) for s in secrets or ()]

    def inline_rds(d: dict[str, Any]) -> None:
        rds = d.get("rds")
        if isinstance(rds, dict) and "route_config_name" in rds:
            name = rds["route_config_name"]
            d.pop("rds")
            d["route_config"] = routes.get(name, {"name": name, "validate_clusters": False})

    def local_sds(d: dict[str, Any]) -> None:
        for key in ("tls_certificate_sds_secret_configs",):
            for ref in d.get(key, ()):
                ref.pop("sds_config", None)
        ref = d.get("validation_context_sds_secret_config")
        if isinstance(ref, dict):
            ref.pop("sds_config", None)

    for listener in listeners:
        _walk(listener, inline_rds)
        _walk(listener, local_sds)
    for cluster in clusters:
        if cluster.get("type") == "EDS":
            name = cluster.get("eds_cluster_config", {}).get("service_name", cluster["name"])
            cluster.pop("eds_cluster_config", None)
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = endpoints.get(name, {"cluster_name": name})
        _walk(cluster, local_sds)
    _, _, name, namespace, _ = parse_node_id(node_id)
    node: dict[str, Any] = {"id": node_id, "cluster": f"{name}.{namespace}"}
    if metadata:
        node["metadata"] = json_format.MessageToDict(_struct(metadata))
    static: dict[str, Any] = {"listeners": listeners, "clusters": clusters}
    if static_secrets:
        static["secrets"] = static_secrets
    return {
        "node": node,
        "admin": {
            "address": {"socket_address": {"address": admin_address, "port_value": admin_port}}
        },
        "static_resources": static,
        "layered_runtime": {
            "layers": [
                {"name": "global config", "static_layer": dict(BOOTSTRAP_RUNTIME)},
                {"name": "admin", "admin_layer": {}},
            ]
        },
    }


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(values))
    return s
