"""The demo's three small services, each a threaded HTTP/1.1 server on its workload's app address.

- ``frontend`` (``GET /productpage``) calls ``reviews`` through its own sidecar's outbound
  listener, passing ``x-user`` on, and answers with what it got: ``{"reviews": "v1", "ratings": 200}``.
  ``GET /probe/ratings-admin`` asks reviews to call ``ratings /admin`` (denied by policy);
  ``GET /probe/ratings`` calls ratings itself (frontend is not an allowed caller).
- ``reviews`` (``GET /reviews``) calls ``ratings /ratings`` and answers with its version and the
  ratings status; ``GET /reviews/admin`` calls ``ratings /admin``.
- ``ratings`` answers ``GET /ratings`` and ``/admin``; an instance can be made flaky (a share of
  its answers are 503s), which the mesh's retries and outlier detection hide from callers.

Apps reach other services only through their sidecar (``Host: SERVICE`` to the sidecar's
outbound address at the service port), as in Istio's loopback-free layout.
"""

from __future__ import annotations

import http.client
import http.server
import json
import random
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

UPSTREAM_TIMEOUT_S = 5.0
CALLED_PORT = 9080  # reviews and ratings, as apps call them through their sidecar# What an app passes on to the services it calls: the user (header routing) and the trace
# context (Envoy's Zipkin tracer joins the spans of one request through these, as Istio asks of
# applications; W3C's traceparent for the OpenTelemetry tracer).
PROPAGATED = frozenset(
    ("x-user", "x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid",
     "x-b3-sampled", "x-b3-flags", "b3", "traceparent", "tracestate")
)  # fmt: skip


@dataclass
class AppStats:
    requests: int = 0
    failures_injected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, failed: bool = False) -> None:
        with self.lock:
            self.requests += 1
            self.failures_injected += failed


class _Upstream:
    """HTTP/1.1 calls to services through the app's sidecar, one kept-alive connection per
    thread."""

    def __init__(self, sidecar_address: str) -> None:
        self.address = sidecar_address
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def get(
        self, service: str, port: int, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        for attempt in (0, 1):  # a kept-alive connection the sidecar closed: reconnect once
            conn = getattr(self._local, "conn", None)
            if conn is None or getattr(self._local, "port", None) != port:
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection(self.address, port, timeout=UPSTREAM_TIMEOUT_S)
                self._local.conn, self._local.port = conn, port
                with self._lock:
                    self._all.append(conn)
            try:
                conn.request("GET", path, headers={"Host": f"{service}:{port}", **(headers or {})})
                resp = conn.getresponse()
                body = resp.read()
                return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    return 503, b"upstream connection failed", {}
        raise AssertionError("unreachable")


class App(http.server.ThreadingHTTPServer):
    """One workload's application."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        kind: str,
        name: str,
        version: str,
        address: str,
        port: int,
        sidecar_address: str,
        *,
        fail_ratio: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.kind, self.name, self.version = kind, name, version
        self.upstream = _Upstream(sidecar_address)
        self.fail_ratio = fail_ratio
        self.stats = AppStats()
        self._random = random.Random(seed)
        self._random_lock = threading.Lock()
        super().__init__((address, port), _Handler)
        self._thread = threading.Thread(target=self.serve_forever, name=f"app-{name}", daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller that went away (a sidecar closing a kept-alive connection) is not news."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def start(self) -> App:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.upstream.close()

    def flaky(self) -> bool:
        if self.fail_ratio <= 0:
            return False
        with self._random_lock:
            return self._random.random() < self.fail_ratio

    def answer(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        route = path.split("?", 1)[0]
        if self.kind == "ratings":
            if self.flaky():
                self.stats.count(failed=True)
                return 503, {"error": "ratings is flaky", "instance": self.name}
            self.stats.count()
            if route in ("/ratings", "/admin"):
                return 200, {"stars": 5, "instance": self.name, "path": route}
            return 404, {"error": f"no {route}"}
        self.stats.count()
        passed = {k: v for k, v in headers.items() if k in PROPAGATED}
        if self.kind == "reviews":
            target = "/admin" if route == "/reviews/admin" else "/ratings"
            status, body, _ = self.upstream.get("ratings", CALLED_PORT, target, passed)
            return 200, {"version": self.version, "instance": self.name,
                         "ratings": status, "ratings_body": _text(body)}  # fmt: skip
        if self.kind == "frontend":
            if route == "/probe/ratings":
                status, body, _ = self.upstream.get("ratings", CALLED_PORT, "/ratings", passed)
                return 200, {"ratings": status, "ratings_body": _text(body)}
            target = "/reviews/admin" if route == "/probe/ratings-admin" else "/reviews"
            status, body, _ = self.upstream.get("reviews", CALLED_PORT, target, passed)
            try:
                reviews = json.loads(body) if status == 200 else {}
            except ValueError:
                reviews = {}
            return 200, {
                "reviews_status": status,
                "reviews": reviews.get("version", ""),
                "reviews_instance": reviews.get("instance", ""),
                "ratings": reviews.get("ratings", 0),
                "ratings_body": reviews.get("ratings_body", ""),
            }
        return 404, {"error": f"unknown app kind {self.kind!r}"}


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")[:200]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: App
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload = self.server.answer(self.path, headers)
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ZipkinCollector(http.server.ThreadingHTTPServer):
    """A Zipkin-compatible collector (``POST /api/v2/spans``, JSON v2) that keeps the spans."""

    daemon_threads = True

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__((address, port), _ZipkinHandler)
        threading.Thread(target=self.serve_forever, name="zipkin", daemon=True).start()

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"

    def traces(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        with self.lock:
            for span in self.spans:
                out.setdefault(str(span.get("traceId", "")), []).append(span)
        return out

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ZipkinHandler(http.server.BaseHTTPRequestHandler):
    server: ZipkinCollector
    protocol_version = "HTTP/1.1"

    def _body(self) -> bytes:
        if "chunked" not in self.headers.get("transfer-encoding", "").lower():
            return self.rfile.read(int(self.headers.get("content-length") or 0))
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers, then the blank line
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    def do_GET(self) -> None:
        """Zipkin's ``GET /api/v2/traces``: every trace, as lists of spans."""
        if self.path.split("?", 1)[0] != "/api/v2/traces":
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        data = json.dumps(list(self.server.traces().values())).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        try:
            body = self._body()
        except ValueError:
            body = b""
        try:
            spans = json.loads(body)
        except ValueError:
            spans = None
        ok = isinstance(spans, list)
        if ok:
            with self.server.lock:
                self.server.spans.extend(s for s in spans if isinstance(s, dict))
        self.send_response(202 if ok else 400)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass
