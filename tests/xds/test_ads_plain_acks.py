"""ACKs that change nothing but the ACK: on meshcore's transport they are recognised on the
wire and applied without decoding (see SotwStream.receive); everything else (a stale nonce, an
ACK with other resource_names, a NACK, a delta ACK with subscription changes) must take the
full path. Run on both transports (tests/conftest.py): the same behaviour, real gRPC streams."""

from __future__ import annotations

import grpc
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer
from tests.xds.conftest import NODE, Stream, cla, resources, run_ads

Req = discovery_pb2.DiscoveryRequest
DeltaReq = discovery_pb2.DeltaDiscoveryRequest


def eds(names: list[str], nonce: str = "", version: str = "", error: str | None = None) -> Req:
    r = Req(
        type_url=types.ENDPOINT, resource_names=names, response_nonce=nonce, version_info=version
    )
    if error is not None:
        r.error_detail.message = error
    return r


def clusters(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for any_msg in resp.resources:
        c = endpoint_pb2.ClusterLoadAssignment()
        any_msg.Unpack(c)
        out.append(c.cluster_name)
    return sorted(out)


def snapshot(cache: SnapshotCache, port: int) -> None:
    cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a", port), "b": cla("b", port)})))


def synced(ads: AdsServer) -> str:
    return ads.sync_status()[NODE]["EDS"]


def test_repeated_plain_acks_keep_the_proxy_synced() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        snapshot(cache, 1)
        s = Stream(channel)
        hello = eds(["a"])
        hello.node.id = NODE
        s.send(hello)
        r = await s.recv()
        for port in (2, 3, 4):
            s.send(eds(["a"], r.nonce, r.version_info))
            await s.nothing(0.2)  # no answer to a plain ACK
            assert synced(ads) == "SYNCED"
            assert ads.proxies[NODE].types[types.ENDPOINT].acked_version == r.version_info
            snapshot(cache, port)
            r = await s.recv()
            assert clusters(r) == ["a"]
            assert synced(ads) == "STALE"
        s.close()

    run_ads(body)


def test_stale_nonce_changed_names_and_nack_take_the_full_path() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        snapshot(cache, 1)
        s = Stream(channel)
        hello = eds(["a"])
        hello.node.id = NODE
        s.send(hello)
        r1 = await s.recv()
        s.send(eds(["a"], r1.nonce, r1.version_info))
        s.send(eds(["a"], r1.nonce, r1.version_info))  # the same plain ACK twice
        await s.nothing(0.2)
        snapshot(cache, 2)
        r2 = await s.recv()
        # A stale nonce: ignored, its new names too; not an ACK of r2.
        s.send(eds(["a", "b"], r1.nonce, r1.version_info))
        await s.nothing(0.2)
        assert synced(ads) == "STALE"
        # The ACK of r2 with the names of the ignored request: they are new, and answered.
        s.send(eds(["a", "b"], r2.nonce, r2.version_info))
        r3 = await s.recv()
        assert clusters(r3) == ["a", "b"]
        s.send(eds(["a", "b"], r3.nonce, r3.version_info))
        await s.nothing(0.2)
        assert synced(ads) == "SYNCED"
        # The same nonce again with fewer names: an ACK that changes the subscription.
        s.send(eds(["b"], r3.nonce, r3.version_info))
        r4 = await s.recv()
        assert clusters(r4) == ["b"]
        s.send(eds(["b"], r4.nonce, r4.version_info))
        await s.nothing(0.2)
        # A NACK of the next push after plain ACKs.
        snapshot(cache, 3)
        r5 = await s.recv()
        s.send(eds(["b"], r5.nonce, r4.version_info, error="bad endpoints"))
        await s.nothing(0.3)
        assert synced(ads) == "NACKED"
        assert ads.rejects == 1
        assert ads.proxies[NODE].types[types.ENDPOINT].error == "bad endpoints"
        s.close()

    run_ads(body)


def delta(
    sub: list[str] | None = None, unsub: list[str] | None = None, nonce: str = ""
) -> DeltaReq:
    return DeltaReq(
        type_url=types.ENDPOINT,
        resource_names_subscribe=sub or [],
        resource_names_unsubscribe=unsub or [],
        response_nonce=nonce,
    )


def test_delta_acks_with_subscription_changes_take_the_full_path() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        snapshot(cache, 1)
        s = Stream(channel, delta=True)
        hello = delta(sub=["a"])
        hello.node.id = NODE
        s.send(hello)
        r1 = await s.recv()
        assert [r.name for r in r1.resources] == ["a"]
        s.send(delta(nonce=r1.nonce))  # a plain ACK
        await s.nothing(0.2)
        assert synced(ads) == "SYNCED"
        s.send(delta(sub=["b"], nonce=r1.nonce))  # an ACK (again) that subscribes
        r2 = await s.recv()
        assert [r.name for r in r2.resources] == ["b"]
        s.send(delta(nonce=r2.nonce))
        await s.nothing(0.2)
        snapshot(cache, 2)
        r3 = await s.recv()
        assert sorted(r.name for r in r3.resources) == ["a", "b"]
        s.send(delta(nonce=r2.nonce))  # stale: not an ACK of r3
        await s.nothing(0.2)
        assert synced(ads) == "STALE"
        s.send(delta(unsub=["a"], nonce=r3.nonce))  # an ACK that unsubscribes
        await s.nothing(0.2)
        assert synced(ads) == "SYNCED"
        snapshot(cache, 3)
        r4 = await s.recv()
        assert [r.name for r in r4.resources] == ["b"]  # "a" is no longer subscribed
        s.send(delta(nonce=r4.nonce))
        await s.nothing(0.2)
        assert synced(ads) == "SYNCED"
        s.close()

    run_ads(body)
