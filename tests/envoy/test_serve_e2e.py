"""End to end: ``meshcore serve`` (the real CLI, a subprocess, with its CA) feeds real Envoy
sidecars run by ``meshcore agent`` (subprocesses too): config over ADS, certificates from the
CA over SDS; they carry HTTP between local services over mTLS (STRICT, the default); a config
change converges; proxy-status reports. State of the world for two sidecars, delta for the
third."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from tests.envoy._sidecar import free_port, http_get, running_agent, serve_echo

pytestmark = pytest.mark.envoy

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: reviews}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-1}}
spec: {{address: 127.0.60.1, labels: {{app: web}}, serviceAccount: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1}}
spec: {{address: 127.0.61.1, labels: {{app: reviews, version: v1}}, serviceAccount: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v2}}
spec: {{address: 127.0.62.1, labels: {{app: reviews, version: v2}}, serviceAccount: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{x-user: {{exact: tester}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {w1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {w2}}}
"""


def node(name: str, address: str) -> str:
    return f"sidecar~{address}~{name}.default~default.svc.cluster.local"


def spiffe(sa: str) -> str:
    return f"spiffe://cluster.local/ns/default/sa/{sa}"


def syncz(port: int) -> dict[str, dict[str, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/syncz", timeout=5) as r:
        return dict(json.loads(r.read())["proxies"])


def test_serve_feeds_sidecars_that_carry_traffic(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    (config / "routes.yaml").write_text(ROUTES.format(w1=80, w2=20))
    xds, metrics, ca, ca_mtls = free_port(), free_port(), free_port(), free_port()
    tokens = {sa: f"{sa}-token-0123456789abcdef" for sa in ("web", "reviews")}
    (tmp_path / "tokens").write_text("".join(f"{t} {spiffe(sa)}\n" for sa, t in tokens.items()))
    cp = subprocess.Popen(
        [sys.executable, "-m", "meshcore", "serve", "--config", str(config),
         "--xds-port", str(xds), "--metrics-port", str(metrics),
         "--ca-port", str(ca), "--ca-mtls-port", str(ca_mtls),
         "--state-dir", str(tmp_path / "state"), "--tokens", str(tmp_path / "tokens")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    backends = [serve_echo("127.0.61.2", port, "v1"), serve_echo("127.0.62.2", port, "v2")]
    try:
        assert cp.stdout is not None
        lines = [cp.stdout.readline() for _ in range(4)]
        assert "ADS" in lines[1], lines
        assert "CA for cluster.local" in lines[2], lines
        common = {
            "xds": xds,
            "ca": ca,
            "ca_mtls": ca_mtls,
            "ca_root": tmp_path / "state" / "root-cert.pem",
        }
        url = f"http://127.0.60.2:{port}/reviews"
        with (
            running_agent(tmp_path, "reviews-v1", node_id=node("reviews-v1", "127.0.61.1"),
                          identity=spiffe("reviews"), token=tokens["reviews"], **common,
                          metadata={"MESHCORE_APP_ADDRESS": "127.0.61.2", "MESHCORE_OUTBOUND_ADDRESS": "127.0.61.3"}),
            running_agent(tmp_path, "reviews-v2", node_id=node("reviews-v2", "127.0.62.1"),
                          identity=spiffe("reviews"), token=tokens["reviews"], **common, delta=True,
                          metadata={"MESHCORE_APP_ADDRESS": "127.0.62.2", "MESHCORE_OUTBOUND_ADDRESS": "127.0.62.3"}),
            running_agent(tmp_path, "web", node_id=node("web-1", "127.0.60.1"),
                          identity=spiffe("web"), token=tokens["web"], **common,
                          metadata={"MESHCORE_OUTBOUND_ADDRESS": "127.0.60.2"}) as web_admin,
        ):  # fmt: skip
            assert {http_get(url, "reviews", **{"x-user": "tester"}) for _ in range(5)} == {
                (200, "v2")
            }
            counts = Counter(http_get(url, "reviews")[1] for _ in range(200))
            assert 135 <= counts["v1"] <= 185, counts  # 80/20; binomial sd ~5.7
            # The canary moves to 50/50: the change converges without restarting anything.
            (config / "routes.yaml").write_text(ROUTES.format(w1=50, w2=50))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                counts = Counter(http_get(url, "reviews")[1] for _ in range(200))
                if 70 <= counts["v1"] <= 130:
                    break
            assert 70 <= counts["v1"] <= 130, counts
            status: dict[str, dict[str, str]] = {}
            for _ in range(50):
                status = syncz(metrics)
                if all(row["LDS"] == row["CDS"] == "SYNCED" for row in status.values()):
                    break
                time.sleep(0.1)
            assert set(status) == {
                node("web-1", "127.0.60.1"),
                node("reviews-v1", "127.0.61.1"),
                node("reviews-v2", "127.0.62.1"),
            }
            assert all(
                row["CDS"] == row["LDS"] == row["RDS"] == "SYNCED" for row in status.values()
            ), status
            out = subprocess.run(
                [sys.executable, "-m", "meshcore", "proxy-status", "--control-plane", f"127.0.0.1:{metrics}"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout  # fmt: skip
            assert "SYNCED" in out
            assert node("web-1", "127.0.60.1") in out
            # The traffic to reviews was mTLS (STRICT by default), with certificates from SDS.
            with urllib.request.urlopen(
                f"http://127.0.0.1:{web_admin}/stats?filter=reviews.*ssl.handshake", timeout=5
            ) as r:
                stats = r.read().decode()
            assert any(int(v) > 0 for v in re.findall(r"ssl.handshake: (\d+)", stats)), stats
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
                text = r.read().decode()
            assert 'pilot_xds{version="meshcore"} 3.0' in text
            assert 'pilot_xds_pushes{type="rds"}' in text
    finally:
        for b in backends:
            b.shutdown()
            b.server_close()
        cp.terminate()
        try:
            cp.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cp.kill()
            cp.wait()
        if cp.stdout is not None:
            cp.stdout.close()
