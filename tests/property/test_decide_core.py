"""``DataPlane.decide`` and the load balancer in the core (``meshcore._core.decide``) decide as
the Python implementation, kept as the reference: ``LoadBalancer`` (``dataplane/lb.py``) and
``DataPlane``'s Python path (taken whenever the data plane is given that balancer). Both sides
are seeded alike (the core's random source is Python's MT19937, draw for draw), so every pick
(round robin order, least request's two choices, random, ring hash and Maglev stickiness,
outlier ejection and panic mode, weighted clusters) must be the same, request by request, over
generated clusters, meshes and request sequences with load reports and clock steps between."""

from __future__ import annotations

import gc
import inspect
import random
import shutil
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore._core import decide as core_decide
from meshcore.config import validate
from meshcore.dataplane import DataPlane
from meshcore.dataplane.ads import AdsClient
from meshcore.dataplane.config import ClusterConfig, Compiler, Endpoint, OutlierDetection
from meshcore.dataplane.lb import CoreLoadBalancer, LoadBalancer
from meshcore.xds import translate

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = "sidecar~127.0.10.1~frontend-1.default~default.svc.cluster.local"
POLICIES = ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), n=st.integers(0, 3000))
def test_random_is_pythons(seed: int, n: int) -> None:
    ours, ref = core_decide.Random(seed), random.Random(seed)
    assert [ours.randrange(n + 1) for _ in range(5)] == [ref.randrange(n + 1) for _ in range(5)]
    assert ours.random() == ref.random()


outliers = st.one_of(
    st.none(),
    st.builds(
        OutlierDetection,
        consecutive_5xx=st.integers(0, 4),
        enforcing_consecutive_5xx=st.sampled_from([0, 50, 100]),
        consecutive_gateway_failure=st.integers(0, 4),
        enforcing_consecutive_gateway_failure=st.sampled_from([0, 50, 100]),
        base_ejection_time=st.sampled_from([1.0, 5.0, 30.0]),
        max_ejection_time=st.sampled_from([0.0, 10.0, 300.0]),
        max_ejection_percent=st.sampled_from([0, 10, 20, 25, 33, 40, 50, 60, 100]),
    ),
)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), st.one_of(st.none(), st.integers(0, 2**64 - 1))),
        st.tuples(st.just("started"), st.integers(0, 29)),
        st.tuples(
            st.just("finished"),
            st.integers(0, 4),
            st.sampled_from([200, 404, 500, 502, 503, 504, None]),
            st.booleans(),
            st.integers(1, 5),
        ),
        st.tuples(st.just("tick"), st.sampled_from([0.5, 3.0, 20.0])),
        st.tuples(st.just("hosts"), st.integers(1, 30)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    policy=st.sampled_from(POLICIES),
    weights=st.one_of(
        st.lists(st.integers(1, 4), min_size=1, max_size=30),
        st.lists(st.just(1), min_size=2, max_size=10),  # equal weights, few hosts
    ),
    outlier=outliers,
    panic=st.sampled_from([0.0, 50.0, 100.0]),
    steps=ops,
)
def test_balancer_picks_as_the_python_reference(
    seed: int,
    policy: str,
    weights: list[int],
    outlier: OutlierDetection | None,
    panic: float,
    steps: list[tuple[Any, ...]],
) -> None:
    cluster = ClusterConfig("outbound|80||svc", policy, None, None, outlier, None, 1.0,
                            ring_size=64, maglev_table_size=251,
                            panic_threshold=panic)  # fmt: skip
    every = tuple(Endpoint(f"10.0.0.{i}", 80, weight=w) for i, w in enumerate(weights))
    endpoints = every
    ref, ours = LoadBalancer(seed), CoreLoadBalancer(seed)
    clock = Clock()
    ref.clock = ours.clock = clock
    for step in steps:
        kind = step[0]
        if kind == "pick":
            assert ours.pick(cluster, endpoints, step[1]) == ref.pick(cluster, endpoints, step[1])
        elif kind == "started":
            e = every[step[1] % len(every)]
            ref.started(cluster.name, e)
            ours.started(cluster.name, e)
        elif kind == "finished":
            e = every[step[1] % len(every)]
            args = (cluster, e, step[2], endpoints)
            for _ in range(step[4]):  # a streak (outlier detection counts them)
                assert ours.finished(*args, started=step[3]) == ref.finished(*args, started=step[3])
        elif kind == "tick":
            clock.now += step[1]
        else:  # the endpoint set changes (a config update): the state by address survives
            endpoints = every[: step[1]]
        assert ours.ejected(cluster.name) == ref.ejected(cluster.name)


