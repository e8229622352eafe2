"""``meshcore demo --serve``: a status page with the tour's results and the live endpoints."""

from __future__ import annotations

import html
import http.client
import http.server
import json
import threading
from typing import Any

from meshcore.demo.mesh import DemoMesh
from meshcore.demo.tour import DemoReport


class StatusPage(http.server.ThreadingHTTPServer):
    """``--serve``: a page with the tour's results and links to every live endpoint."""

    daemon_threads = True

    def __init__(self, dm: DemoMesh, report: DemoReport) -> None:
        self.dm, self.report = dm, report
        super().__init__(("127.0.0.1", 0), _StatusHandler)
        threading.Thread(target=self.serve_forever, name="demo-status", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def page(self) -> str:
        dm, esc = self.dm, html.escape
        rows = "".join(
            f"<tr><td>{'PASS' if c.passed else 'FAIL'}</td><td>{esc(c.name)}</td>"
            f"<td>{esc(c.detail)}</td></tr>"
            for c in self.report.checks
        )
        try:
            sync = dm.sync_status()
        except OSError:
            sync = {}
        sync_rows = "".join(
            f"<tr><td>{esc(node)}</td>"
            + "".join(f"<td>{esc(v)}</td>" for v in row.values())
            + "</tr>"
            for node, row in sorted(sync.items())
        )
        sidecars = "".join(
            f'<li>{esc(name)}: <a href="http://127.0.0.1:{sc.admin_port}/">Envoy admin</a>, '
            f'<a href="http://127.0.0.1:{sc.admin_port}/stats/prometheus">stats</a></li>'
            for name, sc in sorted(dm.sidecars.items())
        )
        return (
            "<!doctype html><title>meshcore demo</title><h1>meshcore demo mesh</h1>"
            f"<h2>Checks</h2><table>{rows}</table>"
            f"<h2>Facts</h2><pre>{esc(json.dumps(self.report.facts, indent=2, default=str))}</pre>"
            f"<h2>xDS sync (live)</h2><table>{sync_rows}</table>"
            f'<h2>Endpoints</h2><ul><li><a href="http://127.0.0.1:{dm.metrics_port}/metrics">'
            f"control plane metrics</a></li>{sidecars}</ul>"
        )


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
