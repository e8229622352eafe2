"""The SDS server over real gRPC (a Unix socket), fed by a real CertificateClient and CA:
initial fetch, push on rotation, ACK/NACK, unknown names, delta, FetchSecrets."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from meshcore.ca import CertificateAuthority
from meshcore.ca.sds import SERVICE, SdsServer, start_sds_server, uds_path
from meshcore.ca.service import BootstrapTokens, start_ca_server
from meshcore.dataplane import CertificateClient
from meshcore.xds import types

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
NODE = "sidecar~127.0.0.1~reviews-v1.default~default.svc.cluster.local"


class Stream:
    """One SDS stream driven by hand: send requests, read responses with a timeout."""

    def __init__(self, channel: grpc.aio.Channel, delta: bool = False) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        method = "DeltaSecrets" if delta else "StreamSecrets"
        req = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        resp = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
        rpc = channel.stream_stream(
            f"/{SERVICE}/{method}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )
        self.call = rpc(self._requests())
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        # Reading in one task: cancelling a pending read would cancel the whole call.
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            await self.responses.put(response)

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    async def send(self, request: Any) -> None:
        await self.queue.put(request)

    async def recv(self, timeout: float = 5.0) -> Any:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def nothing(self, wait: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self.responses.get(), wait)

    def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()


def sotw(names: list[str], nonce: str = "", version: str = "", error: str | None = None) -> Any:
    req = discovery_pb2.DiscoveryRequest(
        type_url=types.SECRET, resource_names=names, response_nonce=nonce, version_info=version
    )
    req.node.id = NODE
    if error is not None:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def secrets(response: Any) -> dict[str, secret_pb2.Secret]:
    out = {}
    for any_ in response.resources:
        s = secret_pb2.Secret()
        (any_.resource if hasattr(any_, "resource") else any_).Unpack(s)
        out[s.name] = s
    return out


def serial(secret: secret_pb2.Secret) -> int:
    pem = secret.tls_certificate.certificate_chain.inline_string.encode()
    return int(x509.load_pem_x509_certificate(pem).serial_number)


Body = Callable[[CertificateClient, SdsServer, grpc.aio.Channel], Awaitable[None]]


def run(body: Body, tmp_path: Path, *, tcp: bool = False) -> None:
    async def main() -> None:
        ca = CertificateAuthority.generate()
        tokens = BootstrapTokens()
        ca_server = await start_ca_server(ca, tokens)
        if tcp:
            server, sds, address = await start_sds_server(port=0)
            assert address.startswith("127.0.0.1:")
        else:
            server, sds, address = await start_sds_server(uds=uds_path(tmp_path))
            assert address == f"unix:{uds_path(tmp_path)}"
            assert oct(uds_path(tmp_path).stat().st_mode & 0o777) == "0o600"
        client = CertificateClient(
            f"127.0.0.1:{ca_server.port}",
            REVIEWS,
            mtls_address=f"127.0.0.1:{ca_server.mtls_port}",
            trust_bundle_pem=ca.trust_bundle_pem(),
            bootstrap_token=tokens.issue(REVIEWS),
            ttl=datetime.timedelta(minutes=5),
        )
        client.subscribe(sds.update)
        await client.fetch()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                await asyncio.wait_for(body(client, sds, channel), 30)
        finally:
            await server.stop(None)
            await ca_server.stop()

    asyncio.run(main())


def test_initial_fetch_ack_and_push_on_rotation(tmp_path: Path) -> None:
    async def body(client: CertificateClient, sds: SdsServer, channel: grpc.aio.Channel) -> None:
        stream = Stream(channel)
        await stream.send(sotw(["default", "ROOTCA"]))
        first = await stream.recv()
        got = secrets(first)
        assert set(got) == {"default", "ROOTCA"}
        current = client.current
        assert current is not None
        assert serial(got["default"]) == current.serial
        assert got["default"].tls_certificate.private_key.inline_bytes == current.private_key_pem
        assert got["ROOTCA"].validation_context.trusted_ca.inline_string == current.roots_pem
        assert first.nonce
        assert first.version_info
        # ACK: nothing more until the certificate changes.
        await stream.send(sotw(["default", "ROOTCA"], first.nonce, first.version_info))
        await stream.nothing()
        renewed = await client.fetch()
        second = await stream.recv()
        assert serial(secrets(second)["default"]) == renewed.serial != current.serial
        assert second.version_info != first.version_info
        assert second.nonce != first.nonce
        # NACK: not offered again unchanged; the next certificate is.
        await stream.send(sotw(["default", "ROOTCA"], second.nonce, first.version_info, "bad"))
        await stream.nothing()
        status = sds.sync_status()[NODE]
        assert status["SDS"] == "NACKED"
        third_cert = await client.fetch()
        third = await stream.recv()
        assert serial(secrets(third)["default"]) == third_cert.serial
        # A stale nonce (not the latest) is not an ACK and gets no answer.
        await stream.send(sotw(["default", "ROOTCA"], first.nonce, first.version_info))
        await stream.nothing()
        await stream.send(sotw(["default", "ROOTCA"], third.nonce, third.version_info))
        await stream.nothing()
        assert sds.sync_status()[NODE]["SDS"] == "SYNCED"
        stream.close()

    run(body, tmp_path)


def test_one_stream_per_secret_as_envoy_opens_them(tmp_path: Path) -> None:
    async def body(client: CertificateClient, sds: SdsServer, channel: grpc.aio.Channel) -> None:
        cert, root = Stream(channel), Stream(channel)
        await cert.send(sotw(["default"]))
        await root.send(sotw(["ROOTCA"]))
        assert set(secrets(await cert.recv())) == {"default"}
        r = await root.recv()
        assert set(secrets(r)) == {"ROOTCA"}
        await root.send(sotw(["ROOTCA"], r.nonce, r.version_info))
        # One stream ends; the node's other stream still gets the next certificate.
        cert.close()
        await asyncio.sleep(0.2)
        assert NODE in sds.proxies
        await client.fetch()
        assert set(secrets(await root.recv())) == {"ROOTCA"}
        root.close()

    run(body, tmp_path)


def test_unknown_names_are_answered_not_left_hanging(tmp_path: Path) -> None:
    async def body(client: CertificateClient, sds: SdsServer, channel: grpc.aio.Channel) -> None:
        # State of the world: a prompt answer carrying only what exists.
        stream = Stream(channel)
        await stream.send(sotw(["file-cert:/etc/nothing"]))
        empty = await stream.recv(timeout=2)
        assert list(empty.resources) == []
        assert empty.nonce
        stream.close()
        # Delta: the unknown name comes back in removed_resources.
        delta = Stream(channel, delta=True)
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=types.SECRET, resource_names_subscribe=["default", "kubernetes://nope"]
        )
        req.node.id = NODE
        await delta.send(req)
        first = await delta.recv(timeout=2)
        assert set(secrets(first)) == {"default"}
        assert list(first.removed_resources) == ["kubernetes://nope"]
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=types.SECRET, response_nonce=first.nonce)
        await delta.send(ack)
        await delta.nothing()
        # Rotation reaches delta streams as an update of the subscribed name.
        renewed = await client.fetch()
        pushed = await delta.recv()
        assert serial(secrets(pushed)["default"]) == renewed.serial
        assert list(pushed.removed_resources) == []
        delta.close()

    run(body, tmp_path)


@pytest.mark.parametrize("tcp", [False, True], ids=["uds", "tcp"])
def test_fetch_secrets(tmp_path: Path, tcp: bool) -> None:
    async def body(client: CertificateClient, sds: SdsServer, channel: grpc.aio.Channel) -> None:
        fetch = channel.unary_unary(
            f"/{SERVICE}/FetchSecrets",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        got = secrets(await fetch(sotw(["ROOTCA"]), timeout=5))
        assert set(got) == {"ROOTCA"}
        assert client.current is not None
        assert serial(secrets(await fetch(sotw(["default"]), timeout=5))["default"]) == (
            client.current.serial
        )
        wrong = discovery_pb2.DiscoveryRequest(type_url=types.CLUSTER)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await fetch(wrong, timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(body, tmp_path, tcp=tcp)


def test_the_key_is_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def body(client: CertificateClient, sds: SdsServer, channel: grpc.aio.Channel) -> None:
        stream = Stream(channel)
        await stream.send(sotw(["default"]))
        first = await stream.recv()
        await stream.send(sotw(["default"], first.nonce, first.version_info))
        await client.fetch()
        await stream.recv()
        stream.close()

    run(body, tmp_path)
    text = caplog.text
    assert "SDS: serving certificate" in text
    assert "PRIVATE KEY" not in text


def test_exactly_one_address() -> None:
    with pytest.raises(ValueError, match="exactly one of uds= or port="):
        asyncio.run(start_sds_server())


def test_uds_path_stays_short(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    path = uds_path(deep)
    assert len(str(path)) <= 100
    assert uds_path(deep) == path  # the same workdir always gets the same socket
    assert uds_path("/tmp/a") == Path("/tmp/a/sds.sock")