@pytest.mark.parametrize("hosts", [2, 4, 5, 10])
@pytest.mark.parametrize("percent", [0, 20, 25, 40, 50, 100])
def test_ejection_limits_as_the_python_reference(hosts: int, percent: int) -> None:
    """Every host failing in turn: the core ejects exactly the hosts the reference does, at
    the max_ejection_percent boundary included, and brings them back at the same times."""
    od = OutlierDetection(consecutive_5xx=2, base_ejection_time=10.0, max_ejection_percent=percent)
    cluster = ClusterConfig("c", "ROUND_ROBIN", None, None, od, None, 1.0)
    eps = tuple(Endpoint(f"10.0.1.{i}", 80) for i in range(hosts))
    ref, ours = LoadBalancer(1), CoreLoadBalancer(1)
    clock = Clock()
    ref.clock = ours.clock = clock
    for round_ in range(3):
        for e in eps:
            for _ in range(2):
                got = ours.finished(cluster, e, 503, eps, started=False)
                assert got == ref.finished(cluster, e, 503, eps, started=False)
            assert ours.ejected("c") == ref.ejected("c")
            assert [ours.pick(cluster, eps) for _ in range(hosts)] == [
                ref.pick(cluster, eps) for _ in range(hosts)
            ]
        clock.now += 10.0 * (round_ + 1)
        assert ours.ejected("c") == ref.ejected("c")


TRAFFIC_POLICIES = {
    "round_robin": "loadBalancer: {simple: ROUND_ROBIN}",
    "least_request": "loadBalancer: {simple: LEAST_REQUEST}",
    "random": "loadBalancer: {simple: RANDOM}",
    "header_hash": "loadBalancer: {consistentHash: {httpHeaderName: x-user}}",
    "source_ip_maglev": "loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 251}}}",
    "cookie_hash": "loadBalancer: {consistentHash: {httpCookie: {name: u, ttl: 10s}}}",
    "query_hash": "loadBalancer: {consistentHash: {httpQueryParameterName: q}}",
}  # fmt: skip

EXTRA_RATINGS = """
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: ratings-x{i}
  namespace: default
spec:
  address: 127.0.31.{i}
  labels: {{app: ratings, version: v1}}
  serviceAccount: ratings
  ports: {{http: 9080}}
  weight: {weight}
"""


def _mesh(tmp: Path, policy: str, extra: int) -> DataPlane:
    for f in (ROOT / "examples").glob("*.yaml"):
        shutil.copy(f, tmp / f.name)
    traffic = (tmp / "traffic.yaml").read_text()
    traffic = traffic.replace("loadBalancer: {simple: ROUND_ROBIN}", TRAFFIC_POLICIES[policy])
    # A prefix rewrite on the canary route (applied by decide to the forwarded path).
    traffic = traffic.replace("    timeout: 2s\n", "    timeout: 2s\n    rewrite: {uri: /v/}\n")
    (tmp / "traffic.yaml").write_text(traffic)
    with (tmp / "workloads.yaml").open("a") as out:
        for i in range(extra):
            out.write(EXTRA_RATINGS.format(i=i + 1, weight=1 + i % 3))
    report = validate([tmp])
    assert report.model is not None, report
    mesh = report.model
    result = translate.generate(mesh, translate.proxy_for_node(mesh, FRONTEND))
    return DataPlane.from_resources(FRONTEND, result.resources)


