"""mTLS end to end with real Envoy sidecars run by meshcore's agent.

In one event loop (a background thread): ``meshcore serve``'s control plane with its CA (a
generated root kept in a state dir, bootstrap tokens from a file), and three agents, each
getting its certificate from the CA, serving it over SDS to its own Envoy: ``client`` and
``intruder`` call ``echo`` (an HTTP echo app behind its sidecar). The echo and client
certificates live 4 s, so they rotate every ~2 s throughout the module, under traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _sidecar import LoopThread, free_port, http_get, serve_echo, serving, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshcore.ca import CertificateAuthority
from meshcore.dataplane.agent import Agent

pytestmark = pytest.mark.envoy
T = TypeVar("T")

ECHO, CLIENT, INTRUDER = "127.0.71.1", "127.0.70.1", "127.0.72.1"
ECHO_APP, CLIENT_OUT, INTRUDER_OUT = "127.0.71.2", "127.0.70.2", "127.0.72.2"
TTL = 4.0

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
spec: {{address: 127.0.71.1, labels: {{app: echo}}, serviceAccount: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client-1}}
spec: {{address: 127.0.70.1, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: intruder-1}}
spec: {{address: 127.0.72.1, labels: {{app: intruder}}, serviceAccount: intruder}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: probe-1}}
spec: {{address: 127.0.73.1, labels: {{app: probe}}, serviceAccount: intruder}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: echo}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/client]}}}}]
  - to: [{{operation: {{paths: [/open*]}}}}]
"""

PEER_AUTH = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: {mode}}}}}
"""


def node(name: str, address: str) -> str:
    return f"sidecar~{address}~{name}.default~default.svc.cluster.local"


def spiffe(sa: str) -> str:
    return f"spiffe://cluster.local/ns/default/sa/{sa}"


@dataclass
class Mesh:
    loop: LoopThread
    config: Path
    state: Path
    port: int
    xds: int
    ca_port: int
    ca_mtls: int
    tokens: dict[str, str]
    agents: dict[str, Agent]
    seen: list[dict[str, str]]
    server: Any

    def set_mode(self, mode: str) -> None:
        (self.config / "peer.yaml").write_text(PEER_AUTH.format(mode=mode))

    def url(self, caller: str, path: str = "/") -> str:
        out = CLIENT_OUT if caller == "client" else INTRUDER_OUT
        return f"http://{out}:{self.port}{path}"

    def admin(self, name: str, path: str) -> str:
        port = self.agents[name].admin_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return str(r.read().decode())

    def stat(self, name: str, stat: str) -> int:
        text = self.admin(name, f"/stats?filter=^{stat.replace('|', '.')}$")
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == stat:
                return int(value)
        return 0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mtls")
    port = free_port()
    config = tmp / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    (config / "peer.yaml").write_text(PEER_AUTH.format(mode="STRICT"))
    tokens = {sa: f"token-{sa}-{os.urandom(8).hex()}" for sa in ("echo", "client", "intruder")}
    seen: list[dict[str, str]] = []
    app = serve_echo(ECHO_APP, port, "echo", seen)
    agents: dict[str, Agent] = {}
    try:
        with serving(config, tmp, {spiffe(sa): t for sa, t in tokens.items()}) as cp:
            m = Mesh(cp.loop, config, cp.state, port, cp.xds, cp.ca_port, cp.ca_mtls, tokens,
                     agents, seen, cp.server)  # fmt: skip
            specs = {
                "echo": (ECHO, {"MESHCORE_APP_ADDRESS": ECHO_APP, "MESHCORE_OUTBOUND_ADDRESS": "127.0.71.3"}, TTL, False),
                "client": (CLIENT, {"MESHCORE_OUTBOUND_ADDRESS": CLIENT_OUT}, TTL, True),
                "intruder": (INTRUDER, {"MESHCORE_OUTBOUND_ADDRESS": INTRUDER_OUT}, None, False),
            }  # fmt: skip
            for name, (address, metadata, ttl, delta) in specs.items():
                agents[name] = Agent(
                    node_id=node(f"{name}-1", address),
                    identity=spiffe(name),
                    xds_address=f"127.0.0.1:{cp.xds}",
                    ca_address=f"127.0.0.1:{cp.ca_port}",
                    ca_mtls_address=f"127.0.0.1:{cp.ca_mtls}",
                    ca_root=cp.root,
                    token=tokens[name],
                    workdir=tmp / name,
                    metadata=metadata,
                    cert_ttl=ttl,
                    delta=delta,
                    status_port=0 if name == "echo" else None,
                )

            async def start_all() -> None:
                await asyncio.gather(*(a.start() for a in agents.values()))
                await asyncio.gather(*(a.wait_ready(30) for a in agents.values()))

            async def stop_all() -> None:
                await asyncio.gather(*(a.stop() for a in agents.values()))

            try:
                cp.loop.run(start_all())
                wait_for(
                    lambda: http_get(m.url("client", "/open"), "echo")[0] == 200, "first request"
                )
                yield m
            finally:
                cp.loop.run(stop_all())
    finally:
        app.shutdown()
        app.server_close()


def plaintext_get(path: str = "/open", port: int = 0, address: str = ECHO) -> int:
    """A direct, plaintext request to echo's inbound listener (a caller outside the mesh)."""
    with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=3) as r:
        return int(r.status)


