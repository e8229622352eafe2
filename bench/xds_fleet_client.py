"""A simulated fleet of ADS clients (run as its own process by bench_xds_fleet.py).

Each client opens a state-of-the-world ADS stream with an Istio node id, subscribes to the
endpoints of a few clusters, ACKs every response, and reports on stdout: ``ready N lost M``
once each stream of a stage has its first answer or has ended, then ``got I:WALLTIME ...`` for
later answers (I counted from the optional third argument; batched every few milliseconds, so
that the parent, which shares the machine with the control plane it measures, reads little) and
``lost I CODE`` for each stream that ends before the parent closes stdin. The streams are opened in ``stages`` (fourth
argument) so that the parent can measure memory between them: after each ``ready`` but the last,
the client waits for a line on stdin before opening the next stage.

One process holds all the streams: a stream is one coroutine writing its requests and reading
its responses on the call itself (no request generator, no queue per stream).
"""

from __future__ import annotations

import asyncio
import sys
import time

import grpc
from envoy.service.discovery.v3 import discovery_pb2

EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
STREAMS_PER_CONNECTION = 100


class Fleet:
    def __init__(self) -> None:
        self.answered = 0
        self.lost = 0
        self.stage_done = asyncio.Event()
        self.stage_size = 0
        self.stopping = False
        self.got: list[str] = []

    async def report(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.005)
            if self.got:
                print("got " + " ".join(self.got), flush=True)
                self.got = []

    def _settled(self) -> None:
        if self.answered + self.lost >= self.stage_size:
            self.stage_done.set()

    async def client(self, channel: grpc.aio.Channel, index: int, node: str, names: list[str]) -> None:  # fmt: skip
        call = channel.stream_stream(
            METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        hello = discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=names)
        hello.node.id = node
        seen = 0
        why = "EOF"
        try:
            await call.write(hello)
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    break
                seen += 1
                if seen == 1:
                    self.answered += 1
                    self._settled()
                else:
                    self.got.append(f"{index}:{time.time():.6f}")
                await call.write(discovery_pb2.DiscoveryRequest(
                    type_url=EDS, resource_names=names, response_nonce=resp.nonce, version_info=resp.version_info,
                ))  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name} {exc.details()}"
        except asyncio.CancelledError:
            if self.stopping:
                return
            why = "CANCELLED"
        if self.stopping:
            return
        # A stream that ends while the fleet runs is lost: counted, never hidden.
        print(f"lost {index} {why}", flush=True)
        if seen == 0:
            self.lost += 1
            self._settled()


async def main() -> None:
    target, node_file = sys.argv[1], sys.argv[2]
    offset = int(sys.argv[3]) if len(sys.argv) > 3 else 0  # of the indices reported
    stages = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    with open(node_file) as f:
        lines = [line.split() for line in f.read().splitlines() if line.strip()]
    # Separate connections (gRPC would otherwise share one subchannel between the channels).
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, -(-len(lines) // STREAMS_PER_CONNECTION)))
    ]
    fleet = Fleet()
    loop = asyncio.get_running_loop()
    tasks = [asyncio.create_task(fleet.report())]
    per_stage = -(-len(lines) // stages)
    for start in range(0, len(lines), per_stage):
        fleet.stage_size = min(len(lines), start + per_stage)
        fleet.stage_done.clear()
        tasks += [
            asyncio.create_task(fleet.client(channels[i % len(channels)], offset + i, parts[0], parts[1:]))
            for i, parts in enumerate(lines[start : start + per_stage], start)
        ]  # fmt: skip
        fleet._settled()
        await asyncio.wait_for(fleet.stage_done.wait(), 900)
        print(f"ready {fleet.answered} lost {fleet.lost}", flush=True)
        if fleet.stage_size < len(lines):
            await loop.run_in_executor(None, sys.stdin.readline)
    # Run until the parent closes stdin.
    await loop.run_in_executor(None, sys.stdin.read)
    fleet.stopping = True
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()


if __name__ == "__main__":
    asyncio.run(main())
