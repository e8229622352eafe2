"""MeshConfig's telemetry on Envoy config: access logs (file, text or JSON, Istio's default
formats) and Zipkin tracing on connection managers, and the collector's cluster; and the
access-log stream from which a sidecar's agent keeps Istio's standard metrics."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2 as file_log_pb2
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2 as otel_log_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.header_to_metadata.v3 import header_to_metadata_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.tracers.opentelemetry.resource_detectors.v3 import (
    environment_resource_detector_pb2 as environment_detector_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_options_pb2

from meshcore.config.meshconfig import (
    DEFAULT_JSON_FORMAT,
    DEFAULT_SAMPLING,
    DEFAULT_TEXT_FORMAT,
    MeshConfig,
)
from meshcore.config.telemetry import TelemetryPolicy, TracingProvider
from meshcore.names import FILE_LOG_NAME, HTTP_OPTIONS_KEY, ZIPKIN_TRACER_NAME
from meshcore.xds.common import DEFAULT_CONNECT_TIMEOUT_NS, duration_ns, pack, socket_address

NO_POLICY = TelemetryPolicy()


@dataclass(frozen=True, slots=True)
class TelemetryScope:
    """A proxy's telemetry: the MeshConfig's providers with the Telemetry resources selecting
    its workload applied, and whether its agent collects Istio's metrics. Listeners built for
    one scope serve every proxy of the same scope (``key``)."""

    mc: MeshConfig | None
    policy: TelemetryPolicy = NO_POLICY
    agent: bool = False  # node metadata MESHCORE_TELEMETRY=otlp: the agent has the cluster

    @property
    def key(self) -> tuple[TelemetryPolicy, bool]:
        return (self.policy, self.agent)

    def tracer(self) -> TracingProvider | None:
        if self.mc is None or self.policy.disable_span_reporting:
            return None
        if self.policy.tracing_provider is not None:
            return self.mc.providers.tracing.get(self.policy.tracing_provider)
        return self.mc.tracer()

    def sampling(self) -> float:
        if self.policy.sampling is not None:
            return self.policy.sampling
        return self.mc.tracing_sampling if self.mc is not None else DEFAULT_SAMPLING

    def metrics(self, direction: str) -> bool:
        """Whether Istio's metrics are reported on this side (``outbound``, ``inbound``)."""
        if not self.agent or ("ALL_METRICS", direction) in self.policy.metrics_disabled:
            return False
        names = self.policy.metrics_providers
        if names is None:
            return self.mc is None or self.mc.istio_metrics
        return self.mc is None or any(n in self.mc.providers.metrics for n in names)

    def disabled_metrics(self, direction: str) -> list[str]:
        return sorted(m for m, d in self.policy.metrics_disabled if d == direction)

    def access_logs(self, direction: str) -> list[accesslog_pb2.AccessLog]:
        """File access logs: the Telemetry's or ``defaultProviders.accessLogging``'s
        envoyFileAccessLog providers, else ``accessLogFile``."""
        mc = self.mc
        if mc is None or direction in self.policy.logging_disabled:
            return []
        names = self.policy.logging_providers
        if names is None:
            names = mc.default_logging
        if names:
            out = []
            for name in names:
                provider = mc.providers.logging.get(name)
                if provider is None:
                    continue  # reported as the proxy's problem (unknown provider)
                log = file_log_pb2.FileAccessLog(path=provider.path or "/dev/stdout")
                log.log_format.text_format_source.inline_string = (
                    provider.text_format or DEFAULT_TEXT_FORMAT
                )
                out.append(accesslog_pb2.AccessLog(name=FILE_LOG_NAME, typed_config=pack(log)))
            return out
        if not mc.access_log_file:
            return []
        log = file_log_pb2.FileAccessLog(path=mc.access_log_file)
        if mc.access_log_encoding == "JSON":
            log.log_format.json_format.update(DEFAULT_JSON_FORMAT)
        else:
            log.log_format.text_format_source.inline_string = (
                mc.access_log_format or DEFAULT_TEXT_FORMAT
            )
        return [accesslog_pb2.AccessLog(name=FILE_LOG_NAME, typed_config=pack(log))]


