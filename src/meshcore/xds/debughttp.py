"""The control plane's HTTP side: Prometheus ``/metrics``, ``/debug/syncz`` (what
``meshcore proxy-status`` reads: per proxy and xDS type SYNCED / STALE / NACKED; the problems of
the last load, ``config_problems``, as the configuration's validation found them; and, beside
them, ``translation_problems``: what proxies will not get of a valid configuration),
the status page ``/status`` (and its data, ``/debug/statusz``), ``/healthz`` and
``/ready``."""

from __future__ import annotations

import asyncio
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshcore.observability.status import control_plane_sections, control_plane_state, page
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
            store = self.server.plane.source

            def metrics() -> bytes:
                registry = self.server.ads.metrics.registry()
                if hasattr(store, "collect"):  # the config store's connected/revision gauges
                    registry.register(store)  # type: ignore[arg-type]
                return generate_latest(registry)

            body = self.server.in_loop(metrics)
            self._send(200, CONTENT_TYPE_LATEST, body)
        elif self.path == "/debug/syncz":
            status = self.server.in_loop(self.server.ads.sync_status)
            plane = self.server.plane
            body = {
                "proxies": status,
                "config_problems": [p.to_dict() for p in plane.load_problems],
                "translation_problems": [p.to_dict() for p in plane.translation_problems],
            }
            plane_source: Any = plane.source
            if hasattr(plane_source, "status"):
                body["config_store"] = plane_source.status()
            self._send(200, "application/json", json.dumps(body).encode())
        elif self.path == "/debug/statusz":
            state = self.server.in_loop(lambda: control_plane_state(self.server.ads))
            self._send(200, "application/json", json.dumps(state).encode())
        elif self.path == "/status":
            state = self.server.in_loop(lambda: control_plane_state(self.server.ads))
            body = page("meshcore control plane", control_plane_sections(state)).encode()
            self._send(200, "text/html; charset=utf-8", body)
        elif self.path in ("/healthz", "/ready"):
            ok = self.server.plane.mesh is not None
            source: Any = self.server.plane.source
            # Serving goes on from the last config while the store is away: still ready,
            # and saying so.
            note = source.ready_note() if ok and hasattr(source, "ready_note") else ""
            text = (f"ok: {note}\n" if note else "ok\n") if ok else "no valid config\n"
            self._send(200 if ok else 503, "text/plain", text.encode())
        else:
            self._send(404, "text/plain", b"try /metrics, /status, /debug/syncz or /healthz\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)
