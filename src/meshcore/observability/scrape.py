"""The control plane's view of its sidecars' Istio metrics: each agent that collects them
advertises its merged Prometheus endpoint in its node metadata (``MESHCORE_METRICS_URL``, as
Istio's pods advertise 15020 ``/stats/prometheus`` to Prometheus); :class:`MeshScraper` reads
those endpoints (bounded: at most ``limit`` proxies, each with a timeout, on the sampler's
thread, never the event loop) and turns them back into :class:`IstioMetrics` for the status
page's per-edge plots.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

from prometheus_client.parser import text_string_to_metric_families

from meshcore.observability.istio import DURATION_BUCKETS, LABELS, IstioMetrics, _key
from meshcore.observability.metrics import _Histogram

log = logging.getLogger("meshcore.observability")

METRICS_URL_KEY = "MESHCORE_METRICS_URL"
MAX_BYTES = 16 * 1024 * 1024


def parse_istio(text: str) -> IstioMetrics:
    """The request counts and duration histograms of a Prometheus text exposition (Istio's
    names and labels; everything else in it is skipped)."""
    metrics = IstioMetrics()
    cumulative: dict[tuple[str, ...], dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "istio_requests":
            for s in family.samples:
                if s.name == "istio_requests_total":
                    metrics.requests[_key(s.labels, LABELS)] += int(s.value)
        elif family.name == "istio_request_duration_milliseconds":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    cumulative.setdefault(_key(s.labels, LABELS), {})[le] = s.value
    for key, buckets in cumulative.items():
        hist = _Histogram(DURATION_BUCKETS)
        prev = 0.0
        for i, bound in enumerate((*DURATION_BUCKETS, float("inf"))):
            value = buckets.get(float(bound), prev)
            hist.counts[i] = int(value - prev)
            prev = value
        metrics.durations[key] = hist
    return metrics


def scrape(url: str, timeout: float = 1.0) -> IstioMetrics | None:
    """One endpoint's Istio metrics; None (and a debug line) when it cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read(MAX_BYTES).decode("utf-8", "replace")
        return parse_istio(text)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        log.debug("cannot scrape %s: %s", url, exc)
        return None


class MeshScraper:
    """The Istio metrics of the proxies whose metadata advertise an endpoint (``urls`` gives
    them: proxy id -> URL); a callable for :class:`meshcore.observability.status.EdgeSampler`."""

    def __init__(
        self, urls: Callable[[], dict[str, str]], limit: int = 64, timeout: float = 1.0
    ) -> None:
        self.urls = urls
        self.limit = limit
        self.timeout = timeout

    def __call__(self) -> Iterable[IstioMetrics]:
        out = []
        for _, url in sorted(self.urls().items())[: self.limit]:
            if not url.startswith(("http://", "https://")):
                continue
            metrics = scrape(url, self.timeout)
            if metrics is not None:
                out.append(metrics)
        return out