def tls_get(port: int, cert_pem: bytes, key_pem: bytes, roots: str, path: str = "/") -> int:
    """An HTTPS request to echo's inbound listener presenting ``cert_pem``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=roots)
    ctx.check_hostname = False  # Istio's server certificates carry a SPIFFE URI, no DNS name
    d = Path(os.environ.get("TMPDIR", "/tmp"))
    cert_file = d / f"meshcore-test-{os.getpid()}-{threading.get_ident()}.pem"
    cert_file.write_bytes(cert_pem + key_pem)
    try:
        ctx.load_cert_chain(str(cert_file))
    finally:
        cert_file.unlink()
    with socket.create_connection((ECHO, port), timeout=3) as raw, ctx.wrap_socket(raw) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n".encode())
        data = s.recv(4096)
        if not data:
            raise ConnectionResetError("closed without an answer")
        return int(data.split(b" ", 2)[1])


def client_cert(
    ca: CertificateAuthority, identity: str, *, expired: bool = False
) -> tuple[bytes, bytes]:
    """A workload certificate signed directly by ``ca`` (optionally already expired)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = (now - datetime.timedelta(hours=2), now - datetime.timedelta(hours=1)) if expired else (now - datetime.timedelta(minutes=1), now + datetime.timedelta(hours=1))  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def served_serials(mesh: Mesh, name: str) -> set[int]:
    certs = json.loads(mesh.admin(name, "/certs"))["certificates"]
    return {int(c["serial_number"], 16) for cert in certs for c in cert.get("cert_chain", ())}


# --- the tests -----------------------------------------------------------------------------------


def test_sidecars_talk_mtls_with_certificates_from_sds(mesh: Mesh) -> None:
    listener = f"listener.{ECHO}_{mesh.port}.ssl.handshake"
    cluster = f"cluster.outbound|{mesh.port}||echo.default.svc.cluster.local.ssl.handshake"
    for _ in range(3):
        assert http_get(mesh.url("client", "/hello"), "echo") == (200, "echo")
    # The sidecars pool their connection: at least one TLS handshake on each side.
    assert mesh.stat("echo", listener) >= 1
    assert mesh.stat("client", cluster) >= 1
    assert (
        mesh.stat(
            "client",
            f"cluster.outbound|{mesh.port}||echo.default.svc.cluster.local.ssl.connection_error",
        )
        == 0
    )
    assert f"URI={spiffe('client')}" in mesh.seen[-1]["x-forwarded-client-cert"]
    # The certificates Envoy serves are the ones the agents got from the CA, over SDS.
    for name in ("echo", "client"):
        agent = mesh.agents[name]
        wait_for(
            lambda a=agent, n=name: (
                a.certificate is not None and a.certificate.serial in served_serials(mesh, n)
            ),
            f"{name}'s current certificate in its Envoy",
        )
    # Prometheus stats on the admin port (the agent's bootstrap).
    prometheus = mesh.admin("echo", "/stats/prometheus")
    assert "# TYPE envoy_listener_ssl_handshake counter" in prometheus
    # STRICT: a plaintext caller is refused by echo's inbound listener.
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        plaintext_get(port=mesh.port)


def test_authorization_by_principal(mesh: Mesh) -> None:
    assert http_get(mesh.url("client", "/secure"), "echo") == (200, "echo")
    status, body = http_get(mesh.url("intruder", "/secure"), "echo")
    assert (status, body) == (403, "RBAC: access denied")
    assert http_get(mesh.url("intruder", "/open/x"), "echo") == (200, "echo")


def test_expired_and_foreign_client_certificates_are_rejected(mesh: Mesh) -> None:
    ca = CertificateAuthority.load(mesh.state)
    roots = ca.trust_bundle_pem()
    # The control: a valid certificate from meshcore's CA gets through (and is authorized).
    assert tls_get(mesh.port, *client_cert(ca, spiffe("client")), roots, "/secure") == 200
    expired = client_cert(ca, spiffe("client"), expired=True)
    foreign = client_cert(CertificateAuthority.generate(), spiffe("client"))
    for cert in (expired, foreign):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_get(mesh.port, *cert, roots, "/secure")
    ssl_stats = mesh.admin("echo", f"/stats?filter=listener.{ECHO}_{mesh.port}.ssl")
    assert "fail_verify_error" in ssl_stats or "connection_error" in ssl_stats


