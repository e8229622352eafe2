"""ADS delta (incremental) xDS, item by item from the protocol checklist (real gRPC streams)."""

from __future__ import annotations

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer
from tests.xds.conftest import NODE, Stream, cla, cluster, resources, run_ads

Req = discovery_pb2.DeltaDiscoveryRequest


def req(type_url: str, sub: list[str] | None = None, unsub: list[str] | None = None, nonce: str = "",
        node: bool = False, error: str | None = None, initial: dict[str, str] | None = None) -> Req:  # fmt: skip
    r = Req(
        type_url=type_url, resource_names_subscribe=sub or [], resource_names_unsubscribe=unsub or [],
        response_nonce=nonce, initial_resource_versions=initial or {},
    )  # fmt: skip
    if node:
        r.node.id = NODE
    if error is not None:
        r.error_detail.message = error
    return r


def names(resp: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return sorted(r.name for r in resp.resources)


def test_wildcard_updates_removals_and_acks() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a"), "b": cluster("b")})))
        s = Stream(channel, delta=True)
        s.send(req(types.CLUSTER, node=True))  # item 25: legacy wildcard (empty lists)
        r1 = await s.recv()
        assert names(r1) == ["a", "b"]
        assert r1.nonce  # item 16
        assert all(r.version for r in r1.resources)  # item 23: per-resource versions
        s.send(req(types.CLUSTER, nonce=r1.nonce))  # ACK
        await s.nothing(0.2)
        # Only what changed is sent; deletions come as removed_resources (item 22).
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a"), "c": cluster("c")})))
        r2 = await s.recv()
        assert names(r2) == ["c"]
        assert list(r2.removed_resources) == ["b"]
        s.send(req(types.CLUSTER, nonce=r2.nonce))
        await s.nothing(0.2)
        assert ads.sync_status()[NODE]["CDS"] == "SYNCED"
        s.close()

    run_ads(body)


def test_named_subscriptions_missing_and_resubscribe() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a"), "b": cla("b")})))
        s = Stream(channel, delta=True)
        s.send(req(types.ENDPOINT, ["a", "nope"], node=True))
        r1 = await s.recv()
        assert names(r1) == ["a"]
        assert list(r1.removed_resources) == ["nope"]  # item 21: tells it does not exist
        s.send(req(types.ENDPOINT, nonce=r1.nonce))
        await s.nothing(0.2)
        # item 17/18: a spontaneous subscription (no nonce) is honoured.
        s.send(req(types.ENDPOINT, ["b"]))
        r2 = await s.recv()
        assert names(r2) == ["b"]
        s.send(req(types.ENDPOINT, nonce=r2.nonce))
        # item 19: subscribing again to what it has gets it again.
        s.send(req(types.ENDPOINT, ["a"]))
        r3 = await s.recv()
        assert names(r3) == ["a"]
        s.send(req(types.ENDPOINT, nonce=r3.nonce))
        # item 20: unsubscribing needs no answer; later changes to it are not sent.
        s.send(req(types.ENDPOINT, unsub=["a", "never-heard-of"]))
        await s.nothing(0.2)
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a", 1), "b": cla("b")})))
        await s.nothing(0.3)
        s.close()

    run_ads(body)


def test_stale_nonce_subscription_still_honoured() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a"), "b": cla("b")})))
        s = Stream(channel, delta=True)
        s.send(req(types.ENDPOINT, ["a"], node=True))
        r1 = await s.recv()
        s.send(req(types.ENDPOINT, nonce=r1.nonce))
        s.send(req(types.ENDPOINT, ["b"], nonce="stale-nonce"))  # item 18
        r2 = await s.recv()
        assert names(r2) == ["b"]
        s.close()

    run_ads(body)


def test_nack_keeps_the_version_from_being_resent() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a")})))
        s = Stream(channel, delta=True)
        s.send(req(types.CLUSTER, node=True))
        r1 = await s.recv()
        s.send(req(types.CLUSTER, nonce=r1.nonce))
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a", 7)})))
        r2 = await s.recv()
        s.send(req(types.CLUSTER, nonce=r2.nonce, error="no thanks"))
        await s.nothing(0.4)
        assert ads.sync_status()[NODE]["CDS"] == "NACKED"
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a", 8)})))
        r3 = await s.recv()
        assert names(r3) == ["a"]
        s.close()

    run_ads(body)


def test_reconnect_with_initial_resource_versions() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a"), "b": cluster("b")})))
        s1 = Stream(channel, delta=True)
        s1.send(req(types.CLUSTER, node=True))
        r1 = await s1.recv()
        versions = {r.name: r.version for r in r1.resources}
        s1.close()
        # Meanwhile "b" changes and "c" appears; "a" is unchanged.
        cache.set(
            NODE,
            cache.snapshot(
                resources(cds={"a": cluster("a"), "b": cluster("b", 9), "c": cluster("c")})
            ),
        )
        s2 = Stream(channel, delta=True)
        s2.send(req(types.CLUSTER, node=True, initial={**versions, "gone": "v0"}))
        r2 = await s2.recv()  # item 24: only what differs, and removals
        assert names(r2) == ["b", "c"]
        assert list(r2.removed_resources) == ["gone"]
        s2.close()

    run_ads(body)


def test_a_new_stream_with_the_versions_it_holds_is_sent_nothing_again() -> None:
    """A proxy moving to another control-plane replica (same resources, same versions) says
    what it holds in ``initial_resource_versions`` along with its named subscriptions: it is
    sent only what differs (it was sent everything it subscribed to again)."""

    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a"), "b": cla("b")})))
        first = Stream(channel, delta=True)
        first.send(req(types.ENDPOINT, ["a", "b"], node=True))
        r1 = await first.recv()
        held = {r.name: r.version for r in r1.resources}
        assert sorted(held) == ["a", "b"]
        first.send(req(types.ENDPOINT, nonce=r1.nonce))
        first.close()
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a"), "b": cla("b", 2)})))
        again = Stream(channel, delta=True)
        again.send(req(types.ENDPOINT, ["a", "b"], node=True, initial=held))
        r2 = await again.recv()
        assert names(r2) == ["b"]  # a is unchanged: not sent again
        again.send(req(types.ENDPOINT, nonce=r2.nonce))
        await again.nothing(0.2)
        again.close()

    run_ads(body)
