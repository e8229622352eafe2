"""RBAC decisions: RbacEngine (Rust) against cedarpy, casbin and an indexed pure-Python
evaluator, in the same run, on issue 7's policy sets.

Policy set: N rules "principal P may METHOD on PATH prefix" plus N/10 deny rules ("nobody
outside namespace nsP may touch /admin/P/"), the set bench_authz.py translates. meshcore
evaluates the very Envoy filters the Authorizer builds from it (a DENY filter, then an ALLOW
filter, as Envoy chains them); each peer gets the same rules in its own language and must
give the same answers (checked before timing).

Each benchmark decides a fixed list of requests; per-decision figures divide by its length.
Every evaluator is called the same way (attributes read from a dict, passed by keyword or
position), so the loop costs the same for all.
Results and machine notes: BENCHMARKS.md, section "RBAC engine".
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.rbac.v3.rbac_pb2")

sys.path.insert(0, str(Path(__file__).parent))

from bench_authz import METHODS, policy_set
from meshcore import Authorizer, RbacEngine

SIZES = [10, 100, 1000]
REQUESTS = 1000
SLOW_REQUESTS = 50  # cedarpy and casbin take milliseconds per decision at 1,000 rules


def spiffe(r: int) -> str:
    return f"spiffe://cluster.local/ns/ns{r}/sa/sa{r}"


def requests(n: int, count: int, seed: int = 7) -> list[dict[str, str]]:
    """A mix: allowed, wrong method, wrong principal, denied admin paths, unknown paths."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        r = rng.randrange(n)
        kind = rng.random()
        method = METHODS[r % len(METHODS)]
        path = f"/api/v{r}/items/{rng.randrange(100)}"
        who = r
        if kind < 0.15:
            method = METHODS[(r + 1) % len(METHODS)]
        elif kind < 0.3:
            who = (r + 1) % n
        elif kind < 0.4:
            path = f"/admin/{r // 10}/x"
        elif kind < 0.45:
            path = "/unknown"
        out.append({"method": method, "path": path, "principal": spiffe(who)})
    return out


# --- meshcore -------------------------------------------------------------------------------


def meshcore_engines(n: int) -> tuple[RbacEngine, RbacEngine]:
    authz = Authorizer.from_policies(policy_set(n), namespace="foo", labels={"app": "httpbin"})
    deny, allow = (RbacEngine.from_proto(f.typed_config) for f in authz.filters())
    assert deny.action == "DENY"
    assert allow.action == "ALLOW"
    return deny, allow


def meshcore_decide(deny: RbacEngine, allow: RbacEngine, reqs: list[dict[str, str]]) -> int:
    allowed = 0
    for q in reqs:
        m, p, who = q["method"], q["path"], q["principal"]
        if (
            deny.evaluate(method=m, path=p, principal=who).allowed
            and allow.evaluate(method=m, path=p, principal=who).allowed
        ):
            allowed += 1
    return allowed


def meshcore_batch(deny: RbacEngine, allow: RbacEngine, cols: dict[str, list[str]]) -> int:
    d = deny.evaluate_batch(**cols)["allowed"]
    a = allow.evaluate_batch(**cols)["allowed"]
    return int((d & a).sum())


# --- indexed pure Python --------------------------------------------------------------------


