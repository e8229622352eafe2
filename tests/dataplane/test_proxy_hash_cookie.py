"""A DestinationRule's ``consistentHash.httpCookie`` with a ``ttl`` through the reference proxy
(real control plane, real sockets): as in Envoy, a request without the cookie gets one generated
(returned in ``Set-Cookie``: quoted value, Max-Age, Path, the attributes, HttpOnly) and is hashed
on it; a request that sends it back reaches the same endpoint and gets no new cookie."""

from __future__ import annotations

import asyncio
import http.server
import threading
import urllib.request
from pathlib import Path
from typing import Any

from meshcore.dataplane.proxy import ReferenceProxy
from tests.dataplane.conftest import Mesh, node_id, running_mesh
from tests.dataplane.test_proxy_e2e import free_port

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
spec: {{address: 127.0.78.1, labels: {{app: web}}, serviceAccount: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-1, namespace: default}}
spec: {{address: 127.0.79.1, labels: {{app: echo}}, serviceAccount: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-2, namespace: default}}
spec: {{address: 127.0.79.2, labels: {{app: echo}}, serviceAccount: echo}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: DISABLE}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: default}}
spec:
  host: echo
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie:
          name: user
          path: /app
          ttl: 60s
          attributes: [{{name: SameSite, value: Strict}}, {{name: Secure}}]
"""


class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.server_address[0].encode()  # which endpoint answered
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def get(url: str, host: str, cookie: str | None) -> tuple[str, list[str]]:
    headers = {"Host": host, **({"Cookie": cookie} if cookie else {})}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return r.read().decode(), r.headers.get_all("set-cookie") or []


async def run(mesh: Mesh, port: int) -> None:
    servers = [http.server.ThreadingHTTPServer((a, port), Echo)
               for a in ("127.0.79.1", "127.0.79.2")]  # fmt: skip
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    dp = await mesh.dataplane(node_id("web-1", "127.0.78.1"), "web")
    proxy = ReferenceProxy(dp, outbound=("127.0.78.1", 0), inbound=False)
    await proxy.start()
    try:
        url = f"http://127.0.78.1:{proxy.outbound_port}/app"
        host = f"echo:{port}"
        first, set_cookies = await asyncio.to_thread(get, url, host, None)
        assert len(set_cookies) == 1, set_cookies
        value = set_cookies[0].split(";")[0].removeprefix("user=").strip('"')
        assert len(value) == 16
        assert int(value, 16) >= 0
        assert set_cookies[0] == (
            f'user="{value}"; Max-Age=60; Path=/app; SameSite=Strict; Secure; HttpOnly'
        )
        # Sent back (quoted, as a browser does): the same endpoint, no new cookie.
        for _ in range(5):
            again, more = await asyncio.to_thread(get, url, host, f'user="{value}"')
            assert (again, more) == (first, [])
        # Other cookie values spread over both endpoints; none gets a Set-Cookie.
        seen = set()
        for i in range(40):
            who, more = await asyncio.to_thread(get, url, host, f"user=u{i}")
            assert more == []
            seen.add(who)
        assert seen == {"127.0.79.1", "127.0.79.2"}
    finally:
        await proxy.stop()
        await dp.aclose()
        for s in servers:
            s.shutdown()
            s.server_close()


def test_generated_hash_cookie(tmp_path: Path) -> None:
    port = free_port("127.0.79.1")
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))

    async def main() -> None:
        async with running_mesh(tmp_path, config) as mesh:
            await asyncio.wait_for(run(mesh, port), 60)

    asyncio.run(main())
