"""A simulated fleet of delta ADS clients that fail over between control-plane replicas (run
as its own process by bench_etcd.py).

Arguments: ``HOST:PORT,HOST:PORT...`` (the replicas) and a file with one proxy per line
(``NODE-ID CLUSTER...``). Each client opens a delta stream to the first replica, subscribes to
the endpoints of its clusters, ACKs every response and keeps the versions it holds; when the
stream breaks it reconnects to the next replica with ``initial_resource_versions`` (what Envoy
does). Prints ``ready`` once every client has its first answer, ``resent I N`` for every
response after a failover (N resources), and ``reconnected I WALLTIME`` when a client's new
stream is up.
"""

from __future__ import annotations

import asyncio
import sys
import time

import grpc
from envoy.service.discovery.v3 import discovery_pb2

EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


async def client(targets: list[str], index: int, node: str, names: list[str], first: asyncio.Event, counter: list[int], total: int, stop: asyncio.Event) -> None:  # fmt: skip
    known: dict[str, str] = {}
    at, moved = 0, False
    while not stop.is_set():
        queue: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()

        async def requests(q: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = queue):  # type: ignore[no-untyped-def]
            while (item := await q.get()) is not None:
                yield item

        channel = grpc.aio.insecure_channel(
            targets[at], options=[("grpc.use_local_subchannel_pool", 1)]
        )
        call = channel.stream_stream(
            METHOD,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )(requests())
        hello = discovery_pb2.DeltaDiscoveryRequest(type_url=EDS, resource_names_subscribe=names)
        hello.node.id = node
        hello.initial_resource_versions.update(known)
        queue.put_nowait(hello)
        if moved:
            print(f"reconnected {index} {time.time():.6f}", flush=True)
        try:
            async for resp in call:
                for r in resp.resources:
                    known[r.name] = r.version
                for name in resp.removed_resources:
                    known.pop(name, None)
                queue.put_nowait(
                    discovery_pb2.DeltaDiscoveryRequest(type_url=EDS, response_nonce=resp.nonce)
                )
                if moved:
                    print(f"resent {index} {len(resp.resources)}", flush=True)
                elif not first.is_set() and len(known) == len(names):
                    counter[0] += 1
                    if counter[0] == total:
                        first.set()
        except grpc.aio.AioRpcError:
            pass
        finally:
            queue.put_nowait(None)
            await channel.close()
        if stop.is_set():
            return
        at, moved = (at + 1) % len(targets), True
        await asyncio.sleep(0.05)


async def main() -> None:
    targets = sys.argv[1].split(",")
    with open(sys.argv[2]) as f:
        lines = [line.split() for line in f.read().splitlines() if line.strip()]
    first, stop = asyncio.Event(), asyncio.Event()
    counter = [0]
    tasks = [
        asyncio.create_task(client(targets, i, parts[0], parts[1:], first, counter, len(lines), stop))
        for i, parts in enumerate(lines)
    ]  # fmt: skip
    await asyncio.wait_for(first.wait(), 600)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    asyncio.run(main())
