"""The control plane's HTTP side: Prometheus ``/metrics``, ``/debug/syncz`` (what
``meshcore proxy-status`` reads: per proxy and xDS type SYNCED / STALE / NACKED; the problems of
the last load, ``config_problems``, as the configuration's validation found them; and, beside
them, ``translation_problems``: what proxies will not get of a valid configuration),
``/healthz`` and ``/ready``."""

from __future__ import annotations

import asyncio
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.server import AdsServer

log = logging.getLogger("meshcore.serve")


class DebugServer(ThreadingHTTPServer):
    """The control plane's HTTP side, on a thread of its own; reads ADS state on the loop."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        plane: ControlPlane,
        ads: AdsServer,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(address, _Handler)
        self.plane = plane
        self.ads = ads
        self.loop = loop

    def in_loop(self, fn: Any) -> Any:
        """Runs ``fn`` on the event loop (which owns the ADS state) and returns its result."""

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server: DebugServer

    def do_GET(self) -> None:
        if self.path == "/metrics":
            body = self.server.in_loop(lambda: generate_latest(self.server.ads.metrics.registry()))
            self._send(200, CONTENT_TYPE_LATEST, body)
        elif self.path == "/debug/syncz":
            status = self.server.in_loop(self.server.ads.sync_status)
            plane = self.server.plane
            body = {
                "proxies": status,
                "config_problems": [p.to_dict() for p in plane.load_problems],
                "translation_problems": [p.to_dict() for p in plane.translation_problems],
            }
            self._send(200, "application/json", json.dumps(body).encode())
        elif self.path in ("/healthz", "/ready"):
            ok = self.server.plane.mesh is not None
            self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"no valid config\n")
        else:
            self._send(404, "text/plain", b"try /metrics, /debug/syncz or /healthz\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)
