"""Properties of Authorizer over random valid policies (hypothesis, fixed seed in CI).

Fail-closed invariants the goldens cannot show for every input: a TCP filter never matches on
an HTTP attribute (it could not be evaluated), ALLOW on TCP keeps only whole rules, every rule
becomes exactly one named policy on HTTP, and the output is deterministic.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("envoy.config.rbac.v3.rbac_pb2")

from meshcore import Authorizer

WORDS = st.sampled_from(["a", "b", "web", "api", "x.y", "ns-1"])


@st.composite
def wildcard(draw: st.DrawFn, words: st.SearchStrategy[str] = WORDS) -> str:
    word = draw(words)
    return draw(st.sampled_from([word, f"{word}*", f"*{word}", "*"]))


IPS = st.sampled_from(["10.0.0.1", "10.0.0.0/8", "::1", "fe80::/10", "192.168.1.0/24"])
PORTS = st.sampled_from(["80", "443", "8080", "0", "65535"])
PATHS = st.sampled_from(["/a", "/a/*", "*/b", "*", "/a/{*}", "/{**}/b", "/a/{*}/c/{**}"])
METHODS = st.sampled_from(["GET", "POST", "*", "P*"])
PRINCIPALS = st.sampled_from(
    ["cluster.local/ns/a/sa/b", "*/ns/a/sa/b", "td*/ns/a/sa/b", "*", "web*", "*-sa"]
)


def lists(values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.lists(values, min_size=1, max_size=3)


SOURCE_FIELDS: dict[str, st.SearchStrategy[list[str]]] = {
    "principals": lists(PRINCIPALS),
    "notPrincipals": lists(PRINCIPALS),
    "requestPrincipals": lists(st.sampled_from(["iss/sub", "*", "iss/*", "*/sub", "iss*"])),
    "notRequestPrincipals": lists(st.sampled_from(["iss/sub", "*"])),
    "namespaces": lists(wildcard()),
    "notNamespaces": lists(wildcard()),
    "ipBlocks": lists(IPS),
    "notIpBlocks": lists(IPS),
    "remoteIpBlocks": lists(IPS),
    "notRemoteIpBlocks": lists(IPS),
    "trustDomains": lists(wildcard(st.sampled_from(["td", "cluster.local", "corp"]))),
}
OPERATION_FIELDS: dict[str, st.SearchStrategy[list[str]]] = {
    "hosts": lists(wildcard(st.sampled_from(["example.com", "a.b"]))),
    "notHosts": lists(wildcard(st.sampled_from(["example.com"]))),
    "methods": lists(METHODS),
    "notMethods": lists(METHODS),
    "paths": lists(PATHS),
    "notPaths": lists(PATHS),
    "ports": lists(PORTS),
    "notPorts": lists(PORTS),
}
CONDITION_VALUES: dict[str, st.SearchStrategy[list[str]]] = {
    "request.headers[x-h]": lists(wildcard()),
    "request.experimental.inline.headers[x-l]": lists(wildcard()),
    "source.ip": lists(IPS),
    "remote.ip": lists(IPS),
    "source.namespace": lists(wildcard()),
    "source.principal": lists(PRINCIPALS),
    "request.auth.principal": lists(st.sampled_from(["iss/sub", "*"])),
    "request.auth.audiences": lists(wildcard()),
    "request.auth.presenter": lists(wildcard()),
    "request.auth.claims[groups]": lists(st.sampled_from(["a", "[b]", "c*"])),
    "request.auth.claims[a][b]": lists(wildcard()),
    "destination.ip": lists(IPS),
    "destination.port": lists(PORTS),
    "connection.sni": lists(wildcard()),
    "experimental.envoy.filters.f.g[k]": lists(st.sampled_from(["v", "[w]", "*"])),
}
HTTP_ONLY_KEYS = ("header", "url_path", "uri_template")


def fields(table: dict[str, st.SearchStrategy[list[str]]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(sorted(table)), st.just(None), min_size=1).flatmap(
        lambda keys: st.fixed_dictionaries({k: table[k] for k in keys})
    )


@st.composite
def condition(draw: st.DrawFn) -> dict[str, Any]:
    key = draw(st.sampled_from(sorted(CONDITION_VALUES)))
    cond: dict[str, Any] = {"key": key}
    which = draw(st.sampled_from(["values", "notValues", "both"]))
    if which in ("values", "both"):
        cond["values"] = draw(CONDITION_VALUES[key])
    if which in ("notValues", "both"):
        cond["notValues"] = draw(CONDITION_VALUES[key])
    return cond


@st.composite
def rule(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["from"] = [
            {"source": s} for s in draw(st.lists(fields(SOURCE_FIELDS), min_size=1, max_size=2))
        ]
    if draw(st.booleans()):
        out["to"] = [
            {"operation": o}
            for o in draw(st.lists(fields(OPERATION_FIELDS), min_size=1, max_size=2))
        ]
    if draw(st.booleans()):
        out["when"] = draw(st.lists(condition(), min_size=1, max_size=3))
    return out


@st.composite
def policy(draw: st.DrawFn, index: int) -> dict[str, Any]:
    action = draw(st.sampled_from(["ALLOW", "DENY", "AUDIT"]))
    spec: dict[str, Any] = {"action": action}
    if action == "DENY" or draw(st.booleans()):
        spec["rules"] = draw(st.lists(rule(), min_size=1, max_size=3))
    metadata: dict[str, Any] = {"name": f"p{index}", "namespace": "foo"}
    if draw(st.booleans()):
        metadata["annotations"] = {"istio.io/dry-run": "true"}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata,
        "spec": spec,
    }


POLICY_SETS = st.integers(min_value=1, max_value=3).flatmap(
    lambda n: st.tuples(*[policy(i) for i in range(n)])
)


def walk(node: Any) -> list[tuple[str, Any]]:
    """Every (key, value) pair below ``node``."""
    found: list[tuple[str, Any]] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, value in current.items():
                found.append((key, value))
                stack.append(value)
        elif isinstance(current, list):
            stack.extend(current)
    return found


def rbac_sets(authz: Authorizer, tcp: bool) -> list[dict[str, Any]]:
    out = []
    for f in authz.filter_dicts(tcp):
        for which in ("rules", "shadowRules"):
            if which in f["typedConfig"]:
                out.append(f["typedConfig"][which])
    return out


def build(policies: tuple[dict[str, Any], ...]) -> Authorizer:
    return Authorizer.from_policies(
        list(policies),
        namespace="foo",
        labels={},
        trust_domain="td",
        trust_domain_aliases=["cluster.local"],
    )


@settings(max_examples=150, deadline=None, derandomize=True)
@given(POLICY_SETS)
def test_translation_invariants(policies: tuple[dict[str, Any], ...]) -> None:
    authz = build(policies)
    http, tcp = rbac_sets(authz, tcp=False), rbac_sets(authz, tcp=True)

    # Every rule is one named policy on HTTP; a policy without rules is one never-match.
    http_ids = {pid for rbac in http for pid in rbac.get("policies", {})}
    expected = {
        f"ns[foo]-policy[{p['metadata']['name']}]-rule[{i}]"
        for p in policies
        for i in range(max(1, len(p["spec"].get("rules") or [])))
    }
    assert http_ids == expected

    # A TCP filter never refers to what only HTTP has: such a matcher could not be evaluated.
    for rbac in tcp:
        keys = {k for k, _ in walk(rbac)}
        assert not keys & {"header", "urlPath", "uriTemplate"}
        assert all(v != "envoy.filters.http.jwt_authn" for k, v in walk(rbac) if k == "filter")
    # On TCP, DENY and AUDIT keep every rule (widened); ALLOW only keeps whole rules.
    tcp_ids = {pid for rbac in tcp for pid in rbac.get("policies", {})}
    assert tcp_ids <= http_ids
    allow_only = {
        f"ns[foo]-policy[{p['metadata']['name']}]"
        for p in policies
        if p["spec"]["action"] == "ALLOW"
    }
    dropped = {pid for pid in http_ids - tcp_ids}
    assert all(pid.rsplit("-rule[", 1)[0] in allow_only for pid in dropped)

    # Deterministic: the same input gives byte-identical filters.
    again = build(policies)
    for tcp_chain in (False, True):
        first = [f.SerializeToString(deterministic=True) for f in authz.filters(tcp_chain)]
        second = [f.SerializeToString(deterministic=True) for f in again.filters(tcp_chain)]
        assert first == second
