"""Validation time of large config files, and what ``meshcore serve`` answers while it reads
one (issue 11).

Input: one multi-document YAML file of the generated mesh (``meshgen.mesh_text``: Services,
WorkloadEntries, VirtualServices, DestinationRules, AuthorizationPolicies, as real meshes use
them), 1 MB and 50 MB. ``validate`` is the whole job (Rust parse, conversion to Python values,
schema walk, Istio rules, cross-references, the model); the time per MB of the two sizes
shows it is linear. The peer, PyYAML with libyaml (``CSafeLoader``), only parses.

Serving during a reload: ``meshcore serve`` (the CLI, a process) with /metrics; a 50 MB file
(with one invalid document at its end, so that the reload ends with a report in
/debug/syncz and keeps the last good mesh) is dropped into its config directory; /metrics is
asked every 20 ms until the reload is over. The benchmark's time is the whole reload; the
latencies of /metrics, idle and during the reload, are in ``extra_info``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.envoy._sidecar import free_ports, serve_process, wait_for

from meshcore.config import validate
from meshgen import mesh_text

MB = 1_000_000
SERVICES_PER_MB = 400  # mesh_text gives about 2.5 KB per service
PER_MB: dict[int, float] = {}  # seconds per MB, by size (for the linearity check)


@pytest.fixture(scope="module")
def files(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, Path]:
    # make test (--benchmark-disable) runs each body once, unmeasured, on files 50 times smaller.
    scale = 0.02 if request.config.getoption("benchmark_disable") else 1.0
    d = tmp_path_factory.mktemp("large")
    out = {}
    for size in (1, 50):
        path = d / f"mesh-{size}mb.yaml"
        path.write_text(mesh_text(max(1, round(size * SERVICES_PER_MB * scale))))
        out[size] = path
    return out


@pytest.mark.parametrize("size", [1, 50])
def test_validate_large_file(benchmark: Any, files: dict[int, Path], size: int) -> None:
    path = files[size]
    megabytes = path.stat().st_size / MB
    report = benchmark.pedantic(
        validate, args=([path],), rounds=5 if size == 1 else 2, iterations=1
    )
    assert report.ok, report.errors[:3]
    if benchmark.disabled:
        return
    median = benchmark.stats.stats.median
    PER_MB[size] = median / megabytes
    benchmark.extra_info.update(
        megabytes=round(megabytes, 2),
        documents=len(report.model or ()),
        seconds_per_mb=round(PER_MB[size], 3),
    )
    if 1 in PER_MB and size == 50:
        # Linear: the 50 MB file costs about 50 times the 1 MB one (allow for the
        # collector's work growing with the heap and for a shared machine).
        assert PER_MB[50] < 2.0 * PER_MB[1], PER_MB


@pytest.mark.parametrize("size", [1, 50])
def test_peer_pyyaml_c_parse_only(benchmark: Any, files: dict[int, Path], size: int) -> None:
    text = files[size].read_text()

    def parse() -> int:
        return len(list(yaml.load_all(text, Loader=yaml.CSafeLoader)))

    assert benchmark.pedantic(parse, rounds=3 if size == 1 else 1, iterations=1) > 0


BROKEN = "---\napiVersion: v1\nkind: Service\nmetadata: {name: last}\nspec: {ports: [{port: 0}]}\n"


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
        body: bytes = r.read()
        return body


def _summary(waits: list[float]) -> dict[str, float]:
    ms = sorted(w * 1000 for w in waits)
    return {
        "probes": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
        "max_ms": round(ms[-1], 1),
    }


def test_serve_metrics_latency_during_50mb_reload(
    benchmark: Any, files: dict[int, Path], tmp_path: Path
) -> None:
    xds, metrics = free_ports(2)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n"
    )
    staged = tmp_path / "big.yaml"
    staged.write_text(files[50].read_text() + BROKEN)

    def probe() -> float:
        t0 = time.perf_counter()
        _get(metrics, "/metrics")
        return time.perf_counter() - t0

    with serve_process(tmp_path, config, {"xds": xds, "metrics": metrics}):
        wait_for(lambda: b"pilot_xds" in _get(metrics, "/metrics"), "/metrics")
        idle = [probe() for _ in range(50)]
        waits: list[float] = []

        def reload() -> None:
            os.replace(staged, config / "big.yaml")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                waits.append(probe())
                if json.loads(_get(metrics, "/debug/syncz"))["config_problems"]:
                    return
                time.sleep(0.02)
            raise AssertionError("the reload did not end in 600 s")

        benchmark.pedantic(reload, rounds=1, iterations=1)
    assert waits
    if benchmark.disabled:
        return
    benchmark.extra_info.update(
        idle=_summary(idle), during_reload=_summary(waits), reload_seconds=benchmark.stats.stats.max
    )
    assert max(waits) < 1.0, _summary(waits)
