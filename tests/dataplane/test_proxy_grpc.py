"""gRPC through two reference proxies (issue 17): a real grpcio client sends to its proxy's
outbound listener (HTTP/2, prior knowledge), the proxy routes and goes over mTLS (HTTP/2) to the
callee's proxy, whose inbound RBAC guards a real grpcio server. Unary and server-streaming
calls, request and response metadata, trailers and status codes arrive as sent; a caller RBAC
denies gets PERMISSION_DENIED with Envoy's message (Envoy's local reply to a gRPC request)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from meshcore.dataplane.http1 import Limits
from meshcore.dataplane.http2 import MAX_CONCURRENT_STREAMS
from meshcore.dataplane.proxy import ReferenceProxy
from meshcore.observability.istio import LABELS
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
    protocols: set[tuple[str, str]] = set()

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
                _, client, intruder = proxies
                assert client.outbound_port is not None
                assert intruder.outbound_port is not None
                with channel("127.0.74.1", client.outbound_port, authority) as ch:
                    got = await asyncio.to_thread(calls, ch)
                with channel("127.0.74.3", intruder.outbound_port, authority) as ch:
                    refused = await asyncio.to_thread(denied, ch)
                at = {name: LABELS.index(name) for name in ("request_protocol", "response_code")}
                protocols.update((key[at["request_protocol"]], key[at["response_code"]])
                                 for key in client.metrics.requests)  # fmt: skip
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
        # Istio's request_protocol label: grpc (HTTP 200 for every call, errors included).
        assert protocols == {("grpc", "200")}, protocols

    asyncio.run(asyncio.wait_for(main(), 90))


# --- HTTP/2 hardening ------------------------------------------------------------------------


class H2Client:
    """A raw HTTP/2 client on a blocking socket (h2), to send what grpcio never would."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.flush()
        self.grpc_status: tuple[str | None, str | None] = (None, None)

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def request(self, headers: list[tuple[str, str]], *, end: bool = True) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end)
        self.flush()
        return sid

    def grpc_hello(self, authority: str) -> int:
        """A gRPC unary call to Hello (one length-prefixed message)."""
        sid = self.request(head(authority, f"/{SERVICE}/Hello", "POST") + [
            ("content-type", "application/grpc"), ("te", "trailers")], end=False)  # fmt: skip
        self.conn.send_data(sid, b"\x00\x00\x00\x00\x03you", end_stream=True)
        self.flush()
        return sid

    def events(self, until: float = 5.0) -> list[Any]:
        """Events until the socket is quiet for 0.3 s, closes, or ``until`` seconds pass."""
        out: list[Any] = []
        deadline = time.monotonic() + until
        self.sock.settimeout(0.3)
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if out:
                    break
                continue
            except OSError:
                data = b""
            if not data:
                out.append("closed")
                break
            out += self.conn.receive_data(data)
            with contextlib.suppress(OSError):
                self.flush()
        return out

    def status(self, sid: int, events: list[Any], until: float = 5.0) -> int | None:
        """The stream's response status (more events read until it comes, or ``until``)."""
        deadline = time.monotonic() + until
        while True:
            for e in events:
                if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                    fields = dict(e.headers)
                    self.grpc_status = fields.get("grpc-status"), fields.get("grpc-message")
                    return int(fields[":status"])
            if "closed" in events or time.monotonic() > deadline:
                return None
            events = self.events(until=deadline - time.monotonic())

    def close(self) -> None:
        self.sock.close()


def head(authority: str, path: str = "/", method: str = "GET") -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)]


