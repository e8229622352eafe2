"""The CA over gRPC: Istio's ``istio.v1.auth.IstioCertificateService/CreateCertificate``.

A workload authenticates with a bootstrap token for its first certificate and with its current
certificate (mTLS) to renew; either way it is only ever issued its own identity.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshcore.ca._proto.ca_pb2 import IstioCertificateRequest, IstioCertificateResponse
from meshcore.ca.authority import (
    CLOCK_SKEW,
    CAError,
    CertificateAuthority,
    IdentityMismatchError,
    now,
    signature_hash,
)
from meshcore.ca.spiffe import IdentityError, SpiffeId

log = logging.getLogger("meshcore.ca")

SERVICE = "istio.v1.auth.IstioCertificateService"
METHOD = f"/{SERVICE}/CreateCertificate"


class BootstrapTokens:
    """Short-lived secrets, each naming the one identity it may obtain a first certificate for.

    Only a hash of each token is kept, and lookups by hash do not leak timing on the token.
    """

    def __init__(self, ttl: datetime.timedelta = datetime.timedelta(hours=1)) -> None:
        self.ttl = ttl
        self._tokens: dict[bytes, tuple[SpiffeId, datetime.datetime]] = {}
        self._lock = threading.Lock()

    def issue(self, identity: str, ttl: datetime.timedelta | None = None) -> str:
        spiffe = SpiffeId.parse(identity)
        # 256 bits, hex: safe to pass on a command line (a urlsafe token may start with '-').
        token = secrets.token_hex(32)
        with self._lock:
            self._tokens[_digest(token)] = (spiffe, now() + (ttl or self.ttl))
        return token

    def add(self, token: str, identity: str, ttl: datetime.timedelta | None = None) -> None:
        """Registers a token made elsewhere (e.g. written to a file for an agent)."""
        if len(token) < 16:
            raise CAError("bootstrap tokens must be at least 16 characters")
        with self._lock:
            self._tokens[_digest(token)] = (SpiffeId.parse(identity), now() + (ttl or self.ttl))

    def verify(self, token: str) -> SpiffeId | None:
        with self._lock:
            entry = self._tokens.get(_digest(token))
            if entry is None:
                return None
            identity, expires = entry
            if now() >= expires:
                del self._tokens[_digest(token)]
                return None
            return identity

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(_digest(token), None)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True, slots=True)
class ServingCertificate:
    """A certificate and key for a server of the control plane itself (PEM)."""

    cert_chain_pem: bytes
    key_pem: bytes


def issue_serving_certificate(
    ca: CertificateAuthority,
    dns_names: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1",),
    ttl: datetime.timedelta = datetime.timedelta(days=1),
) -> ServingCertificate:
    """A server certificate from ``ca`` (what istiod uses to serve its gRPC ports)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = now() - CLOCK_SKEW
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "meshcore")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + ttl, ca.cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca.key, signature_hash(ca.key))
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in (ca.cert, *ca.chain)
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ServingCertificate(chain, key_pem)


class CertificateService:
    """The CreateCertificate handler; add it to a grpc.aio server with :meth:`add_to_server`."""

    def __init__(self, ca: CertificateAuthority, tokens: BootstrapTokens) -> None:
        self.ca = ca
        self.tokens = tokens

    def add_to_server(self, server: grpc.aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "CreateCertificate": grpc.unary_unary_rpc_method_handler(
                    self.create_certificate,
                    request_deserializer=IstioCertificateRequest.FromString,
                    response_serializer=IstioCertificateResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))

    async def create_certificate(
        self, request: IstioCertificateRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> IstioCertificateResponse:
        identity = self._authenticate(context)
        if identity is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "authenticate with a bootstrap token (authorization: Bearer TOKEN) "
                "or with your current certificate (mTLS)",
            )
            raise AssertionError("unreachable")  # pragma: no cover
        try:
            chain = self.ca.sign_csr(
                request.csr, identity.uri, ttl=request.validity_duration or None
            )
        except IdentityMismatchError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            raise AssertionError("unreachable") from None  # pragma: no cover
        except CAError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise AssertionError("unreachable") from None  # pragma: no cover
        certs = split_pem(chain)
        roots = [r for r in self.ca.trust_bundle() if r not in certs]
        # Istio's response: the leaf, its issuers, then the root it chains to.
        return IstioCertificateResponse(cert_chain=[*certs, *roots[:1]])

    def _authenticate(self, context: grpc.aio.ServicerContext[object, object]) -> SpiffeId | None:
        peer = _peer_identity(context)
        if peer is not None:
            return peer
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                identity = self.tokens.verify(value[len("Bearer ") :])
                if identity is None:
                    log.warning(
                        "CSR with an unknown or expired bootstrap token from %s", context.peer()
                    )
                return identity
        return None


def _peer_identity(context: grpc.aio.ServicerContext[object, object]) -> SpiffeId | None:
    """The SPIFFE ID of a client certificate that gRPC has verified against the trust bundle."""
    auth = context.auth_context()
    pem = next(iter(auth.get("x509_pem_cert") or ()), None)
    if pem is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1:
            return None
        return SpiffeId.parse(uris[0])
    except (ValueError, x509.ExtensionNotFound, IdentityError):
        return None


def split_pem(chain: str) -> list[str]:
    """Splits concatenated PEM certificates, each kept with its END line and newline."""
    end = "-----END CERTIFICATE-----"
    return [part.strip() + "\n" + end + "\n" for part in chain.split(end) if part.strip()]


@dataclass(frozen=True, slots=True)
class CAServer:
    """A running CA: ``port`` takes bootstrap tokens (server TLS), ``mtls_port`` takes renewals
    authenticated by the caller's current certificate (client certificate required).

    Two ports because gRPC's Python API can either demand client certificates or not ask for
    them, but not ask and accept their absence.
    """

    server: grpc.aio.Server
    port: int
    mtls_port: int

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)


async def start_ca_server(
    ca: CertificateAuthority,
    tokens: BootstrapTokens,
    *,
    port: int = 0,
    mtls_port: int = 0,
    host: str = "127.0.0.1",
    serving: ServingCertificate | None = None,
) -> CAServer:
    """Starts the CA's gRPC service over TLS on two ports (port 0 picks a free one)."""
    serving = serving or issue_serving_certificate(ca, ips=(host,) if _is_ip(host) else ())
    identity = [(serving.key_pem, serving.cert_chain_pem)]
    server = grpc.aio.server()
    CertificateService(ca, tokens).add_to_server(server)
    bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials(identity))
    bound_mtls = server.add_secure_port(
        f"{host}:{mtls_port}",
        grpc.ssl_server_credentials(
            identity, root_certificates=ca.trust_bundle_pem().encode(), require_client_auth=True
        ),
    )
    await server.start()
    return CAServer(server, bound, bound_mtls)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
