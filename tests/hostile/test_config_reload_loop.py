"""``meshcore serve`` keeps answering while it reads a large config (issue 11: a big file
blocked its event loop, and /metrics stopped answering for 16 s): reading, parsing and
validating run in a worker thread. A probe asks /metrics and /debug/syncz (both answered by
the event loop) and opens an ADS stream for clusters (a new proxy's first answer) every 20 ms
while a 2 MB file of 8,000 documents is read; the reload ends with the file's one error
reported, and no probe waited long."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from tests.envoy._sidecar import free_ports, serve_process, wait_for
from tests.hostile._config_helpers import SERVICE, big_mesh

BROKEN = "---\napiVersion: v1\nkind: Service\nmetadata: {name: last}\nspec: {ports: [{port: 0}]}\n"


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        body: bytes = r.read()
        return body


CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
NODE = "sidecar~127.0.0.9~probe.default~default.svc.cluster.local"


def _ads_answers(port: int) -> None:
    """A new ADS stream asks for clusters and gets them."""
    done = threading.Event()

    def requests() -> Iterator[discovery_pb2.DiscoveryRequest]:
        request = discovery_pb2.DiscoveryRequest(type_url=CDS)
        request.node.id = NODE
        yield request
        done.wait(30)  # the stream stays open until the answer came

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        responses = stub.StreamAggregatedResources(requests(), timeout=30)
        try:
            first = next(responses)
        finally:
            done.set()
            responses.cancel()
    assert first.type_url == CDS


def _problems(port: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(_get(port, "/debug/syncz"))["config_problems"]
    return found


def test_metrics_answer_during_a_large_reload(tmp_path: Path) -> None:
    xds, metrics = free_ports(2)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(SERVICE.format(name="reviews"))
    big = tmp_path / "big.yaml"
    big.write_text(big_mesh(2000) + BROKEN)
    with serve_process(tmp_path, config, {"xds": xds, "metrics": metrics}):
        wait_for(lambda: b"pilot_xds" in _get(metrics, "/metrics"), "/metrics")
        _ads_answers(xds)
        os.replace(big, config / "big.yaml")
        started = time.monotonic()
        waits: list[float] = []
        while time.monotonic() - started < 120:
            t0 = time.monotonic()
            _get(metrics, "/metrics")
            _ads_answers(xds)
            problems = _problems(metrics)
            waits.append(time.monotonic() - t0)
            if problems:
                break
            time.sleep(0.02)
        reload = time.monotonic() - started
        assert problems, "the reload did not finish in 120 s"
        [problem] = problems
        assert problem["file"].endswith("big.yaml")
        assert problem["line"] == big_mesh(2000).count("\n") + 5  # spec: of the last
        # The event loop answered throughout: no probe waited for the reload to end.
        assert len(waits) >= 5, (reload, waits)
        assert max(waits) < max(0.5, reload / 3), (reload, sorted(waits)[-5:])
