"""The control-plane loop on a real directory: debounce, last-good config, pushes over ADS."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.config import MeshModel
from meshcore.xds import types
from meshcore.xds.cache import NodeInfo
from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.server import AdsServer
from tests.xds.conftest import NODE, Stream

SERVICE = """apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  ports: [{name: http, port: 9080}]
"""


def vs(i: int, weight: int = 100) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: vs{i}}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{prefix: /r{i}}}}}]
    route: [{{destination: {{host: reviews}}, weight: {weight}}}]
"""


def routes_by_virtual_service(mesh: MeshModel, node: NodeInfo) -> dict[str, Any]:
    # One RouteConfiguration listing a route per VirtualService: enough to see pushes.
    rc = route_pb2.RouteConfiguration(name="9080")
    vh = rc.virtual_hosts.add(name="reviews", domains=["*"])
    for v in sorted(mesh.virtual_services, key=lambda v: v.name):
        r = vh.routes.add(name=v.name)
        r.match.prefix = v.http[0]["match"][0]["uri"]["prefix"]
        r.route.cluster = "outbound|9080||reviews.default.svc.cluster.local"
    return {types.ROUTE: {"9080": rc}}


def test_burst_of_50_writes_is_one_push_and_bad_config_keeps_last_good(tmp_path: Path) -> None:
    (tmp_path / "svc.yaml").write_text(SERVICE)
    plane = ControlPlane([tmp_path], routes_by_virtual_service, debounce_after=0.2)
    assert plane.load()

    async def main() -> None:
        ads = AdsServer(plane.cache)
        server = grpc.aio.server()
        ads.add_to_server(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = asyncio.Event()
        watcher = asyncio.create_task(
            plane.run(lambda: [s.node for s in ads.proxies.values()], stop)
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                s = Stream(channel)
                first = discovery_pb2.DiscoveryRequest(
                    type_url=types.ROUTE, resource_names=["9080"]
                )
                first.node.id = NODE
                s.send(first)
                r1 = await s.recv()
                s.send(discovery_pb2.DiscoveryRequest(
                    type_url=types.ROUTE, resource_names=["9080"], response_nonce=r1.nonce,
                    version_info=r1.version_info,
                ))  # fmt: skip
                rebuilds = plane.rebuilds
                for i in range(50):  # a burst: each write well inside the quiet period
                    (tmp_path / f"vs{i}.yaml").write_text(vs(i))
                    await asyncio.sleep(0.002)
                r2 = await s.recv(timeout=5)
                rc = route_pb2.RouteConfiguration()
                r2.resources[0].Unpack(rc)
                assert len(rc.virtual_hosts[0].routes) == 50
                s.send(discovery_pb2.DiscoveryRequest(
                    type_url=types.ROUTE, resource_names=["9080"], response_nonce=r2.nonce,
                    version_info=r2.version_info,
                ))  # fmt: skip
                await s.nothing(0.6)
                assert plane.rebuilds == rebuilds + 1  # one rebuild, one push
                # An invalid write is reported and changes nothing for the proxies.
                (tmp_path / "vs0.yaml").write_text(vs(0, weight=500))
                await s.nothing(0.8)
                assert any("weight 500" in p.message for p in plane.problems)
                assert plane.mesh is not None
                assert len(plane.mesh.virtual_services) == 50
                s.close()
        finally:
            stop.set()
            await watcher
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 30))
