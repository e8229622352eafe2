"""Long HTTP/1.1 bodies stream through two reference proxies (issue 17): a 40 MiB upload and
40 MiB downloads (Content-Length and chunked) go caller -> outbound proxy -> mTLS -> inbound
proxy (RBAC) -> a real app, byte for byte, while the process never holds more than a few MiB
of them (tracemalloc's peak: the proxies, the client and the app share this process, so
buffering one body whole would show as 40 MiB). The old proxy buffered bodies and refused any
over 16 MiB (413)."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from pathlib import Path

from meshcore.dataplane.http1 import Limits
from meshcore.dataplane.proxy import ReferenceProxy
from tests.dataplane.conftest import running_mesh
from tests.dataplane.test_proxy_e2e import free_port, node_id

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: files, namespace: default}}
spec:
  selector: {{app: files}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client-1, namespace: default}}
spec: {{address: 127.0.76.1, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: files-1, namespace: default}}
spec: {{address: 127.0.77.1, labels: {{app: files}}, serviceAccount: files}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-client, namespace: default}}
spec:
  selector: {{matchLabels: {{app: files}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{principals: ["cluster.local/ns/default/sa/client"]}}}}]}}]
"""

APP_IP = "127.0.77.11"
SIZE = 40 * 1024 * 1024
CHUNK = 64 * 1024
BOUND = 8 * 1024 * 1024  # the most the whole process may hold at once (tracemalloc's peak)


