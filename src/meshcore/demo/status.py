"""``meshcore demo --serve``: a live status page (:mod:`meshcore.observability.status`) with the
tour's results, the sidecars' merged Prometheus endpoints and certificates, the control plane's
proxies, NACKs and push histograms, and request rate / error rate / p50-p99 per service edge
from the sidecars' Istio metrics."""

from __future__ import annotations

import datetime
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

from meshcore.demo.mesh import DemoMesh
from meshcore.demo.tour import DemoReport
from meshcore.observability.istio import IstioMetrics
from meshcore.observability.status import EdgeSampler, control_plane_sections, page, table


class StatusPage(http.server.ThreadingHTTPServer):
    """``--serve``: the page, and ``/report.json``."""

    daemon_threads = True

    def __init__(self, dm: DemoMesh, report: DemoReport) -> None:
        self.dm, self.report = dm, report
        self.sampler = EdgeSampler(self._metrics)
        super().__init__(("127.0.0.1", 0), _StatusHandler)
        threading.Thread(target=self.serve_forever, name="demo-status", daemon=True).start()

    def _metrics(self) -> Iterator[IstioMetrics]:
        for sc in list(self.dm.sidecars.values()):
            agent = getattr(sc, "agent", None)
            if agent is not None and agent.telemetry is not None:
                yield agent.telemetry.metrics
            proxy = getattr(sc, "proxy", None)
            if proxy is not None:
                yield proxy.metrics

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def stop(self) -> None:
        self.sampler.stop()
        self.shutdown()
        self.server_close()

    def page(self) -> str:
        dm = self.dm
        checks = table(["", "check", "detail"], (("PASS" if c.passed else "FAIL", c.name, c.detail)
                                                 for c in self.report.checks))  # fmt: skip
        now = datetime.datetime.now(datetime.UTC)
        sidecars = []
        for name, sc in sorted(dm.sidecars.items()):
            cert = getattr(getattr(sc, "agent", None), "certificate", None)
            expiry = (f"{cert.not_after.isoformat()} (in {(cert.not_after - now).total_seconds() / 60:.0f} min)"
                      if cert is not None else "")  # fmt: skip
            sidecars.append((name, sc.kind, getattr(sc, "stats_url", None) or "", expiry))
        try:
            state = json.loads(DemoMesh._get(f"http://127.0.0.1:{dm.metrics_port}/debug/statusz"))
        except (OSError, ValueError):
            state = {}
        return page("meshcore demo mesh", [
            ("Checks", checks),
            *self.sampler.sections(),
            ("Sidecars: merged Prometheus endpoints and certificate expiries",
             table(["sidecar", "proxy", "metrics", "certificate expires"], sidecars)),
            *control_plane_sections(state),
            ("Control plane", f"<p>metrics: http://127.0.0.1:{dm.metrics_port}/metrics</p>"),
        ])  # fmt: skip


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    server: StatusPage

    def do_GET(self) -> None:
        if self.path == "/report.json":
            body = json.dumps(self.server.report.to_dict()).encode()
            kind = "application/json"
        else:
            body, kind = self.server.page().encode(), "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass
