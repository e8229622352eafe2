"""Hostile ADS clients over real gRPC streams: every stream end releases the stream, two
streams of one node both live, oversized or malformed nodes are refused, silent streams are
closed, and nothing a client sends can forge a log line (issue 11, items 6-8)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from meshcore._text import shown
from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer
from tests.hostile._server_helpers import ads, ended, eventually, released, request
from tests.xds.conftest import NODE, Stream, cla, resources

KINDS = pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])


def run(body: Callable[[], Awaitable[None]], timeout: float = 25.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(body(), timeout)

    asyncio.run(main())


@KINDS
def test_a_stream_the_server_refuses_is_released(delta: bool) -> None:
    """A first request with a node but no type URL: refused, and the node is not left
    connected (it was, for ever, with its registry entry and gauge)."""

    async def body() -> None:
        async with ads() as (_, server, channel, _):
            for _ in range(3):
                s = Stream(channel, delta)
                s.send(request(delta, NODE))
                err = await ended(s)
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "type_url is required" in (err.details() or "")
                s.close()
            await eventually(lambda: released(server), "the refused streams to be released")

    run(body)


@KINDS
def test_a_refused_later_request_releases_the_stream(delta: bool) -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a")})))
        async with ads(cache) as (_, server, channel, _):
            s = Stream(channel, delta)
            s.send(request(delta, NODE, types.ENDPOINT, ("a",)))
            await s.recv()
            assert NODE in server.proxies
            s.send(request(delta))  # no type URL
            assert (await ended(s)).code() == grpc.StatusCode.INVALID_ARGUMENT
            await eventually(lambda: released(server), "the stream to be released")

    run(body)


def _hello(delta: bool, node: str = NODE) -> object:
    return request(delta, node, types.ENDPOINT, ("a",))


def _ack(delta: bool, resp: object) -> object:
    if delta:
        return discovery_pb2.DeltaDiscoveryRequest(
            type_url=types.ENDPOINT,
            response_nonce=resp.nonce,  # type: ignore[attr-defined]
        )
    return discovery_pb2.DiscoveryRequest(
        type_url=types.ENDPOINT,
        resource_names=["a"],
        version_info=resp.version_info,  # type: ignore[attr-defined]
        response_nonce=resp.nonce,  # type: ignore[attr-defined]
    )


async def _two_streams(
    delta: bool, channel: grpc.aio.Channel, server: AdsServer
) -> tuple[Stream, object, Stream, object]:
    older = Stream(channel, delta)
    older.send(_hello(delta))
    first = await older.recv()
    older.send(_ack(delta, first))
    await eventually(lambda: NODE in server.proxies, "the first stream")
    older_state = server.proxies[NODE]
    newer = Stream(channel, delta)
    newer.send(_hello(delta))
    second = await newer.recv()
    newer.send(_ack(delta, second))
    await eventually(lambda: server.proxies[NODE] is not older_state, "the newer stream")
    return older, first, newer, second


@KINDS
def test_same_node_newest_wins_and_the_older_lives_on(delta: bool) -> None:
    """Two streams with one node id: both are served; the newest is the connected proxy; when
    it ends the older one is (it used to die with UNKNOWN, a KeyError) and still gets pushes."""

    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a")})))
        async with ads(cache) as (_, server, channel, _):
            older, _, newer, _ = await _two_streams(delta, channel, server)
            assert len(server.connections) == 2
            assert server.metrics.connected == 2
            newest = server.proxies[NODE]
            newer.close()
            await eventually(lambda: len(server.connections) == 1, "the newer stream's end")
            assert server.proxies[NODE] is not newest
            assert server.proxies[NODE].number < newest.number
            # The older stream is still served: a change reaches it, and its ACK is recorded.
            cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a", 9999)})))
            pushed = await older.recv()
            older.send(_ack(delta, pushed))
            await eventually(
                lambda: server.proxies[NODE].types[types.ENDPOINT].acked_version != "",
                "the older stream's ACK",
            )
            older.close()
            await eventually(lambda: released(server), "both streams released")

    run(body)


@KINDS
def test_same_node_older_ends_first(delta: bool) -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a")})))
        async with ads(cache) as (_, server, channel, _):
            older, _, newer, _ = await _two_streams(delta, channel, server)
            newest = server.proxies[NODE]
            older.close()
            await eventually(lambda: len(server.connections) == 1, "the older stream's end")
            assert server.proxies[NODE] is newest
            cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a", 9998)})))
            await newer.recv()
            newer.close()
            await eventually(lambda: released(server), "both streams released")

    run(body)


@KINDS
@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("long id", "exceeds the limit of 1024"),
        ("metadata", "exceeds the limit of 262144"),
        ("newline", "must not contain control characters"),
        ("no node", "must carry node.id"),
    ],
)
def test_nodes_over_the_limits_are_refused(delta: bool, field: str, expected: str) -> None:
    async def body() -> None:
        async with ads() as (_, server, channel, _):
            req = request(delta, NODE, types.CLUSTER)
            if field == "long id":
                req.node.id = "x" * 100_000
            elif field == "metadata":
                req.node.metadata.update({"blob": "m" * 300_000})
            elif field == "newline":
                req.node.id = "sidecar~1.2.3.4~a.b~b.svc\nERROR forged line"
            else:
                req.ClearField("node")
            s = Stream(channel, delta)
            s.send(req)
            err = await ended(s)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = err.details() or ""
            assert expected in details
            assert len(details) < 600
            assert "\n" not in details
            assert released(server)

    run(body)


@KINDS
def test_a_silent_stream_is_closed_at_the_deadline(delta: bool) -> None:
    async def body() -> None:
        cache = SnapshotCache()
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a")})))
        async with ads(cache, hello_timeout=0.5) as (_, server, channel, _):
            silent = Stream(channel, delta)  # opens the stream, sends nothing
            nodeless = Stream(channel, delta)
            nodeless.send(request(delta, None, types.CLUSTER))  # not valid: no node
            good = Stream(channel, delta)
            good.send(_hello(delta))
            good.send(_ack(delta, await good.recv()))
            started = asyncio.get_running_loop().time()
            err = await ended(silent, 5)
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "within 0.5 s" in (err.details() or "")
            assert asyncio.get_running_loop().time() - started < 3
            assert (await ended(nodeless, 5)).code() == grpc.StatusCode.INVALID_ARGUMENT
            # A stream that said hello stays, however long it then stays quiet.
            await asyncio.sleep(0.8)
            assert NODE in server.proxies
            cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a", 9997)})))
            await good.recv()
            good.close()
            await eventually(lambda: released(server), "the streams released")

    run(body)


@KINDS
def test_a_stream_may_name_a_bounded_number_of_types(delta: bool) -> None:
    async def body() -> None:
        async with ads() as (_, server, channel, _):
            s = Stream(channel, delta)
            s.send(request(delta, NODE, types.CLUSTER))
            for i in range(32):  # the 33rd type: one too many
                s.send(request(delta, None, f"type.googleapis.com/made.up.Type{i}"))
            err = await ended(s)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "at most 32 resource types" in (err.details() or "")
            await eventually(lambda: released(server), "the stream released")

    run(body)


@KINDS
def test_client_strings_cannot_forge_log_lines(
    delta: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A NACK message with newlines and a node id at the size limit reach the log escaped and
    capped (one record, one line)."""
    node = "sidecar~127.0.0.1~" + "n" * 1000

    async def body() -> None:
        cache = SnapshotCache()
        cache.set(node, cache.snapshot(resources(eds={"a": cla("a")})))
        async with ads(cache) as (_, server, channel, _):
            s = Stream(channel, delta)
            s.send(_hello(delta, node))
            resp = await s.recv()
            nack = _ack(delta, resp)
            nack.error_detail.message = "bad\n2026-01-01 ERROR meshcore: forged\r\x1b[2J" * 500  # type: ignore[attr-defined]
            s.send(nack)
            await eventually(lambda: server.rejects == 1, "the NACK")
            # proxy-status keeps what the proxy said, capped.
            assert len(server.proxies[node].types[types.ENDPOINT].error) <= 2000
            s.close()
            await eventually(lambda: released(server), "the stream released")

    with caplog.at_level(logging.INFO, logger="meshcore.xds"):
        run(body)
    records = [r.getMessage() for r in caplog.records if r.name == "meshcore.xds"]
    assert any("rejected" in m for m in records)
    for message in records:
        assert "\n" not in message
        assert "\r" not in message
        assert "\x1b" not in message
        assert len(message) < 2600
    assert any(shown(node) in m or "chars)" in m for m in records)


