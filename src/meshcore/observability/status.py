"""A live status page, drawn on the server as SVG (no script, nothing fetched at run time; the
page reloads itself every few seconds): the control plane's proxies and their sync state per
xDS type, the last NACKs, push-time and convergence histograms, and, where sidecars' Istio
metrics are at hand, request rate / error rate / p50-p99 latency per service edge.

``meshcore serve`` serves it on its monitoring port (``/status``); ``meshcore demo --serve``
adds the demo's sidecars (their edges and certificates).
"""

from __future__ import annotations

import html
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from meshcore.observability.istio import DURATION_BUCKETS, LABELS, IstioMetrics
from meshcore.observability.metrics import XdsMetrics

WIDTH, HEIGHT, PAD = 420, 150, 30
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
REFRESH_S = 2
WINDOW_S = 10.0  # rates and percentiles over the last seconds


def svg_bars(title: str, bars: Sequence[tuple[str, float]]) -> str:
    """A bar chart (a histogram's buckets: label, count)."""
    top = max((v for _, v in bars), default=0) or 1
    n = max(len(bars), 1)
    w = (WIDTH - 2 * PAD) / n
    out = [_frame(title)]
    for i, (label, value) in enumerate(bars):
        h = (HEIGHT - 2 * PAD) * value / top
        x = PAD + i * w
        out.append(f'<rect class="bar" x="{x:.1f}" y="{HEIGHT - PAD - h:.1f}" '
                   f'width="{max(w - 2, 1):.1f}" height="{h:.1f}" fill="{COLORS[0]}">'
                   f"<title>{html.escape(label)}: {value:g}</title></rect>")  # fmt: skip
        if i % max(1, n // 6) == 0:
            out.append(f'<text x="{x:.1f}" y="{HEIGHT - PAD + 12}" font-size="9">'
                       f"{html.escape(label)}</text>")  # fmt: skip
    out.append(f'<text x="{PAD}" y="{PAD - 4}" font-size="9">max {top:g}</text></svg>')
    return "".join(out)


def svg_lines(title: str, series: Mapping[str, Sequence[tuple[float, float]]], unit: str) -> str:
    """Lines over time (name -> [(t, value)])."""
    points = [p for s in series.values() for p in s]
    out = [_frame(title)]
    if not points:
        out.append(f'<text x="{PAD}" y="{HEIGHT / 2}" font-size="11">no data yet</text></svg>')
        return "".join(out)
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    top = max(v for _, v in points) or 1
    span = (t1 - t0) or 1
    for i, (name, pts) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        path = " ".join(
            f"{PAD + (WIDTH - 2 * PAD) * (t - t0) / span:.1f},"
            f"{HEIGHT - PAD - (HEIGHT - 2 * PAD) * v / top:.1f}"
            for t, v in pts
        )
        out.append(f'<polyline class="line" points="{path}" fill="none" stroke="{color}" '
                   f'stroke-width="2"><title>{html.escape(name)}</title></polyline>')  # fmt: skip
        out.append(f'<text x="{WIDTH - PAD - 150}" y="{PAD + 10 + 11 * i}" font-size="9" '
                   f'fill="{color}">{html.escape(name)}</text>')  # fmt: skip
    out.append(f'<text x="{PAD}" y="{PAD - 4}" font-size="9">max {top:.3g} {unit}</text></svg>')
    return "".join(out)


def _frame(title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'class="plot"><rect width="100%" height="100%" fill="#fafafa" stroke="#ccc"/>'
            f'<text x="{PAD}" y="14" font-size="12" font-weight="bold">{html.escape(title)}'
            "</text>")  # fmt: skip


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, sections: Iterable[tuple[str, str]]) -> str:
    """The whole page: sections of (heading, HTML), reloading itself."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (f'<!doctype html><html><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{REFRESH_S}"><title>{html.escape(title)}</title>'
            "<style>body{font-family:sans-serif;margin:16px}svg{margin:4px}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
            "font-size:12px}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")  # fmt: skip


# --- the control plane ---------------------------------------------------------------------------


def control_plane_state(ads: Any) -> dict[str, Any]:
    """What the page shows of an ADS server (call on its event loop): per proxy and type the
    sync state and the last NACK, and its push-time and convergence histograms."""
    from meshcore.xds import types

    proxies: dict[str, Any] = {}
    status = ads.sync_status()
    for node_id, state in ads.proxies.items():
        nacks = {
            types.SHORT_NAMES.get(t, t): {"version": st.nacked_version, "error": st.error}
            for t, st in state.types.items()
            if st.nacked_version
        }
        proxies[node_id] = {"sync": status.get(node_id, {}), "nacks": nacks}
    metrics: XdsMetrics = ads.metrics
    with metrics._lock:
        push = {t: h.family_buckets() for t, h in metrics.push_time.items()}
        convergence = metrics.convergence.family_buckets()
    return {"proxies": proxies, "push_time": push, "convergence": convergence}


def control_plane_sections(state: Mapping[str, Any]) -> list[tuple[str, str]]:
    proxies = state.get("proxies", {})
    kinds = sorted({k for p in proxies.values() for k in p["sync"]})
    sync = table(["proxy", *kinds], ([node, *(p["sync"].get(k, "") for k in kinds)]
                                     for node, p in sorted(proxies.items())))  # fmt: skip
    nacks = [(node, t, n["version"], n["error"]) for node, p in sorted(proxies.items())
             for t, n in sorted(p["nacks"].items())]  # fmt: skip
    plots = "".join(
        svg_bars(f"push time, {t} (s)", _bucket_bars(b))
        for t, b in sorted(state.get("push_time", {}).items())
    )
    plots += svg_bars("push → ACK convergence (s)", _bucket_bars(state.get("convergence", [])))
    return [
        (f"Proxies ({len(proxies)}) and their sync state per type", sync),
        (
            "Last NACKs",
            table(["proxy", "type", "version", "error"], nacks) if nacks else "<p>none</p>",
        ),
        ("Push latency and convergence", plots),
    ]


def certificate_rows(certificates: Iterable[Any]) -> list[dict[str, Any]]:
    """The CA's issued certificates (:class:`meshcore.ca.service.IssuedCertificate`) as data."""
    now = time.time()
    return [{"identity": c.identity, "serial": f"{c.serial:x}",
             "not_after": c.not_after.isoformat(),
             "expires_in_s": round(c.not_after.timestamp() - now, 1)}
            for c in certificates]  # fmt: skip


