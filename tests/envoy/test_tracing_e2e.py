"""Tracing end to end: MeshConfig names a Zipkin collector (``enableTracing`` and
``defaultConfig.tracing.zipkin.address``); the control plane configures every sidecar's HTTP
connection managers with Envoy's Zipkin tracer; a request from ``client`` to ``echo`` through
two real Envoy sidecars (run by the agent, mTLS between them) reaches the collector as a
client span and a server span of one trace."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _sidecar import free_port, http_get, serve_echo, serving, wait_for

from meshcore.config.meshconfig import MeshConfig
from meshcore.dataplane.agent import Agent
from meshcore.demo.apps import ZipkinCollector

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


def test_requests_are_traced_to_the_zipkin_collector(tmp_path: Path) -> None:
    port = free_port()
    collector = ZipkinCollector("127.0.74.1")
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    mesh_config = MeshConfig.from_dict({
        "enableTracing": True,
        "defaultConfig": {"tracing": {"sampling": 100,
                                      "zipkin": {"address": collector.address}}},
    })  # fmt: skip
    tokens = {sa: f"{sa}-tracing-token-0123456789" for sa in ("echo", "client")}
    seen: list[dict[str, str]] = []
    app = serve_echo("127.0.75.2", port, "echo", seen)
    agents: dict[str, Agent] = {}
    ids = {f"spiffe://cluster.local/ns/default/sa/{sa}": t for sa, t in tokens.items()}
    try:
        with serving(config, tmp_path, ids, mesh_config) as cp:
            for name, address, metadata in (
                ("echo", "127.0.75.1", {"MESHCORE_APP_ADDRESS": "127.0.75.2",
                                        "MESHCORE_OUTBOUND_ADDRESS": "127.0.75.3"}),
                ("client", "127.0.76.1", {"MESHCORE_OUTBOUND_ADDRESS": "127.0.76.2"}),
            ):  # fmt: skip
                agents[name] = Agent(
                    node_id=f"sidecar~{address}~{name}-1.default~default.svc.cluster.local",
                    identity=f"spiffe://cluster.local/ns/default/sa/{name}",
                    xds_address=f"127.0.0.1:{cp.xds}",
                    ca_address=f"127.0.0.1:{cp.ca_port}",
                    ca_root=cp.root,
                    token=tokens[name],
                    workdir=tmp_path / name,
                    metadata=metadata,
                )

            async def start() -> None:
                await asyncio.gather(*(a.start() for a in agents.values()))
                await asyncio.gather(*(a.wait_ready(30) for a in agents.values()))

            async def stop_all() -> None:
                await asyncio.gather(*(a.stop() for a in agents.values()))

            try:
                cp.loop.run(start())
                # Spans are sent in batches (5 by default): send each at once.
                for agent in agents.values():
                    url = f"http://127.0.0.1:{agent.admin_port}/runtime_modify?tracing.zipkin.min_flush_spans=1"
                    urllib.request.urlopen(
                        urllib.request.Request(url, method="POST"), timeout=5
                    ).read()
                url = f"http://127.0.76.2:{port}/traced"
                wait_for(
                    lambda: http_get(url, "echo") == (200, "echo"), "traffic through the sidecars"
                )
                trace_id = seen[-1]["x-b3-traceid"]
                assert len(trace_id) == 32  # 128-bit trace ids, as Istio configures

                def spans_of_trace() -> list[dict[str, Any]]:
                    return collector.traces().get(trace_id, [])

                wait_for(
                    lambda: len(spans_of_trace()) >= 2, "the client and server spans", timeout=15
                )
                by_kind = {s["kind"]: s for s in spans_of_trace()}
                client, server = by_kind["CLIENT"], by_kind["SERVER"]
                assert client["localEndpoint"]["serviceName"] == "client-1.default"
                assert server["localEndpoint"]["serviceName"] == "echo-1.default"
                assert server["parentId"] == client["id"]
                assert client["tags"]["http.url"].endswith("/traced")
                assert server["tags"]["http.status_code"] == "200"
                # The sidecar-to-sidecar hop was mTLS: the server span's request carried the identity.
                assert (
                    "URI=spiffe://cluster.local/ns/default/sa/client"
                    in seen[-1]["x-forwarded-client-cert"]
                )
            finally:
                cp.loop.run(stop_all())
    finally:
        app.shutdown()
        app.server_close()
        collector.stop()