class PyIndexed:
    """What one would write by hand: allow rules indexed by (principal, method), deny rules by
    the first path segment pair; prefix checks on the few that remain."""

    def __init__(self, n: int) -> None:
        self.allow: dict[tuple[str, str], list[str]] = {}
        self.deny: dict[str, list[tuple[str, str]]] = {}
        for r in range(n):
            key = (spiffe(r), METHODS[r % len(METHODS)])
            self.allow.setdefault(key, []).append(f"/api/v{r}/")
        for p in range(max(1, n // 10)):
            prefix = f"/admin/{p}/"
            self.deny.setdefault(prefix[:7], []).append((prefix, f"/ns/ns{p}/"))

    def decide(self, method: str, path: str, principal: str) -> bool:
        for prefix, ns in self.deny.get(path[:7], ()):
            if path.startswith(prefix) and ns not in principal:
                return False
        return any(path.startswith(p) for p in self.allow.get((principal, method), ()))


# --- cedarpy ----------------------------------------------------------------------------------


def cedar_policies(n: int) -> str:
    out = []
    for r in range(n):
        out.append(
            f'permit(principal == User::"{spiffe(r)}", action == Action::"{METHODS[r % 4]}", '
            f'resource) when {{ context.path like "/api/v{r}/*" }};'
        )
    for p in range(max(1, n // 10)):
        out.append(
            f'forbid(principal, action, resource) when {{ context.path like "/admin/{p}/*" '
            f'&& !(context.principal like "*/ns/ns{p}/*") }};'
        )
    return "\n".join(out)


def cedar_request(q: dict[str, str]) -> dict[str, Any]:
    return {
        "principal": f'User::"{q["principal"]}"',
        "action": f'Action::"{q["method"]}"',
        "resource": 'Path::"p"',
        "context": {"path": q["path"], "principal": q["principal"]},
    }


# --- casbin -----------------------------------------------------------------------------------

CASBIN_MODEL = """
[request_definition]
r = sub, act, path

[policy_definition]
p = sub, act, path, eft

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = (p.sub == "*" || r.sub == p.sub) && keyMatch(r.path, p.path) && \
((p.eft == "allow" && r.act == p.act) || (p.eft == "deny" && !regexMatch(r.sub, p.act)))
"""


def casbin_enforcer(n: int) -> Any:
    import casbin

    model = casbin.model.Model()
    model.load_model_from_text(CASBIN_MODEL)
    e = casbin.Enforcer(model)
    rules = [[spiffe(r), METHODS[r % 4], f"/api/v{r}/*", "allow"] for r in range(n)]
    # Deny rules: any principal outside nsP on /admin/P/*; the namespace test rides in `act`
    # as a regex over the principal (casbin has no negated match on its own).
    rules += [["*", f"/ns/ns{p}/", f"/admin/{p}/*", "deny"] for p in range(max(1, n // 10))]
    e.add_policies(rules)
    return e


# --- correctness first: every evaluator gives the same answers ---------------------------------


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"{n}rules")
def setup(request: pytest.FixtureRequest) -> dict[str, Any]:
    n = int(request.param)
    deny, allow = meshcore_engines(n)
    reqs = requests(n, REQUESTS)
    expected = [deny.evaluate(**q).allowed and allow.evaluate(**q).allowed for q in reqs]
    py = PyIndexed(n)
    assert [py.decide(**q) for q in reqs] == expected
    return {"n": n, "deny": deny, "allow": allow, "reqs": reqs, "expected": expected, "py": py}


def per_decision(benchmark: Any, count: int) -> None:
    benchmark.extra_info["decisions_per_round"] = count


def test_meshcore_evaluate(benchmark: Any, setup: dict[str, Any]) -> None:
    benchmark.group = f"rbac decide, {setup['n']} rules (per {REQUESTS} decisions)"
    per_decision(benchmark, REQUESTS)
    got = benchmark(meshcore_decide, setup["deny"], setup["allow"], setup["reqs"])
    assert got == sum(setup["expected"])


def test_meshcore_evaluate_one_engine(benchmark: Any, setup: dict[str, Any]) -> None:
    """evaluate() on the ALLOW filter alone (N rules): the issue's per-call figure."""
    benchmark.group = f"rbac decide, {setup['n']} rules (per {REQUESTS} decisions)"
    per_decision(benchmark, REQUESTS)
    allow = setup["allow"]
    reqs = setup["reqs"]

    def run() -> int:
        return sum(
            allow.evaluate(method=q["method"], path=q["path"], principal=q["principal"]).allowed
            for q in reqs
        )

    benchmark(run)


def test_meshcore_evaluate_batch(benchmark: Any, setup: dict[str, Any]) -> None:
    benchmark.group = f"rbac decide, {setup['n']} rules (per {REQUESTS} decisions)"
    per_decision(benchmark, REQUESTS)
    reqs = setup["reqs"]
    cols = {k: [q[k] for q in reqs] for k in ("method", "path", "principal")}
    got = benchmark(meshcore_batch, setup["deny"], setup["allow"], cols)
    assert got == sum(setup["expected"])


def test_meshcore_evaluate_batch_one_engine(benchmark: Any, setup: dict[str, Any]) -> None:
    """evaluate_batch() on the ALLOW filter alone (N rules), columns as Python lists."""
    benchmark.group = f"rbac decide, {setup['n']} rules (per {REQUESTS} decisions)"
    per_decision(benchmark, REQUESTS)
    allow = setup["allow"]
    cols = {k: [q[k] for q in setup["reqs"]] for k in ("method", "path", "principal")}
    want = [allow.evaluate(**q).allowed for q in setup["reqs"]]
    assert allow.evaluate_batch(**cols)["allowed"].tolist() == want
    benchmark(allow.evaluate_batch, **cols)


def test_meshcore_evaluate_batch_one_engine_numpy(benchmark: Any, setup: dict[str, Any]) -> None:
    """The same with numpy 'S' columns (no Python object per request)."""
    import numpy as np

    benchmark.group = f"rbac decide, {setup['n']} rules (per {REQUESTS} decisions)"
    per_decision(benchmark, REQUESTS)
    allow = setup["allow"]
    cols = {
        k: np.array([q[k] for q in setup["reqs"]], dtype="S")
        for k in ("method", "path", "principal")
    }
    want = [allow.evaluate(**q).allowed for q in setup["reqs"]]
    assert allow.evaluate_batch(**cols)["allowed"].tolist() == want
    benchmark(allow.evaluate_batch, **cols)


def test_meshcore_evaluate_batch_every_column(benchmark: Any, setup: dict[str, Any]) -> None:
    """evaluate_batch() on the ALLOW filter with every attribute a column (numpy 'S' strings,
    lists of ports, TLS flags, SAN lists, header maps): what a full request log costs."""
    import numpy as np

    benchmark.group = f"rbac decide, {setup['n']} rules (per {REQUESTS} decisions)"
    per_decision(benchmark, REQUESTS)
    allow = setup["allow"]
    reqs = setup["reqs"]
    n = len(reqs)
    strings = {
        "method": [q["method"] for q in reqs],
        "path": [q["path"] for q in reqs],
        "principal": [q["principal"] for q in reqs],
        "authority": ["httpbin.foo.svc.cluster.local:8000"] * n,
        "scheme": ["https"] * n,
        "source_ip": [f"10.1.{i % 250}.{i % 7 + 1}" for i in range(n)],
        "remote_ip": [f"10.1.{i % 250}.{i % 7 + 1}" for i in range(n)],
        "direct_remote_ip": [f"10.1.{i % 250}.{i % 7 + 1}" for i in range(n)],
        "destination_ip": ["10.0.0.1"] * n,
        "subject": [""] * n,
        "sni": ["outbound_.8000_._.httpbin.foo.svc.cluster.local"] * n,
    }
    cols: dict[str, Any] = {k: np.array(v, dtype="S") for k, v in strings.items()}
    cols["destination_port"] = [8000] * n
    cols["tls"] = [True] * n
    cols["uri_sans"] = [[] for _ in range(n)]
    cols["dns_sans"] = [[] for _ in range(n)]
    cols["headers"] = [{"x-request-id": str(i)} for i in range(n)]
    out = allow.evaluate_batch(**cols)
    one = {k: v[0] for k, v in strings.items()}
    single = allow.evaluate(
        **one, destination_port=8000, tls=True, headers={"x-request-id": "0"}, uri_sans=[]
    )
    assert bool(out["allowed"][0]) == single.allowed
    benchmark(allow.evaluate_batch, **cols)


def test_python_indexed(benchmark: Any, setup: dict[str, Any]) -> None:
    benchmark.group = f"rbac decide, {setup['n']} rules (per {REQUESTS} decisions)"
    per_decision(benchmark, REQUESTS)
    py = setup["py"]
    reqs = setup["reqs"]

    def run() -> int:
        return sum(py.decide(q["method"], q["path"], q["principal"]) for q in reqs)

    assert benchmark(run) == sum(setup["expected"])


def _slow_peer(
    benchmark: Any, setup: dict[str, Any], decide: Callable[[list[dict[str, str]]], list[bool]]
) -> None:
    reqs = setup["reqs"][:SLOW_REQUESTS]
    assert decide(reqs) == setup["expected"][:SLOW_REQUESTS]
    benchmark.group = f"rbac decide, {setup['n']} rules (per {SLOW_REQUESTS} decisions)"
    per_decision(benchmark, SLOW_REQUESTS)
    benchmark.pedantic(decide, args=(reqs,), rounds=3, iterations=1)


def test_cedarpy(benchmark: Any, setup: dict[str, Any]) -> None:
    cedarpy = pytest.importorskip("cedarpy")
    policies = cedar_policies(setup["n"])

    def decide(reqs: list[dict[str, str]]) -> list[bool]:
        return [cedarpy.is_authorized(cedar_request(q), policies, []).allowed for q in reqs]

    _slow_peer(benchmark, setup, decide)


def test_cedarpy_batch(benchmark: Any, setup: dict[str, Any]) -> None:
    cedarpy = pytest.importorskip("cedarpy")
    policies = cedar_policies(setup["n"])

    def decide(reqs: list[dict[str, str]]) -> list[bool]:
        res = cedarpy.is_authorized_batch([cedar_request(q) for q in reqs], policies, [])
        return [r.allowed for r in res]

    _slow_peer(benchmark, setup, decide)


def test_casbin(benchmark: Any, setup: dict[str, Any]) -> None:
    pytest.importorskip("casbin")
    e = casbin_enforcer(setup["n"])

    def decide(reqs: list[dict[str, str]]) -> list[bool]:
        return [bool(e.enforce(q["principal"], q["method"], q["path"])) for q in reqs]

    _slow_peer(benchmark, setup, decide)


@pytest.mark.parametrize("n", SIZES)
def test_meshcore_compile(benchmark: Any, n: int) -> None:
    """RbacEngine.from_proto on the serialized ALLOW + DENY filters (N + N/10 rules)."""
    authz = Authorizer.from_policies(policy_set(n), namespace="foo", labels={"app": "httpbin"})
    blobs = [f.typed_config.value for f in authz.filters()]
    benchmark.group = f"rbac compile, {n} rules"

    def compile_all() -> int:
        return sum(len(RbacEngine.from_proto(b).policy_ids) for b in blobs)

    assert benchmark(compile_all) == n + max(1, n // 10)
