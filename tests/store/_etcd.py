"""A real etcd (Debian's etcd-server) on 127.0.0.1 for tests: one member or a cluster of
three, each a process with its own temporary data directory, stopped (and its data removed)
when the test is done. Members can be stopped and started again to test failover."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.envoy._sidecar import free_ports, wait_for
from tests.store._pki import Pki


def etcd_binary() -> str:
    """The etcd binary; a missing one fails under CI (``.ci/run`` installs etcd-server) and
    skips elsewhere."""
    found = shutil.which("etcd")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("etcd is not installed (apt-get install etcd-server; .ci/run does it)")
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    return found


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    members: list[Member]
    cluster: str
    token: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra: tuple[str, ...] = ()  # more etcd flags (benchmarks: --max-txn-ops ...)
    pki: Pki | None = None  # clients over TLS with certificates (--client-cert-auth)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, prefix: str = "/mesh") -> str:
        return f"etcd://{','.join(self.endpoints)}{prefix}"

    @property
    def scheme(self) -> str:
        return "https" if self.pki is not None else "http"

    def tls_flags(self) -> list[str]:
        """meshcore's flags for this cluster's TLS (none without it)."""
        if self.pki is None:
            return []
        p = self.pki
        return ["--etcd-cacert", str(p.ca), "--etcd-cert", str(p.client_cert),
                "--etcd-key", str(p.client_key)]  # fmt: skip

    def _tls_args(self) -> list[str]:
        if self.pki is None:
            return []
        p = self.pki
        return ["--cert-file", str(p.server_cert), "--key-file", str(p.server_key),
                "--trusted-ca-file", str(p.ca), "--client-cert-auth"]  # fmt: skip

    def start(self, m: Member, state: str = "new") -> None:
        args = [
            etcd_binary(),
            "--name", m.name,
            "--data-dir", str(m.data),
            "--listen-client-urls", f"{self.scheme}://{m.endpoint}",
            "--advertise-client-urls", f"{self.scheme}://{m.endpoint}",
            *self._tls_args(),
            "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
            "--initial-cluster", self.cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", state,
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--log-level", "warn",
            "--logger", "zap",
            *self.extra,
        ]  # fmt: skip
        with m.log.open("ab") as sink:
            m.proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)

    def stop(self, m: Member) -> None:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(10)
        m.proc = None

    def healthy(self, m: Member) -> bool:
        context = None
        if self.pki is not None:
            context = ssl.create_default_context(cafile=str(self.pki.ca))
            context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        try:
            with urllib.request.urlopen(
                f"{self.scheme}://{m.endpoint}/health", timeout=1, context=context
            ) as r:
                return b'"health":"true"' in r.read()
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        for m in self.members:
            if m.proc is not None:
                wait_for(
                    lambda m=m: self.healthy(m),
                    f"etcd member {m.name} healthy ({m.log.read_text()[-2000:]})",
                    timeout,
                )

    def restart(self, m: Member) -> None:
        self.stop(m)
        self.start(m, state="existing")


@contextlib.contextmanager
def etcd_cluster(
    tmp: Path, size: int = 1, *extra: str, pki: Pki | None = None
) -> Iterator[EtcdCluster]:
    """``size`` etcd members on 127.0.0.1 with free ports, healthy when the block starts
    (``pki``: clients over TLS only, with a certificate from ``pki.ca``)."""
    etcd_binary()
    ports = free_ports(2 * size)
    members = [
        Member(f"m{i}", ports[2 * i], ports[2 * i + 1], tmp / f"etcd-m{i}", tmp / f"etcd-m{i}.log")
        for i in range(size)
    ]
    cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in members)
    c = EtcdCluster(members, cluster, f"meshcore-test-{time.monotonic_ns()}", extra=extra, pki=pki)
    try:
        for m in members:
            c.start(m)
        c.wait_healthy()
        yield c
    finally:
        for m in members:
            c.stop(m)
        for m in members:
            shutil.rmtree(m.data, ignore_errors=True)


@contextlib.contextmanager
def replica_process(
    tmp: Path,
    store: str,
    ports: dict[str, int],
    name: str,
    ready: float = 30,
    extra: tuple[str, ...] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """``meshcore serve --config etcd://...`` as a process (a control-plane replica): ADS on
    ``ports["xds"]``, monitoring on ``ports["metrics"]``, the CA on ``ports["ca"]`` and
    ``ports["ca_mtls"]`` (tokens from tmp/tokens, the root written to tmp/state-NAME; ``extra``
    more flags); ready
    once it announces ADS (within ``ready`` seconds). Stopped (killed if need be) when the block ends."""
    import sys

    args = [sys.executable, "-m", "meshcore", "serve", "--config", store,
            "--xds-port", str(ports["xds"]), "--monitoring-port", str(ports["metrics"]),
            "--ca-port", str(ports["ca"]), "--ca-mtls-port", str(ports["ca_mtls"]),
            "--state-dir", str(tmp / f"state-{name}"), "--tokens", str(tmp / "tokens"),
            *extra]  # fmt: skip
    log = tmp / f"serve-{name}.log"
    with log.open("ab") as sink:
        cp = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: cp.poll() is not None or "ADS" in log.read_text(), f"replica {name}", ready
        )
        assert cp.poll() is None, log.read_text()
        yield cp
    finally:
        if cp.poll() is None:
            cp.terminate()
            try:
                cp.wait(timeout=10)
            except subprocess.TimeoutExpired:
                cp.kill()
                cp.wait()
