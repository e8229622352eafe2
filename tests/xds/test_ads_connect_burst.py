"""A fleet connecting at once: streams that reach the server while its event loop is busy wait
in gRPC's core until the loop takes them, and none of them is lost (gRPC's default limits on
that queue cancelled those beyond 1,000-3,000 with INTERNAL "Internal error from Core", which is
what cost the fleet benchmark its streams above about 1,000 per client process)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

from envoy.config.endpoint.v3 import endpoint_pb2

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import start_ads_server

STREAMS = 2000

CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    import grpc
    from envoy.service.discovery.v3 import discovery_pb2

    async def one(channel, i, results):
        call = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        req = discovery_pb2.DiscoveryRequest(type_url=sys.argv[3], resource_names=["a"])
        req.node.id = f"burst-{i}"
        try:
            await call.write(req)
            await asyncio.wait_for(call.read(), 90)
            results.append("ok")
        except Exception as exc:
            results.append(type(exc).__name__ + ": " + str(getattr(exc, "details", lambda: "")()))
        finally:
            call.cancel()

    async def main():
        n = int(sys.argv[2])
        channels = [grpc.aio.insecure_channel(sys.argv[1], options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(n // 100)]
        results = []
        tasks = [asyncio.create_task(one(channels[i % len(channels)], i, results)) for i in range(n)]
        await asyncio.sleep(2)  # every stream opened and its request sent
        print("opened", flush=True)
        await asyncio.gather(*tasks)
        errors = [r for r in results if r != "ok"]
        print("ok", len(results) - len(errors), "errors", len(errors), errors[:3], flush=True)
        for ch in channels:
            await ch.close()

    asyncio.run(main())
    """
)


def test_a_burst_of_streams_while_the_server_is_busy_loses_none() -> None:
    async def main() -> str:
        cache = SnapshotCache()
        snap = cache.snapshot(
            {types.ENDPOINT: {"a": endpoint_pb2.ClusterLoadAssignment(cluster_name="a")}}
        )
        cache.source = lambda node: snap
        server, _, port = await start_ads_server(cache)
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, f"127.0.0.1:{port}", str(STREAMS), types.ENDPOINT],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert client.stdout is not None
            # The event loop stays blocked while the client opens every stream: they all wait
            # in gRPC's core, as when a replica's loop is busy with a push during a reconnect.
            assert client.stdout.readline().strip() == "opened"
            time.sleep(1)
            line = await asyncio.get_running_loop().run_in_executor(None, client.stdout.readline)
            assert client.wait(60) == 0
            return line.strip()
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
            if client.stdout is not None:
                client.stdout.close()
            await server.stop(None)

    assert asyncio.run(main()) == f"ok {STREAMS} errors 0 []"
