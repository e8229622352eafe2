"""``meshcore serve``'s status page with its CA and agents running real Envoy (two sidecars and
an ingress gateway): after known traffic (successes, and 503s a VirtualService fault injects at
the caller; requests through the gateway), ``/debug/statusz`` has the service edges with
exactly those counts (the gateway reports as the source of what it forwards, as Istio's do) (scraped from the agents' merged endpoints,
which their node metadata advertise), and the certificates the CA issued with their expiries;
``/status`` shows both, and the edge's plots."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _sidecar import (
    control_plane_in_thread,
    free_ports,
    http_get,
    serve_echo,
    wait_for,
)

from meshcore.dataplane.agent import Agent
from meshcore.observability.scrape import METRICS_URL_KEY
from meshcore.xds.controlserver import CAOptions
from meshcore.xds.node import LABELS_KEY

pytestmark = pytest.mark.envoy

ECHO, CLIENT, INGRESS = "127.0.91.1", "127.0.90.1", "127.0.92.1"
ECHO_APP, ECHO_OUT, CLIENT_OUT = "127.0.91.2", "127.0.91.3", "127.0.90.2"
OK, FAILED, THROUGH_GATEWAY = 12, 3, 7
HOST = "echo.example.com"
CERT_TTL = 3600.0

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
spec: {{address: 127.0.91.1, labels: {{app: echo}}, serviceAccount: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client-1}}
spec: {{address: 127.0.90.1, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo]
  http:
  - match: [{{uri: {{prefix: /fail}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: echo}}}}]
  - route: [{{destination: {{host: echo}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers: [{{port: {{number: {gateway}, name: http, protocol: HTTP}}, hosts: [echo.example.com]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo-ingress}}
spec:
  hosts: [echo.example.com]
  gateways: [istio-system/ingress]
  http: [{{route: [{{destination: {{host: echo, port: {{number: {port}}}}}}}]}}]
"""


def spiffe(sa: str, ns: str = "default") -> str:
    return f"spiffe://cluster.local/ns/{ns}/sa/{sa}"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_serve_status_has_edges_and_certificates(tmp_path: Path) -> None:
    port, xds, ca_port, ca_mtls, metrics, gateway = free_ports(6)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port, gateway=gateway))
    ids = {"echo": spiffe("echo"), "client": spiffe("client"),
           "ingress": spiffe("ingress", "istio-system")}  # fmt: skip
    tokens = {name: f"token-{name}-{os.urandom(8).hex()}" for name in ids}
    (tmp_path / "tokens").write_text("".join(f"{tokens[n]} {i}\n" for n, i in ids.items()))
    options = CAOptions(
        port=ca_port,
        mtls_port=ca_mtls,
        state_dir=str(tmp_path / "state"),
        tokens=str(tmp_path / "tokens"),
    )
    app = serve_echo(ECHO_APP, port, "echo")
    try:
        with control_plane_in_thread(
            [str(config)], xds_port=xds, ca=options, metrics_port=metrics
        ) as (loop, _):
            root = (tmp_path / "state" / "root-cert.pem").read_text()
            sidecar = "sidecar~{}~{}-1.default~default.svc.cluster.local"
            specs = {
                "echo": (sidecar.format(ECHO, "echo"), {"MESHCORE_APP_ADDRESS": ECHO_APP,
                                                       "MESHCORE_OUTBOUND_ADDRESS": ECHO_OUT}),
                "client": (sidecar.format(CLIENT, "client"),
                           {"MESHCORE_OUTBOUND_ADDRESS": CLIENT_OUT}),
                "ingress": (f"router~{INGRESS}~ingress-1.istio-system~istio-system.svc.cluster.local",
                            {"MESHCORE_GATEWAY_ADDRESS": INGRESS,
                             LABELS_KEY: {"istio": "ingressgateway"}}),
            }  # fmt: skip
            agents = {
                name: Agent(
                    node_id=node_id,
                    identity=ids[name],
                    xds_address=f"127.0.0.1:{xds}",
                    ca_address=f"127.0.0.1:{ca_port}",
                    ca_mtls_address=f"127.0.0.1:{ca_mtls}",
                    ca_root=root,
                    token=tokens[name],
                    workdir=tmp_path / name,
                    metadata=metadata,
                    cert_ttl=CERT_TTL,
                    status_port=0,
                )
                for name, (node_id, metadata) in specs.items()
            }

            async def start_all() -> None:
                await asyncio.gather(*(a.start() for a in agents.values()))
                await asyncio.gather(*(a.wait_ready(30) for a in agents.values()))

            async def stop_all() -> None:
                await asyncio.gather(*(a.stop() for a in agents.values()))

            try:
                loop.run(start_all())
                assert all(a.bootstrap()["node"]["metadata"][METRICS_URL_KEY] == a.stats_url
                           for a in agents.values())  # fmt: skip
                url = f"http://{CLIENT_OUT}:{port}"
                wait_for(lambda: http_get(f"{url}/", "echo")[0] == 200, "first request")
                codes = [http_get(f"{url}/", "echo")[0] for _ in range(OK - 1)]
                codes += [http_get(f"{url}/fail", "echo")[0] for _ in range(FAILED)]
                assert codes == [200] * (OK - 1) + [503] * FAILED
                gw = f"http://{INGRESS}:{gateway}"
                wait_for(lambda: http_get(f"{gw}/", HOST)[0] == 200, "through the gateway")
                codes = [http_get(f"{gw}/", HOST)[0] for _ in range(THROUGH_GATEWAY - 1)]
                assert codes == [200] * (THROUGH_GATEWAY - 1)

                statusz = f"http://127.0.0.1:{metrics}/debug/statusz"
                want = {
                    "client-1 → echo.default.svc.cluster.local":
                        {"requests": OK + FAILED, "errors": FAILED},
                    "ingress-1 → echo.default.svc.cluster.local":
                        {"requests": THROUGH_GATEWAY, "errors": 0},
                }  # fmt: skip
                wait_for(lambda: get_json(statusz)["edges"] == want, f"the edges {want}", 20)
                state = get_json(statusz)

                certs = {c["identity"]: c for c in state["certificates"]}
                assert set(certs) == set(ids.values())
                for name, agent in agents.items():
                    cert = certs[ids[name]]
                    assert agent.certificate is not None
                    assert cert["not_after"] == agent.certificate.not_after.isoformat()
                    assert cert["serial"] == f"{agent.certificate.serial:x}"
                    assert CERT_TTL - 120 < cert["expires_in_s"] <= CERT_TTL + 60

                # A second sample within the window gives the plots their points.
                wait_for(lambda: "<polyline" in _page(metrics), "edge plots", 10)
                html = _page(metrics)
                assert "Certificates issued by the CA" in html
                assert spiffe("client") in html
                assert "client-1 → echo" in html
            finally:
                loop.run(stop_all())
    finally:
        app.shutdown()
        app.server_close()


def _page(metrics: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/status", timeout=10) as r:
        return str(r.read().decode())
