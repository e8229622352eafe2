"""The ACK lane (meshcore_ads's lane.rs, SotwStream.settle): on meshcore's own transport the
plain ACK a push pass leaves a stream waiting for is taken by the transport, never an event,
and applied when the stream's state is next read. It must change nothing that can be seen: the
same responses, byte for byte, and the same proxy-status and metrics as with every ACK told to
the protocol code. Real streams on the real transport here; the property test at the bottom
drives the protocol code against a model of the lane with any order of changes and requests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer, start_ads_server
from meshcore.xds.sotw import SotwStream
from tests.xds.conftest import NODE, cla, cluster, resources

pytestmark = pytest.mark.ads_transports("core")

Req = discovery_pb2.DiscoveryRequest
SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def snap(cache: SnapshotCache, port: int, node: str = NODE) -> None:
    eds = {n: cla(n, port) for n in ("a", "b", "c")}
    cds = {n: cluster(n, 2 if port == 3 else 1) for n in ("a", "b")}  # CDS moves at 3 and 4
    cache.set(node, cache.snapshot(resources(eds=eds, cds=cds)))


def req(type_url: str, names: list[str], nonce: str = "", version: str = "") -> Req:
    return Req(type_url=type_url, resource_names=names, response_nonce=nonce, version_info=version)


def seen(ads: AdsServer) -> dict[str, Any]:
    """What can be seen of the server: proxy-status, per-type versions, the metrics."""
    status = ads.sync_status()
    state = ads.proxies[NODE]
    versions = {
        t: (s.sent_version, s.acked_version, s.nacked_version, s.error)
        for t, s in sorted(state.types.items())
    }
    text = generate_latest(ads.metrics.registry()).decode()
    # Times vary from run to run: their histograms' counts are compared, not their buckets.
    metrics = sorted(
        line
        for line in text.splitlines()
        if "_sum" not in line and not ("_time_bucket" in line and "+Inf" not in line)
    )
    return {"status": status, "versions": versions, "metrics": metrics, "rejects": ads.rejects}


def run_scenario(
    lane: bool, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[bytes], dict[str, Any], int]:
    """One SotW stream (EDS for two names, CDS wildcard), four changes, plain
    ACKs, a duplicate, a stale one and a NACK; the raw responses, what is seen, and how many
    ACKs the lane took."""
    taken = [0]
    lane_acked = AdsServer.lane_acked

    def counted(self: AdsServer, *args: Any) -> None:
        taken[0] += 1
        lane_acked(self, *args)

    monkeypatch.setattr(AdsServer, "lane_acked", counted)
    if not lane:
        monkeypatch.setattr(SotwStream, "_expect", lambda self, snap, change: None)

    async def main() -> tuple[list[bytes], dict[str, Any]]:
        cache = SnapshotCache()
        snap(cache, 1)
        server, ads, port = await start_ads_server(cache, transport="core")
        out: list[bytes] = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                requests: asyncio.Queue[Req | None] = asyncio.Queue()

                async def iterate() -> Any:
                    while (item := await requests.get()) is not None:
                        yield item

                call = channel.stream_stream(SOTW, request_serializer=Req.SerializeToString)(
                    iterate()
                )

                async def recv() -> discovery_pb2.DiscoveryResponse:
                    raw = await asyncio.wait_for(call.read(), 5)
                    assert isinstance(raw, bytes)
                    out.append(raw)
                    return discovery_pb2.DiscoveryResponse.FromString(raw)

                hello = req(types.CLUSTER, [])
                hello.node.id = NODE
                requests.put_nowait(hello)
                c = await recv()
                requests.put_nowait(req(types.CLUSTER, [], c.nonce, c.version_info))
                requests.put_nowait(req(types.ENDPOINT, ["a", "b"]))
                e = await recv()
                for port in (2, 3, 4, 5):
                    requests.put_nowait(req(types.ENDPOINT, ["a", "b"], e.nonce, e.version_info))
                    if port == 3:  # the same ACK again
                        requests.put_nowait(
                            req(types.ENDPOINT, ["a", "b"], e.nonce, e.version_info)
                        )
                    await asyncio.sleep(0.15)
                    snap(cache, port)
                    first = await recv()
                    if first.type_url == types.CLUSTER:  # CDS, then EDS again (re-warming)
                        requests.put_nowait(req(types.CLUSTER, [], first.nonce, first.version_info))
                        e = await recv()
                    else:
                        e = first
                    if port == 4:  # a stale nonce, then a NACK of the push
                        requests.put_nowait(req(types.ENDPOINT, ["a", "b"], "0-0", "x"))
                        nack = req(types.ENDPOINT, ["a", "b"], e.nonce, "")
                        nack.error_detail.message = "bad endpoints"
                        requests.put_nowait(nack)
                        await asyncio.sleep(0.15)
                requests.put_nowait(req(types.ENDPOINT, ["a", "b"], e.nonce, e.version_info))
                await asyncio.sleep(0.15)
                result = seen(ads)
                requests.put_nowait(None)
                call.cancel()
        finally:
            await server.stop(None)
        return out, result

    out, result = asyncio.run(main())
    return out, result, taken[0]


def test_lane_changes_nothing_that_can_be_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        told_out, told, none_taken = run_scenario(False, m)
    with monkeypatch.context() as m:
        lane_out, lane, taken = run_scenario(True, m)
    assert none_taken == 0
    assert taken >= 2, "the lane took the steady state's plain ACKs"
    assert lane_out == told_out  # byte for byte, nonces included
    assert lane == told
    assert lane["status"][NODE] == {
        "CDS": "SYNCED", "EDS": "SYNCED", "LDS": "NOT SENT", "RDS": "NOT SENT", "SDS": "NOT SENT"
    }  # fmt: skip
    assert "pilot_proxy_convergence_time_count 5.0" in lane["metrics"]
    assert lane["rejects"] == 1


# --- the protocol code against a model of the lane -------------------------------------------


class ModelLane:
    """lane.rs in Python: one expected ACK per stream, ended by a change (bump) or a look."""

    def __init__(self) -> None:
        self.epoch = 0
        self.expected: dict[int, tuple[str, str, bytes, int]] = {}
        self.acks: dict[int, list[tuple[str, str, float, float]]] = {}
        self.took = 0

    def expect(self, stream: int, type_url: str, nonce: str, names: bytes) -> None:
        self.expected[stream] = (type_url, nonce, names, self.epoch)

    def bump(self) -> None:
        self.epoch += 1

    def absorb(self, stream: int, event: tuple[Any, ...]) -> bool:
        _, _, type_url, nonce, version, names, _ = event
        if self.expected.get(stream) != (type_url, nonce, names, self.epoch):
            return False
        del self.expected[stream]
        self.acks.setdefault(stream, []).append((type_url, version, 1.0, time.monotonic()))
        self.took += 1
        return True

    def settle(self, stream: int) -> list[tuple[str, str, float, float]]:
        self.expected.pop(stream, None)
        return self.acks.pop(stream, [])

    def taken(self, stream: int) -> list[tuple[str, str, float, float]]:
        return self.acks.pop(stream, [])


def names_key(names: list[str]) -> bytes:
    return b"".join(b"\x1a" + bytes([len(n)]) + n.encode() for n in names)


def plain(request: Req) -> tuple[Any, ...] | None:
    """The ACK event meshcore.xds.transport would hand over for ``request``, if plain."""
    if not request.response_nonce or request.HasField("error_detail"):
        return None
    key = names_key(list(request.resource_names))
    data = request.SerializeToString()
    return (4, 1, request.type_url, request.response_nonce, request.version_info, key, data)


class World:
    """One proxy's SotW stream, its ACKs told (``lane`` None) or taken by the model lane."""

    def __init__(self, lane: ModelLane | None) -> None:
        self.cache = SnapshotCache()
        self.ads = AdsServer(self.cache)
        self.stream = SotwStream(self.ads, 1)
        self.lane = lane
        if lane is not None:
            self.stream.lane, self.stream.lane_id = lane, 1
            self.cache.changing.append(lane.bump)
        self.sent: list[bytes] = []
        self.last: dict[str, discovery_pb2.DiscoveryResponse] = {}

    def converged(self) -> bool:
        """Whether the proxy's convergence on its last change was recorded."""
        state = self.stream.state
        assert state is not None
        return state.converged_change == self.cache.changed_at.get(NODE)

    def push(self) -> None:
        for data in self.stream.pushes():
            self.sent.append(data)
            r = discovery_pb2.DiscoveryResponse.FromString(data)
            self.last[r.type_url] = r

    def request(self, request: Req) -> None:
        event = plain(request)
        if self.lane is not None and event is not None and self.lane.absorb(1, event):
            return
        problem = self.stream.receive(request if event is None else event)
        assert problem is None
        self.push()


