"""The reference proxy follows inbound listener changes: a service port added in the config is
bound at the workload's address, a removed one is closed (real control plane over gRPC)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from meshcore.dataplane.proxy import ReferenceProxy
from tests.dataplane.conftest import Mesh, eventually, node_id, running_mesh
from tests.dataplane.test_proxy_e2e import backend, free_port, get

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  selector: {{app: echo}}
  ports: [{ports}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-1, namespace: default}}
spec: {{address: 127.0.78.1, labels: {{app: echo}}, serviceAccount: echo}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: DISABLE}}}}
"""


def ports(*numbers: int) -> str:
    return ", ".join(f"{{name: http-{n}, port: {n}}}" for n in numbers)


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.78.1", port)) != 0


async def run(mesh: Mesh, p1: int, p2: int) -> None:
    apps = [backend("127.0.78.2", p, f"app-{p}", flaky=False)[0] for p in (p1, p2)]
    dp = await mesh.dataplane(node_id("echo-1", "127.0.78.1"), "echo",
                              metadata={"MESHCORE_APP_ADDRESS": "127.0.78.2"})  # fmt: skip
    proxy = ReferenceProxy(dp, outbound=None, inbound=True)
    await proxy.start()
    try:
        assert set(proxy.inbound_ports) == {p1}
        assert await asyncio.to_thread(get, f"http://127.0.78.1:{p1}/", "echo") == (
            200,
            f"app-{p1}",
        )
        assert refused(p2)
        (mesh.config_dir / "mesh.yaml").write_text(MESH.format(ports=ports(p1, p2)))
        mesh.rebuild()
        await eventually(lambda: p2 in proxy.inbound_ports, what="the new listener")
        assert await asyncio.to_thread(get, f"http://127.0.78.1:{p2}/", "echo") == (
            200,
            f"app-{p2}",
        )
        (mesh.config_dir / "mesh.yaml").write_text(MESH.format(ports=ports(p2)))
        mesh.rebuild()
        await eventually(lambda: p1 not in proxy.inbound_ports, what="the listener to close")
        assert await asyncio.to_thread(refused, p1)
        assert await asyncio.to_thread(get, f"http://127.0.78.1:{p2}/", "echo") == (
            200,
            f"app-{p2}",
        )
    finally:
        await proxy.stop()
        await dp.aclose()
        for app in apps:
            app.shutdown()
            app.server_close()


def test_inbound_listeners_follow_the_config(tmp_path: Path) -> None:
    p1, p2 = free_port("127.0.78.2"), free_port("127.0.78.2")
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(ports=ports(p1)))

    async def main() -> None:
        async with running_mesh(tmp_path, config) as mesh:
            await asyncio.wait_for(run(mesh, p1, p2), 60)

    asyncio.run(main())