@pytest.fixture(scope="module")
def meshes(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], DataPlane]:
    cache: dict[tuple[str, int], DataPlane] = {}

    def get(policy: str, extra: int) -> DataPlane:
        if (policy, extra) not in cache:
            cache[(policy, extra)] = _mesh(tmp_path_factory.mktemp(policy), policy, extra)
        return cache[(policy, extra)]

    return get


requests = st.lists(
    st.one_of(
        st.tuples(
            st.just("decide"),
            st.sampled_from(
                [
                    "reviews:9080",
                    "ratings:9080",
                    "ratings",
                    "reviews",
                    "nothing:9080",
                    "ratings:9999",
                    "ratings.default.svc.cluster.local:9080",
                ]
            ),
            st.sampled_from(
                [
                    "/",
                    "/ratings/1",
                    "/reviews/2",
                    "/a#b",
                    "/a/../b",
                    "/a//b",
                    "/%2e/x",
                    "/r?q=1",
                    "/r?q=2&x=y",
                    "/\u00e9",
                ]
            ),
            st.sampled_from(
                [
                    None,
                    {"x-user": "tester"},
                    {"x-user": "u1"},
                    [("X-User", "u2")],
                    {"cookie": "u=abc"},
                    {"cookie": 'a=1; u="q"'},
                ]
            ),
            st.sampled_from([None, 9080, 80]),
            st.sampled_from([None, "127.0.10.1", "127.0.10.2"]),
        ),
        st.tuples(st.just("report"), st.sampled_from([200, 503, 502, None]), st.booleans()),
        st.tuples(st.just("repick")),
        st.tuples(st.just("tick"), st.sampled_from([1.0, 15.0])),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(sorted(TRAFFIC_POLICIES)),
    extra=st.sampled_from([0, 3, 22]),
    seed=st.integers(0, 2**32),
    steps=requests,
)
def test_decide_as_the_python_reference(
    meshes: Callable[[str, int], DataPlane],
    policy: str,
    extra: int,
    seed: int,
    steps: list[tuple[Any, ...]],
) -> None:
    base = meshes(policy, extra)
    ours = DataPlane(base.ads, lb=CoreLoadBalancer(seed))
    ref = DataPlane(base.ads, lb=LoadBalancer(seed))
    ours._random.seed(seed + 1)
    ref._random = random.Random(seed + 1)  # type: ignore[assignment]
    clock = Clock()
    ours.lb.clock = ref.lb.clock = clock
    last: tuple[Any, Any] | None = None
    for step in steps:
        if step[0] == "decide":
            _, authority, path, headers, port, source_ip = step
            kw = {"authority": authority, "path": path, "headers": headers, "port": port,
                  "source_ip": source_ip}  # fmt: skip
            a = ours.decide(direction="outbound", **kw)
            b = ref.decide(direction="outbound", **kw)
            assert a == b
            if a.endpoint is not None:
                ours.started(a)
                ref.started(b)
                last = (a, b)
        elif step[0] == "report" and last is not None:
            assert ours.report(last[0], step[1], started=step[2]) == ref.report(
                last[1], step[1], started=step[2]
            )
        elif step[0] == "repick" and last is not None:
            tried = [last[0].endpoint]
            assert ours.repick(last[0], tried) == ref.repick(last[1], tried)
        elif step[0] == "tick":
            clock.now += step[1]


@pytest.mark.parametrize("policy", sorted(TRAFFIC_POLICIES))
def test_long_request_streams_decide_as_the_python_reference(
    meshes: Callable[[str, int], DataPlane], policy: str
) -> None:
    """3,000 requests of a seeded mix (so that one-in-a-hundred draws, such as the 90/10
    canary's boundary, are exercised), with load reports and failures fed back."""
    rng = random.Random(policy)
    base = meshes(policy, 22)
    ours = DataPlane(base.ads, lb=CoreLoadBalancer(3))
    ref = DataPlane(base.ads, lb=LoadBalancer(3))
    ours._random.seed(4)
    ref._random = random.Random(4)  # type: ignore[assignment]
    clock = Clock()
    ours.lb.clock = ref.lb.clock = clock
    for i in range(3000):
        kw = {"authority": rng.choice(["reviews:9080", "ratings:9080"]),
              "path": f"/p/{rng.randrange(50)}",
              "headers": {"x-user": f"u{rng.randrange(40)}", "cookie": f"u={rng.randrange(9)}"},
              "source_ip": f"127.0.10.{rng.randrange(1, 30)}"}  # fmt: skip
        a = ours.decide(direction="outbound", **kw)
        b = ref.decide(direction="outbound", **kw)
        assert a == b, (i, kw)
        if a.endpoint is not None and rng.random() < 0.5:
            ours.started(a)
            ref.started(b)
            status = rng.choice([200, 200, 200, 503, None])
            assert ours.report(a, status, started=True) == ref.report(b, status, started=True)
        clock.now += 0.01


@pytest.mark.parametrize("policy", ["least_request", "cookie_hash", "header_hash"])
@pytest.mark.parametrize("form", ["lists", "numpy"])
def test_decide_batch_is_decide_row_by_row(
    meshes: Callable[[str, int], DataPlane], policy: str, form: str
) -> None:
    """decide_batch gives the decisions of one decide() per row, in order, the rows the core
    does not cover (a '#' path, a cookie hash policy) decided in place by the general path."""
    np = pytest.importorskip("numpy")
    rng = random.Random(form + policy)
    base = meshes(policy, 3)
    rows = [{"authority": rng.choice(["reviews:9080", "ratings:9080", "nope:9080", "ratings:1"]),
             "path": rng.choice(["/a", "/b#c", "/r/1", "/x//y"]),
             "headers": {"x-user": f"u{rng.randrange(5)}"},
             "source_ip": f"127.0.10.{rng.randrange(1, 9)}"} for _ in range(500)]  # fmt: skip
    one, batch = (DataPlane(base.ads, lb=CoreLoadBalancer(7)) for _ in range(2))
    one._random.seed(8)
    batch._random.seed(8)
    expected = [one.decide(direction="outbound", **r) for r in rows]
    cols: dict[str, Any] = {k: [r[k] for r in rows] for k in ("authority", "path", "source_ip")}
    if form == "numpy":
        cols = {k: np.array(v, dtype="S") for k, v in cols.items()}
    got = batch.decide_batch(
        authorities=cols["authority"], paths=cols["path"], source_ips=cols["source_ip"],
        headers=[r["headers"] for r in rows], methods="GET",
    )  # fmt: skip
    assert got == expected
    assert any(d.status == 404 for d in got)
    assert any(d.endpoint is not None for d in got)


def test_decide_batch_inbound_and_errors(meshes: Callable[[str, int], DataPlane]) -> None:
    dp = meshes("round_robin", 0)
    report = validate([ROOT / "examples"])
    assert report.model is not None
    node = "sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local"
    result = translate.generate(report.model, translate.proxy_for_node(report.model, node))
    ratings = DataPlane.from_resources(node, result.resources)
    spiffe = "spiffe://cluster.local/ns/default/sa/"
    principals = [spiffe + "reviews", spiffe + "frontend", None]
    got = ratings.decide_batch(direction="inbound", authorities="ratings:9080",
                               paths=["/ratings/1", "/admin/x", "/ratings/1"], ports=9080,
                               principals=principals)  # fmt: skip
    assert [d.allowed for d in got] == [
        ratings.decide(direction="inbound", authority="ratings:9080", path=p, port=9080,
                       principal=s).allowed
        for p, s in zip(["/ratings/1", "/admin/x", "/ratings/1"], principals, strict=True)
    ]  # fmt: skip
    with pytest.raises(ValueError, match="direction"):
        dp.decide_batch(direction="sideways", authorities=["a"], paths=["/"])
    with pytest.raises(ValueError, match="length"):
        dp.decide_batch(authorities=["a", "b"], paths=["/"])
    with pytest.raises(TypeError, match=r"paths\[1\]"):
        dp.decide_batch(authorities=["a", "b"], paths=["/", None])


RATINGS = "sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local"
EXTRA_POLICIES = {
    "strict": "",
    "permissive": """
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ratings, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  mtls: {mode: PERMISSIVE}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-from-ips, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {ipBlocks: ["127.0.10.0/24"]}}]
    to: [{operation: {paths: ["/public/*"]}}]
  - when:
    - key: "request.headers[x-token]"
      values: ["let-me-in"]
""",
    "dry_run": """
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ratings-dry
  namespace: default
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/ratings/2"]}}]}]
""",
}


@pytest.fixture(scope="module")
def inbound_planes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DataPlane]:
    out = {}
    for name, extra in EXTRA_POLICIES.items():
        tmp = tmp_path_factory.mktemp(name)
        for f in (ROOT / "examples").glob("*.yaml"):
            shutil.copy(f, tmp / f.name)
        with (tmp / "security.yaml").open("a") as f:
            f.write(extra)
        report = validate([tmp])
        assert report.model is not None, report
        mesh = report.model
        result = translate.generate(mesh, translate.proxy_for_node(mesh, RATINGS))
        out[name] = DataPlane.from_resources(RATINGS, result.resources)
    return out


