"""Shared by the hostile server tests: a real ADS server in the test's loop, raw streams, a
TCP relay that can reset connections, process RSS, and a self-signed TLS pair for the webhook.
(Helpers, not fixtures: tests/hostile has no conftest.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer, start_ads_server
from tests.xds.conftest import Stream


@contextlib.asynccontextmanager
async def ads(
    cache: SnapshotCache | None = None, **kwargs: Any
) -> AsyncIterator[tuple[SnapshotCache, AdsServer, grpc.aio.Channel, int]]:
    """A real ADS server on a free loopback port and a channel to it."""
    cache = SnapshotCache() if cache is None else cache
    server, ads_server, port = await start_ads_server(cache, **kwargs)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield cache, ads_server, channel, port
    finally:
        await server.stop(None)


def request(
    delta: bool, node: str | None = None, type_url: str = "", names: tuple[str, ...] = ()
) -> Any:
    """A first (or later) ADS request of either kind."""
    if delta:
        req: Any = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=list(names)
        )
    else:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names))
    if node is not None:
        req.node.id = node
    return req


async def ended(stream: Stream, timeout: float = 5.0) -> grpc.aio.AioRpcError:
    """The error that ended ``stream`` (responses before it are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await stream.recv(max(0.01, deadline - loop.time()))
        except grpc.aio.AioRpcError as exc:
            return exc


async def eventually(check: Any, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def released(server: AdsServer) -> bool:
    """Nothing of any stream is left in the server's registry or gauge."""
    return not server.connections and not server.proxies and server.metrics.connected == 0


class ResettingRelay:
    """A TCP relay in front of ``upstream`` whose :meth:`reset` ends every relayed connection
    with a TCP RST to the server (SO_LINGER 0), as a crashed or cut-off client would."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> ResettingRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.reset()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Ends quietly however it is ended (a reset, the loop closing): it is only plumbing.
        with contextlib.suppress(OSError, RuntimeError, asyncio.CancelledError):
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            self._writers += [up_writer, writer]

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(OSError, RuntimeError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.transport.abort()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def reset(self) -> None:
        for w in self._writers:
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        self._writers.clear()


def rss_kb(pid: int) -> int:
    """The resident set size of process ``pid`` (Linux /proc), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def tls_pair(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, written to ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshcore-hostile")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory / "tls.crt", directory / "tls.key"


async def csr_call(
    address: str,
    trust_bundle_pem: str,
    identity: str,
    token: str | None = None,
    validity_duration: int = 0,
) -> Any:
    """One CreateCertificate call over TLS with a fresh key's CSR for ``identity``."""
    from meshcore.ca._proto.ca_pb2 import IstioCertificateRequest, IstioCertificateResponse
    from meshcore.ca.service import METHOD

    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(san, critical=True)
        .sign(key, hashes.SHA256())
    )
    creds = grpc.ssl_channel_credentials(trust_bundle_pem.encode())
    async with grpc.aio.secure_channel(address, creds) as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=IstioCertificateRequest.SerializeToString,
            response_deserializer=IstioCertificateResponse.FromString,
        )
        request = IstioCertificateRequest(
            csr=csr.public_bytes(serialization.Encoding.PEM).decode(),
            validity_duration=validity_duration,
        )
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        return await call(request, metadata=metadata, timeout=10)
