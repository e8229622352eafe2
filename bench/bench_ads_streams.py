"""The cost of one ADS stream's life: open, first request with a node, first response, the
client cancels, and the server has released it (registry entry, subscription, gauge). In
rounds of 100 streams, SotW and delta, against a real server over loopback TCP in this
process. (The RSS before and after 1,000 streams ending every way is measured by
tests/hostile/test_ads_lifecycle.py.)

Run: ``pytest bench/bench_ads_streams.py -o python_files='bench_*.py' --benchmark-enable``"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import start_ads_server

STREAMS = 100
NODE = "sidecar~127.0.0.1~bench-0.default~default.svc.cluster.local"


async def _life(channel: grpc.aio.Channel, delta: bool) -> None:
    method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
    kind = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    call = channel.stream_stream(
        f"/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}",
        request_serializer=kind.SerializeToString,
        response_deserializer=bytes,
    )()
    req: Any = kind(type_url=types.ENDPOINT)
    if delta:
        req.resource_names_subscribe.append("a")
    else:
        req.resource_names.append("a")
    req.node.id = NODE
    await call.write(req)
    await call.read()
    call.cancel()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_stream_setup_and_teardown(benchmark: Any, delta: bool) -> None:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # gRPC's aio objects belong to the loop current at creation
    cache = SnapshotCache()
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="a")
    cache.set(NODE, cache.snapshot({types.ENDPOINT: {"a": cla}}))

    async def start() -> tuple[grpc.aio.Server, Any, grpc.aio.Channel]:
        server, ads, port = await start_ads_server(cache)
        return server, ads, grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    server, ads, channel = loop.run_until_complete(start())

    async def round_() -> None:
        for _ in range(STREAMS):
            await _life(channel, delta)
        while ads.connections:  # released, as the server sees it
            await asyncio.sleep(0.001)

    try:
        loop.run_until_complete(round_())  # warm-up
        benchmark.pedantic(lambda: loop.run_until_complete(round_()), rounds=10, iterations=1)
        benchmark.extra_info["streams_per_round"] = STREAMS
    finally:
        loop.run_until_complete(channel.close())
        loop.run_until_complete(server.stop(None))
        asyncio.set_event_loop(None)
        loop.close()
