"""Istio's standard metrics for an Envoy sidecar, kept by its agent.

Stock Envoy has no Istio stats filter. The control plane gives the sidecar's listeners Envoy's
OpenTelemetry access logger (:func:`meshcore.xds.telemetry.istio_stats_logger`): Envoy sends,
in batches over one gRPC stream of OTLP ``Export`` calls on a Unix socket, each request's (and
each TCP connection's) attributes to this module's :class:`AccessLogReceiver`, which turns them
into Istio's labels and keeps the counters and histograms
(:class:`meshcore.observability.istio.IstioMetrics`). The agent serves them merged with Envoy's
own statistics on ``/stats/prometheus`` of its status port (Istio's 15020).

Who the peer is (Istio's metadata exchange, rebuilt from stock parts):

- outbound (``reporter="source"``): the endpoint's ``istio.workload`` metadata, which the
  control plane sets on every endpoint, and the upstream certificate's SPIFFE id;
- inbound (``reporter="destination"``): the calling sidecar's workload metadata, which its
  Envoy puts in a request header from its agent's environment, believed only when it names the
  namespace of the caller's verified SPIFFE id (a caller cannot claim another namespace's
  workload), and that SPIFFE id. Without mTLS the source is ``unknown``, as in Istio.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc

from meshcore.ca.sds import uds_path
from meshcore.observability.istio import UNKNOWN, IstioMetrics, Series
from meshcore.xds.telemetry import workload_metadata

UDS_NAME = "telemetry.sock"
# The attributes the labels are made of (the others are measurements).
_LABEL_ATTRS = ("direction", "peer_principal", "peer_workload", "upstream_cluster", "services",
                "authority", "content_type", "protocol", "response_code", "grpc_status",
                "response_flags")  # fmt: skip
MAX_CACHED_SERIES = 10_000
MAX_OPEN_CONNECTIONS = 100_000


@dataclass(frozen=True)
class WorkloadInfo:
    """What the metrics say about one side of a request."""

    name: str = UNKNOWN
    namespace: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    principal: str = UNKNOWN

    @classmethod
    def of(
        cls, name: str, namespace: str, labels: Mapping[str, str], principal: str
    ) -> WorkloadInfo:
        """A workload from its name, namespace, labels and SPIFFE id (the agent's own)."""
        return cls.parse(workload_metadata(name, namespace, labels), principal)

    @classmethod
    def parse(cls, metadata: str, principal: str) -> WorkloadInfo:
        """From Istio's ``NAME;NAMESPACE;APP;VERSION;CLUSTER`` (``-``, empty: unknown)."""
        parts = [p or UNKNOWN for p in _value(metadata).split(";")]
        if len(parts) < 4:
            return cls(principal=principal)
        return cls(parts[0], parts[1], parts[2], parts[3], principal)

    @property
    def metadata(self) -> str:
        return f"{self.name};{self.namespace};{self.app};{self.version};Kubernetes"

    def labels(self, side: str) -> dict[str, str]:
        return {
            f"{side}_workload": self.name,
            f"{side}_workload_namespace": self.namespace,
            f"{side}_principal": self.principal,
            f"{side}_app": self.app,
            f"{side}_version": self.version,
            f"{side}_cluster": "Kubernetes" if self.name != UNKNOWN else UNKNOWN,
        }


def _value(raw: str) -> str:
    """An access-log value: Envoy writes ``-`` for a missing one, metadata strings quoted."""
    raw = raw.strip()
    if raw == "-":
        return ""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1]
    return raw


def spiffe_namespace(principal: str) -> str | None:
    """The namespace of ``spiffe://TRUST_DOMAIN/ns/NS/sa/SA``."""
    parts = principal.removeprefix("spiffe://").split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
        return parts[2]
    return None


def _service(attrs: Mapping[str, str], own_namespace: str) -> tuple[str, str, str]:
    """destination_service, its name and namespace: outbound from the upstream cluster
    (``outbound|PORT|SUBSET|HOST``), inbound from the Services the listener serves (the one
    the authority names when several do); else the authority's host."""
    cluster = _value(attrs.get("upstream_cluster", ""))
    authority = _value(attrs.get("authority", "")).lower()
    if ":" in authority and not authority.endswith("]"):
        authority = authority.rsplit(":", 1)[0]
    host = ""
    parts = cluster.split("|")
    if len(parts) == 4 and parts[0] == "outbound":
        host = parts[3]
    elif services := [s for s in _value(attrs.get("services", "")).split(",") if s]:
        host = services[0]
        for s in services:
            if authority and (s == authority or s.startswith(authority + ".")):
                host = s
                break
    else:
        host = authority
    if not host:
        return UNKNOWN, UNKNOWN, UNKNOWN
    labels = host.split(".")
    if len(labels) >= 2 and labels[2:3] in (["svc"], []):
        return host, labels[0], labels[1]
    return host, host, own_namespace if len(labels) == 1 else UNKNOWN


def _protocol(attrs: Mapping[str, str]) -> str:
    if _value(attrs.get("content_type", "")).startswith("application/grpc"):
        return "grpc"
    return "http" if _value(attrs.get("protocol", "")).startswith("HTTP") else "tcp"


@functools.lru_cache(maxsize=64)
def _disabled(raw: str) -> frozenset[str]:
    return frozenset(filter(None, raw.split(",")))


def _int(raw: str) -> int:
    v = _value(raw)
    return int(v) if v.isdigit() else 0


