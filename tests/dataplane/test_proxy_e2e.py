"""The reference proxy end to end: callers' proxies -> mTLS (SVIDs from the real CA) -> the
ratings proxies' inbound RBAC -> flaky backends; retries, outlier ejection, a denied path, the
Istio metrics scraped from /metrics. Config from the real control plane over real gRPC."""

from __future__ import annotations

import asyncio
import http.server
import logging
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meshcore.dataplane.proxy import ReferenceProxy
from tests.dataplane.conftest import Mesh, eventually, node_id, running_mesh, spiffe

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: ratings, namespace: default}}
spec:
  selector: {{app: ratings}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-1, namespace: default}}
spec: {{address: 127.0.71.1, labels: {{app: web, version: v1}}, serviceAccount: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: intruder-1, namespace: default}}
spec: {{address: 127.0.73.1, labels: {{app: intruder}}, serviceAccount: intruder}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-1, namespace: default}}
spec: {{address: 127.0.72.1, labels: {{app: ratings, version: v1}}, serviceAccount: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-2, namespace: default}}
spec: {{address: 127.0.72.2, labels: {{app: ratings, version: v1}}, serviceAccount: ratings}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings]
  http:
  - route: [{{destination: {{host: ratings}}}}]
    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure"}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings, namespace: default}}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {{simple: ROUND_ROBIN}}
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}}
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin", "/admin/*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-web, namespace: default}}
spec:
  selector: {{matchLabels: {{app: ratings}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{principals: ["cluster.local/ns/default/sa/web"]}}}}]}}]
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class Backend(http.server.BaseHTTPRequestHandler):
    """Answers its name; a flaky one answers 503 (and counts what it saw)."""

    name = ""
    flaky = False
    hits: list[str]
    headers_seen: list[dict[str, str]]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        status = 503 if self.flaky else 200
        body = self.name.encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def backend(
    address: str, port: int, name: str, flaky: bool
) -> tuple[http.server.HTTPServer, list[str]]:
    hits: list[str] = []
    handler = type(f"B{name}", (Backend,),
                   {"name": name, "flaky": flaky, "hits": hits, "headers_seen": []})  # fmt: skip
    server = http.server.ThreadingHTTPServer((address, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


def get(url: str, host: str) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def without_client_certificate(address: str, port: int, ctx: ssl.SSLContext) -> None:
    """A TLS client with no certificate: raises when the server refuses it (as it must)."""
    r, w = await asyncio.open_connection(address, port, ssl=ctx)
    try:
        w.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await w.drain()
        data = await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()
    if not data:
        raise ConnectionError("closed without an answer")


async def run_e2e(mesh: Mesh, port: int, caplog: pytest.LogCaptureFixture) -> None:
    ok_server, ok_hits = backend("127.0.72.12", port, "ratings-2", flaky=False)
    bad_server, bad_hits = backend("127.0.72.11", port, "ratings-1", flaky=True)
    proxies: list[ReferenceProxy] = []
    dps = []
    try:
        for name, ip, app in (("ratings-1", "127.0.72.1", "127.0.72.11"),
                              ("ratings-2", "127.0.72.2", "127.0.72.12")):  # fmt: skip
            dp = await mesh.dataplane(node_id(name, ip), "ratings",
                                      metadata={"MESHCORE_APP_ADDRESS": app})  # fmt: skip
            dps.append(dp)
            proxies.append(
                ReferenceProxy(dp, outbound=None, inbound=True, metrics=("127.0.0.1", 0))
            )
        web_dp = await mesh.dataplane(node_id("web-1", "127.0.71.1"), "web",
                                      metadata={"LABELS": {"app": "web", "version": "v1"}})  # fmt: skip
        intruder_dp = await mesh.dataplane(node_id("intruder-1", "127.0.73.1"), "intruder")
        dps += [web_dp, intruder_dp]
        web = ReferenceProxy(web_dp, outbound=("127.0.71.1", 0), inbound=False,
                             metrics=("127.0.0.1", 0))  # fmt: skip
        intruder = ReferenceProxy(intruder_dp, outbound=("127.0.73.1", 0), inbound=False)
        proxies += [web, intruder]
        for p in proxies:
            await p.start()
        web_url = f"http://127.0.71.1:{web.outbound_port}"
        host = f"ratings:{port}"

        # Retries: ratings-1 always fails, every request still succeeds (on ratings-2).
        results = [await asyncio.to_thread(get, f"{web_url}/ratings/{i}", host) for i in range(12)]
        assert results == [(200, "ratings-2")] * 12, results
        assert bad_hits, "round robin never tried the flaky endpoint"
        # Envoy's request headers: one x-request-id per request (the same on every attempt),
        # the attempt number (the caller's workload name, sent over mTLS, stops at the proxy).
        ok_headers = ok_server.RequestHandlerClass.headers_seen  # type: ignore[attr-defined]
        bad_headers = bad_server.RequestHandlerClass.headers_seen  # type: ignore[attr-defined]
        assert all("x-request-id" in h for h in ok_headers + bad_headers)
        assert {h["x-envoy-attempt-count"] for h in ok_headers} == {"1", "2"}
        assert not any("x-meshcore-peer-workload" in h for h in ok_headers)  # not for the app
        retried = {h["x-request-id"] for h in ok_headers if h["x-envoy-attempt-count"] == "2"}
        assert retried <= {h["x-request-id"] for h in bad_headers}
        # Outlier detection: two 5xx in a row ejected ratings-1 (30 s); it gets no more traffic.
        assert web_dp.lb.ejected(f"outbound|{port}||ratings.default.svc.cluster.local") == [
            f"127.0.72.1:{port}"
        ]
        before = len(bad_hits)
        for i in range(6):
            assert await asyncio.to_thread(get, f"{web_url}/more/{i}", host) == (200, "ratings-2")
        assert len(bad_hits) == before
        # The denied path: 403 from ratings' proxy, the DENY policy's id in its log.
        with caplog.at_level(logging.INFO, logger="meshcore.proxy"):
            status, body = await asyncio.to_thread(get, f"{web_url}/admin/users", host)
        assert (status, body) == (403, "RBAC: access denied")
        assert "ns[default]-policy[deny-admin]-rule[0]" in caplog.text
        assert all("/admin" not in h for h in ok_hits + bad_hits)
        # A caller the ALLOW policy does not name: 403 as well.
        intruder_url = f"http://127.0.73.1:{intruder.outbound_port}"
        assert (await asyncio.to_thread(get, f"{intruder_url}/ratings/1", host))[0] == 403
        # mTLS both ways: the inbound side refuses a client without a mesh certificate.
        plain = ssl.create_default_context()
        plain.check_hostname = False
        plain.verify_mode = ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await without_client_certificate("127.0.72.2", port, plain)
        # The Istio metrics, scraped.
        src = await asyncio.to_thread(get, f"http://127.0.0.1:{web.metrics_port}/metrics", "x")
        dst = await asyncio.to_thread(
            get, f"http://127.0.0.1:{proxies[1].metrics_port}/metrics", "x"
        )
        assert src[0] == dst[0] == 200
        source_ok = [
            line for line in src[1].splitlines()
            if line.startswith("istio_requests_total{") and 'reporter="source"' in line
            and 'response_code="200"' in line
        ]  # fmt: skip
        assert len(source_ok) == 1, src[1]
        line = source_ok[0]
        assert 'destination_service="ratings.default.svc.cluster.local"' in line
        assert 'source_workload="web-1"' in line
        assert 'source_app="web"' in line
        assert f'destination_principal="{spiffe("ratings")}"' in line
        assert line.endswith(" 18.0"), line
        assert 'response_code="403"' in src[1]
        assert "istio_request_duration_milliseconds_bucket{" in src[1]
        dest = [
            line for line in dst[1].splitlines()
            if line.startswith("istio_requests_total{") and 'response_code="200"' in line
        ]  # fmt: skip
        assert len(dest) == 1, dst[1]
        assert 'reporter="destination"' in dest[0]
        assert f'source_principal="{spiffe("web")}"' in dest[0]
        assert 'connection_security_policy="mutual_tls"' in dest[0]
        assert 'source_workload="web-1"' in dest[0]
        assert 'response_code="403"' in dst[1]
        counts = Counter(h.split("/")[1] for h in ok_hits)
        assert counts == {"ratings": 12, "more": 6}, counts
        # The control plane goes away mid-traffic: the proxies keep their config and serve.
        await mesh.stop_ads()
        await eventually(lambda: not web_dp.ads.connected, what="the ADS stream to drop")
        for i in range(3):
            got = await asyncio.to_thread(get, f"{web_url}/after/{i}", host)
            assert got == (200, "ratings-2")
        assert (await asyncio.to_thread(get, f"{web_url}/admin/x", host))[0] == 403
    finally:
        for p in proxies:
            await p.stop()
        for dp in dps:
            await dp.aclose()
        for s in (ok_server, bad_server):
            s.shutdown()
            s.server_close()


def test_reference_proxy_end_to_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port("127.0.72.1")
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))

    async def main() -> None:
        async with running_mesh(tmp_path, config) as mesh:
            await asyncio.wait_for(run_e2e(mesh, port, caplog), 90)

    asyncio.run(main())
