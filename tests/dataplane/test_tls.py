"""client_ssl_context / server_ssl_context: real TLS handshakes with SVIDs from the real CA;
SPIFFE ids verified per the cluster's SANs and the trust domain; certificate rotation."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from meshcore.ca import CertificateAuthority
from meshcore.dataplane import CertificateClient, DataPlane, WorkloadSecret
from meshcore.dataplane.ads import AdsClient
from meshcore.dataplane.plane import DataPlaneError
from meshcore.dataplane.tls import client_context, uri_sans
from tests.dataplane.conftest import FRONTEND, RATINGS_1, Mesh, running_mesh, spiffe

RATINGS = "outbound|9080||ratings.default.svc.cluster.local"


async def serve(ctx: ssl.SSLContext) -> tuple[asyncio.Server, int, list[list[str]]]:
    peers: list[list[str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(uri_sans(writer.get_extra_info("peercert")))
        writer.write(b"hi")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1], peers


async def call(port: int, ctx: ssl.SSLContext) -> tuple[bytes, list[str]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        data = await asyncio.wait_for(reader.read(), 5)
        return data, uri_sans(writer.get_extra_info("peercert"))
    finally:
        writer.close()


async def body(mesh: Mesh) -> None:
    web = await mesh.dataplane(FRONTEND, "frontend")
    ratings = await mesh.dataplane(RATINGS_1, "ratings")
    try:
        server, port, peers = await serve(ratings.server_ssl_context())
        # The ratings cluster expects the ratings SPIFFE id (from the cluster's SANs).
        assert web.config.clusters[RATINGS].tls is not None
        assert web.config.clusters[RATINGS].tls.sans == (spiffe("ratings"),)  # type: ignore[union-attr]
        data, server_ids = await call(port, web.client_ssl_context(RATINGS))
        assert data == b"hi"
        assert server_ids == [spiffe("ratings")]
        assert peers[-1] == [spiffe("frontend")]  # the server saw the client's SVID
        # A cluster expecting another identity refuses the server during the handshake.
        reviews = "outbound|9080|v1|reviews.default.svc.cluster.local"
        with pytest.raises(ssl.SSLCertVerificationError, match="not one of"):
            await call(port, web.client_ssl_context(reviews))
        # A client from another trust domain's CA is refused by the server.
        other = CertificateAuthority.generate(trust_domain="evil.local")
        stranger = await svid_from(other, "spiffe://evil.local/ns/default/sa/x")
        ctx = client_context(stranger, trust_domain="cluster.local")
        ctx.load_verify_locations(cadata=mesh.ca.trust_bundle_pem())  # it trusts the server
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await refused(port, ctx)
        # Rotation: a new certificate is presented from the next handshake on.
        assert ratings.certs is not None
        before = ratings.secret.serial
        await ratings.certs.fetch()
        assert ratings.secret.serial != before
        reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                       ssl=web.client_ssl_context(RATINGS))  # fmt: skip
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await reader.read()
        from cryptography import x509

        assert x509.load_der_x509_certificate(der).serial_number == ratings.secret.serial
        server.close()
        await server.wait_closed()
    finally:
        await web.aclose()
        await ratings.aclose()


async def refused(port: int, ctx: ssl.SSLContext) -> None:
    data, _ = await call(port, ctx)
    if not data:  # TLS 1.3: the server's refusal can arrive as a close after the handshake
        raise ConnectionError("refused")


async def svid_from(ca: CertificateAuthority, identity: str) -> WorkloadSecret:
    """An SVID signed by ``ca`` (through a CertificateClient against a CA server of its own)."""
    from meshcore.ca.service import BootstrapTokens, start_ca_server

    tokens = BootstrapTokens()
    srv = await start_ca_server(ca, tokens)
    try:
        client = CertificateClient(f"127.0.0.1:{srv.port}", identity,
                                   trust_bundle_pem=ca.trust_bundle_pem(),
                                   bootstrap_token=tokens.issue(identity))  # fmt: skip
        return await client.fetch()
    finally:
        await srv.stop()


def test_spiffe_verified_mtls_and_rotation(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            await asyncio.wait_for(body(mesh), 60)

    asyncio.run(main())


def test_no_certificate_no_context() -> None:
    dp = DataPlane(AdsClient("127.0.0.1:1", FRONTEND))
    with pytest.raises(DataPlaneError, match="ca_address"):
        dp.client_ssl_context(RATINGS)
    with pytest.raises(DataPlaneError, match="ca_address"):
        dp.server_ssl_context()


def test_connect_names_what_did_not_come() -> None:
    from tests.dataplane.test_proxy_e2e import free_port

    nowhere = f"127.0.0.1:{free_port()}"
    with pytest.raises(DataPlaneError) as err:
        DataPlane.connect(nowhere, node_id=FRONTEND, timeout=0.5)
    assert str(err.value) == f"no complete config from the ADS server at {nowhere} within 0.5s"
    with pytest.raises(DataPlaneError, match="needs trust_bundle"):
        DataPlane.connect(nowhere, node_id=FRONTEND, ca_address=nowhere)
    with pytest.raises(DataPlaneError, match="4 parts"):
        DataPlane.connect(nowhere, node_id="not-a-node-id")
