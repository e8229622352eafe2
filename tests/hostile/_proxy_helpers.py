"""Shared pieces of the reference proxy's hostile tests: one mesh served by ``meshcore serve``
(a process) to a real Envoy sidecar and to ``meshcore proxy`` (a process), both guarding the
same app with the same inbound RBAC; a raw-socket HTTP/1.1 exchange that reports exactly what
came back (informational responses, the final status, whether the server closed); and the app,
which answers with the request line and Host it received."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcore.ca import CertificateAuthority
from meshcore.ca.sds import start_sds_server
from meshcore.dataplane.bootstrap import ads_bootstrap
from tests.envoy._sidecar import (
    LoopThread,
    free_port,
    free_ports,
    running_envoy,
    serve_process,
    wait_for,
    workload_secret,
)

ENVOY_IP = "127.0.96.1"  # guarded-e: the Envoy sidecar's inbound listener
PROXY_IP = "127.0.97.1"  # guarded-p: meshcore proxy's inbound (and outbound) listeners
APP_IP = "127.0.96.2"  # the app both sidecars forward to
ENVOY_OUTBOUND_IP = "127.0.96.3"  # the Envoy sidecar's outbound listeners

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: guarded}}
spec:
  selector: {{app: guarded}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: guarded-e}}
spec: {{address: {envoy_ip}, labels: {{app: guarded}}, serviceAccount: guarded}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: guarded-p}}
spec: {{address: {proxy_ip}, labels: {{app: guarded}}, serviceAccount: guarded}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: DISABLE}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin}}
spec:
  selector: {{matchLabels: {{app: guarded}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin", "/admin/*"]}}}}]
  - to: [{{operation: {{hosts: ["blocked.example", "blocked.example:*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-most}}
spec:
  selector: {{matchLabels: {{app: guarded}}}}
  action: ALLOW
  rules:
  - to: [{{operation: {{notPaths: ["/secret*"]}}}}]
"""


def node(name: str, address: str) -> str:
    return f"sidecar~{address}~{name}.default~default.svc.cluster.local"


# --- the app -------------------------------------------------------------------------------------


class _App(http.server.BaseHTTPRequestHandler):
    """Answers 200 with what it received: method, request target, Host, body length, Expect."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {"method": self.command, "target": self.path, "host": self.headers.get("host"),
                "body": len(body), "expect": self.headers.get("expect")}  # fmt: skip
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    # CONNECT too: an app that accepts a tunnel is what wedged the proxy's h11 reads.
    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_CONNECT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_app(address: str, port: int) -> http.server.ThreadingHTTPServer:
    """The app; stop it with shutdown() + server_close()."""
    server = http.server.ThreadingHTTPServer((address, port), _App)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --- raw HTTP/1.1 ------------------------------------------------------------------------------


@dataclass
class Reply:
    """What a server sent back for one request, as bytes on the wire show it."""

    status: int | None  # None: no response at all
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    informational: list[int] = field(default_factory=list)  # 1xx before the final status
    closed: bool = False  # the server closed the connection after answering
    raw: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def seen(self) -> dict[str, Any]:
        """The app's account of the request (only for a response from the app)."""
        out: dict[str, Any] = json.loads(self.body)
        return out