def block(i: int) -> bytes:
    return i.to_bytes(4, "big") * (CHUNK // 4)


def expected_digest() -> str:
    h = hashlib.sha256()
    for i in range(SIZE // CHUNK):
        h.update(block(i))
    return h.hexdigest()


async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """POST /upload: the body's sha256; GET /download and /chunked: SIZE bytes (Content-Length,
    chunked), written as the client reads them."""
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            target = head.split(" ", 2)[1]
            length = 0
            for line in head.split("\r\n"):
                if line.startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            h = hashlib.sha256()
            while length:
                data = await reader.read(min(length, CHUNK))
                if not data:
                    return
                h.update(data)
                length -= len(data)
            if target == "/upload":
                body = h.hexdigest().encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            elif target == "/stall":  # 1 MiB of a long body, then nothing
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % SIZE)
                writer.write(block(0) * 16)
                await writer.drain()
                await asyncio.sleep(60)
            elif target == "/download":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % SIZE)
                for i in range(SIZE // CHUNK):
                    writer.write(block(i))
                    await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for i in range(SIZE // CHUNK):
                    writer.write(b"%x\r\n%s\r\n" % (CHUNK, block(i)))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def download(port: int, authority: str, target: str) -> tuple[int, str, str]:
    """A GET on a fresh connection: the status, the framing ("content-length", or the
    Transfer-Encoding), and the body's sha256 (read as it comes)."""
    reader, writer = await asyncio.open_connection("127.0.76.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nhost: {authority}\r\n\r\n".encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head.split(" ", 2)[1])
        fields = dict(line.split(": ", 1) for line in head.strip().split("\r\n")[1:])
        h = hashlib.sha256()
        if "content-length" in fields:
            framing = "content-length"
            left = int(fields["content-length"])
            while left:
                data = await reader.read(min(left, CHUNK))
                assert data, "the response ended early"
                h.update(data)
                left -= len(data)
        else:
            framing = fields.get("transfer-encoding", "?")
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                if not size:
                    break
                h.update(data[:-2])
        return status, framing, h.hexdigest()
    finally:
        writer.close()


def test_long_bodies_stream_through_two_proxies(tmp_path: Path) -> None:
    port = free_port(APP_IP)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    authority = f"files:{port}"
    digest = expected_digest()

    async def main() -> tuple[list[tuple[int, str, str]], int, str]:
        server = await asyncio.start_server(app, APP_IP, port)
        proxies: list[ReferenceProxy] = []
        dps = []
        try:
            async with running_mesh(tmp_path, config) as mesh:
                callee_dp = await mesh.dataplane(node_id("files-1", "127.0.77.1"), "files",
                                                 metadata={"MESHCORE_APP_ADDRESS": APP_IP})  # fmt: skip
                client_dp = await mesh.dataplane(node_id("client-1", "127.0.76.1"), "client")
                dps += [callee_dp, client_dp]
                proxies += [
                    ReferenceProxy(callee_dp, outbound=None, inbound=True),
                    ReferenceProxy(client_dp, outbound=("127.0.76.1", 0), inbound=False),
                ]
                for p in proxies:
                    await p.start()
                out_port = proxies[1].outbound_port
                assert out_port is not None
                tracemalloc.start()
                try:
                    got = [
                        await download(out_port, authority, "/download"),
                        await download(out_port, authority, "/chunked"),
                    ]
                    upload = await upload_digest(out_port, authority)
                    _, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                return got, peak, upload
        finally:
            for p in proxies:
                await p.stop()
            for dp in dps:
                await dp.aclose()
            server.close()

    got, peak, upload = asyncio.run(asyncio.wait_for(main(), 120))
    assert got == [(200, "content-length", digest), (200, "chunked", digest)]
    assert upload == digest
    assert peak < BOUND, f"{peak / 2**20:.1f} MiB held at once: a body was buffered"


async def upload_digest(port: int, authority: str) -> str:
    """POSTs SIZE bytes; the app answers with the sha256 it computed of what arrived."""
    reader, writer = await asyncio.open_connection("127.0.76.1", port)
    try:
        writer.write(f"POST /upload HTTP/1.1\r\nhost: {authority}\r\n"
                     f"content-length: {SIZE}\r\n\r\n".encode())  # fmt: skip
        for i in range(SIZE // CHUNK):
            writer.write(block(i))
            await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        assert head.startswith("http/1.1 200"), head
        length = int(head.split("content-length: ", 1)[1].split("\r\n", 1)[0])
        return (await reader.readexactly(length)).decode()
    finally:
        writer.close()


async def stalled(port: int, authority: str) -> tuple[int, float]:
    """GET /stall: the bytes that arrive before the proxy closes the connection, and when."""
    reader, writer = await asyncio.open_connection("127.0.76.1", port)
    started = asyncio.get_running_loop().time()
    try:
        writer.write(f"GET /stall HTTP/1.1\r\nhost: {authority}\r\n\r\n".encode())
        got = 0
        while data := await reader.read(CHUNK):
            got += len(data)
        return got, asyncio.get_running_loop().time() - started
    finally:
        writer.close()


def test_a_stalled_streamed_body_ends_after_stream_idle_timeout(tmp_path: Path) -> None:
    """An upstream that stops mid-body: the proxies close the streams after
    ``stream_idle_timeout`` (Envoy's), with what had arrived; they go on serving."""
    port = free_port(APP_IP)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    authority = f"files:{port}"
    short = Limits(stream_idle_timeout=0.5)

    async def main() -> tuple[tuple[int, float], str]:
        server = await asyncio.start_server(app, APP_IP, port)
        proxies: list[ReferenceProxy] = []
        dps = []
        try:
            async with running_mesh(tmp_path, config) as mesh:
                callee_dp = await mesh.dataplane(node_id("files-1", "127.0.77.1"), "files",
                                                 metadata={"MESHCORE_APP_ADDRESS": APP_IP})  # fmt: skip
                client_dp = await mesh.dataplane(node_id("client-1", "127.0.76.1"), "client")
                dps += [callee_dp, client_dp]
                proxies += [
                    ReferenceProxy(callee_dp, outbound=None, inbound=True, limits=short),
                    ReferenceProxy(client_dp, outbound=("127.0.76.1", 0), inbound=False,
                                   limits=short),
                ]  # fmt: skip
                for p in proxies:
                    await p.start()
                out_port = proxies[1].outbound_port
                assert out_port is not None
                cut = await asyncio.wait_for(stalled(out_port, authority), 20)
                return cut, await upload_digest(out_port, authority)
        finally:
            for p in proxies:
                await p.stop()
            for dp in dps:
                await dp.aclose()
            server.close()

    (got, took), upload = asyncio.run(asyncio.wait_for(main(), 60))
    assert CHUNK * 16 <= got < SIZE, got  # the head and the 1 MiB, then the end
    assert 0.4 < took < 10, took
    assert upload == expected_digest()
