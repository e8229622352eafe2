"""meshcore authz replay: log parsing (meshcore's JSON and Istio's text format), the batch
layered decision against the per-request one, and the changed decisions of a tightened
policy."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from meshcore.config import validate
from meshcore.config.meshconfig import DEFAULT_JSON_FORMAT
from meshcore.tools.explain import planes_from_mesh
from meshcore.tools.replay import (
    ALLOW,
    CUSTOM,
    DECISIONS,
    decide_batch,
    parse_log,
    replay,
    with_policies,
    with_progress,
)
from tests._cli import main

from .conftest import EXAMPLES

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
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules: [{to: [{operation: {ports: ["9080"], paths: ["/admin", "/admin/*"]}}]}]
"""


def json_line(
    method: str, path: str, dst: str, src: str, t: str = "2026-01-01T00:00:00.000Z"
) -> str:
    """A line as meshcore's JSON access log writes it (every key of its format)."""
    rec = dict.fromkeys(DEFAULT_JSON_FORMAT, "-")
    rec.update(start_time=t, method=method, path=path, authority="ratings:9080",
               upstream_cluster="inbound|9080||", downstream_local_address=dst,
               downstream_remote_address=src, protocol="HTTP/1.1", response_code=200)  # fmt: skip
    return json.dumps(rec)


def text_line(method: str, path: str, dst: str, src: str) -> str:
    """A line in Istio's default text format."""
    return (f'[2026-01-01T00:00:01.000Z] "{method} {path} HTTP/1.1" 200 - via_upstream - "-" 0 '
            f'10 1 1 "-" "curl/8" "b1c2" "ratings:9080" "{dst}" inbound|9080|| '
            f"127.0.0.6:40001 {dst} {src} outbound_.9080_._.ratings.default.svc.cluster.local "
            "default")  # fmt: skip


def test_parse_both_formats_and_since() -> None:
    lines = [json_line("GET", "/a", "127.0.30.1:9080", "127.0.20.1:5000"),
             text_line("POST", "/b?x=1", "127.0.30.2:9080", "127.0.10.1:6000"),
             "not a log line", "{broken json", "",
             json_line("GET", "/c", "127.0.30.1:9080", "127.0.20.1:5000", t="2025-01-01T00:00:00Z")]  # fmt: skip
    r = parse_log(lines)
    assert len(r) == 3
    assert r.skipped == 2
    assert r.method.tolist() == ["GET", "POST", "GET"]
    assert r.path.tolist() == ["/a", "/b?x=1", "/c"]
    assert r.source_ip.tolist() == ["127.0.20.1", "127.0.10.1", "127.0.20.1"]
    assert r.destination_port.tolist() == [9080, 9080, 9080]
    assert r.lines.tolist() == [1, 2, 6]
    assert r.index.tolist() == [0, 1, 2]
    # A repeated request is one distinct request (decided once), on every line it was logged.
    again = parse_log([lines[0], lines[1], lines[0]])
    assert (len(again), len(again.method), again.index.tolist()) == (3, 2, [0, 1, 0])
    assert len(parse_log(lines, since="2026-01-01")) == 2