def test_rotation_under_steady_traffic(mesh: Mesh) -> None:
    echo, client = mesh.agents["echo"], mesh.agents["client"]
    assert echo.certificate is not None
    assert client.certificate is not None
    first = {echo.certificate.serial, client.certificate.serial}
    failures, total = [], 0
    deadline = time.monotonic() + 2.5 * TTL / 2 + 0.5
    while time.monotonic() < deadline:
        status, body = http_get(mesh.url("client", "/secure"), "echo")
        total += 1
        if (status, body) != (200, "echo"):
            failures.append((status, body))
    assert echo.certificate.serial not in first
    assert client.certificate.serial not in first
    assert failures == [], f"{len(failures)} of {total} failed: {failures[:3]}"
    assert total > 20
    assert echo.certificates.renewals >= 2
    assert client.certificates.renewals >= 2
    wait_for(
        lambda: echo.certificate is not None and echo.certificate.serial in served_serials(mesh, "echo"),
        "echo's new certificate in Envoy's /certs",
        timeout=3,
    )  # fmt: skip


def test_envoy_restart_recovers_config_and_certificates(mesh: Mesh) -> None:
    echo = mesh.agents["echo"]
    url = f"http://127.0.0.1:{echo.status_port}/healthz/ready"
    assert urllib.request.urlopen(url, timeout=3).status == 200
    pid = echo.envoy_pid
    assert pid is not None
    # A crash: the supervisor starts a new Envoy (after its backoff); meanwhile not ready.
    os.kill(pid, signal.SIGKILL)

    def not_ready() -> bool:
        try:
            urllib.request.urlopen(url, timeout=3)
        except urllib.error.HTTPError as e:
            return e.code == 503
        return False

    wait_for(not_ready, "503 from /healthz/ready", timeout=5)
    mesh.loop.run(echo.wait_ready(20))
    assert echo.envoy_pid not in (None, pid)
    assert echo.restarts == 1
    wait_for(lambda: http_get(mesh.url("client", "/secure"), "echo") == (200, "echo"), "traffic")
    assert echo.certificate is not None
    wait_for(
        lambda: echo.certificate is not None and echo.certificate.serial in served_serials(mesh, "echo"),
        "echo's certificate in the new Envoy", timeout=5,
    )  # fmt: skip
    # An orderly restart through the API does the same (and is not counted as a crash).
    mesh.loop.run(echo.restart_envoy())
    mesh.loop.run(echo.wait_ready(20))
    assert echo.restarts == 1
    wait_for(lambda: http_get(mesh.url("client", "/secure"), "echo") == (200, "echo"), "traffic")


def test_peer_authentication_modes(mesh: Mesh) -> None:
    listener = f"listener.{ECHO}_{mesh.port}.ssl.handshake"
    try:
        # PERMISSIVE: plaintext from outside the mesh and mTLS from the client sidecar.
        mesh.set_mode("PERMISSIVE")
        wait_for(lambda: plaintext_get(port=mesh.port) == 200, "plaintext under PERMISSIVE")
        assert http_get(mesh.url("client", "/secure"), "echo") == (200, "echo")
        # the sidecar still used mTLS: echo's sidecar forwarded the verified client identity
        assert f"URI={spiffe('client')}" in mesh.seen[-1]["x-forwarded-client-cert"]
        # DISABLE: plaintext only; the client sidecar sends plaintext (auto mTLS), so there is
        # no principal and only the open path is allowed.
        mesh.set_mode("DISABLE")
        ca = CertificateAuthority.load(mesh.state)
        cert = client_cert(ca, spiffe("client"))

        def tls_refused() -> bool:
            try:
                tls_get(mesh.port, *cert, ca.trust_bundle_pem(), "/open")
            except (ssl.SSLError, ConnectionError):
                return True
            return False

        wait_for(tls_refused, "TLS refused under DISABLE")
        # Connections made under PERMISSIVE drain away (Envoy closes them after a response).
        wait_for(
            lambda: (
                http_get(mesh.url("client", "/open"), "echo") == (200, "echo")
                and "x-forwarded-client-cert" not in mesh.seen[-1]
            ),
            "client over plaintext",
        )
        before = mesh.stat("echo", listener)
        assert http_get(mesh.url("client", "/open"), "echo") == (200, "echo")
        assert "x-forwarded-client-cert" not in mesh.seen[-1]
        assert http_get(mesh.url("client", "/secure"), "echo")[0] == 403
        assert plaintext_get(port=mesh.port) == 200
        assert mesh.stat("echo", listener) == before  # no TLS at all
    finally:
        mesh.set_mode("STRICT")
    wait_for(lambda: http_get(mesh.url("client", "/secure"), "echo") == (200, "echo"), "STRICT")

    def plaintext_refused() -> bool:
        try:
            plaintext_get(port=mesh.port)
        except (ConnectionError, urllib.error.URLError):
            return True
        return False

    wait_for(plaintext_refused, "plaintext refused under STRICT again")


