"""Stream lifecycle against a real ``meshcore serve``: 1,000 ADS streams ending in
every way (the client cancels, the server refuses a bad request, the TCP connection is reset,
the client's deadline passes), SotW and delta, leave no connected proxy (``/debug/syncz``, the
``pilot_xds`` gauge) and the server's RSS within 5% of its baseline (issue 11)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds import types
from tests.envoy._sidecar import control_plane_in_thread, free_ports
from tests.hostile._server_helpers import ResettingRelay, ended, request, rss_kb
from tests.xds.conftest import Stream

EXAMPLES = Path(__file__).parents[2] / "examples"
WAYS = ("cancel", "abort", "reset", "deadline")
# Node metadata as big as Istio's can be (labels, annotations): what a leak would keep.
PAD = "p" * 100_000


def _node(i: int) -> str:
    return f"sidecar~127.0.0.{1 + i % 50}~churn-{i % 50}.default~default.svc.cluster.local"


def _hello(delta: bool, i: int, type_url: str = types.CLUSTER) -> object:
    req = request(delta, _node(i), type_url)
    req.node.metadata.update({"NAMESPACE": "default", "CHURN_PAD": PAD})
    return req


async def _one(way: str, delta: bool, i: int, channel: grpc.aio.Channel) -> None:
    if way == "abort":
        s = Stream(channel, delta)
        s.send(_hello(delta, i, type_url=""))  # a node, no type URL: refused
        assert (await ended(s)).code() == grpc.StatusCode.INVALID_ARGUMENT
        s.close()
        return
    if way == "deadline":
        method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
        req_type = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        call = channel.stream_stream(
            f"/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}",
            request_serializer=req_type.SerializeToString,
            response_deserializer=bytes,
        )(timeout=0.3)
        await call.write(_hello(delta, i))
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # responses unread
        return
    s = Stream(channel, delta)  # cancel; reset (the caller resets the connection)
    s.send(_hello(delta, i))
    await s.recv(10)
    if way == "cancel":
        s.close()


async def _churn(xds: int, streams: int, start: int = 0) -> None:
    """``streams`` streams, in rounds of 40 at once: a quarter ending each way."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{xds}") as channel:
        for first in range(start, start + streams, 40):
            async with ResettingRelay(xds) as relay:
                # The streams to be reset go through the relay, on their own connection.
                cut = grpc.aio.insecure_channel(f"127.0.0.1:{relay.port}")
                jobs = []
                for i in range(first, min(first + 40, start + streams)):
                    way = WAYS[i % 4]
                    delta = (i // 4) % 2 == 1
                    jobs.append(_one(way, delta, i, cut if way == "reset" else channel))
                await asyncio.wait_for(asyncio.gather(*jobs), 20)
                relay.reset()
                await cut.close()


def _connected(metrics: int) -> tuple[int, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/debug/syncz", timeout=5) as r:
        proxies = json.load(r)["proxies"]
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
        text = r.read().decode()
    gauge = re.search(r'^pilot_xds\{version="meshcore"\} (\S+)$', text, re.M)
    assert gauge is not None, text
    return len(proxies), float(gauge.group(1))


async def _settled_rss(metrics: int) -> int:
    """This process's RSS once every stream is released, garbage collected and the allocator's
    free memory handed back (malloc_trim): what is left is what something still holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while await asyncio.to_thread(_connected, metrics) != (0, 0.0):
        assert loop.time() < deadline, "timed out waiting for every stream to be released"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_kb(os.getpid())


def test_a_thousand_streams_ending_every_way_leave_nothing(tmp_path: Path) -> None:
    """``meshcore serve`` runs in this process (in its own loop thread, real gRPC over TCP),
    so that its RSS can be measured after a garbage collection; the baseline is taken after a
    warm-up. A leak of the streams' node metadata (100 KB each, as the refused streams leaked
    it before) would be far over 5%."""
    config = tmp_path / "config"
    shutil.copytree(EXAMPLES, config)  # a mesh, so that every stream gets responses
    xds, metrics = free_ports(2)

    async def main() -> tuple[int, int, float]:
        await _churn(xds, 400)  # warm-up: imports, caches, allocator arenas
        baseline = await _settled_rss(metrics)
        started = time.perf_counter()
        await _churn(xds, 1000, start=400)
        elapsed = time.perf_counter() - started
        return baseline, await _settled_rss(metrics), elapsed

    with control_plane_in_thread([str(config)], xds_port=xds, metrics_port=metrics):
        baseline, after, elapsed = asyncio.run(main())
    print(
        f"\nRSS before {baseline} KiB, after 1,000 streams {after} KiB "
        f"({(after - baseline) / baseline:+.1%}); {elapsed / 1000 * 1e3:.1f} ms per stream"
    )
    assert after <= baseline * 1.05, (baseline, after)
