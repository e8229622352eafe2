"""Proxies sent the same resources are sent the same bytes: a SotW response is encoded once per
(type, version, selection) and shared, each stream adding only its nonce; a change reaches every
proxy, and one that arrives while a response awaits its ACK follows the ACK."""

from __future__ import annotations

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer
from tests.xds.conftest import Stream, cla, resources, run_ads

Req = discovery_pb2.DiscoveryRequest
NODES = [f"sidecar~10.0.0.{i}~p{i}.default~default.svc.cluster.local" for i in range(3)]


def hello(node: str, names: list[str]) -> Req:
    r = Req(type_url=types.ENDPOINT, resource_names=names)
    r.node.id = node
    return r


def ack(resp: discovery_pb2.DiscoveryResponse, names: list[str]) -> Req:
    return Req(
        type_url=types.ENDPOINT,
        resource_names=names,
        response_nonce=resp.nonce,
        version_info=resp.version_info,
    )


def without_nonce(resp: discovery_pb2.DiscoveryResponse) -> bytes:
    copy = discovery_pb2.DiscoveryResponse()
    copy.CopyFrom(resp)
    copy.nonce = ""
    out: bytes = copy.SerializeToString()
    return out


def test_same_resources_same_bytes_encoded_once() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        shared = {"a": cla("a"), "b": cla("b", 9081)}
        for node in NODES:
            cache.set(node, cache.snapshot(resources(eds=shared)))
        streams = [Stream(channel) for _ in NODES]
        firsts = []
        for stream, node in zip(streams, NODES, strict=True):
            stream.send(hello(node, ["b", "a"]))
            firsts.append(await stream.recv())
        assert len({without_nonce(r) for r in firsts}) == 1
        assert len({r.nonce for r in firsts}) == len(NODES)
        assert [r.resources[0].value for r in firsts[:1]] == [cla("a").SerializeToString()]
        assert cache.encoded_responses == 1
        for stream, resp in zip(streams, firsts, strict=True):
            stream.send(ack(resp, ["b", "a"]))
        # A change while the ACKs travel: every proxy gets it once, encoded once again.
        cache.apply(types.ENDPOINT, {"a": cla("a", 7000)})
        seconds = [await s.recv() for s in streams]
        assert len({without_nonce(r) for r in seconds}) == 1
        assert cache.encoded_responses == 2
        # A change while a response awaits its ACK is sent after the ACK, not lost.
        cache.apply(types.ENDPOINT, {"b": cla("b", 7001)})
        await streams[0].nothing(0.3)
        streams[0].send(ack(seconds[0], ["b", "a"]))
        third = await streams[0].recv()
        assert third.version_info != seconds[0].version_info
        # A proxy with a different selection gets its own encoding.
        streams[1].send(ack(seconds[1], ["a"]))
        only_a = await streams[1].recv()
        assert [r.value for r in only_a.resources] == [cla("a", 7000).SerializeToString()]
        for s in streams:
            s.close()

    run_ads(body)
