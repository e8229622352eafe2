"""Certificates reaching real Envoy: SDS push latency and agent start-up, with their peers.

- SDS push: from the moment the agent's CertificateClient delivers a renewed certificate to the
  first TLS handshake on the sidecar's inbound listener that presents it (handshakes polled
  back to back from another thread). Peer: the other way to change a sidecar's certificate,
  restarting its Envoy (``Agent.restart_envoy``) until a handshake succeeds again.
- Agent start: ``Agent.start()`` + ``wait_ready()`` (CSR to the CA, SDS server, bootstrap,
  Envoy, config over ADS, secrets over SDS, listeners warm). Peer: the same Envoy binary
  started on a static bootstrap (everything inline, secrets included) until its /ready is LIVE.

Run with ``make bench`` (or ``pytest bench/bench_sds.py -o python_files='bench_*.py' -s``);
the figures are printed as a Markdown table.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshcore.ca import CertificateAuthority
from meshcore.ca.sds import workload_secrets
from meshcore.config import load
from meshcore.dataplane.agent import Agent, find_envoy
from meshcore.xds.controlserver import CAOptions, ControlPlaneServer
from meshcore.xds.translate import generate, proxy_for_node, render_static_bootstrap

T = TypeVar("T")
ECHO, PUSHES, STARTS = "127.0.81.1", 50, 10

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-1}}
spec: {{address: 127.0.81.1, labels: {{app: echo}}, serviceAccount: echo}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
"""
NODE = "sidecar~127.0.81.1~echo-1.default~default.svc.cluster.local"
IDENTITY = "spiffe://cluster.local/ns/default/sa/echo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        config = tmp / "config"
        config.mkdir()
        (config / "mesh.yaml").write_text(MESH.format(port=self.port))
        self.config = config
        self.token = "bench-token-" + os.urandom(8).hex()
        (tmp / "tokens").write_text(f"{self.token} {IDENTITY}\n")
        self.loop = LoopThread()
        self.xds, self.ca_port = free_port(), free_port()
        self.stop = asyncio.Event()
        opts = CAOptions(
            port=self.ca_port, state_dir=str(tmp / "state"), tokens=str(tmp / "tokens")
        )
        # What `meshcore serve` runs, as the library gives it.
        self.server = ControlPlaneServer([config], xds_port=self.xds, ca=opts)
        assert self.server.load(), self.server.plane.problems
        self.loop.run(self.server.start(), 30)
        self.plane = asyncio.run_coroutine_threadsafe(self._run(), self.loop.loop)
        self.ca = CertificateAuthority.load(tmp / "state")
        self.root = self.ca.trust_bundle_pem()
        self.client_ctx = client_context(self.ca)

    async def _run(self) -> None:
        try:
            await self.server.run(self.stop)
        finally:
            await self.server.close()

    def agent(self, name: str) -> Agent:
        return Agent(
            node_id=NODE,
            identity=IDENTITY,
            xds_address=f"127.0.0.1:{self.xds}",
            ca_address=f"127.0.0.1:{self.ca_port}",
            ca_root=self.root,
            token=self.token,
            workdir=self.tmp / name,
            metadata={"MESHCORE_APP_ADDRESS": "127.0.81.2", "MESHCORE_OUTBOUND_ADDRESS": "127.0.81.3"},
        )  # fmt: skip

    def served_serial(self) -> int | None:
        """The serial of the certificate echo's sidecar presents in a new handshake."""
        try:
            with (
                socket.create_connection((ECHO, self.port), timeout=2) as raw,
                self.client_ctx.wrap_socket(raw) as s,
            ):
                der = s.getpeercert(binary_form=True)
        except (OSError, ssl.SSLError):
            return None
        return None if der is None else int(x509.load_der_x509_certificate(der).serial_number)

    def close(self) -> None:
        self.stop.set()
        self.loop.run(asyncio.sleep(0))
        self.plane.result(15)
        self.loop.close()


def client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/default/sa/bench")]
            ),
            critical=True,
        )
        .sign(ca.key, hashes.SHA256())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=ca.trust_bundle_pem())
    ctx.check_hostname = False
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        f.flush()
        ctx.load_cert_chain(f.name)
    return ctx


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(tmp_path_factory.mktemp("sds"))
    try:
        yield s
    finally:
        s.close()


def ms(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return (
        f"median {statistics.median(values) * 1000:.1f} ms, p90 {q[89] * 1000:.1f} ms, "
        f"min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f} ({len(values)} runs)"
    )


def wait_serving(setup: Setup, serial: int, timeout: float = 20) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if setup.served_serial() == serial:
            return time.monotonic()
    raise AssertionError(f"serial {serial:x} not served within {timeout}s")


def test_sds_push_and_restart(setup: Setup) -> None:
    agent = setup.agent("echo")
    setup.loop.run(agent.start())
    try:
        setup.loop.run(agent.wait_ready(30))
        assert agent.certificate is not None
        wait_serving(setup, agent.certificate.serial)
        pushes = []
        for _ in range(PUSHES):
            secret = setup.loop.run(agent.certificates.fetch())
            served = wait_serving(setup, secret.serial)
            pushes.append(served - agent.rotated_at[secret.serial])
        restarts = []
        for _ in range(STARTS):
            assert agent.certificate is not None
            started = time.monotonic()
            setup.loop.run(agent.restart_envoy())
            restarts.append(wait_serving(setup, agent.certificate.serial) - started)
    finally:
        setup.loop.run(agent.stop())
    print(f"\n| SDS push: renewed certificate -> served by Envoy | {ms(pushes)} |")
    print(f"| peer: Envoy restart -> certificate served again | {ms(restarts)} |")


def test_agent_start_to_ready(setup: Setup) -> None:
    starts = []
    for i in range(STARTS):
        agent = setup.agent(f"start{i}")
        started = time.monotonic()
        try:
            setup.loop.run(agent.start())
            setup.loop.run(agent.wait_ready(30))
            assert agent.certificate is not None
            starts.append(wait_serving(setup, agent.certificate.serial) - started)
        finally:
            setup.loop.run(agent.stop())
    # Peer: the same Envoy on a static bootstrap with everything (and the secrets) inline.
    mesh = load([str(setup.config)])
    result = generate(mesh, proxy_for_node(mesh, NODE, {"MESHCORE_APP_ADDRESS": "127.0.81.2"}))
    secret = setup.loop.run(setup.agent("static").certificates.fetch())
    statics = []
    for _ in range(STARTS):
        admin = free_port()
        boot = render_static_bootstrap(
            result, NODE, admin, secrets=list(workload_secrets(secret).values())
        )
        path = setup.tmp / "static.yaml"
        path.write_text(yaml.safe_dump(boot))
        started = time.monotonic()
        proc = subprocess.Popen(
            [find_envoy(), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
             "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            statics.append(wait_serving(setup, secret.serial) - started)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as r:
                assert r.read().decode().strip() == "LIVE"
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"\n| agent start -> Envoy ready and serving its certificate | {ms(starts)} |")
    print(f"| peer: Envoy on a static bootstrap -> serving | {ms(statics)} |")
    print(f"(python {sys.version.split()[0]}, {os.cpu_count()} cores)")