class AccessLogReceiver(logs_service_pb2_grpc.LogsServiceServicer):
    """The OTLP logs service Envoy's access logger streams to; records Istio's metrics."""

    def __init__(self, own: WorkloadInfo, metrics: IstioMetrics | None = None) -> None:
        self.own = own
        self.metrics = metrics if metrics is not None else IstioMetrics()
        self.records = 0  # log records received (each request, each TCP open and close)
        self.exports = 0  # Export calls (batches)
        self.cpu_seconds = 0.0  # CPU time spent turning records into metrics
        self._series: dict[tuple[str, ...], tuple[str, Series]] = {}
        # Open TCP connections: (direction, connection id) -> (counted open, sent, received).
        self._connections: dict[tuple[str, str], tuple[bool, int, int]] = {}

    async def Export(
        self, request: logs_service_pb2.ExportLogsServiceRequest, context: object
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        started = time.thread_time()
        self.observe(
            {kv.key: kv.value.string_value for kv in record.attributes}
            for rl in request.resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
        )
        self.exports += 1
        self.cpu_seconds += time.thread_time() - started
        return logs_service_pb2.ExportLogsServiceResponse()

    def observe(self, records: Iterable[Mapping[str, str]]) -> None:
        for attrs in records:
            self.records += 1
            self.record(attrs)

    def labels(self, attrs: Mapping[str, str]) -> dict[str, str]:
        """Istio's labels for one access-log record."""
        outbound = attrs.get("direction") == "outbound"
        principal = _value(attrs.get("peer_principal", "")) or UNKNOWN
        peer = WorkloadInfo.parse(attrs.get("peer_workload", ""), principal)
        if not outbound and peer.namespace != spiffe_namespace(principal):
            peer = WorkloadInfo(principal=principal)  # unverified claim: not believed
        source, dest = (self.own, peer) if outbound else (peer, self.own)
        service, name, namespace = _service(attrs, self.own.namespace)
        policy = UNKNOWN if outbound else "mutual_tls" if principal != UNKNOWN else "none"
        grpc_status = _value(attrs.get("grpc_status", ""))
        return {
            "reporter": "source" if outbound else "destination",
            **source.labels("source"),
            **dest.labels("destination"),
            "destination_service": service,
            "destination_service_name": name,
            "destination_service_namespace": namespace,
            "request_protocol": _protocol(attrs),
            "response_code": _value(attrs.get("response_code", "")) or "0",
            "grpc_response_status": grpc_status if grpc_status.isdigit() else "",
            "response_flags": _value(attrs.get("response_flags", "")) or "-",
            "connection_security_policy": policy,
        }

    def record(self, attrs: Mapping[str, str]) -> None:
        # The labels depend on a few attributes, which repeat: computed once per combination.
        cache_key = tuple(attrs.get(name, "") for name in _LABEL_ATTRS)
        found = self._series.get(cache_key)
        if found is None:
            if len(self._series) >= MAX_CACHED_SERIES:
                self._series.clear()
            labels = self.labels(attrs)
            found = self._series[cache_key] = (labels["reporter"], Series.of(labels))
        reporter, series = found
        kind = _value(attrs.get("log_type", ""))
        disabled = _disabled(attrs.get("disabled_metrics", ""))
        if kind.startswith("Tcp"):
            self._tcp(kind, attrs, reporter, series, disabled)
            return
        self.metrics.record(
            series,
            float(_int(attrs.get("duration_ms", ""))),
            request_bytes=_int(attrs.get("request_bytes", "")),
            response_bytes=_int(attrs.get("response_bytes", "")),
            disabled=disabled,
        )

    def _tcp(
        self,
        kind: str,
        attrs: Mapping[str, str],
        reporter: str,
        series: Series,
        disabled: frozenset[str],
    ) -> None:
        """A TCP connection's records: when the upstream connects (outbound: counted open;
        inbound: the client's TLS handshake may not be done, so its SPIFFE id unknown yet),
        every few seconds while it lasts, and when it ends. An inbound connection is counted
        open at its first record after the connect one; bytes are counted as they grow."""
        conn = (attrs.get("direction", ""), _value(attrs.get("connection_id", "")))
        opened, sent, received = self._connections.get(conn, (False, 0, 0))
        if not opened and (kind != "TcpUpstreamConnected" or reporter == "source"):
            self.metrics.tcp_open(series, disabled)
            opened = True
        now_sent = _int(attrs.get("response_bytes", ""))
        now_received = _int(attrs.get("request_bytes", ""))
        if now_sent > sent or now_received > received:
            self.metrics.tcp_bytes(series, now_sent - sent, now_received - received, disabled)
        if kind == "TcpConnectionEnd":
            self.metrics.tcp_close(series, disabled)
            self._connections.pop(conn, None)
        else:
            self._connections[conn] = (opened, max(sent, now_sent), max(received, now_received))
            if len(self._connections) > MAX_OPEN_CONNECTIONS:
                # A connection whose end was never reported (its Envoy restarted): the oldest go.
                del self._connections[next(iter(self._connections))]


async def start_receiver(
    receiver: AccessLogReceiver, workdir: str | os.PathLike[str]
) -> tuple[grpc.aio.Server, str]:
    """Serves ``receiver`` on ``WORKDIR/telemetry.sock`` (a short path under the runtime
    directory when the workdir is too deep for a Unix socket path, as SDS's); returns the
    server and ``unix:PATH``."""
    path = uds_path(workdir, UDS_NAME)
    path.unlink(missing_ok=True)
    server = grpc.aio.server()
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    os.chmod(path, 0o600)
    return server, f"unix:{path}"


__all__ = ["AccessLogReceiver", "WorkloadInfo", "spiffe_namespace", "start_receiver"]
