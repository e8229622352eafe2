"""A real etcd (Debian's etcd-server) on 127.0.0.1 for tests: one member or a cluster of
three, each a process with its own temporary data directory, stopped (and its data removed)
when the test is done. Members can be stopped and started again to test failover."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.envoy._sidecar import free_ports, wait_for


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

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, prefix: str = "/mesh") -> str:
        return f"etcd://{','.join(self.endpoints)}{prefix}"

    def start(self, m: Member, state: str = "new") -> None:
        args = [
            etcd_binary(),
            "--name", m.name,
            "--data-dir", str(m.data),
            "--listen-client-urls", f"http://{m.endpoint}",
            "--advertise-client-urls", f"http://{m.endpoint}",
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
        try:
            with urllib.request.urlopen(f"http://{m.endpoint}/health", timeout=1) as r:
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
def etcd_cluster(tmp: Path, size: int = 1, *extra: str) -> Iterator[EtcdCluster]:
    """``size`` etcd members on 127.0.0.1 with free ports, healthy when the block starts."""
    etcd_binary()
    ports = free_ports(2 * size)
    members = [
        Member(f"m{i}", ports[2 * i], ports[2 * i + 1], tmp / f"etcd-m{i}", tmp / f"etcd-m{i}.log")
        for i in range(size)
    ]
    cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in members)
    c = EtcdCluster(members, cluster, f"meshcore-test-{time.monotonic_ns()}", extra=extra)
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
    tmp: Path, store: str, ports: dict[str, int], name: str, ready: float = 30
) -> Iterator[subprocess.Popen[bytes]]:
    """``meshcore serve --config etcd://...`` as a process (a control-plane replica): ADS on
    ``ports["xds"]``, monitoring on ``ports["metrics"]``, the CA on ``ports["ca"]`` and
    ``ports["ca_mtls"]`` (tokens from tmp/tokens, the root written to tmp/state-NAME); ready
    once it announces ADS (within ``ready`` seconds). Stopped (killed if need be) when the block ends."""
    import sys

    args = [sys.executable, "-m", "meshcore", "serve", "--config", store,
            "--xds-port", str(ports["xds"]), "--monitoring-port", str(ports["metrics"]),
            "--ca-port", str(ports["ca"]), "--ca-mtls-port", str(ports["ca_mtls"]),
            "--state-dir", str(tmp / f"state-{name}"), "--tokens", str(tmp / "tokens")]  # fmt: skip
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
