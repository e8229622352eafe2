"""The control plane's HTTP side: Prometheus ``/metrics``, ``/debug/syncz`` (what
``meshcore proxy-status`` reads: per proxy and xDS type SYNCED / STALE / NACKED; the problems of
the last load, ``config_problems``, as the configuration's validation found them; and, beside
them, ``translation_problems``: what proxies will not get of a valid configuration),
the status page ``/status`` (and its data, ``/debug/statusz``), ``/healthz`` and
``/ready``.

The status page adds to the ADS state what the issue of a mesh's status needs: the
certificates the CA (when it runs in this process) issued, and per service edge the requests,
5xx answers and latencies, from the Istio metrics of the sidecars whose node metadata
advertise their merged endpoint (:mod:`meshcore.observability.scrape`). Those are scraped by
a sampler thread started by the first look at the page (nothing is scraped before) and
stopped by :meth:`DebugServer.close`."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshcore.observability.scrape import METRICS_URL_KEY, MeshScraper
from meshcore.observability.status import (
    EdgeSampler,
    certificate_rows,
    control_plane_sections,
    control_plane_state,
    page,
    serve_sections,
)
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
        certificates: Callable[[], Iterable[Any]] | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.plane = plane
        self.ads = ads
        self.loop = loop
        self.certificates = certificates
        self._sampler: EdgeSampler | None = None
        self._sampler_lock = threading.Lock()
        self._closed = False

    def sampler(self) -> EdgeSampler | None:
        """The edge sampler, started on first use (its first sample taken before it returns);
        None once closed."""
        with self._sampler_lock:
            if self._sampler is None and not self._closed:
                scraper = MeshScraper(self._metrics_urls)
                self._sampler = EdgeSampler(scraper, interval=2.0)
                self._sampler.sample()
            return self._sampler

    def _metrics_urls(self) -> dict[str, str]:
        """Proxy id -> the merged metrics endpoint its node metadata advertise."""

        def urls() -> dict[str, str]:
            out = {}
            for node_id, state in self.ads.proxies.items():
                url = state.node.metadata.get(METRICS_URL_KEY)
                if isinstance(url, str) and url:
                    out[node_id] = url
            return out

        try:
            result: dict[str, str] = self.in_loop(urls)
        except (RuntimeError, TimeoutError):  # the loop is closing
            return {}
        return result

    def status_state(self) -> dict[str, Any]:
        """``/debug/statusz``: the ADS state, the CA's certificates, the edges' counts."""
        state: dict[str, Any] = self.in_loop(lambda: control_plane_state(self.ads))
        if self.certificates is not None:
            certificates = self.certificates
            state["certificates"] = self.in_loop(lambda: certificate_rows(certificates()))
        sampler = self.sampler()
        state["edges"] = sampler.totals() if sampler is not None else {}
        return state

    def close(self) -> None:
        """Stops serving and the sampler."""
        with self._sampler_lock:
            self._closed = True
            sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()
        self.shutdown()
        self.server_close()

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
            state = self.server.status_state()
            self._send(200, "application/json", json.dumps(state).encode())
        elif self.path == "/status":
            state = self.server.status_state()
            sampler = self.server.sampler()
            sections = [*control_plane_sections(state), *serve_sections(state)]
            if sampler is not None:
                sections[2:2] = sampler.sections()
            body = page("meshcore control plane", sections).encode()
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
