"""Checklist item 33: resource TTLs and heartbeats, gated by client features (raw gRPC clients).

A client that advertises ``xds.config.supports-resource-ttl`` gets a TTL on every resource of
the types the server configures; while nothing changes, heartbeats refresh it: Resources with
the name, the current version and the TTL but no resource. State-of-the-world clients also need
``xds.config.resource-in-sotw`` (resources wrapped in Resource); for LDS/CDS, which are full
state, the refresh is the full response again. Clients without the features see none of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer, start_ads_server
from tests.xds.conftest import NODE, Stream, cla, cluster, resources

TTL = "xds.config.supports-resource-ttl"
IN_SOTW = "xds.config.resource-in-sotw"
RESOURCE = "type.googleapis.com/envoy.service.discovery.v3.Resource"


def run(body: Callable[[SnapshotCache, AdsServer, grpc.aio.Channel], Awaitable[None]]) -> None:
    async def main() -> None:
        cache = SnapshotCache()
        cache.set(
            NODE,
            cache.snapshot(resources(cds={"a": cluster("a")}, eds={"a": cla("a"), "b": cla("b")})),
        )
        server, ads, port = await start_ads_server(
            cache,
            resource_ttl={types.ENDPOINT: 5.0, types.CLUSTER: 5.0},
            heartbeat_interval=0.3,
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await asyncio.wait_for(body(cache, ads, channel), 20)
        finally:
            await server.stop(None)

    asyncio.run(main())


def delta_req(type_url: str, nonce: str = "", features: tuple[str, ...] | None = None,
              sub: list[str] | None = None) -> Any:  # fmt: skip
    r = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url, response_nonce=nonce, resource_names_subscribe=sub or []
    )
    if features is not None:
        r.node.id = NODE
        r.node.client_features.extend(features)
    return r


def sotw_req(type_url: str, names: list[str], resp: Any = None,
             features: tuple[str, ...] | None = None) -> Any:  # fmt: skip
    r = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
    if resp is not None:
        r.response_nonce, r.version_info = resp.nonce, resp.version_info
    if features is not None:
        r.node.id = NODE
        r.node.client_features.extend(features)
    return r


def test_delta_ttl_and_heartbeats() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        s = Stream(channel, delta=True)
        s.send(delta_req(types.ENDPOINT, features=(TTL,), sub=["a", "b"]))
        r1 = await s.recv()
        assert sorted(r.name for r in r1.resources) == ["a", "b"]
        assert all(r.HasField("resource") and r.ttl.seconds == 5 for r in r1.resources)
        versions = {r.name: r.version for r in r1.resources}
        s.send(delta_req(types.ENDPOINT, nonce=r1.nonce))
        beat = await s.recv(timeout=2)  # within the heartbeat interval, nothing having changed
        assert {r.name: r.version for r in beat.resources} == versions
        assert not any(r.HasField("resource") for r in beat.resources)
        assert all(r.ttl.seconds == 5 for r in beat.resources)
        assert not beat.removed_resources
        assert ads.heartbeats >= 1
        # No second heartbeat before the first is ACKed (one outstanding response per type).
        await s.nothing(0.6)
        s.send(delta_req(types.ENDPOINT, nonce=beat.nonce))
        # A change is a real push (with the TTL); heartbeats then carry the new version.
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a", port=1), "b": cla("b")})))
        r2 = await s.recv(timeout=2)
        for _ in range(5):  # a heartbeat that fell due before the change was seen (a loaded
            if any(r.HasField("resource") for r in r2.resources):  # machine): ACKed, then the push
                break
            s.send(delta_req(types.ENDPOINT, nonce=r2.nonce))
            r2 = await s.recv(timeout=2)
        assert [r.name for r in r2.resources] == ["a"]
        assert r2.resources[0].HasField("resource")
        assert r2.resources[0].ttl.seconds == 5
        s.send(delta_req(types.ENDPOINT, nonce=r2.nonce))
        beat2 = await s.recv(timeout=2)
        got = {r.name: r.version for r in beat2.resources}
        assert got == {"a": r2.resources[0].version, "b": versions["b"]}
        s.close()

    run(body)


def test_delta_without_the_feature_gets_no_ttl_and_no_heartbeat() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        s = Stream(channel, delta=True)
        s.send(delta_req(types.ENDPOINT, features=(), sub=["a"]))
        r1 = await s.recv()
        assert not r1.resources[0].HasField("ttl")
        s.send(delta_req(types.ENDPOINT, nonce=r1.nonce))
        await s.nothing(1.0)
        assert ads.heartbeats == 0
        s.close()

    run(body)


def test_sotw_resources_wrapped_with_ttl_and_heartbeats() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        s = Stream(channel)
        s.send(sotw_req(types.ENDPOINT, ["a", "b"], features=(TTL, IN_SOTW)))
        r1 = await s.recv()
        wrapped = []
        for any_ in r1.resources:
            assert any_.type_url == RESOURCE
            res = discovery_pb2.Resource()
            any_.Unpack(res)
            wrapped.append(res)
        assert [w.name for w in wrapped] == ["a", "b"]
        assert all(w.version == r1.version_info and w.ttl.seconds == 5 for w in wrapped)
        cla_a = endpoint_pb2.ClusterLoadAssignment()
        assert wrapped[0].resource.Unpack(cla_a)
        assert cla_a.cluster_name == "a"
        s.send(sotw_req(types.ENDPOINT, ["a", "b"], resp=r1))
        beat = await s.recv(timeout=2)
        assert beat.version_info == r1.version_info
        beats = []
        for any_ in beat.resources:
            res = discovery_pb2.Resource()
            any_.Unpack(res)
            beats.append(res)
        assert [b.name for b in beats] == ["a", "b"]
        # Envoy's heartbeat: no resource, the version it holds.
        assert all(not b.HasField("resource") and b.version == r1.version_info for b in beats)
        s.send(sotw_req(types.ENDPOINT, ["a", "b"], resp=beat))
        s.close()

    run(body)


def test_sotw_full_state_types_are_refreshed_in_full() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        s = Stream(channel)
        s.send(sotw_req(types.CLUSTER, [], features=(TTL, IN_SOTW)))
        r1 = await s.recv()
        s.send(sotw_req(types.CLUSTER, [], resp=r1))
        again = await s.recv(timeout=2)
        assert again.version_info == r1.version_info
        res = discovery_pb2.Resource()
        again.resources[0].Unpack(res)
        assert res.name == "a"
        assert res.HasField("resource")  # an empty heartbeat would delete every cluster
        assert res.ttl.seconds == 5
        s.close()

    run(body)


def test_sotw_needs_both_features() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        s = Stream(channel)
        s.send(sotw_req(types.ENDPOINT, ["a"], features=(TTL,)))  # no Resource wrappers
        r1 = await s.recv()
        assert r1.resources[0].type_url == types.ENDPOINT
        s.send(sotw_req(types.ENDPOINT, ["a"], resp=r1))
        await s.nothing(1.0)
        assert ads.heartbeats == 0
        s.close()

    run(body)
