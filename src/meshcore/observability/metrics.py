"""Control-plane metrics under istiod's names, on meshcore's own Prometheus registry.

Counters keep Istio's exact series names (``pilot_xds_pushes``, ``pilot_total_xds_rejects``):
prometheus-client would rename a counter to ``*_total`` and add ``*_created`` series, and the
dashboards and alerts people have for istiod query the plain names. So this module keeps its
own numbers and exposes them through one collector: counters as untyped samples with Istio's
names, histograms with Istio's buckets, the connected-proxies gauge.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

# istiod's buckets (seconds for times, bytes for sizes).
TIME_BUCKETS = (0.01, 0.1, 0.5, 1, 3, 5, 10, 20, 30)
SIZE_BUCKETS = (1, 10000, 1000000, 4000000, 10000000, 40000000)


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def family_buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


class XdsMetrics:
    """What the ADS server counts; register it on a registry with :meth:`registry`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pushes: dict[str, int] = defaultdict(int)  # by type: cds, eds, lds, rds, sds
        # Resources in those pushes (a replica a proxy failed over to should send none).
        self.resources_sent: dict[str, int] = defaultdict(int)
        self.rejects: dict[str, int] = defaultdict(int)
        self.connected = 0
        self.push_time: dict[str, _Histogram] = defaultdict(lambda: _Histogram(TIME_BUCKETS))
        self.config_size: dict[str, _Histogram] = defaultdict(lambda: _Histogram(SIZE_BUCKETS))
        self.convergence = _Histogram(TIME_BUCKETS)
        # Called before the figures are read (each ADS server using these metrics applies the
        # ACKs its transport took and has not told yet).
        self.before_read: list[Callable[[], None]] = []

    def push(self, type_name: str, seconds: float, size: int, resources: int = 0) -> None:
        with self._lock:
            self.pushes[type_name] += 1
            self.resources_sent[type_name] += resources
            self.push_time[type_name].observe(seconds)
            self.config_size[type_name].observe(size)

    def reject(self, type_name: str) -> None:
        with self._lock:
            self.rejects[type_name] += 1

    def converged(self, seconds: float) -> None:
        with self._lock:
            self.convergence.observe(seconds)

    def connect(self, delta: int) -> None:
        with self._lock:
            self.connected += delta

    def collect(self) -> Iterator[Metric]:
        for hook in self.before_read:
            hook()
        with self._lock:
            yield _untyped("pilot_xds_pushes", "Pushes by xDS type.", self.pushes)
            yield _untyped(
                "meshcore_xds_resources_sent",
                "Resources sent in xDS responses, by type (delta: only those the proxy lacks).",
                self.resources_sent,
            )
            yield _untyped(
                "pilot_total_xds_rejects",
                "Configs rejected (NACKed) by proxies, by xDS type.",
                self.rejects,
            )
            gauge = GaugeMetricFamily("pilot_xds", "Connected xDS clients.", labels=["version"])
            gauge.add_metric(["meshcore"], self.connected)
            yield gauge
            yield _histograms(
                "pilot_xds_push_time", "Time to build and send a push, by type (s).", self.push_time
            )
            yield _histograms(
                "pilot_xds_config_size_bytes", "Size of pushed configs, by type.", self.config_size
            )
            conv = HistogramMetricFamily(
                "pilot_proxy_convergence_time", "Time from a config change to the proxy's ACK (s)."
            )
            conv.add_metric([], self.convergence.family_buckets(), self.convergence.total)
            yield conv

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry


def _untyped(name: str, doc: str, values: dict[str, int]) -> Metric:
    metric = Metric(name, doc, "untyped")
    for type_name, value in sorted(values.items()):
        metric.add_sample(name, {"type": type_name}, float(value))
    return metric


def _histograms(name: str, doc: str, by_type: dict[str, _Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["type"])
    for type_name, hist in sorted(by_type.items()):
        family.add_metric([type_name], hist.family_buckets(), hist.total)
    return family