def observe(hcm: hcm_pb2.HttpConnectionManager, scope: TelemetryScope, direction: str) -> None:
    """Access logs and tracing on an HTTP connection manager, per the proxy's scope."""
    hcm.access_log.extend(scope.access_logs(direction))
    tracer = scope.tracer()
    if tracer is None:
        return
    if tracer.kind == "opentelemetry":
        otel = opentelemetry_pb2.OpenTelemetryConfig()
        otel.grpc_service.envoy_grpc.cluster_name = tracer.cluster
        otel.grpc_service.envoy_grpc.authority = tracer.service
        # Each sidecar names its service through its agent's OTEL_RESOURCE_ATTRIBUTES (one
        # listener config serves every sidecar of an outbound address).
        otel.resource_detectors.add(
            name=OTEL_ENV_DETECTOR, typed_config=pack(environment_detector_pb2.
                                                      EnvironmentResourceDetectorConfig())
        )  # fmt: skip
        provider = http_tracer_pb2.Tracing.Http(name=OTEL_TRACER_NAME, typed_config=pack(otel))
    else:
        zipkin = zipkin_pb2.ZipkinConfig(
            collector_cluster=tracer.cluster,
            collector_endpoint="/api/v2/spans",
            collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
            trace_id_128bit=tracer.trace_id_128bit,
        )
        zipkin.shared_span_context.value = False
        provider = http_tracer_pb2.Tracing.Http(name=ZIPKIN_TRACER_NAME, typed_config=pack(zipkin))
    hcm.tracing.provider.CopyFrom(provider)
    hcm.tracing.random_sampling.value = scope.sampling()
    hcm.tracing.max_path_tag_length.value = tracer.max_tag_length
    # Istio's span tags: each sidecar's own, from its agent's environment (one listener config
    # serves every sidecar of an outbound address).
    for key, env in sorted(SPAN_TAG_ENV.items()):
        tag = hcm.tracing.custom_tags.add(tag=f"istio.{key}")
        tag.environment.name = env
        tag.environment.default_value = "unknown"
    if mc_trust_domain := (scope.mc.trust_domain if scope.mc is not None else ""):
        hcm.tracing.custom_tags.add(tag="istio.mesh_id").literal.value = mc_trust_domain


def tracing_clusters(mc: MeshConfig) -> list[cluster_pb2.Cluster]:
    """The tracing collectors' clusters (HTTP/2 for OTLP over gRPC): the default one, and
    every tracing provider (a Telemetry may name any)."""
    tracers = {t.cluster: t for t in mc.providers.tracing.values()}
    default = mc.tracer()
    if default is not None:
        tracers[default.cluster] = default
    return [_tracing_cluster(t) for _, t in sorted(tracers.items())]


def _tracing_cluster(tracer: TracingProvider) -> cluster_pb2.Cluster:
    host, port = tracer.service, tracer.port
    c = cluster_pb2.Cluster(
        name=tracer.cluster,
        type=cluster_pb2.Cluster.STATIC if _is_ip_literal(host) else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration_ns(DEFAULT_CONNECT_TIMEOUT_NS),
    )
    c.load_assignment.cluster_name = tracer.cluster
    c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        socket_address(host, port)
    )
    if tracer.kind == "opentelemetry":
        options = http_options_pb2.HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.SetInParent()
        c.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(options))
    return c


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


OTEL_TRACER_NAME = "envoy.tracers.opentelemetry"
OTEL_ENV_DETECTOR = "envoy.tracers.opentelemetry.resource_detectors.environment"
OTEL_ENV = "OTEL_RESOURCE_ATTRIBUTES"  # the agent sets service.name there
# Istio's span tags (istio.KEY) and the environment variables the agent sets them in.
SPAN_TAG_ENV = {key: f"MESHCORE_SPAN_{key.upper()}" for key in
                ("canonical_service", "canonical_revision", "namespace", "workload")}  # fmt: skip


# --- Istio's standard metrics from stock Envoy ----------------------------------------------
#
# Envoy has no Istio stats filter, so each request's attributes go, through Envoy's
# OpenTelemetry access logger (OTLP logs over gRPC), to the sidecar's agent, which keeps
# Istio's counters and histograms (:mod:`meshcore.dataplane.telemetry`). Who the peer is:
# outbound, the endpoint's ``istio.workload`` metadata from the control plane (as Istio sets
# it on every endpoint) and the upstream certificate's SPIFFE id; inbound, the calling
# sidecar's workload metadata in a request header (Istio's metadata exchange, here set by the
# calling Envoy from its agent's environment), trusted only when it names the namespace of the
# peer's verified SPIFFE id, and the peer certificate's SPIFFE id.

# Node metadata an agent sends when it runs the access-log service and the bootstrap cluster
# below: only then do listeners carry the telemetry filters (other Envoys lack the cluster).
TELEMETRY_KEY = "MESHCORE_TELEMETRY"
TELEMETRY_CLUSTER = "meshcore-telemetry"
PEER_HEADER = "x-meshcore-peer-metadata"
PEER_ENV = "MESHCORE_PEER_METADATA"  # the workload's metadata, in the Envoy's environment
PEER_NAMESPACE = "meshcore.peer"  # dynamic metadata the inbound side keeps the header in
OTEL_LOGGER_NAME = "envoy.access_loggers.open_telemetry"
HEADER_MUTATION_NAME = "envoy.filters.http.header_mutation"
HEADER_TO_METADATA_NAME = "envoy.filters.http.header_to_metadata"

