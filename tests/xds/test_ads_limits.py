"""ADS limits: the push throttle (a bound on streams sending at once) and the message-size guard
for delta (responses split into parts that fit; a resource that cannot fit is reported)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import start_ads_server
from tests.xds.conftest import NODE, Stream, cla, cluster, resources


def _node(i: int) -> str:
    return f"sidecar~127.0.40.{i}~w{i}.default~default.svc.cluster.local"


async def _fleet_push(throttle: int, proxies: int = 16) -> tuple[int, int]:
    """Connects ``proxies`` SotW streams, changes an endpoint all of them hold, and returns
    (proxies that got the change, peak number of streams sending at once)."""
    cache = SnapshotCache()
    base = cache.snapshot(resources(eds={"a": cla("a")}))
    for i in range(proxies):
        cache.set(_node(i), base)
    server, ads, port = await start_ads_server(cache, push_throttle=throttle)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            streams = []
            for i in range(proxies):
                s = Stream(channel)
                r = discovery_pb2.DiscoveryRequest(type_url=types.ENDPOINT, resource_names=["a"])
                r.node.id = _node(i)
                s.send(r)
                streams.append(s)
            for s in streams:
                first = await s.recv()
                s.send(discovery_pb2.DiscoveryRequest(
                    type_url=types.ENDPOINT, resource_names=["a"], response_nonce=first.nonce,
                    version_info=first.version_info,
                ))  # fmt: skip
            await asyncio.sleep(0.2)
            ads.peak_pushes_in_flight = 0
            # A large endpoint set, so that writing each push takes a while.
            big = cla("a", port=9999)
            for k in range(2000):
                ep = big.endpoints[0].lb_endpoints.add().endpoint.address.socket_address
                ep.address, ep.port_value = f"10.1.{k // 250}.{k % 250}", 8080
            assert len(cache.apply(types.ENDPOINT, {"a": big})) == proxies
            got = 0
            for s in streams:
                resp = await s.recv(timeout=10)
                got += resp.version_info != ""
                s.close()
            assert ads.pushes_in_flight == 0
            return got, ads.peak_pushes_in_flight
    finally:
        await server.stop(None)


# On meshcore's transport a send does not wait for the write: pushes never overlap, so the
# second half (that they do without a tight bound) is grpc.aio's; the bound is tested on both
# (test_push_throttle_bound_holds).
@pytest.mark.ads_transports("grpc")
def test_push_throttle_bounds_concurrent_pushes() -> None:
    got, peak = asyncio.run(_fleet_push(throttle=2))
    assert got == 16  # every proxy is pushed, two at a time at most
    assert 1 <= peak <= 2
    # Without a tight bound, pushes do overlap: the bound above is what kept them apart.
    got, peak = asyncio.run(_fleet_push(throttle=100))
    assert got == 16
    assert peak > 2


def test_push_throttle_bound_holds() -> None:
    got, peak = asyncio.run(_fleet_push(throttle=2))
    assert got == 16
    assert 1 <= peak <= 2


def _named_cluster(name: str, pad: int = 0) -> cluster_pb2.Cluster:
    c = cluster(name)
    if pad:
        c.alt_stat_name = "x" * pad
    return c


def test_delta_responses_over_the_limit_go_in_parts() -> None:
    async def main() -> None:
        cache = SnapshotCache()
        big = {f"c{i:03}": _named_cluster(f"c{i:03}", pad=200) for i in range(40)}
        cache.set(NODE, cache.snapshot(resources(cds=big)))
        server, ads, port = await start_ads_server(cache, max_message_bytes=3000)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                s = Stream(channel, delta=True)
                first = discovery_pb2.DeltaDiscoveryRequest(type_url=types.CLUSTER)
                first.node.id = NODE
                s.send(first)
                have: dict[str, str] = {}
                parts = 0
                while len(have) < 40:
                    r = await s.recv()
                    parts += 1
                    assert r.ByteSize() <= 3000
                    assert not set(have) & {x.name for x in r.resources}  # nothing twice
                    have.update((x.name, x.version) for x in r.resources)
                    s.send(discovery_pb2.DeltaDiscoveryRequest(
                        type_url=types.CLUSTER, response_nonce=r.nonce
                    ))  # fmt: skip
                assert parts > 1
                assert ads.split_responses >= parts - 1
                await s.nothing(0.3)  # all sent: nothing more
                # Removals come once everything fits: 10 removed, 1 changed.
                smaller = {n: c for n, c in big.items() if n >= "c010"}
                smaller["c020"] = _named_cluster("c020", pad=201)
                cache.set(NODE, cache.snapshot(resources(cds=smaller)))
                r = await s.recv()
                assert [x.name for x in r.resources] == ["c020"]
                assert sorted(r.removed_resources) == [f"c{i:03}" for i in range(10)]
                s.send(discovery_pb2.DeltaDiscoveryRequest(
                    type_url=types.CLUSTER, response_nonce=r.nonce
                ))  # fmt: skip
                # One resource larger than the limit: reported, never sent, the rest still is.
                smaller["huge"] = _named_cluster("huge", pad=5000)
                smaller["c030"] = _named_cluster("c030", pad=202)
                cache.set(NODE, cache.snapshot(resources(cds=smaller)))
                r = await s.recv()
                assert [x.name for x in r.resources] == ["c030"]
                status = ads.proxies[NODE].types[types.CLUSTER]
                assert "resource 'huge'" in status.error
                assert "exceeds the limit of 3000" in status.error
                s.send(discovery_pb2.DeltaDiscoveryRequest(
                    type_url=types.CLUSTER, response_nonce=r.nonce
                ))  # fmt: skip
                await s.nothing(0.3)  # the oversized one is not offered again unchanged
                s.close()
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_new_streams_are_rate_limited_and_refused_until_ready() -> None:
    # item 38: a burst of new streams beyond the rate is refused (clients retry); no stream is
    # served before the control plane has a configuration.
    async def main() -> None:
        cache = SnapshotCache()
        for i in range(8):
            cache.set(_node(i), cache.snapshot(resources(eds={"a": cla("a")})))
        has_config = [False]
        server, ads, port = await start_ads_server(
            cache, max_new_streams_per_second=0.2, ready=lambda: has_config[0]
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

                async def attempt(i: int) -> str:
                    s = Stream(channel)
                    r = discovery_pb2.DiscoveryRequest(
                        type_url=types.ENDPOINT, resource_names=["a"]
                    )
                    r.node.id = _node(i)
                    s.send(r)
                    try:
                        await s.recv()
                        return "OK"
                    except grpc.aio.AioRpcError as exc:
                        return str(exc.code().name)
                    finally:
                        s.close()

                assert await attempt(0) == "UNAVAILABLE"
                has_config[0] = True
                # One stream per 5 s, bursts of one: of a burst of 8, one is served.
                got = await asyncio.gather(*(attempt(i) for i in range(8)))
                assert got.count("OK") == 1, got
                assert got.count("RESOURCE_EXHAUSTED") == 7, got
                assert ads.refused_streams == 8
                ads.max_new_streams_per_second = None  # no limit: accepted again
                assert await attempt(0) == "OK"
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 30))
