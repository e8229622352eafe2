"""Istio's standard metrics (``istio_requests_total`` and the rest), Istio's names and labels,
kept by whoever sees the requests: meshcore's reference proxy, and ``meshcore agent`` for the
Envoy sidecars it runs (from their access-log stream, :mod:`meshcore.dataplane.telemetry`).

The names, labels and meaning follow Istio's "standard metrics" reference: a request counter,
duration / request size / response size histograms for HTTP and gRPC, and for TCP bytes sent
and received and connections opened and closed. Labels a reporter cannot know are ``unknown``
(Istio's value for an unknown peer).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from meshcore.observability.metrics import _Histogram

# Envoy's default histogram buckets, which Istio's histograms (stats of its Envoy) use:
# milliseconds for durations, bytes for sizes.
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                    60000, 300000, 600000, 1800000, 3600000)  # fmt: skip
SIZE_BUCKETS = DURATION_BUCKETS

# Istio's labels on HTTP/gRPC metrics, in its order.
LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_principal",
    "source_app", "source_version", "source_cluster", "destination_workload",
    "destination_workload_namespace", "destination_principal", "destination_app",
    "destination_version", "destination_service", "destination_service_name",
    "destination_service_namespace", "destination_cluster", "request_protocol",
    "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
)  # fmt: skip
# TCP metrics have no response code or gRPC status.
TCP_LABELS = tuple(n for n in LABELS if n not in ("response_code", "grpc_response_status"))
UNKNOWN = "unknown"

Key = tuple[str, ...]


def _key(labels: Mapping[str, str], names: tuple[str, ...]) -> Key:
    return tuple(labels.get(name) or UNKNOWN if name != "grpc_response_status"
                 else labels.get(name, "") for name in names)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Series:
    """One label set's keys in the HTTP and the TCP metrics (computed once, reused)."""

    http: Key
    tcp: Key

    @classmethod
    def of(cls, labels: Mapping[str, str]) -> Series:
        return cls(_key(labels, LABELS), _key(labels, TCP_LABELS))


Labels = Mapping[str, str] | Series


def _series(labels: Labels) -> Series:
    return labels if isinstance(labels, Series) else Series.of(labels)


class IstioMetrics:
    """Istio's standard metrics of one proxy; a prometheus-client collector."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[Key, int] = defaultdict(int)
        self.durations: dict[Key, _Histogram] = defaultdict(lambda: _Histogram(DURATION_BUCKETS))
        self.request_sizes: dict[Key, _Histogram] = defaultdict(lambda: _Histogram(SIZE_BUCKETS))
        self.response_sizes: dict[Key, _Histogram] = defaultdict(lambda: _Histogram(SIZE_BUCKETS))
        self.tcp_sent: dict[Key, int] = defaultdict(int)
        self.tcp_received: dict[Key, int] = defaultdict(int)
        self.tcp_opened: dict[Key, int] = defaultdict(int)
        self.tcp_closed: dict[Key, int] = defaultdict(int)

    def record(
        self,
        labels: Labels,
        millis: float,
        request_bytes: int | None = None,
        response_bytes: int | None = None,
        disabled: Collection[str] = (),
    ) -> None:
        """One HTTP or gRPC request (``None`` sizes: not measured, no observation);
        ``disabled``: Istio's names of metrics not to report (a Telemetry's overrides)."""
        key = _series(labels).http
        with self._lock:
            if "REQUEST_COUNT" not in disabled:
                self.requests[key] += 1
            if "REQUEST_DURATION" not in disabled:
                self.durations[key].observe(millis)
            if request_bytes is not None and "REQUEST_SIZE" not in disabled:
                self.request_sizes[key].observe(request_bytes)
            if response_bytes is not None and "RESPONSE_SIZE" not in disabled:
                self.response_sizes[key].observe(response_bytes)

    def tcp_open(self, labels: Labels, disabled: Collection[str] = ()) -> None:
        if "TCP_OPENED_CONNECTIONS" not in disabled:
            with self._lock:
                self.tcp_opened[_series(labels).tcp] += 1

    def tcp_bytes(
        self, labels: Labels, sent: int, received: int, disabled: Collection[str] = ()
    ) -> None:
        """Bytes a TCP connection sent to its client and received from it since the last call."""
        key = _series(labels).tcp
        with self._lock:
            if "TCP_SENT_BYTES" not in disabled:
                self.tcp_sent[key] += sent
            if "TCP_RECEIVED_BYTES" not in disabled:
                self.tcp_received[key] += received

    def tcp_close(self, labels: Labels, disabled: Collection[str] = ()) -> None:
        if "TCP_CLOSED_CONNECTIONS" not in disabled:
            with self._lock:
                self.tcp_closed[_series(labels).tcp] += 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            yield _counter("istio_requests", "Requests.", LABELS, self.requests)
            yield _histogram(
                "istio_request_duration_milliseconds", "Request duration (ms).", self.durations
            )
            yield _histogram("istio_request_bytes", "Request body sizes.", self.request_sizes)
            yield _histogram("istio_response_bytes", "Response body sizes.", self.response_sizes)
            for name, doc, values in (
                ("istio_tcp_sent_bytes", "Bytes sent to the client (TCP).", self.tcp_sent),
                ("istio_tcp_received_bytes", "Bytes received from the client.", self.tcp_received),
                ("istio_tcp_connections_opened", "TCP connections opened.", self.tcp_opened),
                ("istio_tcp_connections_closed", "TCP connections closed.", self.tcp_closed),
            ):
                yield _counter(name, doc, TCP_LABELS, values)

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def exposition(self) -> bytes:
        """The Prometheus text format of these metrics."""
        return generate_latest(self.registry())


def _counter(name: str, doc: str, names: tuple[str, ...], values: dict[Key, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=names)
    for key, n in sorted(values.items()):
        family.add_metric(list(key), n)
    return family


def _histogram(name: str, doc: str, values: dict[Key, _Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=LABELS)
    for key, h in sorted(values.items()):
        family.add_metric(list(key), h.family_buckets(), h.total)
    return family
