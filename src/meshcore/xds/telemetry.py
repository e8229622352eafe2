"""MeshConfig's telemetry on Envoy config: access logs (file, text or JSON, Istio's default
formats) and Zipkin tracing on connection managers, and the collector's cluster."""

from __future__ import annotations

import ipaddress

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.trace.v3 import http_tracer_pb2, zipkin_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2 as file_log_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshcore.config.meshconfig import DEFAULT_JSON_FORMAT, DEFAULT_TEXT_FORMAT, MeshConfig
from meshcore.names import FILE_LOG_NAME, ZIPKIN_CLUSTER, ZIPKIN_TRACER_NAME
from meshcore.xds.common import DEFAULT_CONNECT_TIMEOUT_NS, duration_ns, pack, socket_address


def access_logs(mc: MeshConfig | None) -> list[accesslog_pb2.AccessLog]:
    if mc is None or not mc.access_log_file:
        return []
    log = file_log_pb2.FileAccessLog(path=mc.access_log_file)
    if mc.access_log_encoding == "JSON":
        log.log_format.json_format.update(DEFAULT_JSON_FORMAT)
    else:
        log.log_format.text_format_source.inline_string = (
            mc.access_log_format or DEFAULT_TEXT_FORMAT
        )
    return [accesslog_pb2.AccessLog(name=FILE_LOG_NAME, typed_config=pack(log))]


def observe(hcm: hcm_pb2.HttpConnectionManager, mc: MeshConfig | None) -> None:
    """Access logs and tracing on an HTTP connection manager, per the MeshConfig."""
    hcm.access_log.extend(access_logs(mc))
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
        http_tracer_pb2.Tracing.Http(name=ZIPKIN_TRACER_NAME, typed_config=pack(zipkin))
    )
    hcm.tracing.random_sampling.value = mc.tracing_sampling


def zipkin_cluster(mc: MeshConfig) -> cluster_pb2.Cluster:
    host, port = mc.zipkin_endpoint()
    c = cluster_pb2.Cluster(
        name=ZIPKIN_CLUSTER,
        type=cluster_pb2.Cluster.STATIC if _is_ip_literal(host) else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration_ns(DEFAULT_CONNECT_TIMEOUT_NS),
    )
    c.load_assignment.cluster_name = ZIPKIN_CLUSTER
    c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        socket_address(host, port)
    )
    return c


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
