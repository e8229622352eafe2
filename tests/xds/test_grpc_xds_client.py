"""gRPC's own xDS client (grpcio, ``xds:///`` targets) reaches a backend through meshcore's
control plane, and follows an endpoint change. The client runs in its own process, as the
bootstrap is read from GRPC_XDS_BOOTSTRAP when its first xDS channel is made."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc

from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.server import start_ads_server
from meshcore.xds.translator import Translator
from tests.envoy._sidecar import free_port

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports: [{{name: grpc, port: {port}, appProtocol: grpc}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-1}}
spec: {{address: {address}, labels: {{app: echo}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: DISABLE}}}}
"""

CLIENT = """
import sys, time, grpc
target = sys.argv[1]
channel = grpc.insecure_channel(target)
call = channel.unary_unary("/test.Echo/Who")
last = None
deadline = time.monotonic() + 40
while time.monotonic() < deadline:
    try:
        answer = call(b"", timeout=5, wait_for_ready=True).decode()
    except grpc.RpcError as exc:
        answer = "error:" + exc.code().name + ":" + str(exc.details())
    if answer != last:
        print(answer, flush=True)  # each change of answer, for the test to follow
        last = answer
    if answer == "backend-2":
        break
    time.sleep(0.05)
"""


def backend(address: str, port: int, name: str) -> grpc.Server:
    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        return name.encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
            ),
        )
    )
    server.add_insecure_port(f"{address}:{port}")
    server.start()
    return server


def test_grpc_xds_client_follows_meshcore(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port, address="127.0.72.1"))
    servers = [backend("127.0.72.1", port, "backend-1"), backend("127.0.72.2", port, "backend-2")]

    async def main() -> None:
        plane = ControlPlane([config], Translator().resources_for, debounce_after=0.05)
        assert plane.load()
        server, ads, xds_port = await start_ads_server(plane.cache)
        stop = asyncio.Event()
        watcher = asyncio.create_task(
            plane.run(lambda: [s.node for s in ads.proxies.values()], stop)
        )
        bootstrap = tmp_path / "bootstrap.json"
        bootstrap.write_text(json.dumps({
            "xds_servers": [{"server_uri": f"127.0.0.1:{xds_port}", "channel_creds": [{"type": "insecure"}],
                             "server_features": ["xds_v3"]}],
            "node": {"id": "sidecar~127.0.73.1~client-1.default~default.svc.cluster.local",
                     "metadata": {"GENERATOR": "grpc"}},
        }))  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, f"xds:///echo.default.svc.cluster.local:{port}",
            env={**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
            assert first == "backend-1", first
            # The workload moves: the client follows the new endpoint without a restart.
            (config / "mesh.yaml").write_text(MESH.format(port=port, address="127.0.72.2"))
            answers = [first]
            while answers[-1] != "backend-2":
                line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
                assert line, "client ended before reaching backend-2"
                answers.append(line)
            assert answers[-1] == "backend-2"
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            stop.set()
            await watcher
            await server.stop(None)

    try:
        asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        for s in servers:
            s.stop(None)
