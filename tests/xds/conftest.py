"""Helpers for ADS protocol tests: a real gRPC server and raw ADS streams (no mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer, start_ads_server

NODE = "sidecar~127.0.20.1~reviews-v1-1.default~default.svc.cluster.local"


def cluster(name: str, timeout_s: int = 1) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.connect_timeout.seconds = timeout_s
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.eds_config.resource_api_version = 2  # V3
    return c


def cla(name: str, port: int = 9080) -> endpoint_pb2.ClusterLoadAssignment:
    a = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    ep = a.endpoints.add().lb_endpoints.add().endpoint
    ep.address.socket_address.address = "127.0.0.1"
    ep.address.socket_address.port_value = port
    return a


def route(name: str, body: str = "ok") -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name=name)
    vh = rc.virtual_hosts.add(name="all", domains=["*"])
    r = vh.routes.add(name="r")
    r.match.prefix = "/"
    r.direct_response.status = 200
    r.direct_response.body.inline_string = body
    return rc


def listener(name: str) -> listener_pb2.Listener:
    lst = listener_pb2.Listener(name=name)
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = 1
    return lst


def resources(**kw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    table = {"cds": types.CLUSTER, "eds": types.ENDPOINT, "lds": types.LISTENER, "rds": types.ROUTE}
    return {table[k]: v for k, v in kw.items()}


class Stream:
    """One raw ADS stream (SotW or delta) driven by a test."""

    def __init__(self, channel: grpc.aio.Channel, delta: bool = False) -> None:
        method = "DeltaAggregatedResources" if delta else "StreamAggregatedResources"
        req = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        resp = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        call = channel.stream_stream(
            f"/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )
        self.call = call(self._iterate())
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        # One reader for the call's lifetime: cancelling a pending read() would cancel the RPC.
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self._responses.put_nowait(response)
        except BaseException as exc:  # the RPC's end (error or cancel) is a result too
            self._responses.put_nowait(exc)

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            item = await self._requests.get()
            if item is None:
                return
            yield item

    def send(self, request: Any) -> None:
        self._requests.put_nowait(request)

    async def recv(self, timeout: float = 5.0) -> Any:
        got = await asyncio.wait_for(self._responses.get(), timeout)
        if isinstance(got, BaseException):
            raise got
        return got

    async def nothing(self, wait: float = 0.3) -> None:
        """Asserts no response arrives within ``wait`` seconds."""
        try:
            got = await asyncio.wait_for(self._responses.get(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected response: {got}")

    def close(self) -> None:
        self._requests.put_nowait(None)
        self.call.cancel()
        self._reader.cancel()


Body = Callable[[SnapshotCache, AdsServer, grpc.aio.Channel], Coroutine[Any, Any, None]]


def run_ads(body: Body, timeout: float = 30.0) -> None:
    async def main() -> None:
        cache = SnapshotCache()
        server, ads, port = await start_ads_server(cache)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await asyncio.wait_for(body(cache, ads, channel), timeout)
        finally:
            await server.stop(None)

    asyncio.run(main())
