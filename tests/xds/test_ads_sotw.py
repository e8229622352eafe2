"""ADS state of the world, item by item from the xDS protocol checklist (real gRPC streams)."""

from __future__ import annotations

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import generate_latest

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer
from tests.xds.conftest import NODE, Stream, cla, cluster, resources, route, run_ads

Req = discovery_pb2.DiscoveryRequest


def req(
    type_url: str,
    names: list[str] | None = None,
    nonce: str = "",
    version: str = "",
    node: bool = False,
    error: str | None = None,
) -> Req:
    r = Req(
        type_url=type_url, resource_names=names or [], response_nonce=nonce, version_info=version
    )
    if node:
        r.node.id = NODE
    if error is not None:
        r.error_detail.message = error
    return r


def names_of(resp: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for any_msg in resp.resources:
        if resp.type_url == types.CLUSTER:
            c = cluster_pb2.Cluster()
            any_msg.Unpack(c)
            out.append(c.name)
        else:
            out.append(any_msg.type_url)
    return out


def test_node_remembered_nonces_ack_and_no_reply_to_pure_ack() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a"), "b": cluster("b")})))
        s = Stream(channel)
        s.send(req(types.CLUSTER, node=True))  # item 1: node on the first request only
        r1 = await s.recv()
        assert r1.type_url == types.CLUSTER
        assert sorted(names_of(r1)) == ["a", "b"]  # item 13: legacy wildcard
        assert r1.nonce
        assert r1.version_info
        s.send(req(types.CLUSTER, nonce=r1.nonce, version=r1.version_info))  # ACK, no node
        await s.nothing()  # item 5: nothing changed, no answer to a pure ACK
        assert ads.proxies[NODE].types[types.CLUSTER].acked_version == r1.version_info
        # A change is pushed, full state for CDS (item 10): "a" removed by omission.
        cache.set(NODE, cache.snapshot(resources(cds={"b": cluster("b"), "c": cluster("c")})))
        r2 = await s.recv()
        assert sorted(names_of(r2)) == ["b", "c"]
        assert r2.nonce != r1.nonce
        assert r2.version_info != r1.version_info
        assert ads.sync_status()[NODE]["CDS"] == "STALE"
        s.send(req(types.CLUSTER, nonce=r2.nonce, version=r2.version_info))
        await s.nothing(0.2)
        assert ads.sync_status()[NODE]["CDS"] == "SYNCED"
        # Istio's metric names, on meshcore's own registry.
        text = generate_latest(ads.metrics.registry()).decode()
        assert 'pilot_xds_pushes{type="cds"} 2.0' in text
        assert 'pilot_xds{version="meshcore"} 1.0' in text
        assert "pilot_proxy_convergence_time_count 2.0" in text  # both changes converged
        assert 'pilot_xds_config_size_bytes_count{type="cds"} 2.0' in text
        assert "_total{" not in text
        assert "_created" not in text
        s.close()

    run_ads(body)


def test_nack_is_not_resent_until_config_changes() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a")})))
        s = Stream(channel)
        s.send(req(types.CLUSTER, node=True))
        r1 = await s.recv()
        s.send(req(types.CLUSTER, nonce=r1.nonce, version=r1.version_info))
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a", timeout_s=2)})))
        r2 = await s.recv()
        # item 6: NACK carries error_detail and the last accepted version.
        s.send(req(types.CLUSTER, nonce=r2.nonce, version=r1.version_info, error="bad cluster"))
        await s.nothing(0.5)  # never re-sent in a loop
        assert ads.rejects == 1
        assert ads.sync_status()[NODE]["CDS"] == "NACKED"
        assert ads.proxies[NODE].types[types.CLUSTER].error == "bad cluster"
        assert ads.metrics.rejects["cds"] == 1
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a", timeout_s=3)})))
        r3 = await s.recv()  # a new version goes out
        assert r3.version_info not in (r1.version_info, r2.version_info)
        s.close()

    run_ads(body)


def test_stale_nonce_gets_no_answer_and_new_names_are_answered() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(
            cds={"a": cluster("a"), "b": cluster("b")}, eds={"a": cla("a"), "b": cla("b")},
        )))  # fmt: skip
        s = Stream(channel)
        s.send(req(types.ENDPOINT, ["a"], node=True))
        r1 = await s.recv()
        assert len(r1.resources) == 1
        s.send(req(types.ENDPOINT, ["a"], nonce=r1.nonce, version=r1.version_info))
        await s.nothing(0.2)
        s.send(req(types.ENDPOINT, ["a", "b"], nonce="not-a-nonce-we-sent"))  # item 7
        await s.nothing(0.3)
        # item 9: changing resource_names is answered even though nothing changed.
        s.send(req(types.ENDPOINT, ["a", "b"], nonce=r1.nonce, version=r1.version_info))
        r2 = await s.recv()
        assert len(r2.resources) == 2
        assert r2.version_info == r1.version_info
        s.close()

    run_ads(body)


def test_missing_resources_are_pushed_when_they_appear() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(rds={"80": route("80")})))
        s = Stream(channel)
        s.send(req(types.ROUTE, ["80", "9080"], node=True))
        r1 = await s.recv()
        assert len(r1.resources) == 1
        s.send(req(types.ROUTE, ["80", "9080"], nonce=r1.nonce, version=r1.version_info))
        cache.set(NODE, cache.snapshot(resources(rds={"80": route("80"), "9080": route("9080")})))
        r2 = await s.recv()  # item 14
        assert len(r2.resources) == 2
        s.close()

    run_ads(body)


