"""The CA over real gRPC and TLS: bootstrap tokens, mTLS renewals, refusals, rotation."""

from __future__ import annotations

import asyncio
import datetime
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshcore.ca import CertificateAuthority
from meshcore.ca._proto.ca_pb2 import IstioCertificateRequest, IstioCertificateResponse
from meshcore.ca.service import METHOD, BootstrapTokens, CAServer, start_ca_server
from meshcore.dataplane import CertificateClient, WorkloadSecret
from meshcore.dataplane.certs import CertificateError

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
RATINGS = "spiffe://cluster.local/ns/default/sa/ratings"


def tls(srv: CAServer) -> str:
    return f"127.0.0.1:{srv.port}"


def mtls(srv: CAServer) -> str:
    return f"127.0.0.1:{srv.mtls_port}"


def run(test: Callable[[CertificateAuthority, BootstrapTokens, CAServer], Awaitable[None]]) -> None:
    async def main() -> None:
        ca = CertificateAuthority.generate()
        tokens = BootstrapTokens()
        server = await start_ca_server(ca, tokens)
        try:
            await asyncio.wait_for(test(ca, tokens, server), timeout=60)
        finally:
            await server.stop()

    asyncio.run(main())


async def raw_call(
    address: str,
    ca: CertificateAuthority,
    identity: str,
    metadata: list[tuple[str, str]],
    client: WorkloadSecret | None = None,
) -> IstioCertificateResponse:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    creds = grpc.ssl_channel_credentials(
        ca.trust_bundle_pem().encode(),
        private_key=client.private_key_pem if client else None,
        certificate_chain=client.cert_chain_pem.encode() if client else None,
    )
    async with grpc.aio.secure_channel(address, creds) as channel:
        call = channel.unary_unary(
            METHOD,
            request_serializer=IstioCertificateRequest.SerializeToString,
            response_deserializer=IstioCertificateResponse.FromString,
        )
        request = IstioCertificateRequest(csr=csr.public_bytes(serialization.Encoding.PEM).decode())
        response: IstioCertificateResponse = await call(request, metadata=metadata, timeout=10)
        return response


def test_first_certificate_with_a_bootstrap_token() -> None:
    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        token = tokens.issue(REVIEWS)
        response = await raw_call(tls(srv), ca, REVIEWS, [("authorization", f"Bearer {token}")])
        chain = list(response.cert_chain)
        assert len(chain) == 2  # leaf, then the root it chains to
        assert chain[-1] == ca.trust_bundle()[0]
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [REVIEWS]

    run(body)


def expect_code(code: grpc.StatusCode, fragment: str) -> Callable[[Any], Any]:
    def check(exc_info: Any) -> None:
        err = exc_info.value
        assert err.code() == code, err
        assert fragment in (err.details() or "")

    return check


def test_refusals() -> None:
    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        token = tokens.issue(REVIEWS)
        cases = [
            ([], grpc.StatusCode.UNAUTHENTICATED, "bootstrap token", REVIEWS),
            (
                [("authorization", "Bearer nope-nope-nope-nope")],
                grpc.StatusCode.UNAUTHENTICATED,
                "bootstrap token",
                REVIEWS,
            ),
            (
                [("authorization", f"Bearer {token}")],
                grpc.StatusCode.PERMISSION_DENIED,
                "may only obtain its own identity",
                RATINGS,
            ),
        ]
        for metadata, code, fragment, identity in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw_call(tls(srv), ca, identity, metadata)
            expect_code(code, fragment)(info)
        expired = tokens.issue(REVIEWS, ttl=datetime.timedelta(seconds=-1))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_call(tls(srv), ca, REVIEWS, [("authorization", f"Bearer {expired}")])
        expect_code(grpc.StatusCode.UNAUTHENTICATED, "")(info)

    run(body)


def test_renewal_over_mtls_and_a_foreign_client_cert() -> None:
    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        token = tokens.issue(REVIEWS)
        client = CertificateClient(
            tls(srv),
            REVIEWS,
            mtls_address=mtls(srv),
            trust_bundle_pem=ca.trust_bundle_pem(),
            bootstrap_token=token,
        )
        first = await client.fetch()
        tokens.revoke(token)  # from now on only the certificate can authenticate
        second = await client.fetch()
        assert second.serial != first.serial
        assert second.private_key_pem != first.private_key_pem  # a new key each time
        assert client.renewals == 1
        # The current certificate proves REVIEWS, so asking for RATINGS is refused.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_call(mtls(srv), ca, RATINGS, [], client=second)
        expect_code(grpc.StatusCode.PERMISSION_DENIED, "may only obtain its own identity")(info)
        # A certificate from another CA is not accepted as proof (the handshake fails).
        stranger_ca = CertificateAuthority.generate()
        stranger_tokens = BootstrapTokens()
        other = await start_ca_server(stranger_ca, stranger_tokens)
        try:
            stranger = CertificateClient(
                tls(other),
                REVIEWS,
                trust_bundle_pem=stranger_ca.trust_bundle_pem(),
                bootstrap_token=stranger_tokens.issue(REVIEWS),
            )
            foreign = await stranger.fetch()
        finally:
            await other.stop()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw_call(mtls(srv), ca, REVIEWS, [], client=foreign)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)

    run(body)


