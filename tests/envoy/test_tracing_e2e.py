"""Tracing end to end: MeshConfig names a Zipkin collector (``enableTracing`` and
``defaultConfig.tracing.zipkin.address``); the control plane configures every sidecar's HTTP
connection managers with Envoy's Zipkin tracer; a request from ``client`` to ``echo`` through
two real Envoy sidecars (run by the agent, mTLS between them) reaches the collector as a
client span and a server span of one trace."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import pytest
from _sidecar import LoopThread, free_port, http_get, serve_echo, wait_for

from meshcore.cli.serve import CAOptions, serve
from meshcore.config.meshconfig import MeshConfig
from meshcore.dataplane.agent import Agent

pytestmark = pytest.mark.envoy

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-1}}
spec: {{address: 127.0.75.1, labels: {{app: echo}}, serviceAccount: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client-1}}
spec: {{address: 127.0.76.1, labels: {{app: client}}, serviceAccount: client}}
"""


class Collector(http.server.BaseHTTPRequestHandler):
    """A Zipkin v2 collector: POST /api/v2/spans with a JSON list of spans."""

    spans: ClassVar[list[dict[str, Any]]] = []

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            chunk = self.rfile.read(size + 2)[:size]  # each chunk ends with CRLF
            if size == 0:
                return body
            body += chunk

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/api/v2/spans":
            self.spans.extend(json.loads(body))
            self.send_response(202)
        else:
            self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_requests_are_traced_to_the_zipkin_collector(tmp_path: Path) -> None:
    port, zipkin_port = free_port(), free_port()
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    mesh_config = MeshConfig.from_dict({
        "enableTracing": True,
        "defaultConfig": {"tracing": {"sampling": 100,
                                      "zipkin": {"address": f"127.0.74.1:{zipkin_port}"}}},
    })  # fmt: skip
    tokens = {sa: f"{sa}-tracing-token-0123456789" for sa in ("echo", "client")}
    (tmp_path / "tokens").write_text(
        "".join(f"{t} spiffe://cluster.local/ns/default/sa/{sa}\n" for sa, t in tokens.items())
    )
    Collector.spans = []
    collector = http.server.ThreadingHTTPServer(("127.0.74.1", zipkin_port), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    seen: list[dict[str, str]] = []
    app = serve_echo("127.0.75.2", port, "echo", seen)
    loop = LoopThread()
    xds, ca = free_port(), free_port()
    stop = asyncio.Event()
    ready = threading.Event()
    options = CAOptions(port=ca, state_dir=str(tmp_path / "state"), tokens=str(tmp_path / "tokens"))
    plane = asyncio.run_coroutine_threadsafe(
        serve([str(config)], xds_port=xds, metrics_port=None, ready=ready, stop=stop,
              ca=options, mesh_config=mesh_config),
        loop.loop,
    )  # fmt: skip
    agents: dict[str, Agent] = {}
    try:
        assert ready.wait(30), plane.result(1)
        root = (tmp_path / "state" / "root-cert.pem").read_text()
        for name, address, metadata in (
            ("echo", "127.0.75.1", {"MESHCORE_APP_ADDRESS": "127.0.75.2",
                                    "MESHCORE_OUTBOUND_ADDRESS": "127.0.75.3"}),
            ("client", "127.0.76.1", {"MESHCORE_OUTBOUND_ADDRESS": "127.0.76.2"}),
        ):  # fmt: skip
            agents[name] = Agent(
                node_id=f"sidecar~{address}~{name}-1.default~default.svc.cluster.local",
                identity=f"spiffe://cluster.local/ns/default/sa/{name}",
                xds_address=f"127.0.0.1:{xds}",
                ca_address=f"127.0.0.1:{ca}",
                ca_root=root,
                token=tokens[name],
                workdir=tmp_path / name,
                metadata=metadata,
            )

        async def start() -> None:
            await asyncio.gather(*(a.start() for a in agents.values()))
            await asyncio.gather(*(a.wait_ready(30) for a in agents.values()))

        loop.run(start())
        # Spans are sent in batches (5 by default): send each at once.
        for agent in agents.values():
            url = f"http://127.0.0.1:{agent.admin_port}/runtime_modify?tracing.zipkin.min_flush_spans=1"
            urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5).read()
        url = f"http://127.0.76.2:{port}/traced"
        wait_for(lambda: http_get(url, "echo") == (200, "echo"), "traffic through the sidecars")
        trace_id = seen[-1]["x-b3-traceid"]
        assert len(trace_id) == 32  # 128-bit trace ids, as Istio configures

        def spans_of_trace() -> list[dict[str, Any]]:
            return [s for s in Collector.spans if s.get("traceId") == trace_id]

        wait_for(lambda: len(spans_of_trace()) >= 2, "the client and server spans", timeout=15)
        by_kind = {s["kind"]: s for s in spans_of_trace()}
        client, server = by_kind["CLIENT"], by_kind["SERVER"]
        assert client["localEndpoint"]["serviceName"] == "client-1.default"
        assert server["localEndpoint"]["serviceName"] == "echo-1.default"
        assert server["parentId"] == client["id"]
        assert client["tags"]["http.url"].endswith("/traced")
        assert server["tags"]["http.status_code"] == "200"
        # The sidecar-to-sidecar hop was mTLS: the server span's request carried the identity.
        assert (
            "URI=spiffe://cluster.local/ns/default/sa/client" in seen[-1]["x-forwarded-client-cert"]
        )
    finally:

        async def stop_all() -> None:
            await asyncio.gather(*(a.stop() for a in agents.values()))
            stop.set()

        loop.run(stop_all())
        plane.result(15)
        loop.close()
        for server in (app, collector):
            server.shutdown()
            server.server_close()
