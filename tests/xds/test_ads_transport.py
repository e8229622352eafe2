"""What the ADS transports must do as gRPC servers, beyond the protocol (run on both, see
tests/conftest.py): other methods are UNIMPLEMENTED, a refusal carries its status and message
after responses were sent, a client's half-close ends the stream with OK, the receive limit,
and stopping the server."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.controlserver import ControlPlaneServer
from meshcore.xds.server import AdsServer, start_ads_server
from meshcore.xds.transport import CoreAdsServer
from tests.xds.conftest import NODE, Stream, cla, resources, run_ads
from tests.xds.test_controlserver import EXAMPLES, FRONTEND


def _hello() -> discovery_pb2.DiscoveryRequest:
    r = discovery_pb2.DiscoveryRequest(type_url=types.ENDPOINT, resource_names=["a"])
    r.node.id = NODE
    return r


def _ready(cache: SnapshotCache) -> None:
    cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a")})))


def test_other_methods_are_unimplemented() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        for method in (
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/FetchAggregatedResources",
            "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints",
        ):
            call = channel.unary_unary(method)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"")
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

    run_ads(body)


def test_a_refusal_after_responses_has_its_status_and_message() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        _ready(cache)
        s = Stream(channel)
        s.send(_hello())
        first = await s.recv()
        assert first.version_info
        s.send(discovery_pb2.DiscoveryRequest(response_nonce=first.nonce))  # no type_url
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.recv()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "type_url is required on ADS requests"
        for _ in range(100):
            if not ads.connections:
                break
            await asyncio.sleep(0.02)
        assert not ads.connections

    run_ads(body)


def test_a_half_close_ends_the_stream_with_ok() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        _ready(cache)
        s = Stream(channel)
        s.send(_hello())
        await s.recv()
        s.send(None)  # the request iterator ends: the client half-closes
        assert await s.call.code() == grpc.StatusCode.OK
        for _ in range(100):
            if not ads.connections:
                break
            await asyncio.sleep(0.02)
        assert not ads.connections

    run_ads(body)


@pytest.mark.ads_transports("core")  # grpc.aio's receive limit is its own 4 MiB default
def test_a_request_over_the_limit_ends_the_stream() -> None:
    async def main() -> None:
        cache = SnapshotCache()
        _ready(cache)
        server, ads, port = await start_ads_server(cache, max_message_bytes=4096)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                s = Stream(channel)
                big = _hello()
                big.resource_names.extend(f"name-{i}" for i in range(1000))
                s.send(big)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await s.recv()
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert not ads.connections
                ok = Stream(channel)  # the connection still serves other streams
                ok.send(_hello())
                assert (await ok.recv()).version_info
                ok.close()
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.ads_transports("core")
def test_stop_ends_open_streams_and_releases_them() -> None:
    async def main() -> None:
        cache = SnapshotCache()
        _ready(cache)
        server, ads, port = await start_ads_server(cache)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            s = Stream(channel)
            s.send(_hello())
            await s.recv()
            assert len(ads.connections) == 1
            await server.stop(0.2)
            assert not ads.connections
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.recv()
            assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.ads_transports("core")  # the transport is chosen explicitly below
@pytest.mark.parametrize("chosen", ["core", "grpc"])
def test_the_control_plane_serves_on_the_transport_it_is_given(tmp_path: Path, chosen: str) -> None:
    # meshcore serve --ads-transport core|grpc
    config = tmp_path / "mesh"
    shutil.copytree(EXAMPLES, config)
    server = ControlPlaneServer([config], ads_transport=chosen)
    assert server.load(), server.plane.problems

    async def main() -> None:
        await server.start()
        try:
            kind = CoreAdsServer if chosen == "core" else grpc.aio.Server
            assert isinstance(server._grpc, kind)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ads_port}") as channel:
                s = Stream(channel)
                r = discovery_pb2.DiscoveryRequest(type_url=types.ROUTE, resource_names=["9080"])
                r.node.id = FRONTEND
                s.send(r)
                got = await s.recv()
                assert [x.type_url for x in got.resources] == [types.ROUTE]
                s.close()
        finally:
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.ads_transports("core")
def test_keepalive_closes_a_connection_that_does_not_answer_pings() -> None:
    # HTTP/2 keepalive: a PING every keepalive_time; a peer that does not answer within
    # keepalive_timeout loses its connection; one that does (a gRPC client) keeps it.
    async def main() -> None:
        cache = SnapshotCache()
        _ready(cache)
        ads = AdsServer(cache)
        server = CoreAdsServer(ads, "127.0.0.1", 0, keepalive_time=0.2, keepalive_timeout=0.3)
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            await writer.drain()
            frames = b""
            started = asyncio.get_running_loop().time()
            while chunk := await asyncio.wait_for(reader.read(4096), 5):
                frames += chunk  # SETTINGS, then PINGs (type 6) left unanswered
            elapsed = asyncio.get_running_loop().time() - started
            assert 0.4 <= elapsed < 3, elapsed
            assert _frame_types(frames).count(6) >= 1
            writer.close()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                s = Stream(channel)
                s.send(_hello())
                first = await s.recv()
                await asyncio.sleep(1.2)  # several keepalive periods, PINGs answered
                s.send(
                    discovery_pb2.DiscoveryRequest(
                        type_url=types.ENDPOINT,
                        resource_names=["a"],
                        response_nonce=first.nonce,
                        version_info=first.version_info,
                    )
                )
                cache.apply(types.ENDPOINT, {"a": cla("a", port=9999)})
                assert (await s.recv()).version_info != first.version_info
                s.close()
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 30))


def _frame_types(data: bytes) -> list[int]:
    """The types of the HTTP/2 frames in ``data`` (whole frames only)."""
    out = []
    while len(data) >= 9:
        size = int.from_bytes(data[:3], "big")
        out.append(data[3])
        data = data[9 + size :]
    return out
