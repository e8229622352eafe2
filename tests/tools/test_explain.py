"""meshcore x explain over the examples, translated here (no control plane)."""

from __future__ import annotations

import json

import pytest

from meshcore.config import validate
from meshcore.tools.explain import Request, explain, node_id_for, planes_from_mesh, render
from tests._cli import main

from .conftest import EXAMPLES

MESH = validate([str(EXAMPLES)]).model
assert MESH is not None


def run(proxy: str, request: str, *headers: str, principal: str | None = None) -> dict[str, object]:
    assert MESH is not None
    return explain(planes_from_mesh(MESH), proxy=proxy, mesh=MESH,
                   request=Request.parse(request, headers), principal=principal)  # fmt: skip


def test_request_parsing() -> None:
    r = Request.parse("get http://reviews:9080/api?x=1", ["X-User: tester"])
    assert (r.method, r.authority, r.path, r.port, r.headers) == (
        "GET", "reviews:9080", "/api?x=1", 9080, (("x-user", "tester"),))  # fmt: skip
    assert Request.parse("GET http://reviews").port == 80
    for bad in ("GET", "GET reviews/x", "GET http://r:99999999/"):
        with pytest.raises(ValueError, match="request"):
            Request.parse(bad)
    with pytest.raises(ValueError, match="header"):
        Request.parse("GET http://r/", ["no-colon"])


def test_route_by_header_and_its_cluster() -> None:
    e = run("frontend-1", "GET http://reviews:9080/api", "x-user: tester")
    assert e["route"] == "testers"
    assert e["cluster"] == "outbound|9080|v2|reviews.default.svc.cluster.local"
    assert e["endpoints"] == ["127.0.20.2:9080"]
    assert e["endpoint"] == "127.0.20.2:9080"
    assert e["listener"] == "127.0.0.1_9080"
    assert e["route_config"] == "9080"
    assert e["virtual_host"] == "reviews.default.svc.cluster.local:9080"
    assert e["allowed"] is True
    assert e["policy_id"] is None


def test_weighted_route_lists_its_clusters() -> None:
    e = run("frontend-1", "GET http://reviews:9080/")
    assert e["route"] == "canary"
    assert e["timeout"] == 2.0
    assert e["weighted_clusters"] == [
        {"cluster": "outbound|9080|v1|reviews.default.svc.cluster.local", "weight": 90},
        {"cluster": "outbound|9080|v2|reviews.default.svc.cluster.local", "weight": 10},
    ]


def test_authorization_layers() -> None:
    denied = run("frontend-1", "GET http://ratings:9080/admin")
    assert (denied["allowed"], denied["authz_action"], denied["policy_id"]) == (
        False, "DENY", "ns[default]-policy[ratings-deny-admin]-rule[0]")  # fmt: skip
    nobody = run("frontend-1", "GET http://ratings:9080/")
    assert (nobody["allowed"], nobody["policy_id"]) == (False, None)
    assert "no policy matched" in render(nobody)
    ok = run("reviews-v1-1", "GET http://ratings:9080/")
    assert (ok["allowed"], ok["authz_action"], ok["policy_id"]) == (
        True, "ALLOW", "ns[default]-policy[ratings-allow-reviews]-rule[0]")  # fmt: skip
    # --from overrides the caller's identity.
    spoof = run("frontend-1", "GET http://ratings:9080/",
                principal="spiffe://cluster.local/ns/default/sa/reviews")  # fmt: skip
    assert spoof["allowed"] is True


def test_no_route() -> None:
    e = run("frontend-1", "GET http://nowhere:9080/")
    assert (e["route"], e["status"], e["response_flags"]) == (None, 404, "NR")
    assert e["allowed"] is None
    assert e["authz"] is None


def test_node_ids() -> None:
    assert node_id_for(MESH, "ratings-1") == (
        "sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local")  # fmt: skip
    with pytest.raises(ValueError, match="no WorkloadEntry default/nosuch"):
        node_id_for(MESH, "nosuch")
    with pytest.raises(ValueError, match="node id"):
        node_id_for(MESH, "a~b")


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["x", "explain", "--config", str(EXAMPLES), "--proxy", "frontend-1",
            "--request", "GET http://ratings:9080/admin"]  # fmt: skip
    assert main([*args, "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"route", "cluster", "allowed", "policy_id"} <= set(data)
    assert data["policy_id"] == "ns[default]-policy[ratings-deny-admin]-rule[0]"
    assert main(args) == 0
    assert "denied by DENY policy" in capsys.readouterr().out
    assert main([*args[:-1], "bogus"]) == 2
    assert main([*args[:4], "--proxy", "nosuch", *args[6:]]) == 2