# The attributes of each log record: what the agent's labels are made of.
_COMMON = {
    "protocol": "%PROTOCOL%",
    "content_type": "%REQ(CONTENT-TYPE)%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "grpc_status": "%GRPC_STATUS_NUMBER%",
    "duration_ms": "%DURATION%",
    "request_bytes": "%BYTES_RECEIVED%",
    "response_bytes": "%BYTES_SENT%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "authority": "%REQ(:AUTHORITY)%",
    "log_type": "%ACCESS_LOG_TYPE%",
    "connection_id": "%CONNECTION_ID%",
}
ALS_BUFFER_BYTES = 256 * 1024
TCP_REPORT_INTERVAL_NS = 5_000_000_000  # Istio's stats report TCP connections every 5 s
_BY_DIRECTION = {
    "outbound": {
        "peer_principal": "%UPSTREAM_PEER_URI_SAN%",
        "peer_workload": "%UPSTREAM_METADATA(istio:workload)%",
    },
    "inbound": {
        "peer_principal": "%DOWNSTREAM_PEER_URI_SAN%",
        "peer_workload": f"%DYNAMIC_METADATA({PEER_NAMESPACE}:workload)%",
    },
}


def agent_collects(metadata: Mapping[str, object]) -> bool:
    """Whether a proxy's node metadata says its agent collects Istio's metrics."""
    return str(metadata.get(TELEMETRY_KEY, "")) == "otlp"


def istio_stats_logger(
    direction: str, services: Sequence[str] = (), disabled: Sequence[str] = ()
) -> accesslog_pb2.AccessLog:
    """The OpenTelemetry access logger streaming each request's (or TCP connection's)
    attributes to the agent; ``services``: the Services an inbound listener serves;
    ``disabled``: Istio's names of the metrics not to report (a Telemetry's overrides)."""
    log = otel_log_pb2.OpenTelemetryAccessLogConfig()
    common = log.common_config
    common.log_name = f"istio-{direction}"
    common.grpc_service.envoy_grpc.cluster_name = TELEMETRY_CLUSTER
    common.transport_api_version = config_source_pb2.V3
    # Larger batches than Envoy's 16 KiB default: fewer Export calls for the agent to serve
    # (still sent at least every second).
    common.buffer_size_bytes.value = ALS_BUFFER_BYTES
    attrs = {**_COMMON, **_BY_DIRECTION[direction], "direction": direction}
    if services:
        attrs["services"] = ",".join(services)
    if disabled:
        attrs["disabled_metrics"] = ",".join(disabled)
    for key, value in attrs.items():
        log.attributes.values.add(key=key).value.string_value = value
    log.disable_builtin_labels = True
    return accesslog_pb2.AccessLog(name=OTEL_LOGGER_NAME, typed_config=pack(log))


def istio_stats_http(hcm: hcm_pb2.HttpConnectionManager, direction: str,
                     services: Sequence[str] = (), disabled: Sequence[str] = ()) -> None:  # fmt: skip
    """The access logger, and the metadata exchange: outbound, this workload's metadata in a
    request header; inbound, that header moved into dynamic metadata (and off the request the
    app sees). Call before the other HTTP filters are added: these go first."""
    hcm.access_log.append(istio_stats_logger(direction, services, disabled))
    if direction == "outbound":
        mutation = header_mutation_pb2.HeaderMutation()
        option = mutation.mutations.request_mutations.add().append
        option.header.key = PEER_HEADER
        option.header.value = f"%ENVIRONMENT({PEER_ENV})%"
        option.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        hcm.http_filters.add(name=HEADER_MUTATION_NAME, typed_config=pack(mutation))
    else:
        to_meta = header_to_metadata_pb2.Config()
        rule = to_meta.request_rules.add(header=PEER_HEADER, remove=True)
        rule.on_header_present.metadata_namespace = PEER_NAMESPACE
        rule.on_header_present.key = "workload"
        rule.on_header_present.type = header_to_metadata_pb2.Config.STRING
        hcm.http_filters.add(name=HEADER_TO_METADATA_NAME, typed_config=pack(to_meta))


def istio_stats_tcp(proxy: tcp_proxy_pb2.TcpProxy, direction: str,
                    services: Sequence[str] = (), disabled: Sequence[str] = ()) -> None:  # fmt: skip
    """The access logger on a TCP proxy: when the upstream connection opens, every 5 s while it
    lasts and when it closes (``%ACCESS_LOG_TYPE%`` tells them apart)."""
    proxy.access_log.append(istio_stats_logger(direction, services, disabled))
    proxy.access_log_options.flush_access_log_on_connected = True
    proxy.access_log_options.access_log_flush_interval.CopyFrom(duration_ns(TCP_REPORT_INTERVAL_NS))


def workload_metadata(name: str, namespace: str, labels: Mapping[str, str]) -> str:
    """Istio's ``istio.workload`` endpoint metadata: ``NAME;NAMESPACE;APP;VERSION;CLUSTER``."""
    app = labels.get("service.istio.io/canonical-name") or labels.get("app", "")
    version = labels.get("service.istio.io/canonical-revision") or labels.get("version", "")
    return f"{name};{namespace};{app};{version};Kubernetes"
