"""What Istio's standard metrics cost on Envoy sidecars (Envoy's OpenTelemetry access logger
streaming each request to the agent, which keeps the counters and histograms).

One process runs the demo mesh (control plane subprocess, five Envoy sidecars and their agents,
the apps); requests go from the reviews app's side through two sidecars (reviews' outbound,
ratings' inbound, mTLS between them) to a ratings app, sequentially on one kept-alive
connection. The same mesh is started twice per round, metrics on (Istio's default) and off
(MeshConfig ``defaultProviders.metrics: []``, so the control plane gives no access logger):
rounds alternate on/off to spread the machine's load over both.

- added latency: p50 and p99 per request, on vs off;
- agent CPU: this process's CPU time (agents and apps; the client is a process of its own) on
  vs off at the same request count, per 1,000 requests = the share of one core the agents
  need at 1,000 requests/s.

Quick by default (``make test`` runs it once); ``MESHCORE_BENCH_TELEMETRY_N=3000`` for figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
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


# The client runs in a process of its own: it does not share this process's interpreter (the
# agents and the apps run here) and its CPU time is not counted with theirs.
CLIENT = """
import http.client, json, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection(host, port, timeout=10)
out = []
for i in range(max(20, n // 10) + n):  # a warm-up first: connections, TLS sessions
    started = time.perf_counter()
    conn.request("GET", "/ratings", headers={"Host": "ratings:9080"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
    if i >= max(20, n // 10):
        out.append((time.perf_counter() - started) * 1000)
print(json.dumps(out))
"""


def _measure(dm: DemoMesh, n: int) -> dict[str, Any]:
    reviews = dm.workload("reviews-v1-1")
    cpu, wall = time.process_time(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, reviews.outbound_address, "9080", str(n)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    wall = time.perf_counter() - wall
    time.sleep(1.2)  # the last batch of access logs reaches the agents within a second
    cpu = time.process_time() - cpu
    latencies = sorted(json.loads(done.stdout))
    receivers = [sc.agent.telemetry for sc in dm.sidecars.values()  # type: ignore[union-attr]
                 if getattr(sc, "agent", None) is not None]  # fmt: skip
    records = sum(r.records for r in receivers if r is not None)
    handler_cpu = sum(r.cpu_seconds for r in receivers if r is not None)
    exports = sum(r.exports for r in receivers if r is not None)
    return {
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "cpu": cpu,
        "rate": n / wall,
        "records": records,
        "handler_cpu": handler_cpu,
        "exports": exports,
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
    handler_per_k = sum(r["handler_cpu"] for r in on) / (N * ROUNDS) * 1000
    exports = sum(r["exports"] for r in on)
    benchmark.extra_info.update(p50_on=p50_on, p50_off=p50_off, p99_on=p99_on,
                                p99_off=p99_off, cpu_per_1000_req=cpu_per_k)  # fmt: skip
    print(
        f"\n| requests through 2 sidecars | metrics off | metrics on | added |\n"
        f"|---|---|---|---|\n"
        f"| p50 (ms) | {p50_off:.3f} | {p50_on:.3f} | {100 * (p50_on / p50_off - 1):+.1f}% |\n"
        f"| p99 (ms) | {p99_off:.3f} | {p99_on:.3f} | {100 * (p99_on / p99_off - 1):+.1f}% |\n"
        f"| agent CPU per 1,000 req/s (share of one core) | | | {100 * cpu_per_k:.1f}% |\n"
        f"| of which turning records into metrics | | | {100 * handler_per_k:.1f}% |\n"
        f"({exports} Export calls for {sum(r['records'] for r in on)} records)\n"
        f"({N} requests x {ROUNDS} rounds each, ~{rate:.0f} req/s sequential)",
        file=sys.stderr,
    )
