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
from meshcore.xds.deps import DependencyIndex
from meshcore.xds.server import AdsServer, start_ads_server
from meshcore.xds.translator import Translator
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
                (tmp_path / "vs0.yaml").write_text(vs(0, weight=-5))
                await s.nothing(0.8)
                assert any("weight -5" in p.message for p in plane.problems)
                assert plane.mesh is not None
                assert len(plane.mesh.virtual_services) == 50
                s.close()
        finally:
            stop.set()
            await watcher
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 30))


def _service(i: int) -> str:
    return f"""apiVersion: v1
kind: Service
metadata: {{name: s{i}}}
spec:
  selector: {{app: s{i}}}
  ports: [{{name: http, port: 9080}}]
"""


def _route_vs(i: int) -> str:
    return f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: s{i}}}
spec:
  hosts: [s{i}]
  http:
  - name: r{i}
    match: [{{uri: {{prefix: /v{i}}}}}]
    route: [{{destination: {{host: s{i}}}}}]
"""


def test_burst_of_50_virtual_services_is_one_push_per_proxy(tmp_path: Path) -> None:
    """The real translator and dependency index: 50 VirtualService files written in a burst
    reach each connected proxy as exactly one RouteConfiguration push holding all 50."""
    (tmp_path / "services.yaml").write_text("---\n".join(_service(i) for i in range(50)))
    generate = Translator().resources_for
    plane = ControlPlane([tmp_path], generate, dependencies=DependencyIndex(), debounce_after=0.3)
    assert plane.load()
    nodes = [f"sidecar~127.0.50.{i}~client{i}.default~default.svc.cluster.local" for i in range(3)]

    async def main() -> None:
        server, ads, port = await start_ads_server(plane.cache)
        stop = asyncio.Event()
        watcher = asyncio.create_task(plane.run(lambda: (), stop))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                streams = []
                for node in nodes:
                    s = Stream(channel)
                    first = discovery_pb2.DiscoveryRequest(
                        type_url=types.ROUTE, resource_names=["9080"]
                    )
                    first.node.id = node
                    s.send(first)
                    r1 = await s.recv()
                    s.send(discovery_pb2.DiscoveryRequest(
                        type_url=types.ROUTE, resource_names=["9080"], response_nonce=r1.nonce,
                        version_info=r1.version_info,
                    ))  # fmt: skip
                    streams.append(s)
                for s in streams:
                    await s.nothing(0.1)
                rebuilds, pushes = plane.rebuilds, ads.pushes
                for i in range(50):  # a burst: each write well inside the quiet period
                    (tmp_path / f"vs{i}.yaml").write_text(_route_vs(i))
                    await asyncio.sleep(0.002)
                for s in streams:
                    r2 = await s.recv(timeout=10)
                    rc = route_pb2.RouteConfiguration()
                    r2.resources[0].Unpack(rc)
                    names = {r.name for vh in rc.virtual_hosts for r in vh.routes}
                    assert names == {f"r{i}" for i in range(50)}  # all 50 in the one push
                    s.send(discovery_pb2.DiscoveryRequest(
                        type_url=types.ROUTE, resource_names=["9080"], response_nonce=r2.nonce,
                        version_info=r2.version_info,
                    ))  # fmt: skip
                for s in streams:
                    await s.nothing(0.5)
                    s.close()
                assert plane.rebuilds == rebuilds + 1  # one update ...
                assert ads.pushes == pushes + len(nodes)  # ... one push per proxy
                # Only shared route configurations changed: no proxy was translated again.
                assert plane.last_update["proxies_translated"] == 0
        finally:
            stop.set()
            await watcher
            await server.stop(None)

    asyncio.run(asyncio.wait_for(main(), 60))
