"""outboundTrafficPolicy REGISTRY_ONLY and ServiceEntry resolution NONE with real Envoy behind
Istio's rules: a destination outside the registry is blackholed (TCP) or answered 502 (HTTP,
Istio's block_all), a NONE ServiceEntry's address passes through to its original destination,
and the registry's services still answer by name."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from tests.capture._mesh import CaptureMesh, Workload, capture_mesh, obj, rewrite, usable_envoy

from meshcore.capture.pods import Pod, available

UNAVAILABLE = available()
pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        UNAVAILABLE is not None and os.environ.get("CI") != "true",
        reason=f"no network namespaces: {UNAVAILABLE}",
    ),
]

SERVER = ("import http.server as h; h.ThreadingHTTPServer(('0.0.0.0', 8000),"
          " h.SimpleHTTPRequestHandler).serve_forever()")  # fmt: skip


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaptureMesh]:
    envoy = usable_envoy(tmp_path_factory.mktemp("envoy"))
    workloads = [
        Workload("client-1", "client", "client", {}),
        Workload("reviews-1", "reviews", "reviews", {}),
    ]
    policy = {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}
    with capture_mesh(workloads, [], envoy, ("known", "unknown"), policy) as m:
        for name in ("known", "unknown"):
            m.net.pods[name].popen(["python3", "-c", SERVER], cwd="/",
                                   stderr=subprocess.DEVNULL)  # fmt: skip
        yield m


def status(mesh: CaptureMesh, url: str) -> int:
    got = mesh.get(mesh.net.pods["client-1"], url, 1)
    return int(got[0]["status"])


def test_registry_only_blocks_and_none_service_entry_passes_through(mesh: CaptureMesh) -> None:
    known: Pod = mesh.net.pods["known"]
    unknown: Pod = mesh.net.pods["unknown"]
    assert status(mesh, "http://reviews:9080/") == 200
    # Outside the registry: virtualOutbound's catch-all goes to BlackHoleCluster.
    assert status(mesh, f"http://{unknown.ip}:8000/") == 0
    assert status(mesh, f"http://{known.ip}:8000/") == 0
    client = mesh.workloads["client-1"]
    assert mesh.stat(client, "cluster.BlackHoleCluster.upstream_cx_none_healthy") >= 2
    entry = obj("ServiceEntry", "known", {
        "hosts": ["known.example"], "addresses": [known.ip], "resolution": "NONE",
        "location": "MESH_EXTERNAL", "ports": [{"number": 8000, "name": "http", "protocol": "HTTP"}]})  # fmt: skip
    rewrite(mesh, [entry])
    deadline = time.monotonic() + 20
    while status(mesh, f"http://{known.ip}:8000/") != 200:
        assert time.monotonic() < deadline, "the ServiceEntry never took effect"
        time.sleep(0.3)
    assert mesh.stat(client, "cluster.outbound|8000||known.example.upstream_cx_total") >= 1
    # Port 8000 is HTTP now: what is not the entry's address gets Istio's block_all (502).
    assert status(mesh, f"http://{unknown.ip}:8000/") == 502
    assert status(mesh, "http://reviews:9080/") == 200
