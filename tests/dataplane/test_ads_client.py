"""The data plane's delta ADS client against meshcore's real ADS server (real gRPC), fed by the
real control plane translating examples/; certificates from the real CA over TLS."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from envoy.config.route.v3 import route_pb2

from meshcore.dataplane import DataPlane
from meshcore.xds import types
from tests.dataplane.conftest import (
    FRONTEND,
    RATINGS_1,
    Mesh,
    eventually,
    node_info,
    running_mesh,
    spiffe,
)

REVIEWS_V1 = "outbound|9080|v1|reviews.default.svc.cluster.local"
REVIEWS_V2 = "outbound|9080|v2|reviews.default.svc.cluster.local"
RATINGS = "outbound|9080||ratings.default.svc.cluster.local"


def run(tmp: Path, body: Callable[[Mesh], Awaitable[None]], timeout: float = 60) -> None:
    async def main() -> None:
        async with running_mesh(tmp) as mesh:
            await asyncio.wait_for(body(mesh), timeout)

    asyncio.run(main())


def split(dp: DataPlane, n: int = 2000, **kw: object) -> Counter[str | None]:
    return Counter(
        dp.decide(direction="outbound", authority="reviews:9080", path="/api", **kw).cluster  # type: ignore[arg-type]
        for _ in range(n)
    )


def test_initial_sync_gives_envoys_decisions(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        dp = await mesh.dataplane(FRONTEND, "frontend")
        try:
            # The server saw every type ACKed: the same view proxy-status gives of Envoy.
            await eventually(
                lambda: all(
                    mesh.ads.sync_status()[FRONTEND][t] == "SYNCED"
                    for t in ("CDS", "EDS", "LDS", "RDS")
                ),
                what="SYNCED",
            )
            counts = split(dp)
            assert set(counts) == {REVIEWS_V1, REVIEWS_V2}
            assert 1720 <= counts[REVIEWS_V1] <= 1880, counts  # 90/10; binomial sd ~13
            tester = dp.decide(direction="outbound", authority="reviews:9080", path="/",
                               headers={"x-user": "tester"})  # fmt: skip
            assert (tester.route, tester.cluster) == ("testers", REVIEWS_V2)
            assert str(tester.endpoint) == "127.0.20.2:9080"
            canary = dp.decide(direction="outbound", authority="reviews:9080", path="/")
            assert (canary.route, canary.timeout) == ("canary", 2.0)
            assert canary.tls
            assert canary.sni.startswith("outbound_.9080_.")
            # ratings: ROUND_ROBIN over its two endpoints, retries 3 x 500 ms on 5xx.
            picks = [
                str(dp.decide(direction="outbound", authority="ratings:9080", path="/").endpoint)
                for _ in range(10)
            ]
            assert Counter(picks) == {"127.0.30.1:9080": 5, "127.0.30.2:9080": 5}
            assert all(a != b for a, b in itertools.pairwise(picks))
            rp = dp.decide(direction="outbound", authority="ratings:9080", path="/").retry_policy
            assert rp is not None
            assert (rp.num_retries, rp.per_try_timeout) == (3, 0.5)
            assert set(rp.retry_on) == {"5xx", "reset", "connect-failure"}
            # No listener for the port, no route: Envoy's 404 (NR).
            nr = dp.decide(direction="outbound", authority="nowhere:1234", path="/")
            assert (nr.status, nr.response_flags, nr.cluster) == (404, "NR", None)
        finally:
            await dp.aclose()

    run(tmp_path, body)


def test_inbound_rbac_layers_and_fail_closed(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        dp = await mesh.dataplane(RATINGS_1, "ratings")
        try:

            def inbound(path: str, principal: str | None, method: str = "GET") -> object:
                return dp.decide(direction="inbound", method=method, authority="ratings:9080",
                                 path=path, principal=principal)  # fmt: skip

            ok = inbound("/ratings/1", spiffe("reviews"))
            assert ok.allowed  # type: ignore[attr-defined]
            assert ok.policy_id == "ns[default]-policy[ratings-allow-reviews]-rule[0]"  # type: ignore[attr-defined]
            assert str(ok.endpoint) == "127.0.0.1:9080"  # type: ignore[attr-defined]
            # DENY first: reviews may not reach /admin, with the deny policy's id.
            admin = inbound("/admin/x", spiffe("reviews"))
            assert not admin.allowed
            assert admin.status == 403
            assert admin.policy_id == "ns[default]-policy[ratings-deny-admin]-rule[0]"  # type: ignore[attr-defined]
            # The listener normalises the path first (Envoy's normalize_path): no way around.
            sneaky = inbound("/ratings/../admin/x", spiffe("reviews"))
            assert not sneaky.allowed  # type: ignore[attr-defined]
            assert sneaky.policy_id == "ns[default]-policy[ratings-deny-admin]-rule[0]"  # type: ignore[attr-defined]
            assert inbound("/ratings/./1", spiffe("reviews")).path == "/ratings/1"  # type: ignore[attr-defined]
            assert inbound("/ratings/1#x", spiffe("reviews")).status == 400  # type: ignore[attr-defined]
            # ALLOW policies select the workload: anything they do not match is denied.
            assert not inbound("/ratings/1", spiffe("frontend")).allowed  # type: ignore[attr-defined]
            assert not inbound("/ratings/1", spiffe("reviews"), "POST").allowed  # type: ignore[attr-defined]
            # STRICT mTLS: no peer certificate, no admission; unknown port: fail closed.
            assert not inbound("/ratings/1", None).allowed  # type: ignore[attr-defined]
            assert not dp.decide(direction="inbound", authority="x", path="/", port=1,
                                 principal=spiffe("reviews")).allowed  # fmt: skip
        finally:
            await dp.aclose()

    run(tmp_path, body)


def test_config_change_swaps_the_compiled_config(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        dp = await mesh.dataplane(FRONTEND, "frontend")
        try:
            before = dp.config
            traffic = mesh.config_dir / "traffic.yaml"
            traffic.write_text(traffic.read_text().replace("weight: 90", "weight: 50")
                               .replace("weight: 10", "weight: 50"))  # fmt: skip
            mesh.rebuild()
            await eventually(lambda: dp.config is not before, what="a new config")
            await eventually(
                lambda: (
                    dp.config.versions[types.ROUTE]["9080"] != before.versions[types.ROUTE]["9080"]
                ),
                what="RDS 9080 updated",
            )
            # The old object is untouched (immutable): decisions made on it stay 90/10.
            counts_old = Counter(
                dp.decide(direction="outbound", authority="reviews:9080", path="/",
                          config=before).cluster for _ in range(1000)
            )  # fmt: skip
            assert counts_old[REVIEWS_V1] > 820, counts_old
            counts = split(dp)
            assert 880 <= counts[REVIEWS_V1] <= 1120, counts  # 50/50; sd ~22
            assert dp.config.generation > before.generation
        finally:
            await dp.aclose()

    run(tmp_path, body)


def _uncompilable_routes() -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name="9080")
    vh = rc.virtual_hosts.add(name="reviews", domains=["*"])
    r = vh.routes.add(name="half")
    r.match.prefix = "/"
    # A 50% runtime fraction depends on Envoy's runtime and randomness: the core refuses it.
    r.match.runtime_fraction.default_value.numerator = 50
    r.route.cluster = REVIEWS_V1
    return rc


def test_nack_of_an_uncompilable_config_keeps_the_last_good(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        dp = await mesh.dataplane(FRONTEND, "frontend")
        try:
            good = dp.config
            mesh.plane.cache.apply(types.ROUTE, {"9080": _uncompilable_routes()}, [FRONTEND])
            await eventually(lambda: dp.ads.nacks, what="a NACK")
            type_url, message = dp.ads.nacks[-1]
            assert type_url == types.ROUTE
            assert "RDS 9080" in message, message
            assert "runtime_fraction" in message, message
            # The server recorded the NACK with the compile error (proxy-status: NACKED).
            await eventually(lambda: mesh.ads.sync_status()[FRONTEND]["RDS"] == "NACKED",
                             what="NACKED on the server")  # fmt: skip
            status = mesh.ads.proxies[FRONTEND].status(types.ROUTE)
            assert "runtime_fraction" in status.error
            assert mesh.ads.rejects == 1
            # The previous config keeps deciding.
            assert dp.config is good
            d = dp.decide(direction="outbound", authority="reviews:9080", path="/",
                          headers={"x-user": "tester"})  # fmt: skip
            assert d.route == "testers"
            # A good config afterwards is taken (and ACKed).
            mesh.rebuild()
            mesh.plane.cache.set(FRONTEND, mesh.plane.snapshot_for(node_info(FRONTEND)))  # type: ignore[arg-type]
            await eventually(lambda: mesh.ads.sync_status()[FRONTEND]["RDS"] == "SYNCED",
                             what="SYNCED again")  # fmt: skip
        finally:
            await dp.aclose()

    run(tmp_path, body)


def test_control_plane_outage_keeps_deciding_then_reconnects(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        dp = await mesh.dataplane(FRONTEND, "frontend")
        try:
            held = {n: v for n, (v, _) in dp.ads.resources[types.CLUSTER].items()}
            await mesh.stop_ads()
            await eventually(lambda: not dp.ads.connected, what="the stream to drop")
            # Decisions continue on the last good config.
            for _ in range(100):
                d = dp.decide(direction="outbound", authority="reviews:9080", path="/")
                assert d.cluster in (REVIEWS_V1, REVIEWS_V2)
                assert d.endpoint is not None
            # The config changes while the proxy is away.
            traffic = mesh.config_dir / "traffic.yaml"
            traffic.write_text(traffic.read_text().replace("x-user", "x-group"))
            assert mesh.plane.load()
            mesh.plane.rebuild([node_info(FRONTEND)])
            await mesh.start_ads()  # the same port: the client's backoff finds it
            await eventually(lambda: dp.ads.connects >= 2, what="a reconnect")
            # It told the server what it held (initial_resource_versions)...
            assert dp.ads.last_initial_versions[types.CLUSTER] == held
            assert dp.ads.last_initial_versions[types.ROUTE]
            # ...and gets the change.
            await eventually(
                lambda: dp.decide(direction="outbound", authority="reviews:9080", path="/",
                                  headers={"x-group": "tester"}).route == "testers",
                what="the new header route",
            )  # fmt: skip
            # Unchanged clusters were not sent again: only the routes changed.
            status = mesh.ads.proxies[FRONTEND].status(types.CLUSTER)
            assert status.sent_version == ""  # nothing to send for CDS on the new stream
        finally:
            await dp.aclose()

    run(tmp_path, body)


def test_decisions_never_see_half_a_config(tmp_path: Path) -> None:
    """Decisions on another thread while the config flips: the testers route and its cluster
    always come from the same config (v2 before, v1 after the rename)."""

    async def body(mesh: Mesh) -> None:
        dp = await mesh.dataplane(FRONTEND, "frontend")
        seen: Counter[tuple[str | None, str | None]] = Counter()
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                d = dp.decide(direction="outbound", authority="reviews:9080", path="/",
                              headers={"x-user": "tester"})  # fmt: skip
                seen[(d.route, d.cluster)] += 1

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            traffic = mesh.config_dir / "traffic.yaml"
            original = traffic.read_text()
            flipped = original.replace("name: testers", "name: testers-b").replace(
                "route:\n    - destination: {host: reviews, subset: v2}",
                "route:\n    - destination: {host: reviews, subset: v1}",
            )
            assert flipped.count("testers-b") == 1
            assert flipped != original
            for i in range(6):
                traffic.write_text(flipped if i % 2 == 0 else original)
                mesh.rebuild()
                want = "testers-b" if i % 2 == 0 else "testers"
                await eventually(
                    lambda want=want: dp.decide(direction="outbound", authority="reviews:9080",
                                                path="/", headers={"x-user": "tester"}).route
                    == want,
                    what=f"route {want}",
                )  # fmt: skip
        finally:
            stop.set()
            await asyncio.to_thread(thread.join)
            await dp.aclose()
        assert set(seen) == {("testers", REVIEWS_V2), ("testers-b", REVIEWS_V1)}, seen

    run(tmp_path, body)


def test_missing_route_configuration_ends_warming_with_no_route(tmp_path: Path) -> None:
    """The server reports a route configuration the listener names as missing: the client
    stops waiting for it (a cluster or listener without its parts is still a config), and
    requests get Envoy's 404 NR."""

    async def body(mesh: Mesh) -> None:
        generated = mesh.plane.generate(mesh.plane.mesh, node_info(FRONTEND))  # type: ignore[arg-type]
        assert generated is not None
        without_routes = {t: r for t, r in generated.items() if t != types.ROUTE}
        mesh.plane.cache.set(FRONTEND, mesh.plane.cache.snapshot(without_routes))
        dp = await mesh.dataplane(FRONTEND, "frontend", timeout=10)
        try:
            assert dp.ads.answered[types.ROUTE] >= {"9080", "8080"}
            d = dp.decide(direction="outbound", authority="reviews:9080", path="/")
            assert (d.status, d.response_flags) == (404, "NR")
            # The routes arrive later: decisions follow.
            mesh.plane.cache.set(FRONTEND, mesh.plane.cache.snapshot(generated))
            await eventually(
                lambda: dp.decide(direction="outbound", authority="reviews:9080",
                                  path="/").cluster in (REVIEWS_V1, REVIEWS_V2),
                what="routes",
            )  # fmt: skip
        finally:
            await dp.aclose()

    run(tmp_path, body)
