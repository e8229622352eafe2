"""RouteTable against Python routers, in the same run (``make bench``: release build).

Path-only tables of 10, 100, 1,000 and 10,000 literal routes (Envoy ``path`` matchers; the
peers get the same literal paths), requests 80% hits and 20% near misses. Every benchmark
routes a fixed list of requests per round, so ns/call = round time / len(requests).

Peers: falcon's CompiledRouter, sanic-routing, werkzeug's Map, and an Envoy-style linear
scan in pure Python (first match wins, as Envoy does it).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from meshcore import RouteTable

SIZES = [10, 100, 1_000, 10_000]
REQUESTS = 1_000
SEED = 7


def route_paths(n: int) -> list[str]:
    # Shared first segments and distinct tails, like services with many endpoints.
    return [f"/svc{i % 37}/api/v{i % 3}/res{i}" for i in range(n)]


def requests_for(paths: list[str]) -> list[str]:
    rng = random.Random(SEED)
    out = []
    for _ in range(REQUESTS):
        p = rng.choice(paths)
        if rng.random() < 0.2:
            p = rng.choice([p + "x", p[:-1], p.replace("/api/", "/apx/"), p.upper()])
        out.append(p)
    return out


def route_config(paths: list[str]) -> bytes:
    msg = json_format.ParseDict(
        {
            "name": "bench",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"name": f"r{i}", "match": {"path": p}, "route": {"cluster": "c"}}
                        for i, p in enumerate(paths)
                    ],
                }
            ],
        },
        route_pb2.RouteConfiguration(),
    )
    return msg.SerializeToString()


class _Resource:
    def on_get(self, req: Any, resp: Any) -> None:  # falcon wants a responder
        pass


def build_falcon(paths: list[str]) -> Callable[[str], object]:
    from falcon.routing import CompiledRouter

    router = CompiledRouter()
    res = _Resource()
    for p in paths:
        router.add_route(p, res)
    router.find("/")  # falcon compiles lazily, on the first lookup
    return router.find


def build_sanic(paths: list[str]) -> Callable[[str], object]:
    from sanic_routing import BaseRouter
    from sanic_routing.exceptions import NotFound

    class Router(BaseRouter):  # type: ignore[misc]
        def get(self, path: str, method: str, extra: Any = None) -> Any:
            return self.resolve(path=path, method=method, extra=extra)

    router = Router()
    for i, p in enumerate(paths):
        router.add(p, lambda i=i: i, methods=["GET"])
    router.finalize()

    def find(path: str) -> object:
        try:
            return router.get(path, "GET")
        except NotFound:
            return None

    return find


def build_werkzeug(paths: list[str]) -> Callable[[str], object]:
    from werkzeug.exceptions import NotFound
    from werkzeug.routing import Map, Rule

    adapter = Map([Rule(p, endpoint=f"r{i}") for i, p in enumerate(paths)]).bind("h")

    def find(path: str) -> object:
        try:
            return adapter.match(path)
        except NotFound:
            return None

    return find


def build_linear(paths: list[str]) -> Callable[[str], object]:
    # Envoy's algorithm written in Python: routes in order, first match wins.
    table = [("path", p, i) for i, p in enumerate(paths)]

    def find(path: str) -> object:
        p = path.split("?", 1)[0]
        for kind, value, i in table:
            if kind == "path" and p == value:
                return i
        return None

    return find


def build_meshcore(paths: list[str]) -> Callable[[str], object]:
    table = RouteTable.from_proto(route_config(paths))
    route = table.route

    def find(path: str) -> object:
        return route("h", path)

    return find


PEERS: dict[str, Callable[[list[str]], Callable[[str], object]]] = {
    "meshcore": build_meshcore,
    "falcon": build_falcon,
    "sanic-routing": build_sanic,
    "werkzeug": build_werkzeug,
    "linear-python": build_linear,
}


def _rounds(peer: str, n: int) -> int:
    slow = peer == "linear-python" and n >= 1_000
    return 3 if slow else 10


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("peer", list(PEERS))
def test_route(benchmark: Any, peer: str, n: int) -> None:
    paths = route_paths(n)
    find = PEERS[peer](paths)
    reqs = requests_for(paths)
    hits = sum(find(p) is not None for p in reqs)
    assert 0.7 * REQUESTS < hits <= 0.9 * REQUESTS

    def run() -> None:
        for p in reqs:
            find(p)

    if peer == "meshcore":
        # The API as users call it: no wrapper function around table.route.
        route = RouteTable.from_proto(route_config(paths)).route

        def run() -> None:
            for p in reqs:
                route("h", p)

    benchmark.extra_info.update(kind="route", peer=peer, size=n, per_round=len(reqs))
    benchmark.pedantic(run, rounds=_rounds(peer, n), iterations=1, warmup_rounds=1)


def test_bare_python_call(benchmark: Any) -> None:
    """The floor: a Python call and a dict lookup per request, for scale."""
    d = {p: i for i, p in enumerate(route_paths(1_000))}
    reqs = requests_for(route_paths(1_000))

    def f(p: str) -> object:
        return d.get(p)

    def run() -> None:
        for p in reqs:
            f(p)

    benchmark.extra_info.update(
        kind="route", peer="python-call+dict", size=1_000, per_round=len(reqs)
    )
    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)


# route_batch input forms: Python lists (one str object per request), or numpy string arrays
# ('S': UTF-8 bytes, 'U': UCS-4), read without a Python object per request; the authority as
# a list or as one str for every request.
BATCH_FORMS = ["list", "list+scalar-authority", "numpy-S", "numpy-U"]


@pytest.mark.parametrize("form", BATCH_FORMS)
@pytest.mark.parametrize("n", SIZES)
def test_route_batch(benchmark: Any, n: int, form: str) -> None:
    import numpy as np

    paths = route_paths(n)
    table = RouteTable.from_proto(route_config(paths))
    reqs = requests_for(paths) * 10
    authorities: Any = ["h"] * len(reqs)
    col: Any = reqs
    if form != "list":
        authorities = "h"
    if form == "numpy-S":
        col = np.array(reqs, dtype="S")
    elif form == "numpy-U":
        col = np.array(reqs, dtype="U")
    got = table.route_batch(authorities, col)
    assert 0.7 * len(reqs) < int((got >= 0).sum()) <= 0.9 * len(reqs)
    assert got.tolist() == table.route_batch(["h"] * len(reqs), reqs).tolist()
    benchmark.extra_info.update(kind="route_batch", peer=form, size=n, per_round=len(reqs))
    benchmark.pedantic(
        lambda: table.route_batch(authorities, col), rounds=10, iterations=1, warmup_rounds=1
    )


@pytest.mark.parametrize("peer", ["meshcore", "falcon", "sanic-routing", "werkzeug"])
@pytest.mark.parametrize("n", [1_000, 10_000])
def test_compile(benchmark: Any, peer: str, n: int) -> None:
    paths = route_paths(n)
    build: Callable[[], object]
    if peer == "meshcore":
        data = route_config(paths)

        def build() -> object:
            return RouteTable.from_proto(data)
    else:

        def build() -> object:
            return PEERS[peer](paths)

    benchmark.extra_info.update(kind="compile", peer=peer, size=n, per_round=1)
    slow = peer != "meshcore" and n >= 10_000
    benchmark.pedantic(build, rounds=1 if slow else 5, iterations=1)


def envoy_shaped(vhosts: int) -> tuple[bytes, list[tuple[str, str, dict[str, str]]]]:
    """vhosts x 5 routes with header matchers and regexes, like an Istio sidecar's table."""
    vhs = []
    for v in range(vhosts):
        vhs.append(
            {
                "name": f"svc{v}",
                "domains": [f"svc{v}.ns.svc.cluster.local", f"svc{v}", f"svc{v}:8080"],
                "routes": [
                    {
                        "match": {
                            "prefix": "/api/",
                            "headers": [{"name": "x-canary", "string_match": {"exact": "1"}}],
                        },
                        "route": {"cluster": f"canary{v}"},
                    },
                    {
                        "match": {"safe_regex": {"regex": r"/users/\d+/orders"}},
                        "route": {"cluster": f"orders{v}"},
                    },
                    {"match": {"path": "/healthz"}, "direct_response": {"status": 200}},
                    {"match": {"prefix": "/api/"}, "route": {"cluster": f"api{v}"}},
                    {"match": {"prefix": "/"}, "route": {"cluster": f"default{v}"}},
                ],
            }
        )
    msg = json_format.ParseDict({"virtual_hosts": vhs}, route_pb2.RouteConfiguration())
    rng = random.Random(SEED)
    reqs = []
    for _ in range(REQUESTS):
        v = rng.randrange(vhosts)
        host = rng.choice([f"svc{v}.ns.svc.cluster.local", f"svc{v}:8080", "unknown"])
        path = rng.choice(["/api/x", "/users/42/orders", "/healthz", "/other"])
        headers = {"x-canary": "1"} if rng.random() < 0.3 else {}
        reqs.append((host, path, headers))
    return msg.SerializeToString(), reqs


@pytest.mark.parametrize("vhosts", [10, 100, 1_000])
def test_envoy_shaped(benchmark: Any, vhosts: int) -> None:
    data, reqs = envoy_shaped(vhosts)
    table = RouteTable.from_proto(data)
    route = table.route

    def run() -> None:
        for host, path, headers in reqs:
            route(host, path, "GET", headers)

    benchmark.extra_info.update(
        kind="envoy_shaped", peer="meshcore", size=vhosts, per_round=len(reqs)
    )
    benchmark.pedantic(run, rounds=10, iterations=1, warmup_rounds=1)