def limits_checks(address: tuple[str, int], authority: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    c = H2Client(address)
    ok = c.grpc_hello(authority)
    out["plain"] = c.status(ok, c.events())
    # Each limit on a connection of its own: what one answer does to a connection (a GOAWAY
    # after it, say) is not what this checks.
    c.close()
    c = H2Client(address)
    big = c.request(head(authority) + [("x-big", "a" * 61 * 1024)])
    out["61 KiB of headers"] = c.status(big, c.events())
    c.close()
    c = H2Client(address)
    many = c.request(head(authority) + [(f"x-h{i}", "v") for i in range(150)])
    out["150 headers"] = c.status(many, c.events())
    c.close()
    c = H2Client(address)
    # A body that stalls: Envoy's 408 after stream_idle_timeout of silence, as a gRPC request's
    # local replies are: HTTP 200, grpc-status UNKNOWN (2, Envoy's mapping of 408).
    started = time.monotonic()
    slow = c.request(head(authority, f"/{SERVICE}/Hello", "POST") + [
        ("content-type", "application/grpc"), ("te", "trailers")], end=False)  # fmt: skip
    c.conn.send_data(slow, b"\x00\x00\x00\x00\x05ab")  # a message begun, never finished
    c.flush()
    events = c.events(until=4)
    out["stalled body"] = (c.status(slow, events), c.grpc_status, time.monotonic() - started)
    c.close()
    # More open streams than SETTINGS allow: the connection is ended (GOAWAY), the proxy lives.
    c = H2Client(address)  # sent before the server's SETTINGS are read: h2 lets us exceed them
    for _ in range(MAX_CONCURRENT_STREAMS + 20):
        with contextlib.suppress(h2.exceptions.TooManyStreamsError):
            c.conn.send_headers(c.conn.get_next_available_stream_id(), head(authority, "/x",
                                "POST"), end_stream=False)  # fmt: skip
    c.flush()
    events = c.events()
    out["too many streams"] = any(
        isinstance(e, (h2.events.ConnectionTerminated, h2.events.StreamReset)) or e == "closed"
        for e in events
    )
    c.close()
    # A client that reads no response data (never gives window back): after the first window's
    # worth, the stream is reset once stream_idle_timeout passes without progress.
    c = H2Client(address)
    started = time.monotonic()
    sid = c.request(head(authority, f"/{SERVICE}/Count", "POST") + [
        ("content-type", "application/grpc"), ("te", "trailers")], end=False)  # fmt: skip
    c.conn.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    c.flush()
    events = []
    while time.monotonic() - started < 4 and not any(
        isinstance(e, h2.events.StreamReset) for e in events
    ):
        events += c.events(until=4)  # read, never acknowledged: no WINDOW_UPDATE goes out
    got = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))
    reset = any(isinstance(e, h2.events.StreamReset) and e.stream_id == sid for e in events)
    out["slow reader"] = (reset, got, time.monotonic() - started)
    c.close()
    # An idle connection: closed after idle_timeout.
    c = H2Client(address)
    started = time.monotonic()
    events = c.events(until=4)
    while "closed" not in events and time.monotonic() - started < 4:
        events += c.events(until=4)
    out["idle"] = ("closed" in events, time.monotonic() - started)
    c.close()
    c = H2Client(address)
    again = c.grpc_hello(authority)
    out["after"] = c.status(again, c.events())
    c.close()
    return out


def test_http2_limits(tmp_path: Path) -> None:
    """The HTTP/1 hardening holds on HTTP/2: header size and count (431), a stalled request
    body (408 after ``stream_idle_timeout``), the concurrent-stream limit (the connection is
    ended), an idle connection (closed after ``idle_timeout``); the proxy keeps serving."""
    port = free_port(APP_IP)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    authority = f"greeter:{port}"

    async def main() -> dict[str, Any]:
        server = greeter(port)
        proxies: list[ReferenceProxy] = []
        dps = []
        try:
            async with running_mesh(tmp_path, config) as mesh:
                callee_dp = await mesh.dataplane(node_id("greeter-1", "127.0.75.1"), "greeter",
                                                 metadata={"MESHCORE_APP_ADDRESS": APP_IP})  # fmt: skip
                client_dp = await mesh.dataplane(node_id("client-1", "127.0.74.1"), "client")
                dps += [callee_dp, client_dp]
                # idle_timeout also closes each new connection that has not yet sent its
                # request: 1.5 s leaves a loaded machine time to send 61 KiB of headers.
                short = Limits(header_timeout=0.6, idle_timeout=1.5, stream_idle_timeout=0.6)
                client = ReferenceProxy(client_dp, outbound=("127.0.74.1", 0), inbound=False,
                                        limits=short)  # fmt: skip
                proxies += [ReferenceProxy(callee_dp, outbound=None, inbound=True), client]
                for p in proxies:
                    await p.start()
                assert client.outbound_port is not None
                address = ("127.0.74.1", client.outbound_port)
                return await asyncio.to_thread(limits_checks, address, authority)
        finally:
            for p in proxies:
                await p.stop()
            for dp in dps:
                await dp.aclose()
            server.stop(None)

    out = asyncio.run(asyncio.wait_for(main(), 90))
    assert out["plain"] == 200, out  # a gRPC server answers HTTP 200 (grpc-status in trailers)
    assert out["61 KiB of headers"] == 431, out
    assert out["150 headers"] == 431, out
    status, grpc_status, took = out["stalled body"]
    assert (status, grpc_status) == (200, ("2", "stream timeout")), out
    assert 0.5 < took < 3, out
    assert out["too many streams"], out
    reset, got, took = out["slow reader"]
    assert reset, out
    assert got <= 65535, out  # never more than the client's window
    assert took < 3, out
    closed, took = out["idle"]
    assert closed, out
    assert 0.5 < took < 3, out
    assert out["after"] == 200, out
