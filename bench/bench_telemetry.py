"""What Istio's standard metrics cost on Envoy sidecars (Envoy's OpenTelemetry access logger
streaming each request to the agent, which keeps the counters and histograms).

One process runs the demo mesh (control plane subprocess, five Envoy sidecars and their agents,
the apps); requests go from the reviews app's side through two sidecars (reviews' outbound,
ratings' inbound, mTLS between them) to a ratings app, sequentially on one kept-alive
connection. The same mesh is started twice per round, metrics on (Istio's default) and off
(MeshConfig ``defaultProviders.metrics: []``, so the control plane gives no access logger):
rounds alternate on/off to spread the machine's load over both.

- added latency: p50 and p99 per request, on vs off;
- agent CPU: this process's CPU time (agents, apps and client) on vs off at the same request
  count, per 1,000 requests = the share of one core the agents need at 1,000 requests/s.

Quick by default (``make test`` runs it once); ``MESHCORE_BENCH_TELEMETRY_N=3000`` for figures.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshcore.demo import DemoMesh

pytestmark = pytest.mark.envoy

N = int(os.environ.get("MESHCORE_BENCH_TELEMETRY_N", "150"))
ROUNDS = int(os.environ.get("MESHCORE_BENCH_TELEMETRY_ROUNDS", "2"))
OFF = "extensionProviders:\n- {name: prom, prometheus: {}}\ndefaultProviders: {metrics: []}\n"
ON = "extensionProviders:\n- {name: prom, prometheus: {}}\ndefaultProviders: {metrics: [prom]}\n"


async def _run(workdir: Path, metrics_on: bool, n: int) -> dict[str, Any]:
    dm = DemoMesh(workdir=workdir, flaky={})
    dm.mesh_config.write_text(ON if metrics_on else OFF)
    await dm.start()
    try:
        return await asyncio.to_thread(_measure, dm, n)
    finally:
        await dm.stop()


def _measure(dm: DemoMesh, n: int) -> dict[str, Any]:
    reviews = dm.workload("reviews-v1-1")
    conn = http.client.HTTPConnection(reviews.outbound_address, 9080, timeout=10)
    latencies = []
    try:
        for _ in range(max(20, n // 10)):  # warm-up: connections, TLS sessions
            conn.request("GET", "/ratings", headers={"Host": "ratings:9080"})
            conn.getresponse().read()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            started = time.perf_counter()
            conn.request("GET", "/ratings", headers={"Host": "ratings:9080"})
            resp = conn.getresponse()
            resp.read()
            latencies.append((time.perf_counter() - started) * 1000)
            assert resp.status == 200, resp.status
        # the last batch of access logs reaches the agents within a second
        time.sleep(1.2)
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall - 1.2
    finally:
        conn.close()
    records = sum(
        sc.agent.telemetry.records  # type: ignore[union-attr]
        for sc in dm.sidecars.values()
        if getattr(sc, "agent", None) is not None and sc.agent.telemetry is not None  # type: ignore[union-attr]
    )
    latencies.sort()
    return {
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "cpu": cpu,
        "rate": n / wall,
        "records": records,
    }


def test_telemetry_cost(tmp_path: Path, benchmark: Any) -> None:
    results: dict[bool, list[dict[str, Any]]] = {True: [], False: []}

    def body() -> None:
        for r in range(ROUNDS):
            for on in (True, False) if r % 2 == 0 else (False, True):
                run = asyncio.run(_run(tmp_path / f"r{r}-{on}", on, N))
                results[on].append(run)

    benchmark.pedantic(body, rounds=1, iterations=1)
    on, off = results[True], results[False]
    assert all(r["records"] >= N for r in on), [r["records"] for r in on]  # both sidecars report
    assert all(r["records"] == 0 for r in off)
    p50_on = statistics.median(r["p50"] for r in on)
    p50_off = statistics.median(r["p50"] for r in off)
    p99_on = statistics.median(r["p99"] for r in on)
    p99_off = statistics.median(r["p99"] for r in off)
    cpu_per_k = (sum(r["cpu"] for r in on) - sum(r["cpu"] for r in off)) / (N * ROUNDS) * 1000
    rate = statistics.median(r["rate"] for r in on + off)
    benchmark.extra_info.update(p50_on=p50_on, p50_off=p50_off, p99_on=p99_on,
                                p99_off=p99_off, cpu_per_1000_req=cpu_per_k)  # fmt: skip
    print(
        f"\n| requests through 2 sidecars | metrics off | metrics on | added |\n"
        f"|---|---|---|---|\n"
        f"| p50 (ms) | {p50_off:.3f} | {p50_on:.3f} | {100 * (p50_on / p50_off - 1):+.1f}% |\n"
        f"| p99 (ms) | {p99_off:.3f} | {p99_on:.3f} | {100 * (p99_on / p99_off - 1):+.1f}% |\n"
        f"| agent CPU per 1,000 req/s (share of one core) | | | {100 * cpu_per_k:.1f}% |\n"
        f"({N} requests x {ROUNDS} rounds each, ~{rate:.0f} req/s sequential)",
        file=sys.stderr,
    )