Step = tuple[str, str, int]
# Changes and ACKs most often (the steady state), the rest of the protocol around them.
OPS = ["change", "change", "ack", "ack", "ack", "ack-again", "stale", "nack", "names", "look"]
steps = st.lists(
    st.tuples(
        st.sampled_from(OPS), st.sampled_from([types.CLUSTER, types.ENDPOINT]), st.integers(1, 4)
    ),
    max_size=30,
)


def replay(steps: list[Step]) -> int:
    """The steps against both worlds, compared after each; how many ACKs the lane took."""
    lane_model = ModelLane()

    async def main() -> None:
        worlds = [World(None), World(lane_model)]
        names: dict[str, list[str]] = {types.CLUSTER: [], types.ENDPOINT: ["a", "b"]}
        for w in worlds:
            snap(w.cache, 0)
            hello = req(types.CLUSTER, [])
            hello.node.id = NODE
            w.request(hello)
            w.request(req(types.ENDPOINT, names[types.ENDPOINT]))
        for op, type_url, n in steps:
            if op == "names" and type_url == types.ENDPOINT:
                names[type_url] = ["a", "b", "c"][: n % 3 + 1]
            for w in worlds:
                last = w.last.get(type_url)
                nonce, version = (last.nonce, last.version_info) if last else ("", "")
                if op == "change":
                    snap(w.cache, n)
                    w.push()
                elif op in ("ack", "ack-again", "names"):
                    for _ in range(2 if op == "ack-again" else 1):
                        w.request(req(type_url, names[type_url], nonce, version))
                elif op == "stale":
                    w.request(req(type_url, names[type_url], "1-999", version))
                elif op == "nack":
                    bad = req(type_url, names[type_url], nonce, "")
                    bad.error_detail.message = "bad"
                    w.request(bad)
                else:
                    w.ads.sync_status()
            told, lane = worlds
            assert lane.sent == told.sent
            assert lane.ads.sync_status() == told.ads.sync_status()
            # How many converged (their times differ: the worlds run one after the other).
            assert sum(lane.ads.metrics.convergence.counts) == sum(
                told.ads.metrics.convergence.counts
            )
            assert lane.ads.metrics.pushes == told.ads.metrics.pushes
            assert lane.ads.rejects == told.ads.rejects
            assert [w.converged() for w in worlds] == [told.converged()] * 2

    asyncio.run(main())
    return lane_model.took


@settings(max_examples=200, deadline=None)
@given(steps)
def test_lane_model_decides_as_the_told_path(steps: list[Step]) -> None:
    replay(steps)


def test_lane_model_takes_the_steady_state() -> None:
    c, e = types.CLUSTER, types.ENDPOINT
    steady: list[Step] = [("ack", c, 1), ("ack", e, 1)]
    for n in (1, 2, 4, 1):  # endpoint changes (CDS moves only at 3)
        steady += [("change", e, n), ("look", e, 1), ("ack", e, 1), ("look", e, 1)]
    assert replay(steady) == 4