def test_agent_cli_runs_envoy_until_sigterm(mesh: Mesh, tmp_path: Path) -> None:
    """``meshcore agent`` as a process (delta ADS): ready, then SIGTERM drains and stops its
    Envoy and the agent exits 0."""
    token = tmp_path / "token"
    token.write_text(mesh.tokens["intruder"] + "\n")
    status = free_port()
    out = tmp_path / "agent.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshcore", "agent",
             "--node-id", node("probe-1", "127.0.73.1"), "--identity", spiffe("intruder"),
             "--xds-address", f"127.0.0.1:{mesh.xds}", "--ca-address", f"127.0.0.1:{mesh.ca_port}",
             "--ca-mtls-address", f"127.0.0.1:{mesh.ca_mtls}",
             "--ca-root", str(mesh.state / "root-cert.pem"), "--token-file", str(token),
             "--workdir", str(tmp_path / "agent"), "--status-port", str(status), "--delta",
             "--drain-seconds", "0.3", "--metadata", "MESHCORE_OUTBOUND_ADDRESS=127.0.73.2"],
            stdout=sink, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    envoy_pid = None
    try:
        wait_for(lambda: "meshcore agent: Envoy (pid" in out.read_text(), "the agent's start line")
        text = out.read_text()
        envoy_pid = int(text.split("meshcore agent: Envoy (pid ", 1)[1].split(")", 1)[0])
        ready = f"http://127.0.0.1:{status}/healthz/ready"
        wait_for(lambda: urllib.request.urlopen(ready, timeout=2).status == 200, "agent ready")
        assert http_get(f"http://127.0.73.2:{mesh.port}/open", "echo") == (200, "echo")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, out.read_text()
        assert "meshcore agent: stopped" in out.read_text()
        with pytest.raises(ProcessLookupError):
            os.kill(envoy_pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            if envoy_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(envoy_pid, signal.SIGKILL)


def test_root_rotation_under_traffic(mesh: Mesh) -> None:
    """A root rotation of the running CA (what a replica does when the leader advances the
    stored record): the new root trusted, then signing, then the old root gone; the two
    sidecars keep talking over mTLS throughout, also while one holds a certificate from the
    new root and the other one from the old. Last in the module: it changes the mesh's root."""
    server = mesh.server
    old = server.authority
    new = CertificateAuthority.generate()
    echo, client = mesh.agents["echo"], mesh.agents["client"]

    def renew_twice() -> None:
        counts = {a: a.certificates.renewals for a in (echo, client)}
        wait_for(
            lambda: all(a.certificates.renewals >= n + 2 for a, n in counts.items()),
            "both sidecars renew twice",
            4 * TTL,
        )

    def served_by(ca: CertificateAuthority) -> bool:
        for name, agent in (("echo", echo), ("client", client)):
            cert = agent.certificate
            if cert is None or cert.serial not in served_serials(mesh, name):
                return False
            leaf = x509.load_pem_x509_certificate(cert.cert_chain_pem.encode())
            if leaf.issuer != ca.cert.subject:
                return False
        return True

    failures: list[tuple[int, str]] = []
    total = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal total
        for _ in range(5000):
            if stop.is_set():
                return
            status, body = http_get(mesh.url("client", "/secure"), "echo")
            total += 1
            if (status, body) != (200, "echo"):
                failures.append((status, body))
            time.sleep(0.02)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        server._use_ca(old.with_roots([new.cert]))  # 1: trusted, not signing
        renew_twice()
        assert echo.certificates.trust_bundle_pem == old.trust_bundle_pem() + new.trust_bundle_pem()
        server._use_ca(new.with_roots([old.cert]))  # 2: the new root signs
        wait_for(lambda: served_by(new), "both sidecars serve new-root certificates", 4 * TTL)
        server._use_ca(new)  # 3: the old root leaves
        renew_twice()
        assert client.certificates.trust_bundle_pem == new.trust_bundle_pem()
        assert (mesh.state / "root-cert.pem").read_text() == new.trust_bundle_pem()
    finally:
        stop.set()
        thread.join(30)
    assert failures == [], f"{len(failures)} of {total} failed: {failures[:3]}"
    assert total > 20
