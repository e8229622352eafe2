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


# --- realistic policies and request streams (issue 17) ---------------------------------------
#
# N ALLOW rules, each: a source principal AND an IP range (ipBlocks), a method and a path
# prefix, and a `when` on a request header (x-tenant); N/10 DENY rules on admin paths from
# outside a namespace. Streams: 100,000 distinct requests (cold: every path different) and a warm
# one (1,000 requests repeated). The reference in the same run is a Python dict lookup of the
# same request strings (the path); ratios printed.

REAL_RULES = [100, 1_000]
COLD = 100_000
WARM = 1_000


def real_policies(n: int) -> list[dict[str, Any]]:
    from bench_authz import _policy

    policies = []
    per = 10
    for p in range(n // per):
        rules = [
            {
                "from": [
                    {
                        "source": {
                            "principals": [f"cluster.local/ns/ns{r}/sa/sa{r}"],
                            "ipBlocks": [f"10.{r % 250}.0.0/16"],
                        }
                    }
                ],
                "to": [{"operation": {"methods": [METHODS[r % 4]], "paths": [f"/api/t{r}/*"]}}],
                "when": [{"key": "request.headers[x-tenant]", "values": [f"t{r % 7}"]}],
            }
            for r in range(p * per, (p + 1) * per)
        ]
        policies.append(_policy(f"allow-{p}", "ALLOW", rules))
        deny = {
            "from": [{"source": {"notNamespaces": [f"ns{p}"]}}],
            "to": [{"operation": {"paths": [f"/admin/{p}/*"]}}],
        }
        policies.append(_policy(f"deny-{p}", "DENY", [deny]))
    return policies


def real_requests(n: int, count: int, seed: int = 13) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        r = rng.randrange(n)
        who, ip, tenant, method = r, f"10.{r % 250}.{i % 256}.{i % 199 + 1}", r % 7, METHODS[r % 4]
        path = f"/api/t{r}/items/{i}"
        x = rng.random()
        if x < 0.1:
            who = (r + 3) % n
        elif x < 0.2:
            ip = f"192.168.{i % 256}.1"
        elif x < 0.3:
            tenant = (tenant + 1) % 7
        elif x < 0.35:
            path = f"/admin/{r // 10}/x{i}"
        out.append({"method": method, "path": path, "principal": spiffe(who), "direct_remote_ip": ip,
                    "headers": {"x-tenant": f"t{tenant}"}})  # fmt: skip
    return out


@pytest.fixture(scope="module", params=REAL_RULES, ids=lambda n: f"{n}rules")
def real_engines(request: pytest.FixtureRequest) -> dict[str, Any]:
    n = int(request.param)
    authz = Authorizer.from_policies(real_policies(n), namespace="foo", labels={"app": "httpbin"})
    deny, allow = (RbacEngine.from_proto(f.typed_config) for f in authz.filters())
    cold = real_requests(n, COLD)
    assert len({q["path"] for q in cold}) == COLD
    warm = real_requests(n, WARM, seed=14) * (COLD // WARM)
    return {"n": n, "deny": deny, "allow": allow, "cold": cold, "warm": warm}


@pytest.mark.parametrize("stream", ["cold", "warm"])
def test_rbac_realistic(benchmark: Any, real_engines: dict[str, Any], stream: str) -> None:
    """evaluate() with principal, source IP, method, path and a header (keywords, as the README
    calls it) on the ALLOW engine and on the DENY + ALLOW chain, against a dict lookup of the
    same path strings, interleaved in one run."""
    import time

    deny: RbacEngine = real_engines["deny"]
    allow: RbacEngine = real_engines["allow"]
    reqs = real_engines[stream]
    rows = [
        (q["method"], q["path"], q["principal"], q["direct_remote_ip"], q["headers"]) for q in reqs
    ]
    allowed = sum(allow.evaluate(**q).allowed for q in reqs[:5000])
    assert 2000 < allowed < 4500, allowed
    ev, dev = allow.evaluate, deny.evaluate
    get = {q["path"]: 1 for q in reqs[::3]}.get

    def one_engine() -> None:
        for m, p, who, ip, h in rows:
            ev(method=m, path=p, principal=who, direct_remote_ip=ip, headers=h)

    def chain() -> None:
        for m, p, who, ip, h in rows:
            if dev(method=m, path=p, principal=who, direct_remote_ip=ip, headers=h):
                ev(method=m, path=p, principal=who, direct_remote_ip=ip, headers=h)

    def dict_lookup() -> None:
        for _, p, _, _, _ in rows:
            get(p)

    figures: dict[str, float] = {}
    for _ in range(3):
        for name, fn in (("dict", dict_lookup), ("allow", one_engine), ("chain", chain)):
            t0 = time.thread_time_ns()
            fn()
            ns = (time.thread_time_ns() - t0) / len(rows)
            figures[name] = min(figures.get(name, ns), ns)
    d = figures["dict"]
    print(
        f"\nevaluate() {real_engines['n']:>5,} rules, {stream} stream: one engine "
        f"{figures['allow']:.0f} ns ({figures['allow'] / d:.2f}x dict), DENY + ALLOW chain "
        f"{figures['chain']:.0f} ns ({figures['chain'] / d:.2f}x); dict.get {d:.0f} ns"
    )
    benchmark.extra_info.update(
        kind="rbac_realistic", size=real_engines["n"], stream=stream, per_round=len(rows),
        **{f"ns_{k}": round(v, 1) for k, v in figures.items()},
    )  # fmt: skip
    benchmark.pedantic(one_engine, rounds=1, iterations=1)
