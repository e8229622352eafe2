"""A simulated fleet of ADS clients (run as its own process by bench_xds_fleet.py).

Each client opens a state-of-the-world ADS stream with an Istio node id, subscribes to the
endpoints of a few clusters, ACKs every response, and reports on stdout:
``ready`` once every client has its first answer, then ``got I WALLTIME`` for each later one
(I counted from the optional third argument).
"""

from __future__ import annotations

import asyncio
import sys
import time

import grpc
from envoy.service.discovery.v3 import discovery_pb2

EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


async def client(channel: grpc.aio.Channel, index: int, node: str, names: list[str], first: asyncio.Event, counter: list[int], total: int, stop: asyncio.Event) -> None:  # fmt: skip
    queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        while (item := await queue.get()) is not None:
            yield item

    call = channel.stream_stream(
        METHOD,
        request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
        response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
    )(requests())
    hello = discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=names)
    hello.node.id = node
    queue.put_nowait(hello)
    seen = 0
    try:
        async for resp in call:
            queue.put_nowait(discovery_pb2.DiscoveryRequest(
                type_url=EDS, resource_names=names, response_nonce=resp.nonce, version_info=resp.version_info,
            ))  # fmt: skip
            seen += 1
            if seen == 1:
                counter[0] += 1
                if counter[0] == total:
                    first.set()
            else:
                print(f"got {index} {time.time():.6f}", flush=True)
            if stop.is_set():
                break
    except grpc.aio.AioRpcError as exc:
        if not stop.is_set():
            print(f"client {index}: {exc.code().name} {exc.details()}", file=sys.stderr, flush=True)
    finally:
        queue.put_nowait(None)


async def main() -> None:
    target, node_file = sys.argv[1], sys.argv[2]
    offset = int(sys.argv[3]) if len(sys.argv) > 3 else 0  # of the indices reported
    with open(node_file) as f:
        lines = [line.split() for line in f.read().splitlines() if line.strip()]
    # Separate connections (gRPC would otherwise share one subchannel between the channels).
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, len(lines) // 100))
    ]
    first, stop = asyncio.Event(), asyncio.Event()
    counter = [0]
    tasks = [
        asyncio.create_task(client(channels[i % len(channels)], offset + i, parts[0], parts[1:], first, counter, len(lines), stop))
        for i, parts in enumerate(lines)
    ]  # fmt: skip
    await asyncio.wait_for(first.wait(), 600)
    print("ready", flush=True)
    # Run until the parent closes stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    for t in tasks:
        t.cancel()
    for ch in channels:
        await ch.close()


if __name__ == "__main__":
    asyncio.run(main())