def test_rotation_at_half_lifetime() -> None:
    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        client = CertificateClient(
            tls(srv),
            REVIEWS,
            mtls_address=mtls(srv),
            trust_bundle_pem=ca.trust_bundle_pem(),
            bootstrap_token=tokens.issue(REVIEWS),
            ttl=datetime.timedelta(seconds=2),
        )
        seen: list[WorkloadSecret] = []
        client.subscribe(seen.append)
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        await asyncio.sleep(3.2)
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        # 2 s certificates renewed at half their lifetime: about one per second, each before
        # the previous one expired, each with a new key.
        assert len(seen) >= 3, [x.received_at for x in seen]
        for a, b in itertools.pairwise(seen):
            assert b.serial != a.serial
            assert b.private_key_pem != a.private_key_pem
            assert b.received_at < a.not_after
        assert client.renewals == len(seen) - 1

    run(body)


def test_client_without_credentials() -> None:
    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        client = CertificateClient(tls(srv), REVIEWS, trust_bundle_pem=ca.trust_bundle_pem())
        with pytest.raises(CertificateError, match="no bootstrap token"):
            await client.fetch()

    run(body)


def test_renewal_without_an_mtls_address_uses_the_bootstrap_token() -> None:
    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        client = CertificateClient(
            tls(srv), REVIEWS, trust_bundle_pem=ca.trust_bundle_pem(),
            bootstrap_token=tokens.issue(REVIEWS),
        )  # fmt: skip
        first = await client.fetch()
        second = await client.fetch()
        assert second.serial != first.serial
        assert client.renewals == 1

    run(body)


def test_root_switch_while_running() -> None:
    """A root rotation on a running CA (``CAServer.use``): a renewal authenticated by an
    old-root certificate still works on the mTLS port, the new certificate chains to the new
    root, and the response carries the whole bundle (both roots) for the agent."""

    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        token = tokens.issue(REVIEWS)
        old_cert = await CertificateClient(
            tls(srv), REVIEWS, trust_bundle_pem=ca.trust_bundle_pem(), bootstrap_token=token
        ).fetch()
        new_root = CertificateAuthority.generate().with_roots([ca.cert])
        srv.use(new_root)
        response = await raw_call(mtls(srv), new_root, REVIEWS, [], client=old_cert)
        chain = [x509.load_pem_x509_certificate(p.encode()) for p in response.cert_chain]
        assert chain[0].issuer == new_root.cert.subject
        chain[0].verify_directly_issued_by(new_root.cert)
        assert list(response.cert_chain[1:]) == new_root.trust_bundle()  # new root, then old
        # A client that trusts only the old root no longer accepts the serving certificate.
        with pytest.raises(grpc.aio.AioRpcError):
            await raw_call(tls(srv), ca, REVIEWS, [("authorization", f"Bearer {token}")])

    run(body)


def test_agent_follows_a_root_rotation() -> None:
    """The three steps of a root rotation as the certificate client sees them: it takes the
    CA's bundle once it holds both roots, renews over mTLS with its old-root certificate after
    the new root signs (the serving certificate is the new root's now), and drops the old root
    when the CA does; its secrets carry the bundle (Envoy's validation context)."""

    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        client = CertificateClient(
            tls(srv),
            REVIEWS,
            mtls_address=mtls(srv),
            trust_bundle_pem=ca.trust_bundle_pem(),
            bootstrap_token=tokens.issue(REVIEWS),
        )
        await client.fetch()
        new = CertificateAuthority.generate()
        srv.use(ca.with_roots([new.cert]))  # 1: the new root trusted, the old one signs
        trusting = await client.fetch()
        assert client.trust_bundle_pem == ca.trust_bundle_pem() + new.trust_bundle_pem()
        assert trusting.roots_pem == client.trust_bundle_pem
        srv.use(new.with_roots([ca.cert]))  # 2: the new root signs
        switched = await client.fetch()
        assert client.renewals == 2
        leaf = x509.load_pem_x509_certificate(switched.cert_chain_pem.encode())
        leaf.verify_directly_issued_by(new.cert)
        srv.use(new)  # 3: the old root expired and left
        done = await client.fetch()
        assert done.roots_pem == new.trust_bundle_pem()

    run(body)


def test_serving_certificate_renewed_before_it_expires() -> None:
    """The CA ports' own certificate is renewed while they run: a server whose serving
    certificate lives 4 s still answers after 6 s (it used to keep the first one for good)."""

    async def main() -> None:
        ca = CertificateAuthority.generate()
        tokens = BootstrapTokens()
        # Certificates start a minute in the past (clock skew): 64 s is 4 s from now.
        srv = await start_ca_server(ca, tokens, serving_ttl=datetime.timedelta(seconds=64))
        try:
            client = CertificateClient(
                tls(srv),
                REVIEWS,
                trust_bundle_pem=ca.trust_bundle_pem(),
                bootstrap_token=tokens.issue(REVIEWS),
            )
            await client.fetch()
            for _ in range(12):  # handshakes ask for a fresh certificate as they come
                await asyncio.sleep(0.5)
                await client.fetch()
        finally:
            await srv.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
