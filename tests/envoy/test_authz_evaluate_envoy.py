"""Differential test of Authorizer.evaluate(): Istio's layering against a real Envoy 1.40.

Random AuthorizationPolicy sets (ALLOW, DENY, AUDIT, dry-run; sources, operations and
conditions over methods, paths and path templates, hosts, ports, principals, namespaces, IP
blocks and headers) are translated by the Authorizer; each set's filters run as the HTTP
filter chain of its own mTLS listener, and random requests (client certificates with SPIFFE
ids, or none) must get the same decision from Envoy as from Authorizer.evaluate(): allowed,
the denying policy (Istio's `ns[NS]-policy[NAME]-rule[IDX]`), and the dry-run results.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.extensions.filters.http.rbac.v3.rbac_pb2")

from google.protobuf import json_format

from meshcore import Authorizer, ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from _sidecar import free_ports
from rbac_harness import Client, have_envoy, make_pki, read_outcomes, running_envoy

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(not have_envoy(), reason="no envoy binary"),
]

CASES = int(os.environ.get("MESHCORE_DIFF_CASES", "10000")) // 5
SEED = int(os.environ.get("MESHCORE_DIFF_SEED", "20261125")) + 7
LABELS = {"app": "httpbin"}
METHODS = ["GET", "POST", "PUT", "DELETE"]
PATHS = ["/", "/api/v1/users", "/api/v2/items?x=1", "/admin", "/admin/x", "/static/a.css"]
HOSTS = ["svc", "svc.foo:8080", "api.example.com", "Api.Example.com"]
SOURCES = ["127.0.0.1", "127.0.0.2", "127.1.2.3"]
CLIENTS = [
    (["spiffe://cluster.local/ns/foo/sa/web"], [], [("CN", "web")]),
    (["spiffe://cluster.local/ns/bar/sa/db"], [], [("CN", "db")]),
    (["spiffe://td2/ns/foo/sa/x"], ["x.foo"], [("CN", "x")]),
]
DRY_RUN_PREFIX = {"DENY": "istio_dry_run_deny_", "ALLOW": "istio_dry_run_allow_", "AUDIT": ""}


def _some(rng: random.Random, pool: list[str]) -> list[str]:
    return rng.sample(pool, rng.randint(1, min(2, len(pool))))


def _rule(rng: random.Random, ports: list[int]) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if rng.random() < 0.6:
        source: dict[str, Any] = {}
        field, pool = rng.choice(
            [
                ("principals", ["cluster.local/ns/foo/sa/web", "*/ns/bar/sa/db", "*"]),
                ("notPrincipals", ["cluster.local/ns/foo/sa/web"]),
                ("namespaces", ["foo", "bar", "b*"]),
                ("notNamespaces", ["foo"]),
                ("ipBlocks", ["127.0.0.1", "127.0.0.0/24", "127.1.0.0/16"]),
                ("remoteIpBlocks", ["127.0.0.2", "127.1.0.0/16"]),
                ("notIpBlocks", ["127.0.0.1"]),
            ]
        )
        source[field] = _some(rng, pool)
        rule["from"] = [{"source": source}]
    if rng.random() < 0.7:
        operation: dict[str, Any] = {}
        for _ in range(rng.randint(1, 2)):
            field, pool = rng.choice(
                [
                    ("methods", METHODS),
                    ("notMethods", ["GET"]),
                    ("paths", ["/api/*", "/admin", "/api/{*}/users", "/static/{**}", "*.css"]),
                    ("notPaths", ["/admin*"]),
                    ("hosts", ["svc", "*.example.com", "api.example.com"]),
                    ("ports", [str(p) for p in ports]),
                ]
            )
            operation[field] = _some(rng, pool)
        rule["to"] = [{"operation": operation}]
    if rng.random() < 0.3:
        rule["when"] = [
            rng.choice(
                [
                    {"key": "request.headers[x-a]", "values": ["1", "a*"]},
                    {"key": "request.headers[x-a]", "notValues": ["1"]},
                    {"key": "source.ip", "values": ["127.0.0.2"]},
                    {"key": "destination.port", "values": [str(ports[0])]},
                    {"key": "source.namespace", "values": ["foo"]},
                ]
            )
        ]
    return rule


def _policy_set(rng: random.Random, ports: list[int]) -> list[dict[str, Any]]:
    out = []
    for i in range(rng.randint(1, 4)):
        action = rng.choice(["ALLOW", "ALLOW", "DENY", "DENY", "AUDIT"])
        meta: dict[str, Any] = {"name": f"p{i}", "namespace": rng.choice(["foo", "istio-system"])}
        if rng.random() < 0.2:
            meta["annotations"] = {"istio.io/dry-run": "true"}
        out.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": meta,
                "spec": {
                    "action": action,
                    "rules": [_rule(rng, ports) for _ in range(rng.randint(1, 3))],
                },
            }
        )
    return out


def test_authorizer_evaluate_agrees_with_envoy(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    tls_files, identities = make_pki(tmp_path, CLIENTS)
    n_sets = 30
    listeners = [("127.0.0.1", p) for p in free_ports(n_sets)]
    ports = [p for _, p in listeners[:3]]
    sets: list[Authorizer] = []
    while len(sets) < n_sets:
        try:
            a = Authorizer.from_policies(_policy_set(rng, ports), namespace="foo", labels=LABELS)
            a.filters()
        except ConfigError:
            continue  # an invalid random policy: Istio's webhook would reject it too
        sets.append(a)
    chains = [
        (
            where,
            [json_format.MessageToDict(f, preserving_proto_field_name=True) for f in a.filters()],
        )
        for where, a in zip(listeners, sets, strict=True)
    ]
    per = max(1, CASES // n_sets)
    requests = []
    for i in range(n_sets):
        for _ in range(per):
            headers = [("x-a", rng.choice(["1", "ab", "2"]))] if rng.random() < 0.5 else []
            requests.append(
                {
                    "set": i,
                    "method": rng.choice(METHODS),
                    "path": rng.choice(PATHS),
                    "authority": rng.choice(HOSTS),
                    "headers": headers,
                    "source": rng.choice(SOURCES),
                    "identity": rng.choice(identities),
                    "sni": rng.choice([None, "svc.foo"]),
                }
            )
    rng.shuffle(requests)
    with running_envoy([], tmp_path, [], tls=tls_files, chains=chains):
        client = Client()
        try:
            for seq, r in enumerate(requests):
                client.send(
                    case=0,
                    seq=seq,
                    source=r["source"],
                    host=listeners[r["set"]][0],
                    port=listeners[r["set"]][1],
                    method=r["method"],
                    path=r["path"],
                    authority=r["authority"],
                    headers=r["headers"],
                    tls=(r["identity"].context, r["sni"]),
                )
        finally:
            client.close()
    outcomes = read_outcomes(tmp_path)
    problems = []
    seen: dict[str, int] = {}
    for seq, r in enumerate(requests):
        o = outcomes.get(seq)
        if o is None:
            problems.append(f"request {seq}: no access log entry")
            continue
        ident = r["identity"]
        d = sets[r["set"]].evaluate(
            method=r["method"],
            path=r["path"],
            authority=r["authority"],
            scheme="https",
            headers=r["headers"],
            source_ip=r["source"],
            remote_ip=r["source"],
            direct_remote_ip=r["source"],
            destination_ip=listeners[r["set"]][0],
            destination_port=listeners[r["set"]][1],
            tls=True,
            uri_sans=list(ident.uri_sans),
            dns_sans=list(ident.dns_sans),
            subject=ident.subject,
            sni=r["sni"],
        )
        theirs: tuple[Any, ...] = (o.status == 200, None if o.status == 200 else o.policy_id)
        mine: tuple[Any, ...] = (d.allowed, None if d.allowed else d.policy_id)
        for layer, allowed, pid in d.dry_run:
            prefix = DRY_RUN_PREFIX[layer]
            mine += ((layer, allowed, pid),)
            result = o.metadata.get(prefix + "shadow_engine_result")
            theirs += (
                (layer, result == "allowed", o.metadata.get(prefix + "shadow_effective_policy_id")),
            )
        kind = "allowed" if d.allowed else f"denied by {d.action}"
        seen[kind] = seen.get(kind, 0) + 1
        seen["dry-run"] = seen.get("dry-run", 0) + len(d.dry_run)
        if mine != theirs:
            problems.append(
                f"{r} -> authz {mine} != envoy {theirs} ({o.details})\n"
                f"policies: {sets[r['set']].filter_dicts()}"
            )
    assert len(requests) >= n_sets
    # Not vacuous: both outcomes, both deciding layers and dry-run results were compared.
    assert all(seen.get(k, 0) > 20 for k in ("allowed", "denied by DENY", "denied by ALLOW")), seen
    assert seen.get("dry-run", 0) > 20, seen
    assert not problems, f"{len(problems)} of {len(requests)} disagree:\n" + "\n".join(problems[:3])