@pytest.mark.parametrize("tight", [False, True])
def test_batch_decision_equals_the_per_request_one(tight: bool, tmp_path: Path) -> None:
    mesh = validate([str(EXAMPLES)]).model
    assert mesh is not None
    if tight:
        (tmp_path / "tight.yaml").write_text(TIGHT)
        policies = validate([str(tmp_path)]).model
        assert policies is not None
        mesh = with_policies(mesh, policies)
    chain = (
        planes_from_mesh(mesh)("sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local")
        .config.inbound[9080]
        .authz
    )
    assert chain is not None
    principals = [None, "spiffe://cluster.local/ns/default/sa/reviews",
                  "spiffe://cluster.local/ns/default/sa/frontend"]  # fmt: skip
    rows = list(itertools.product(["GET", "POST"], ["/", "/admin", "/admin/x", "/ratings/1"],
                                  principals))  # fmt: skip
    cols = {"method": [r[0] for r in rows], "path": [r[1] for r in rows],
            "principal": [r[2] for r in rows], "uri_sans": [[r[2]] if r[2] else None for r in rows],
            "tls": np.array([r[2] is not None for r in rows]), "destination_port": 9080,
            "authority": "ratings:9080"}  # fmt: skip
    code, policy = decide_batch(chain, cols, len(rows))
    seen = set()
    for i, (method, path, principal) in enumerate(rows):
        req = {"method": method, "path": path, "authority": "ratings:9080", "tls": principal is not None,
               "destination_port": 9080}  # fmt: skip
        if principal:
            req.update(principal=principal, uri_sans=[principal])
        d = chain.evaluate(**req)
        assert (bool(code[i] == ALLOW), policy[i]) == (d.allowed, d.policy_id), (rows[i], d)
        seen.add((d.allowed, d.policy_id))
    assert len(seen) == 3  # DENY by a policy, ALLOW by a policy, default deny


def test_replay_of_a_tightened_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "access.log"
    reviews, frontend = "127.0.20.1:41000", "127.0.10.1:42000"
    lines = [
        json_line("GET", "/ratings/1", "127.0.30.1:9080", reviews),  # 1: stays allowed
        json_line("GET", "/other", "127.0.30.1:9080", reviews),  # 2: ALLOW -> DENY
        text_line("GET", "/health", "127.0.30.2:9080", reviews),  # 3: ALLOW -> DENY
        json_line("GET", "/admin", "127.0.30.1:9080", reviews),  # 4: denied both ways
        json_line("GET", "/ratings/1", "127.0.30.1:9080", frontend),  # 5: denied both ways
        json_line("GET", "/x", "127.0.20.1:9080", frontend),  # 6: reviews: no policy, allowed
        json_line("GET", "/x", "10.9.9.9:9080", frontend),  # 7: no such workload
    ]
    log.write_text("\n".join(lines) + "\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "ratings.yaml").write_text(TIGHT)
    old = validate([str(EXAMPLES)]).model
    new_policies = validate([str(policies)]).model
    assert old is not None
    assert new_policies is not None
    new = with_policies(old, new_policies)
    twice = replay(old, new, parse_log([*lines, lines[1]]))
    assert [(c.lines, c.count) for c in twice.changes] == [((2, 8), 2), ((3,), 1)]
    report = replay(old, new, parse_log(log.read_text().splitlines()))
    assert report.requests == 7
    assert report.not_replayed == 1
    assert [(c.lines, c.old, c.new, c.old_policy, c.new_policy) for c in report.changes] == [
        ((2,), "ALLOW", "DENY", "ns[default]-policy[ratings-allow-reviews]-rule[0]", None),
        ((3,), "ALLOW", "DENY", "ns[default]-policy[ratings-allow-reviews]-rule[0]", None),
    ]
    src = "spiffe://cluster.local/ns/default/sa/reviews"
    assert report.groups == {
        ("ns[default]-policy[ratings-allow-reviews]-rule[0]", src, "ALLOW", "DENY"): 2
    }
    assert main(["authz", "replay", "--config", str(EXAMPLES), "--policies", str(policies),
                 "--log", str(log), "-o", "json"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert (data["requests"], data["changed"], data["not_replayed"]) == (7, 2, 1)
    assert [c["lines"] for c in data["changes"]] == [[2], [3]]
    assert main(["authz", "replay", "--config", str(EXAMPLES), "--policies", str(policies),
                 "--log", str(tmp_path / "nope")]) == 2  # fmt: skip
    assert DECISIONS[CUSTOM] == "CUSTOM"


def test_progress() -> None:
    import io

    out = io.StringIO()
    assert list(with_progress(["a", "b", "c", "d", "e"], out, every=2)) == ["a", "b", "c", "d", "e"]
    assert out.getvalue() == "\rparsed 2/5 lines\rparsed 4/5 lines\rparsed 5/5 lines\n"
