"""The agent's SDS server over real gRPC: its streams are ADS streams, so a refused stream is
released, and Envoy's several streams with one node (one per secret) each live on their own
(issue 11, item 6 for SDS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.ca.sds import SERVICE, start_sds_server
from meshcore.xds import types
from tests.hostile._server_helpers import ended, eventually, released, request
from tests.xds.conftest import NODE, Stream

KINDS = pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])


class SdsStream(Stream):
    """A raw SDS stream (StreamSecrets or DeltaSecrets) driven by a test."""

    def __init__(self, channel: grpc.aio.Channel, delta: bool = False) -> None:
        method = "DeltaSecrets" if delta else "StreamSecrets"
        req = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        resp = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self.call = channel.stream_stream(
            f"/{SERVICE}/{method}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )(self._iterate())
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _iterate(self) -> AsyncIterator[Any]:
        async for item in super()._iterate():
            yield item


@KINDS
def test_sds_streams_are_released_however_they_end(delta: bool) -> None:
    async def body() -> None:
        server, sds, address = await start_sds_server(port=0)
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                refused = SdsStream(channel, delta)
                refused.send(request(delta, NODE))  # no type URL
                assert (await ended(refused)).code() == grpc.StatusCode.INVALID_ARGUMENT
                await eventually(lambda: released(sds), "the refused stream released")
                # Envoy: one stream per secret, one node.
                cert = SdsStream(channel, delta)
                cert.send(request(delta, NODE, types.SECRET, ("default",)))
                root = SdsStream(channel, delta)
                root.send(request(delta, NODE, types.SECRET, ("ROOTCA",)))
                await eventually(lambda: len(sds.connections) == 2, "both streams")
                cert.close()
                await eventually(lambda: len(sds.connections) == 1, "one stream's end")
                assert NODE in sds.proxies
                root.close()
                await eventually(lambda: released(sds), "both streams released")
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(body(), 20))
