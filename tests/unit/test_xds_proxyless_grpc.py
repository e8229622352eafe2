"""gRPC's own xDS client follows the translator's proxyless resources to a backend.

A minimal state-of-the-world ADS server (test-only: the real one is meshcore.xds.server) serves
``generate()``'s output for a node with ``GENERATOR: grpc``; ``grpc.insecure_channel(
"xds:///FQDN:PORT")`` resolves Listener -> RouteConfiguration -> Cluster -> endpoints and calls
a backend; a header route and the NACK count are checked.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

pytest.importorskip("envoy.service.discovery.v3.ads_pb2_grpc")
grpc = pytest.importorskip("grpc")

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402

from meshcore.config import load_objects  # noqa: E402
from meshcore.xds.translate import generate, proxy_for_node  # noqa: E402

NODE = "sidecar~127.0.60.1~client.default~default.svc.cluster.local"


class _Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, resources: dict[str, dict[str, Any]]) -> None:
        self.resources = resources
        self.nacks: list[str] = []
        self.requested: list[tuple[str, tuple[str, ...]]] = []
        self._nonce = 0
        self._lock = threading.Lock()

    def StreamAggregatedResources(
        self, request_iterator: Iterator[Any], context: Any
    ) -> Iterator[Any]:
        sent: dict[str, tuple[str, ...]] = {}
        for req in request_iterator:
            if req.error_detail.code:
                self.nacks.append(f"{req.type_url}: {req.error_detail.message}")
                continue
            names = tuple(sorted(req.resource_names))
            if sent.get(req.type_url) == names:
                continue  # an ACK of what was sent
            sent[req.type_url] = names
            self.requested.append((req.type_url.rsplit(".", 1)[-1], names))
            pool = self.resources.get(req.type_url, {})
            chosen = [pool[n] for n in names if n in pool] if names else list(pool.values())
            packed = []
            for msg in chosen:
                a = any_pb2.Any()
                a.Pack(msg)
                packed.append(a)
            with self._lock:
                self._nonce += 1
                nonce = str(self._nonce)
            yield discovery_pb2.DiscoveryResponse(
                version_info="1", type_url=req.type_url, nonce=nonce, resources=packed
            )


def _backend(name: str) -> tuple[Any, int]:
    def say(request: bytes, context: Any) -> bytes:
        return name.encode() + b":" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {"Say": grpc.unary_unary_rpc_method_handler(say)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    return server, server.add_insecure_port("127.0.61.1:0" if name == "v1" else "127.0.61.2:0")


RICH_POLICY = {
    "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}},
    "connectionPool": {"http": {"http2MaxRequests": 100, "maxRetries": 3}},
    "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"},
}
RICH_ROUTE = {
    "timeout": "5s",
    "retries": {"attempts": 2, "perTryTimeout": "2s", "retryOn": "unavailable,cancelled"},
    "fault": {"delay": {"fixedDelay": "1ms", "percentage": {"value": 50}}},
    "headers": {"request": {"set": {"x-from": "mesh"}}},
}


def _mesh(port_v1: int, port_v2: int, rich: bool = False) -> Any:
    def we(name: str, version: str, address: str, port: int) -> dict[str, Any]:
        return {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"address": address, "labels": {"app": "echo", "version": version},
                         "ports": {"grpc": port}}}  # fmt: skip

    return load_objects([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "default"},
         "spec": {"selector": {"app": "echo"}, "ports": [{"name": "grpc", "port": 7070}]}},
        we("echo-v1", "v1", "127.0.61.1", port_v1),
        we("echo-v2", "v2", "127.0.61.2", port_v2),
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "echo", "namespace": "default"},
         "spec": {"host": "echo", **({"trafficPolicy": RICH_POLICY} if rich else {}),
                  "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "echo", "namespace": "default"},
         "spec": {"hosts": ["echo"], "http": [
             {"match": [{"headers": {"x-version": {"exact": "v2"}}}], "route": [{"destination": {"host": "echo", "subset": "v2"}}]},
             {"route": [{"destination": {"host": "echo", "subset": "v1"}}], **(RICH_ROUTE if rich else {})}]}},
    ])  # fmt: skip


@pytest.mark.parametrize("rich", [False, True], ids=["plain", "policies"])
def test_grpc_xds_client_reaches_backend(monkeypatch: pytest.MonkeyPatch, rich: bool) -> None:
    v1, port_v1 = _backend("v1")
    v2, port_v2 = _backend("v2")
    mesh = _mesh(port_v1, port_v2, rich)
    result = generate(mesh, proxy_for_node(mesh, NODE, {"GENERATOR": "grpc"}))
    ads = _Ads(result.resources)
    xds = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, xds)
    xds_port = xds.add_insecure_port("127.0.0.1:0")
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": f"127.0.0.1:{xds_port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": NODE, "metadata": {"GENERATOR": "grpc"}},
    }
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", json.dumps(bootstrap))
    for server in (v1, v2, xds):
        server.start()
    try:
        with grpc.insecure_channel("xds:///echo.default.svc.cluster.local:7070") as channel:
            say = channel.unary_unary("/test.Echo/Say")
            assert say(b"hi", timeout=15) == b"v1:hi"
            assert say(b"hi", timeout=5, metadata=(("x-version", "v2"),)) == b"v2:hi"
    finally:
        for server in (xds, v1, v2):
            server.stop(grace=None)
    assert ads.nacks == []
    kinds = {kind for kind, _ in ads.requested}
    assert kinds == {"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"}