class RawConnection:
    """One TCP connection; sends bytes as written, reads responses exactly."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head

    def response(self, *, final: bool = True) -> Reply:
        """The next response (with ``final``, 1xx responses are collected on the way to the
        final one). status None when the server closed without (completing) an answer."""
        reply = Reply(None)
        while True:
            head = self._head()
            if head is None:
                reply.raw += self.buf
                reply.closed = True
                return reply
            reply.raw += head + b"\r\n\r\n"
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = [(k.strip().lower(), v.strip())
                       for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)]  # fmt: skip
            if 100 <= status < 200 and final and status != 101:
                reply.informational.append(status)
                continue
            reply.status, reply.headers = status, headers
            break
        length = reply.header("content-length")
        if length is not None:
            while len(self.buf) < int(length) and self._fill():
                pass
            reply.body, self.buf = self.buf[: int(length)], self.buf[int(length) :]
        elif reply.status not in (101, 204, 304) and not (100 <= (reply.status or 0) < 200):
            while self._fill():
                pass
            reply.body, self.buf = self.buf, b""
        reply.raw += reply.body
        return reply

    def closed_after(self, wait: float = 0.5) -> bool:
        """Whether the server closes the connection within ``wait`` seconds (with nothing
        more to read)."""
        if self.eof:
            return True
        self.sock.settimeout(wait)
        try:
            more = self._fill()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        return not more


def exchange(
    address: tuple[str, int], data: bytes, timeout: float = 5.0, *, closes: bool = False
) -> Reply:
    """Sends ``data`` on a new connection: the first final response; with ``closes``, also
    whether the server then closed the connection (within a second)."""
    with RawConnection(address, timeout) as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            return Reply(None, closed=True)
        reply = c.response()
        if reply.status is not None and closes:
            reply.closed = c.closed_after(1.0)
        return reply


def request(method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes = b"",
            version: str = "HTTP/1.1") -> bytes:  # fmt: skip
    lines = [f"{method} {target} {version}", *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- the two sidecars ---------------------------------------------------------------------------


@dataclass
class Sidecars:
    """The running mesh: ``envoy`` and ``proxy`` are the inbound listeners' addresses; the
    outbound listeners (Envoy's for the service port), the proxy's metrics port, and its
    process (for its CPU time)."""

    port: int
    xds: int
    envoy: tuple[str, int]
    proxy: tuple[str, int]
    proxy_outbound: tuple[str, int]
    envoy_outbound: tuple[str, int]
    proxy_metrics: tuple[str, int]
    process: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """The proxy process's user + system CPU time so far (Linux /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def meshcore_proxy(
    tmp: Path, xds: int, name: str, address: str, app: str
) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    """``meshcore proxy`` (plaintext mesh: no CA) for workload ``name`` at ``address``; yields
    the process, its outbound and metrics ports and its log; always stops it."""
    outbound, metrics = free_port(address), free_port()
    log = tmp / f"proxy-{name}.log"
    args = [sys.executable, "-m", "meshcore", "proxy", "--xds", f"127.0.0.1:{xds}",
            "--node-id", node(name, address), "--app-address", app,
            "--outbound", f"{address}:{outbound}", "--metrics", f"127.0.0.1:{metrics}",
            "--codec", "http1"]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or "meshcore proxy:" in log.read_text(),
                 "meshcore proxy", 30)  # fmt: skip
        assert proc.poll() is None, log.read_text()
        yield proc, outbound, metrics, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def sidecars(tmp: Path, *, envoy: bool = True) -> Iterator[Sidecars]:
    """The mesh above: ``meshcore serve``, the app, ``meshcore proxy`` for guarded-p and (with
    ``envoy``) a real Envoy sidecar for guarded-e fed by the same ADS server."""
    port = free_port(ENVOY_IP)
    config = tmp / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port, envoy_ip=ENVOY_IP,
                                                  proxy_ip=PROXY_IP))  # fmt: skip
    (xds,) = free_ports(1)
    app = serve_app(APP_IP, port)
    stack = contextlib.ExitStack()
    try:
        stack.callback(app.server_close)
        stack.callback(app.shutdown)
        stack.enter_context(serve_process(tmp, config, {"xds": xds}))
        if envoy:
            # Translated clusters reference the agent's SDS (auto mTLS), and Envoy warms them
            # only once secrets arrive: serve some, although this mesh is plaintext.
            loop = LoopThread()
            stack.callback(loop.close)
            sds_server, secrets, sds = loop.run(start_sds_server(port=0))
            stack.callback(lambda: loop.run(sds_server.stop(None)))
            secret = workload_secret(
                CertificateAuthority.generate(), "spiffe://cluster.local/ns/default/sa/guarded"
            )
            loop.loop.call_soon_threadsafe(secrets.update, secret)
            boot = ads_bootstrap(node("guarded-e", ENVOY_IP), "127.0.0.1", xds,
                                 admin_port=free_port(), delta=True, sds_address=sds,
                                 metadata={"MESHCORE_APP_ADDRESS": APP_IP,
                                           "MESHCORE_OUTBOUND_ADDRESS": ENVOY_OUTBOUND_IP})  # fmt: skip
            stack.enter_context(running_envoy(boot, tmp, "guarded-e"))
        proc, outbound, metrics, log = stack.enter_context(
            meshcore_proxy(tmp, xds, "guarded-p", PROXY_IP, APP_IP)
        )
        sc = Sidecars(port, xds, (ENVOY_IP, port), (PROXY_IP, port), (PROXY_IP, outbound),
                      (ENVOY_OUTBOUND_IP, port), ("127.0.0.1", metrics), proc, log)  # fmt: skip
        # Both inbound listeners up and guarding (the proxy binds once its config arrived).
        for address in (sc.proxy, *((sc.envoy,) if envoy else ())):
            wait_for(lambda a=address: exchange(a, request("GET", "/", [("host", "guarded")]),
                                                timeout=2).status == 200,
                     f"the inbound listener at {address}")  # fmt: skip
        yield sc
    finally:
        stack.close()
