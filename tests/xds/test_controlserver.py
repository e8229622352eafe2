"""ControlPlaneServer, the composition root of ``meshcore serve``: started from a config
directory it serves ADS (a real stream gets the translated routes), its HTTP side, and its CA;
a CA that cannot start stops the start before anything listens."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds import types
from meshcore.xds.controlserver import CAOptions, ControlPlaneServer, StartError
from tests.xds.conftest import Stream

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FRONTEND = "sidecar~127.0.10.1~frontend-1.default~default.svc.cluster.local"


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def test_serves_ads_http_and_ca_from_a_config_directory(tmp_path: Path) -> None:
    config = tmp_path / "mesh"
    shutil.copytree(EXAMPLES, config)
    server = ControlPlaneServer([config], metrics_port=0, ca=CAOptions(port=0))
    assert server.load(), server.plane.problems

    async def main() -> None:
        await server.start()
        stop = asyncio.Event()
        watcher = asyncio.create_task(server.run(stop))
        try:
            assert server.ads_port > 0
            assert server.ca_server is not None
            assert server.ca_server.port > 0
            assert server.authority is not None
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ads_port}") as channel:
                s = Stream(channel)
                first = discovery_pb2.DiscoveryRequest(
                    type_url=types.ROUTE, resource_names=["9080"]
                )
                first.node.id = FRONTEND
                s.send(first)
                r1 = await s.recv()
                assert [r.type_url for r in r1.resources] == [types.ROUTE]
                assert server.debug is not None
                base = f"http://127.0.0.1:{server.debug.server_address[1]}"
                status, body = await asyncio.to_thread(_get, base + "/healthz")
                assert (status, body) == (200, b"ok\n")
                status, body = await asyncio.to_thread(_get, base + "/debug/syncz")
                assert FRONTEND in json.loads(body)["proxies"]
                s.close()
        finally:
            stop.set()
            await watcher
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_ca_that_cannot_start_starts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "mesh"
    shutil.copytree(EXAMPLES, config)
    missing = tmp_path / "no-such-cacerts"
    server = ControlPlaneServer(
        [config], metrics_port=0, ca=CAOptions(port=0, cacerts=str(missing))
    )
    assert server.load()

    async def main() -> None:
        with pytest.raises(StartError, match="cannot start the CA"):
            await server.start()
        assert server.ads is None
        assert server.debug is None
        assert server.ca_server is None
        await server.close()

    asyncio.run(main())


def test_syncz_reports_translation_problems_beside_load_problems(tmp_path: Path) -> None:
    # A valid VirtualService with TCP routes (not translated: a warning proxies will not get)
    # and a file meshcore refuses to read: /debug/syncz shows the one as a translation problem
    # and the other as a load problem.
    config = tmp_path / "mesh"
    shutil.copytree(EXAMPLES, config)
    (config / "tcp-vs.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: tcp-only, namespace: default}\n"
        "spec:\n  hosts: [reviews]\n"
        "  tcp:\n  - route:\n    - destination: {host: reviews}\n"
    )
    (config / "unknown.yaml").write_text("apiVersion: v1\nkind: NoSuchKind\nmetadata: {name: x}\n")
    server = ControlPlaneServer([config], metrics_port=0)
    assert server.load(), server.plane.problems

    async def main() -> dict[str, Any]:
        await server.start()
        try:
            assert server.debug is not None
            base = f"http://127.0.0.1:{server.debug.server_address[1]}"
            _, body = await asyncio.to_thread(_get, base + "/debug/syncz")
            found: dict[str, Any] = json.loads(body)
            return found
        finally:
            await server.close()

    syncz = asyncio.run(asyncio.wait_for(main(), 60))
    translation = [(p["name"], p["path"]) for p in syncz["translation_problems"]]
    load = [(p["kind"], p["path"]) for p in syncz["config_problems"]]
    assert ("tcp-only", "spec.tcp") in translation
    assert ("NoSuchKind", "kind") in load
    assert not any(p["name"] == "tcp-only" for p in syncz["config_problems"])
