"""DestinationRule traffic policy on Envoy clusters: Istio's policy merge (DestinationRule,
port-level settings, subset), load balancing and hash policies, connection pools, outlier
detection, and upstream TLS (ISTIO_MUTUAL through SDS or gRPC certificate providers, SIMPLE and
MUTUAL from files or SDS credentials)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2

from meshcore.config.model import Checked, DestinationRule
from meshcore.names import SDS_CERT, SDS_ROOT
from meshcore.xds.common import CAPTURE_ONLY, Invalid, duration, sds

ISTIO_ALPN = ("istio-peer-exchange", "istio")
# Where SIMPLE and MUTUAL origination finds the system roots when a DestinationRule gives no
# caCertificates (Istio's agent serves the OS bundle; this is Debian's and Ubuntu's path).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

_POLICY_FIELDS = ("loadBalancer", "connectionPool", "outlierDetection", "tls")


def effective_policy(dr: DestinationRule | None, subset: str, port: int) -> dict[str, Any]:
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


def apply_lb(cluster: cluster_pb2.Cluster, lb: Mapping[str, Any], path: str) -> None:
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
        raise Invalid(path + ".simple", f"PASSTHROUGH {CAPTURE_ONLY}")
    else:  # LEAST_REQUEST, LEAST_CONN and unset: Istio's default is LEAST_REQUEST
        cluster.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST


def hash_policies(
    lb: Mapping[str, Any], path: str, checked: Checked
) -> list[rc.RouteAction.HashPolicy]:
    """Route hash policies of a validated ``consistentHash`` (``checked``: its DestinationRule's
    parsed durations)."""
    ch = lb.get("consistentHash")
    if ch is None:
        return []
    hp = rc.RouteAction.HashPolicy
    if ch.get("httpHeaderName"):
        return [hp(header=hp.Header(header_name=str(ch["httpHeaderName"])))]
    if ch.get("httpCookie"):
        cookie = ch["httpCookie"]
        c = hp.Cookie(name=str(cookie.get("name", "")), path=str(cookie.get("path", "")))
        if cookie.get("ttl") is not None:
            c.ttl.CopyFrom(duration(cookie["ttl"], path + ".httpCookie.ttl", checked))
        for attr in cookie.get("attributes") or ():
            # Envoy sets them on the cookie it generates (Istio's SameSite, Secure, ...).
            c.attributes.add(name=str(attr.get("name", "")), value=str(attr.get("value", "")))
        return [hp(cookie=c)]
    if ch.get("useSourceIp"):
        return [hp(connection_properties=hp.ConnectionProperties(source_ip=True))]
    if ch.get("httpQueryParameterName"):
        return [hp(query_parameter=hp.QueryParameter(name=str(ch["httpQueryParameterName"])))]
    return []


def apply_connection_pool(
    cluster: cluster_pb2.Cluster,
    pool: Mapping[str, Any],
    options: http_protocol_options_pb2.HttpProtocolOptions,
    path: str,
    checked: Checked,
) -> None:
    tcp = pool.get("tcp") or {}
    http = pool.get("http") or {}
    th = cluster.circuit_breakers.thresholds[0]
    if tcp.get("maxConnections"):
        th.max_connections.value = int(tcp["maxConnections"])
    if tcp.get("connectTimeout") is not None:
        cluster.connect_timeout.CopyFrom(duration(tcp["connectTimeout"], path + ".tcp", checked))
    keepalive = tcp.get("tcpKeepalive")
    if keepalive is not None:
        ka = cluster.upstream_connection_options.tcp_keepalive
        if keepalive.get("probes"):
            ka.keepalive_probes.value = int(keepalive["probes"])
        for key, attr in (("time", "keepalive_time"), ("interval", "keepalive_interval")):
            if keepalive.get(key) is not None:
                d = duration(keepalive[key], f"{path}.tcp.tcpKeepalive.{key}", checked)
                getattr(ka, attr).value = max(1, d.seconds)
    if tcp.get("maxConnectionDuration") is not None:
        options.common_http_protocol_options.max_connection_duration.CopyFrom(
            duration(tcp["maxConnectionDuration"], path + ".tcp.maxConnectionDuration", checked)
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
            duration(http["idleTimeout"], path + ".http.idleTimeout", checked)
        )
    elif tcp.get("idleTimeout") is not None:
        # Istio: the TCP idle timeout is the HTTP connections' too unless http sets its own
        # (and the TCP proxy's of the host's TCP listeners: meshcore.xds.listeners).
        options.common_http_protocol_options.idle_timeout.CopyFrom(
            duration(tcp["idleTimeout"], path + ".tcp.idleTimeout", checked)
        )
    if http.get("useClientProtocol"):
        # Istio: speak upstream whatever the client spoke (HTTP/1.1 or HTTP/2).
        downstream = options.use_downstream_protocol_config
        downstream.http_protocol_options.SetInParent()
        downstream.http2_protocol_options.SetInParent()
    elif http.get("h2UpgradePolicy") == "UPGRADE":
        options.explicit_http_config.http2_protocol_options.SetInParent()
    # HTTP/2 settings are only meaningful for HTTP/2 upstreams; they must not turn an HTTP/1.1
    # upstream into h2 (Istio sets them on the cluster's HTTP/2 options only).
    h2 = None
    if options.explicit_http_config.HasField("http2_protocol_options"):
        h2 = options.explicit_http_config.http2_protocol_options
    elif options.HasField("use_downstream_protocol_config"):
        h2 = options.use_downstream_protocol_config.http2_protocol_options
    if h2 is not None and http.get("maxConcurrentStreams"):
        h2.max_concurrent_streams.value = int(http["maxConcurrentStreams"])
    keepalive = http.get("http2KeepAlive")
    if h2 is not None and keepalive is not None:
        kpath = path + ".http.http2KeepAlive"
        for key, attr in (("interval", "interval"), ("timeout", "timeout")):
            getattr(h2.connection_keepalive, attr).CopyFrom(
                duration(keepalive[key], f"{kpath}.{key}", checked)
            )


def apply_outlier(
    cluster: cluster_pb2.Cluster,
    od: Mapping[str, Any],
    path: str,
    checked: Checked,
) -> None:
    """Istio's conversion (``applyOutlierDetection``): success-rate ejection off; a consecutive
    5xx or gateway-error count only where the field is set (Envoy's defaults otherwise: 5xx
    ejection after 5 errors, enforced); the panic threshold always set, to
    ``minHealthPercent`` (0 unless given: Istio turns Envoy's 50% panic mode off)."""
    out = cluster.outlier_detection
    out.enforcing_success_rate.value = 0
    five = od.get("consecutive5xxErrors")  # the deprecated consecutiveErrors: no effect
    if five is not None:
        out.consecutive_5xx.value = int(five)
        out.enforcing_consecutive_5xx.value = 100 if int(five) > 0 else 0
    gateway = od.get("consecutiveGatewayErrors")
    if gateway is not None:
        out.consecutive_gateway_failure.value = int(gateway)
        out.enforcing_consecutive_gateway_failure.value = 100 if int(gateway) > 0 else 0
    if od.get("splitExternalLocalOriginErrors"):
        out.split_external_local_origin_errors = True
        local = int(od.get("consecutiveLocalOriginFailures") or 0)
        if local > 0:
            out.consecutive_local_origin_failure.value = local
            out.enforcing_consecutive_local_origin_failure.value = 100
        out.enforcing_local_origin_success_rate.value = 0
    if od.get("interval") is not None:
        out.interval.CopyFrom(duration(od["interval"], path + ".interval", checked))
    if od.get("baseEjectionTime") is not None:
        out.base_ejection_time.CopyFrom(
            duration(od["baseEjectionTime"], path + ".baseEjectionTime", checked)
        )
    if od.get("maxEjectionPercent"):
        out.max_ejection_percent.value = int(od["maxEjectionPercent"])
    cluster.common_lb_config.healthy_panic_threshold.value = float(od.get("minHealthPercent") or 0)


def upstream_tls(
    tls: Mapping[str, Any],
    sni: str,
    sans: Iterable[str],
    *,
    proxyless: bool,
    path: str,
    simple_sans: bool = False,
    system_ca: str = SYSTEM_CA_BUNDLE,
) -> tls_pb2.UpstreamTlsContext | None:
    """The upstream TLS context of a DestinationRule's ``tls`` settings. ``sans`` are the
    service's accounts: verified by ISTIO_MUTUAL unless ``subjectAltNames`` are given, and by
    SIMPLE and MUTUAL too when ``simple_sans`` (a ServiceEntry host, as Istio does).
    SIMPLE and MUTUAL without ``caCertificates`` verify the server with the system roots
    (``system_ca``), as Istio's VERIFY_CERTIFICATE_AT_CLIENT default does."""
    mode = tls.get("mode", "DISABLE")
    if mode == "DISABLE":
        return None
    ctx = tls_pb2.UpstreamTlsContext(sni=str(tls.get("sni") or sni))
    common = ctx.common_tls_context
    san_list = [str(s) for s in tls.get("subjectAltNames", ())]
    if not san_list and simple_sans:
        san_list = sorted(set(sans))
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
            common.tls_certificate_sds_secret_configs.append(sds(SDS_CERT))
            cvc = common.combined_validation_context
            cvc.validation_context_sds_secret_config.CopyFrom(sds(SDS_ROOT))
            vc = cvc.default_validation_context
            vc.SetInParent()  # required by Envoy even when there is no SAN to match
        vc.match_typed_subject_alt_names.extend(_san_matcher(san) for san in san_list)
        return ctx
    if proxyless:
        raise Invalid(path + ".mode", f"TLS mode {mode} is not supported for proxyless gRPC")
    # SIMPLE / MUTUAL: files on the sidecar, or a credential fetched by SDS.
    if tls.get("credentialName"):
        name = str(tls["credentialName"])
        if mode == "MUTUAL":
            common.tls_certificate_sds_secret_configs.append(sds(name))
        common.combined_validation_context.validation_context_sds_secret_config.CopyFrom(
            sds(name + "-cacert")
        )
        vc = common.combined_validation_context.default_validation_context
        vc.SetInParent()
    else:
        if mode == "MUTUAL":
            cert = common.tls_certificates.add()
            cert.certificate_chain.filename = str(tls["clientCertificate"])
            cert.private_key.filename = str(tls["privateKey"])
        vc = common.validation_context
        if tls.get("insecureSkipVerify"):
            return ctx  # Istio: no server verification at all
        vc.trusted_ca.filename = str(tls.get("caCertificates") or system_ca)
    vc.match_typed_subject_alt_names.extend(_san_matcher(san) for san in san_list)
    return ctx


def _san_matcher(san: str) -> tls_common_pb2.SubjectAltNameMatcher:
    """An exact SAN: a URI (SPIFFE identities) when it has a scheme, else a DNS name (Istio's
    untyped match accepts either; a SAN of one form is only ever of that type)."""
    return tls_common_pb2.SubjectAltNameMatcher(
        san_type=tls_common_pb2.SubjectAltNameMatcher.URI
        if "://" in san
        else tls_common_pb2.SubjectAltNameMatcher.DNS,
        matcher=string_pb2.StringMatcher(exact=san),
    )