def serve_sections(state: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What ``meshcore serve``'s page adds: the CA's certificates and the edges' counts."""
    certs = state.get("certificates")
    edges = state.get("edges") or {}
    out = [("Service edges: requests and 5xx answers so far (callers' sidecars)",
            table(["edge", "requests", "5xx"], ((e, v["requests"], v["errors"])
                                                for e, v in sorted(edges.items())))
            if edges else "<p>no sidecar advertises its Istio metrics</p>")]  # fmt: skip
    if certs is not None:
        rows = ((c["identity"], c["serial"], c["not_after"],
                 f"in {c['expires_in_s'] / 60:.0f} min" if c["expires_in_s"] >= 0 else "EXPIRED")
                for c in certs)  # fmt: skip
        out.append(("Certificates issued by the CA (newest per identity)",
                    table(["identity", "serial", "not after", "expires"], rows)))  # fmt: skip
    return out


def _bucket_bars(buckets: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets -> per-bucket counts."""
    out, prev = [], 0.0
    for le, cumulative in buckets:
        out.append((f"≤{le}", cumulative - prev))
        prev = cumulative
    return out


# --- service edges from sidecars' Istio metrics ----------------------------------------------------


class EdgeSampler:
    """Samples sidecars' Istio metrics every second (a thread) and keeps per service edge
    (source workload → destination service, as the source reports it) the request and 5xx
    counts and duration buckets, for rates and percentiles over the last seconds."""

    def __init__(
        self,
        sources: Callable[[], Iterable[IstioMetrics]],
        keep: int = 120,
        interval: float = 1.0,
    ) -> None:
        self.sources = sources
        self.interval = interval
        self.samples: deque[tuple[float, dict[tuple[str, str], tuple[int, int, list[int]]]]] = (
            deque(maxlen=keep)
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="edge-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        src, dst = LABELS.index("source_workload"), LABELS.index("destination_service")
        reporter, code = LABELS.index("reporter"), LABELS.index("response_code")
        edges: dict[tuple[str, str], tuple[int, int, list[int]]] = {}
        for m in self.sources():
            with m._lock:
                for key, n in m.requests.items():
                    if key[reporter] != "source":
                        continue
                    edge = (key[src], key[dst])
                    total, errors, buckets = edges.get(
                        edge, (0, 0, [0] * (len(DURATION_BUCKETS) + 1))
                    )
                    hist = m.durations.get(key)
                    if hist is not None:
                        buckets = [a + b for a, b in zip(buckets, hist.counts, strict=True)]
                    edges[edge] = (total + n, errors + n * key[code].startswith("5"), buckets)
        with self._lock:
            self.samples.append((time.time(), edges))

    def totals(self) -> dict[str, dict[str, int]]:
        """Per edge (``source workload → destination service``) the requests and 5xx answers
        counted so far, from the newest sample."""
        with self._lock:
            newest = self.samples[-1][1] if self.samples else {}
        return {f"{src} → {dst}": {"requests": total, "errors": errors}
                for (src, dst), (total, errors, _) in sorted(newest.items())}  # fmt: skip

    def series(self) -> dict[str, dict[str, list[tuple[float, float]]]]:
        """Per plot (rate, error rate, p50, p99), per edge: points over time, each computed
        over the window before it."""
        with self._lock:
            samples = list(self.samples)
        out: dict[str, dict[str, list[tuple[float, float]]]] = {
            "requests/s": {}, "errors (5xx) %": {}, "p50 ms": {}, "p99 ms": {}
        }  # fmt: skip
        for i, (t, edges) in enumerate(samples):
            base = next(((bt, be) for bt, be in samples[:i] if t - bt <= WINDOW_S), None)
            if base is None:
                continue
            bt, before = base
            for edge, (total, errors, buckets) in edges.items():
                old = before.get(edge, (0, 0, [0] * len(buckets)))
                n, e = total - old[0], errors - old[1]
                name = f"{edge[0]} → {edge[1].split('.')[0]}"
                out["requests/s"].setdefault(name, []).append((t, n / max(t - bt, 1e-9)))
                out["errors (5xx) %"].setdefault(name, []).append((t, 100 * e / n if n else 0))
                delta = [a - b for a, b in zip(buckets, old[2], strict=True)]
                out["p50 ms"].setdefault(name, []).append((t, quantile(0.5, delta)))
                out["p99 ms"].setdefault(name, []).append((t, quantile(0.99, delta)))
        return out

    def sections(self) -> list[tuple[str, str]]:
        plots = self.series()
        units = {"requests/s": "req/s", "errors (5xx) %": "%", "p50 ms": "ms", "p99 ms": "ms"}
        return [("Service edges (as the callers' sidecars report them)",
                 "".join(svg_lines(name, s, units[name]) for name, s in plots.items()))]  # fmt: skip


def quantile(q: float, counts: Sequence[int]) -> float:
    """Prometheus' histogram_quantile over per-bucket counts (Istio's duration buckets)."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank, seen, lower = q * total, 0, 0.0
    for upper, n in zip((*DURATION_BUCKETS, float("inf")), counts, strict=True):
        if n and seen + n >= rank:
            if upper == float("inf"):
                return float(lower)
            return float(lower + (upper - lower) * (rank - seen) / n)
        seen += n
        lower = upper
    return float(lower)