def test_shown_escapes_and_caps() -> None:
    assert shown("a\nb\r\x00\x7f\x85\u2028\\") == "a\\nb\\r\\x00\\x7f\\x85\\u2028\\\\"
    assert shown("é✓ plain") == "é✓ plain"
    capped = shown("y" * 1000, 10)
    assert capped == "yyyyyyyyyy… (+990 chars)"
    assert shown(b"\n") == "b'\\\\n'"  # bytes: their repr, escaped again


@KINDS
def test_a_stream_ended_by_an_exception_is_released(delta: bool) -> None:
    """The snapshot source fails for this node (a bug, a translation crash): the stream ends
    with an error, and still releases everything."""

    def failing(node: object) -> None:
        raise RuntimeError("translation failed")

    async def body() -> None:
        async with ads(SnapshotCache(source=failing)) as (_, server, channel, _):
            s = Stream(channel, delta)
            s.send(_hello(delta))
            assert (await ended(s)).code() == grpc.StatusCode.UNKNOWN
            await eventually(lambda: released(server), "the failed stream released")

    run(body)


def test_serve_logs_a_node_it_cannot_serve_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    from meshcore.config import MeshModel
    from meshcore.xds.cache import NodeInfo
    from meshcore.xds.translator import Translator

    generate = Translator().resources_for  # what meshcore serve serves each node with
    with caplog.at_level(logging.ERROR, logger="meshcore.xds"):
        assert generate(MeshModel([]), NodeInfo(id="bad\nERROR forged" + "x" * 5000)) is None
    (record,) = caplog.records
    assert "\n" not in record.getMessage()
    assert len(record.getMessage()) < 1500


@KINDS
def test_subscriptions_are_bounded_per_type(delta: bool) -> None:
    """Delta subscriptions add up across requests: 3 requests of 400 names each pass a limit
    of 1,000 names on the third; SotW replaces its names, so one request over it is refused."""

    async def body() -> None:
        async with ads(max_names_per_type=1000) as (_, server, channel, _):
            s = Stream(channel, delta)
            s.send(request(delta, NODE, types.ENDPOINT, tuple(f"a{i}" for i in range(400))))
            batches = 2 if delta else 0
            for b in range(batches):
                names = tuple(f"b{b}-{i}" for i in range(400))
                s.send(request(delta, None, types.ENDPOINT, names))
            if not delta:
                s.send(request(delta, None, types.ENDPOINT, tuple(f"c{i}" for i in range(1001))))
            err = await ended(s)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "at most 1000 resource names" in (err.details() or "")
            await eventually(lambda: released(server), "the stream released")

    run(body)
