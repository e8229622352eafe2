"""``meshcore authz replay`` on the demo mesh's own access logs (its sidecars write Envoy's JSON
access log, as its MeshConfig says): the ratings sidecars' inbound requests, replayed against a
tightened policy, change exactly the requests Envoy allowed there (its access log says which it
denied: the probes), and nothing it denied."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from meshcore.config import validate
from meshcore.demo import DemoMesh
from meshcore.demo.mesh import EXAMPLES
from meshcore.tools.replay import parse_log, replay, with_policies

pytestmark = pytest.mark.envoy

RATINGS = ("ratings-1", "ratings-2")
# The demo's policies (replay's new policies replace them all), but reviews may no longer GET
# ratings (only POST): every request they allowed there.
TIGHT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ratings-deny-admin
  namespace: default
spec:
  selector:
    matchLabels: {app: ratings}
  action: DENY
  rules:
  - to:
    - operation:
        ports: ["9080"]
        paths: ["/admin", "/admin/*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ratings-allow-reviews
  namespace: default
spec:
  selector:
    matchLabels: {app: ratings}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/reviews"]
    to:
    - operation:
        methods: ["POST"]
"""
PRODUCTPAGE, PROBES = 30, 4


def test_replay_of_the_demo_mesh_access_logs(tmp_path: Path) -> None:
    logs, reached, probes = asyncio.run(_traffic(tmp_path / "mesh"))
    old = validate([EXAMPLES]).model
    (tmp_path / "tight").mkdir()
    (tmp_path / "tight" / "policy.yaml").write_text(TIGHT)
    policies = validate([tmp_path / "tight"]).model
    assert old is not None
    assert policies is not None
    requests = parse_log(logs)
    # Envoy's own decisions, as its access log records them: RBAC denials say so.
    entries = [json.loads(line) for line in logs if line.startswith("{")]
    denied = [e for e in entries if e["response_code_details"].startswith("rbac_access_denied")]
    assert len(requests) == len(entries)
    assert len(denied) == probes  # the probes, and only they
    assert len(entries) - len(denied) >= reached  # what the apps answered was allowed
    report = replay(old, with_policies(old, policies), requests)
    assert report.not_replayed == 0
    # Exactly the requests Envoy allowed change, from the policy that allowed them to the
    # default deny of an ALLOW policy that no longer matches; the probes (frontend is not
    # reviews; /admin is denied) were denied and still are.
    assert report.changed == len(entries) - len(denied)
    assert {(c.method, c.old, c.new, c.old_policy, c.new_policy) for c in report.changes} == {
        ("GET", "ALLOW", "DENY", "ns[default]-policy[ratings-allow-reviews]-rule[0]", None)
    }
    assert all(c.source == "spiffe://cluster.local/ns/default/sa/reviews" for c in report.changes)


async def _traffic(workdir: Path) -> tuple[list[str], int, int]:
    dm = DemoMesh(workdir=workdir)
    await dm.start()
    try:
        before = {n: dm.apps[n].stats.requests for n in RATINGS}
        sent = await asyncio.to_thread(dm.send, PRODUCTPAGE)
        assert sent.ok > 0, sent.statuses
        admin = await asyncio.to_thread(dm.send, PROBES, "/probe/ratings-admin")
        direct = await asyncio.to_thread(dm.send, PROBES, "/probe/ratings")
        # the probes reached ratings' sidecars, which denied them
        assert admin.ratings == direct.ratings == {403: PROBES}, (admin, direct)
        reached = sum(dm.apps[n].stats.requests - before[n] for n in RATINGS)
        assert reached > 0
        logs = [dm.sidecars[n].dir / "envoy.log" for n in RATINGS]  # type: ignore[union-attr]
        deadline = time.monotonic() + 10  # Envoy flushes access logs every second
        while True:
            lines = [line for log in logs for line in log.read_text().splitlines()]
            if len(parse_log(lines)) >= reached + 2 * PROBES or time.monotonic() > deadline:
                return lines, reached, 2 * PROBES
            await asyncio.sleep(0.3)
    finally:
        await dm.stop()