def _outcome(dp: DataPlane, kw: dict[str, Any]) -> Any:
    try:
        return dp.decide(direction="inbound", **kw)
    except ValueError as exc:
        return ("ValueError", str(exc))


@settings(max_examples=150, deadline=None)
@given(
    variant=st.sampled_from(sorted(EXTRA_POLICIES)),
    seed=st.integers(0, 2**32),
    reqs=st.lists(
        st.fixed_dictionaries(
            {
                "authority": st.sampled_from(["ratings:9080", "ratings"]),
                "path": st.sampled_from(
                    [
                        "/ratings/1",
                        "/ratings/2",
                        "/admin",
                        "/admin/x",
                        "/public/a",
                        "/a/../admin",
                        "/admin%2Fx",
                        "/x#y",
                        "//admin",
                    ]
                ),
                "method": st.sampled_from(["GET", "POST"]),
                "headers": st.sampled_from([None, {"x-token": "let-me-in"}, [("X-Token", "no")]]),
                "port": st.sampled_from([None, 9080, 1234]),
                "source_ip": st.sampled_from([None, "127.0.10.5", "10.1.1.1", "not-an-ip"]),
                "principal": st.sampled_from(
                    [
                        None,
                        "spiffe://cluster.local/ns/default/sa/reviews",
                        "spiffe://cluster.local/ns/default/sa/frontend",
                    ]
                ),
                "tls": st.sampled_from([None, True, False]),
            }
        ),
        max_size=30,
    ),
)
def test_inbound_decides_as_the_python_reference(
    inbound_planes: dict[str, DataPlane], variant: str, seed: int, reqs: list[dict[str, Any]]
) -> None:
    """The inbound decision in the core (listener, STRICT mTLS, the RBAC layers, the inbound
    cluster's endpoint) against the Python path, over STRICT and PERMISSIVE listeners, IP and
    header rules, dry-run rules (the general path's), bad addresses and tls contradictions."""
    base = inbound_planes[variant]
    ours = DataPlane(base.ads, lb=CoreLoadBalancer(seed))
    ref = DataPlane(base.ads, lb=LoadBalancer(seed))
    for kw in reqs:
        assert _outcome(ours, kw) == _outcome(ref, kw), kw