def test_push_order_and_eds_after_every_cds() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        snap = cache.snapshot(resources(
            cds={"a": cluster("a")}, eds={"a": cla("a")}, rds={"80": route("80")},
        ))  # fmt: skip
        cache.set(NODE, snap)
        s = Stream(channel)
        s.send(req(types.CLUSTER, node=True))
        c1 = await s.recv()
        s.send(req(types.CLUSTER, nonce=c1.nonce, version=c1.version_info))
        s.send(req(types.ENDPOINT, ["a"]))
        e1 = await s.recv()
        s.send(req(types.ENDPOINT, ["a"], nonce=e1.nonce, version=e1.version_info))
        s.send(req(types.ROUTE, ["80"]))
        r1 = await s.recv()
        s.send(req(types.ROUTE, ["80"], nonce=r1.nonce, version=r1.version_info))
        await s.nothing(0.2)
        # A change to clusters and routes together: CDS first, then EDS (re-sent although its
        # content did not change: Envoy re-warms the cluster), then RDS (item 28, 30).
        cache.set(NODE, cache.snapshot(resources(
            cds={"a": cluster("a", 5)}, eds={"a": cla("a")}, rds={"80": route("80", "new")},
        )))  # fmt: skip
        got = [await s.recv() for _ in range(3)]
        assert [g.type_url for g in got] == [types.CLUSTER, types.ENDPOINT, types.ROUTE]
        assert got[1].version_info == e1.version_info
        s.close()

    run_ads(body)


def test_one_outstanding_push_per_type_merges_changes() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a")})))
        s = Stream(channel)
        s.send(req(types.CLUSTER, node=True))
        r1 = await s.recv()
        # No ACK yet: three more changes arrive; nothing is sent while the first is pending.
        for t in (2, 3, 4):
            cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a", t)})))
        await s.nothing(0.3)
        s.send(req(types.CLUSTER, nonce=r1.nonce, version=r1.version_info))
        r2 = await s.recv()  # item 32: one push carrying the latest state
        c = cluster_pb2.Cluster()
        r2.resources[0].Unpack(c)
        assert c.connect_timeout.seconds == 4
        await s.nothing(0.2)
        s.close()

    run_ads(body)


def test_explicit_names_end_the_legacy_wildcard() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a"), "b": cluster("b")})))
        s = Stream(channel)
        s.send(req(types.CLUSTER, node=True))
        r1 = await s.recv()
        assert len(r1.resources) == 2
        s.send(req(types.CLUSTER, ["a"], nonce=r1.nonce, version=r1.version_info))
        r2 = await s.recv()
        assert names_of(r2) == ["a"]
        s.send(req(types.CLUSTER, [], nonce=r2.nonce, version=r2.version_info))
        r3 = await s.recv()  # after names were sent, an empty list unsubscribes everything
        assert names_of(r3) == []
        s.send(req(types.CLUSTER, ["*"], nonce=r3.nonce, version=r3.version_info))
        r4 = await s.recv()  # explicit "*": wildcard again
        assert sorted(names_of(r4)) == ["a", "b"]
        s.close()

    run_ads(body)


@pytest.mark.parametrize(
    ("request_", "detail"),
    [
        (Req(type_url=types.CLUSTER), "node.id"),
        (Req(node={"id": NODE}), "type_url"),
    ],
)
def test_invalid_requests_are_refused(request_: Req, detail: str) -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        s = Stream(channel)
        s.send(request_)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.recv()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert detail in (info.value.details() or "")

    run_ads(body)


def test_oversized_responses_are_never_sent() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        ads.max_message_bytes = 2000
        big = {f"c{i:03}": cluster(f"c{i:03}") for i in range(200)}
        cache.set(NODE, cache.snapshot(resources(cds=big)))
        s = Stream(channel)
        s.send(req(types.CLUSTER, node=True))
        await s.nothing(0.4)  # item 37
        assert "exceeds the limit" in ads.proxies[NODE].types[types.CLUSTER].error
        s.close()

    run_ads(body)


def test_nonces_do_not_survive_reconnect() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a")})))
        s1 = Stream(channel)
        s1.send(req(types.CLUSTER, node=True))
        r1 = await s1.recv()
        s1.close()
        s2 = Stream(channel)
        # item 3: the old nonce on a new stream is not an ACK; the request is answered afresh.
        s2.send(req(types.CLUSTER, nonce=r1.nonce, version=r1.version_info, node=True))
        await s2.nothing(0.3)
        s2.send(req(types.CLUSTER))
        r2 = await s2.recv()
        assert r2.version_info == r1.version_info
        s2.close()

    run_ads(body)


def test_incremental_change_to_the_fleet_reaches_holders_only() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        other = "sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local"
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a"), "b": cla("b")})))
        cache.set(other, cache.snapshot(resources(eds={"b": cla("b")})))
        s = Stream(channel)
        s.send(req(types.ENDPOINT, ["a", "b"], node=True))
        r1 = await s.recv()
        s.send(req(types.ENDPOINT, ["a", "b"], nonce=r1.nonce, version=r1.version_info))
        await s.nothing(0.2)
        # An endpoint change to "a": only proxies holding "a" change, and this one is pushed.
        assert cache.apply(types.ENDPOINT, {"a": cla("a", port=9999)}) == [NODE]
        r2 = await s.recv()
        assert r2.version_info != r1.version_info
        assert len(r2.resources) == 2
        assert cache.apply(types.ENDPOINT, {"a": cla("a", port=9999)}) == []  # no-op change
        await s.nothing(0.2)
        s.close()

    run_ads(body)
