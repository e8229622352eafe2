"""``meshcore proxy`` as a command (a subprocess) against the real control plane and CA."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.dataplane.conftest import Mesh, node_id, running_mesh, spiffe
from tests.dataplane.test_proxy_e2e import backend, free_port, get

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-1, namespace: default}}
spec: {{address: 127.0.74.1, labels: {{app: web}}, serviceAccount: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-1, namespace: default}}
spec: {{address: 127.0.75.1, labels: {{app: echo}}, serviceAccount: echo}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: DISABLE}}}}
"""


async def run_cli(mesh: Mesh, port: int, tmp: Path) -> None:
    server, hits = backend("127.0.75.1", port, "echo-1", flaky=False)
    bundle = tmp / "roots.pem"
    bundle.write_text(mesh.ca.trust_bundle_pem())
    outbound, metrics = free_port("127.0.74.1"), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshcore", "proxy", "--xds", mesh.xds,
        "--node-id", node_id("web-1", "127.0.74.1"),
        "--ca", f"127.0.0.1:{mesh.ca_server.port}",
        "--ca-mtls", f"127.0.0.1:{mesh.ca_server.mtls_port}",
        "--trust-bundle", str(bundle), f"--token={mesh.tokens.issue(spiffe('web'))}",
        "--service-account", "web", "--outbound", f"127.0.74.1:{outbound}",
        "--metrics", f"127.0.0.1:{metrics}", "--label", "app=web",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "meshcore proxy exited"
            if line.startswith("meshcore proxy:"):
                break
        assert f"outbound on 127.0.74.1:{outbound}" in line
        url = f"http://127.0.74.1:{outbound}/hello"
        got = await asyncio.to_thread(get, url, f"echo:{port}")
        assert got == (200, "echo-1")
        assert hits == ["/hello"]
        missing = await asyncio.to_thread(get, url, "nowhere:1")
        assert missing[0] == 404
        text = (await asyncio.to_thread(get, f"http://127.0.0.1:{metrics}/metrics", "x"))[1]
        assert 'source_app="web"' in text
        assert 'response_code="404",response_flags="NR"' in text.replace(
            'grpc_response_status="",', ""
        )
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0


def test_meshcore_proxy_command(tmp_path: Path) -> None:
    port = free_port("127.0.75.1")
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))

    async def main() -> None:
        async with running_mesh(tmp_path, config) as mesh:
            await asyncio.wait_for(run_cli(mesh, port, tmp_path), 60)

    asyncio.run(main())


def test_meshcore_proxy_usage_errors(tmp_path: Path) -> None:
    from tests._cli import main

    assert main(["proxy", "--node-id", "bad", "--xds", "127.0.0.1:1"]) == 2
    assert main(["proxy", "--node-id", node_id("a", "127.0.0.1"),
                 "--trust-bundle", str(tmp_path / "missing.pem")]) == 2  # fmt: skip