def test_an_older_config_passed_in_decides_on_the_general_path(
    meshes: Callable[[str, int], DataPlane],
) -> None:
    """decide(config=...) with a config that is no longer current decides on that config
    (the general path, the same balancer state) and compiles nothing for it."""
    base = meshes("round_robin", 3)
    ads = AdsClient("", FRONTEND)
    ads.resources = base.ads.resources
    old = Compiler().compile(ads.resources)
    ads.config = Compiler().compile(ads.resources)  # an update: a new config object
    ours = DataPlane(ads, lb=CoreLoadBalancer(5))
    ref = DataPlane(ads, lb=LoadBalancer(5))
    kw = {"authority": "ratings:9080", "path": "/r"}
    for _ in range(5):
        assert ours.decide(config=old, **kw) == ref.decide(config=old, **kw)
    assert ours._decider is None
    for _ in range(5):
        assert ours.decide(**kw) == ref.decide(**kw)
    assert ours._decider is not None
    assert ours._decider[0] is ads.config


def test_balancer_state_survives_config_updates(meshes: Callable[[str, int], DataPlane]) -> None:
    """Round-robin position, active requests and ejections are kept by cluster and endpoint
    address across config updates (a new decider per config, one balancer), as the Python
    reference keeps them."""
    base = meshes("least_request", 3)
    ads = AdsClient("", FRONTEND)
    ads.resources = base.ads.resources
    ads.config = Compiler().compile(ads.resources)
    ours = DataPlane(ads, lb=CoreLoadBalancer(9))
    ref = DataPlane(ads, lb=LoadBalancer(9))
    clock = Clock()
    ours.lb.clock = ref.lb.clock = clock
    kw = {"authority": "ratings:9080", "path": "/r"}
    for update in range(4):
        for _ in range(20):
            a, b = ours.decide(**kw), ref.decide(**kw)
            assert a == b
            ours.started(a)
            ref.started(b)
        # The first endpoint fails three times in a row (the mesh's consecutive5xxErrors).
        first = ours.decide(**kw)
        assert first == ref.decide(**kw)
        for _ in range(3):
            assert ours.report(first, 503) == ref.report(first, 503)
        cluster = first.cluster or ""
        assert ours.lb.ejected(cluster) == ref.lb.ejected(cluster)
        ads.config = Compiler().compile(ads.resources)  # an update: a new decider
        assert ours.lb.ejected(cluster) == ref.lb.ejected(cluster)
        clock.now += 4.0 * update
    assert ours.lb.ejected(cluster)  # something was ejected along the way, and is kept


