"""``meshcore authz replay``: decisions per second on recorded requests, and parsing apart.

200,000 inbound access-log lines (meshcore's JSON format) to the examples/ mesh's ratings
workloads, from reviews, frontend and outside addresses, over paths the policies tell apart;
replayed through the examples' policies and a tightened set (``TIGHT``). The decision work is
``replay()`` on parsed columns (principal lookup, grouping by destination, both policy sets
through the RBAC engines' batch evaluator, the diff); parsing (``parse_log``) is measured on
its own. Target: 1,000,000 lines per second of decision work. Results: BENCHMARKS.md.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from meshcore.config import validate
from meshcore.config.meshconfig import DEFAULT_JSON_FORMAT
from meshcore.tools.replay import parse_log, replay, with_policies

ROOT = Path(__file__).resolve().parents[1]
LINES = 200_000
TIGHT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-allow-reviews, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/reviews"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/ratings/*"]}}]
"""


def make_lines(n: int) -> list[str]:
    rng = random.Random(7)
    sources = ["127.0.20.1", "127.0.20.2", "127.0.10.1", "10.1.2.3"]
    paths = ["/ratings/1", "/ratings/2?x=1", "/admin", "/health", "/admin/x", "/"]
    out = []
    for i in range(n):
        rec = dict.fromkeys(DEFAULT_JSON_FORMAT, "-")
        rec.update(start_time="2026-01-01T00:00:00.000Z", method=rng.choice(["GET", "POST"]),
                   path=rng.choice(paths), authority="ratings:9080",
                   upstream_cluster="inbound|9080||",
                   downstream_local_address=f"127.0.30.{1 + i % 2}:9080",
                   downstream_remote_address=f"{rng.choice(sources)}:{40000 + i % 20000}")  # fmt: skip
        out.append(json.dumps(rec))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("tight")
    (d / "tight.yaml").write_text(TIGHT)
    old = validate([str(ROOT / "examples")]).model
    policies = validate([str(d)]).model
    assert old is not None
    assert policies is not None
    lines = make_lines(LINES)
    return {"old": old, "new": with_policies(old, policies), "lines": lines,
            "requests": parse_log(lines)}  # fmt: skip


def test_replay_decisions(benchmark: Any, setup: dict[str, Any]) -> None:
    benchmark.group = f"authz replay ({LINES} lines)"
    benchmark.extra_info["lines"] = LINES
    report = benchmark.pedantic(replay, args=(setup["old"], setup["new"], setup["requests"]),
                                rounds=5, iterations=1, warmup_rounds=1)  # fmt: skip
    assert report.requests == LINES
    assert report.changes  # the tightened policy changes some decisions
    if benchmark.disabled:  # make test runs each body once, unmeasured
        return
    per_second = LINES / benchmark.stats.stats.min
    benchmark.extra_info["lines_per_second"] = round(per_second)
    print(f"\nreplay decisions: {per_second:,.0f} lines/s (best of 5), "
          f"{report.changed} changed, {len(report.changes)} distinct")  # fmt: skip


def test_parse_log(benchmark: Any, setup: dict[str, Any]) -> None:
    benchmark.group = f"authz replay ({LINES} lines)"
    requests = benchmark.pedantic(parse_log, args=(setup["lines"],), rounds=3, iterations=1)
    assert len(requests) == LINES
    if not benchmark.disabled:
        print(f"\nparse: {LINES / benchmark.stats.stats.min:,.0f} lines/s (best of 3)")
