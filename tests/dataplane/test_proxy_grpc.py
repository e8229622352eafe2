"""gRPC through two reference proxies (issue 17): a real grpcio client sends to its proxy's
outbound listener (HTTP/2, prior knowledge), the proxy routes and goes over mTLS (HTTP/2) to the
callee's proxy, whose inbound RBAC guards a real grpcio server. Unary and server-streaming
calls, request and response metadata, trailers and status codes arrive as sent; a caller RBAC
denies gets PERMISSION_DENIED with Envoy's message (Envoy's local reply to a gRPC request)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshcore.dataplane.proxy import ReferenceProxy
from tests.dataplane.conftest import running_mesh
from tests.dataplane.test_proxy_e2e import free_port, node_id

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: greeter, namespace: default}}
spec:
  selector: {{app: greeter}}
  ports: [{{name: grpc, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client-1, namespace: default}}
spec: {{address: 127.0.74.1, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: intruder-1, namespace: default}}
spec: {{address: 127.0.74.3, labels: {{app: intruder}}, serviceAccount: intruder}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: greeter-1, namespace: default}}
spec: {{address: 127.0.75.1, labels: {{app: greeter}}, serviceAccount: greeter}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: greeter, namespace: default}}
spec:
  host: greeter
  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-client, namespace: default}}
spec:
  selector: {{matchLabels: {{app: greeter}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{principals: ["cluster.local/ns/default/sa/client"]}}}}]}}]
"""

APP_IP = "127.0.75.11"
SERVICE = "test.Greeter"
STREAMED = 50  # messages of the server-streaming call
CHUNK = 40_000  # bytes per streamed message: the stream outgrows the default HTTP/2 windows


def hello(request: bytes, context: grpc.ServicerContext) -> bytes:
    metadata = dict(context.invocation_metadata())
    if request == b"missing":
        context.set_trailing_metadata((("x-why", "not-here"),))
        context.abort(grpc.StatusCode.NOT_FOUND, "no such greeting")
    context.set_trailing_metadata((("x-trailer", "t1"), ("x-peer-header", metadata.get(
        "x-meshcore-peer-workload", "-"))))  # fmt: skip
    return b"hello " + request + b" " + metadata.get("x-client", "-").encode()


def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for i in range(STREAMED):
        yield str(i).encode().ljust(CHUNK, b".")
    context.set_trailing_metadata((("x-count", str(STREAMED)),))


def greeter(port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Hello": grpc.unary_unary_rpc_method_handler(hello),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    assert server.add_insecure_port(f"{APP_IP}:{port}") == port
    server.start()
    return server


def channel(address: str, port: int, authority: str) -> grpc.Channel:
    return grpc.insecure_channel(
        f"{address}:{port}",
        options=[("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)],
    )


def calls(ch: grpc.Channel) -> dict[str, Any]:
    """Every call of the test through one channel; the outcomes, compared by the test."""
    unary = ch.unary_unary(f"/{SERVICE}/Hello")
    stream = ch.unary_stream(f"/{SERVICE}/Count")
    out: dict[str, Any] = {}
    reply, call = unary.with_call(b"you", metadata=(("x-client", "c1"),), timeout=10)
    out["unary"] = (reply, call.code(), dict(call.trailing_metadata() or ()))
    with pytest.raises(grpc.RpcError) as missing:
        unary(b"missing", timeout=10)
    err: Any = missing.value
    out["missing"] = (err.code(), err.details(), dict(err.trailing_metadata() or ()))
    streamed = stream(b"", timeout=10)
    messages = list(streamed)
    out["stream"] = (len(messages), messages[0][:2], messages[-1][:2],
                     {len(m) for m in messages}, streamed.code(),
                     dict(streamed.trailing_metadata() or ()))  # fmt: skip
    return out


def denied(ch: grpc.Channel) -> tuple[Any, Any]:
    with pytest.raises(grpc.RpcError) as exc:
        ch.unary_unary(f"/{SERVICE}/Hello")(b"x", timeout=10)
    err: Any = exc.value
    return err.code(), err.details()


def test_grpc_through_two_proxies(tmp_path: Path) -> None:
    port = free_port(APP_IP)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    authority = f"greeter:{port}"

    async def main() -> None:
        server = greeter(port)
        proxies: list[ReferenceProxy] = []
        dps = []
        try:
            async with running_mesh(tmp_path, config) as mesh:
                callee_dp = await mesh.dataplane(node_id("greeter-1", "127.0.75.1"), "greeter",
                                                 metadata={"MESHCORE_APP_ADDRESS": APP_IP})  # fmt: skip
                client_dp = await mesh.dataplane(node_id("client-1", "127.0.74.1"), "client")
                intruder_dp = await mesh.dataplane(node_id("intruder-1", "127.0.74.3"),
                                                   "intruder")  # fmt: skip
                dps += [callee_dp, client_dp, intruder_dp]
                proxies += [
                    ReferenceProxy(callee_dp, outbound=None, inbound=True),
                    ReferenceProxy(client_dp, outbound=("127.0.74.1", 0), inbound=False),
                    ReferenceProxy(intruder_dp, outbound=("127.0.74.3", 0), inbound=False),
                ]
                for p in proxies:
                    await p.start()
                callee, client, intruder = proxies
                assert client.outbound_port is not None and intruder.outbound_port is not None
                with channel("127.0.74.1", client.outbound_port, authority) as ch:
                    got = await asyncio.to_thread(calls, ch)
                with channel("127.0.74.3", intruder.outbound_port, authority) as ch:
                    refused = await asyncio.to_thread(denied, ch)
                for p in proxies:
                    await p.stop()
                for dp in dps:
                    await dp.aclose()
        finally:
            for p in proxies:
                await p.stop()  # again after a failure: stop() is idempotent
            for dp in dps:
                await dp.aclose()
            server.stop(None)
        assert got["unary"] == (
            b"hello you c1",
            grpc.StatusCode.OK,
            {"x-trailer": "t1", "x-peer-header": "-"},  # the proxies' own header stops inbound
        )
        assert got["missing"] == (grpc.StatusCode.NOT_FOUND, "no such greeting",
                                  {"x-why": "not-here"})  # fmt: skip
        assert got["stream"] == (STREAMED, b"0.", b"49", {CHUNK}, grpc.StatusCode.OK,
                                 {"x-count": str(STREAMED)})  # fmt: skip
        # Envoy's RBAC filter answers a gRPC request with a trailers-only 7 (PERMISSION_DENIED).
        assert refused == (grpc.StatusCode.PERMISSION_DENIED, "RBAC: access denied")

    asyncio.run(asyncio.wait_for(main(), 90))