def test_decide_is_entered_in_the_core(meshes: Callable[[str, int], DataPlane]) -> None:
    """A data plane balancing in the core binds the core's entry as its ``decide`` (no Python
    frame per decision): the signature of ``DataPlane.decide``, its errors and decisions, the
    decider kept for the current config; the plane's own method when it balances in Python or
    a subclass overrides ``decide``; the plane itself held weakly (no cycle)."""
    base = meshes("round_robin", 3)
    ours = DataPlane(base.ads, lb=CoreLoadBalancer(1))
    twin = DataPlane(base.ads, lb=CoreLoadBalancer(1))
    entry = ours.decide.__self__  # type: ignore[attr-defined]
    assert isinstance(entry, core_decide.Decide)
    ours_params = inspect.signature(ours.decide).parameters
    method_params = inspect.signature(DataPlane.decide).parameters
    assert list(ours_params) == list(method_params)[1:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours_params.values())
    kw = {"authority": "ratings:9080", "path": "/r"}
    assert entry.compiled is None
    for _ in range(4):  # the Python method on a twin plane: the same decisions, in order
        assert ours.decide(**kw) == DataPlane.decide(twin, **kw)
    assert entry.compiled is not None
    assert entry.compiled[0] is base.ads.config
    with pytest.raises(ValueError, match="not 'sideways'"):
        ours.decide(direction="sideways", **kw)
    with pytest.raises(TypeError):
        ours.decide("ratings:9080", "/r")  # type: ignore[misc]
    assert "decide" not in vars(DataPlane(base.ads, lb=LoadBalancer(1)))

    class Mine(DataPlane):
        def decide(self, **kw: Any) -> Any:  # type: ignore[override]
            return "mine"

    assert Mine(base.ads).decide(**kw) == "mine"
    gone = weakref.ref(ours)
    del ours
    gc.collect()
    assert gone() is None
    assert entry.decide(**kw).cluster  # the decider kept decides on
    with pytest.raises(RuntimeError, match="data plane is gone"):
        entry.decide(config=Compiler().compile(base.ads.resources), **kw)  # nothing to compile it
