"""The reference proxy's timeouts: the route's timeout bounds the request, the retry policy's
per-try timeout cuts each attempt and retries it (real control plane, real sockets)."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from pathlib import Path
from typing import Any

from meshcore.dataplane.proxy import ReferenceProxy
from tests.dataplane.conftest import Mesh, node_id, running_mesh
from tests.dataplane.test_proxy_e2e import free_port, get

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: slow, namespace: default}}
spec:
  selector: {{app: slow}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-1, namespace: default}}
spec: {{address: 127.0.76.1, labels: {{app: web}}, serviceAccount: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: slow-1, namespace: default}}
spec: {{address: 127.0.77.1, labels: {{app: slow}}, serviceAccount: slow}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: DISABLE}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: slow, namespace: default}}
spec:
  hosts: [slow]
  http:
  - match: [{{uri: {{prefix: /retry}}}}]
    route: [{{destination: {{host: slow}}}}]
    timeout: 2s
    retries: {{attempts: 2, perTryTimeout: 200ms, retryOn: "5xx"}}
  - route: [{{destination: {{host: slow}}}}]
    timeout: 300ms
    retries: {{attempts: 0}}
"""


class Slow(http.server.BaseHTTPRequestHandler):
    hits: list[float]

    def do_GET(self) -> None:
        self.hits.append(time.monotonic())
        time.sleep(1.0)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def run(mesh: Mesh, port: int) -> None:
    hits: list[float] = []
    handler = type("SlowH", (Slow,), {"hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.77.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dp = await mesh.dataplane(node_id("web-1", "127.0.76.1"), "web")
    proxy = ReferenceProxy(dp, outbound=("127.0.76.1", 0), inbound=False)
    await proxy.start()
    try:
        url = f"http://127.0.76.1:{proxy.outbound_port}"
        t0 = time.monotonic()
        status, body = await asyncio.to_thread(get, f"{url}/plain", f"slow:{port}")
        took = time.monotonic() - t0
        assert (status, body) == (504, "upstream request timeout")
        assert 0.25 <= took < 0.9, took  # the route's 300 ms, not the backend's 1 s
        assert len(hits) == 1
        hits.clear()
        t0 = time.monotonic()
        status, _ = await asyncio.to_thread(get, f"{url}/retry", f"slow:{port}")
        took = time.monotonic() - t0
        # Three attempts of 200 ms each (the first and two retries), then the last answer.
        assert status == 504
        assert len(hits) == 3, hits
        assert 0.55 <= took < 1.5, took
    finally:
        await proxy.stop()
        await dp.aclose()
        server.shutdown()
        server.server_close()


def test_route_and_per_try_timeouts(tmp_path: Path) -> None:
    port = free_port("127.0.77.1")
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))

    async def main() -> None:
        async with running_mesh(tmp_path, config) as mesh:
            await asyncio.wait_for(run(mesh, port), 60)

    asyncio.run(main())
