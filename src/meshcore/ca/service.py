"""The CA over gRPC: Istio's ``istio.v1.auth.IstioCertificateService/CreateCertificate``.

A workload authenticates with a bootstrap token for its first certificate and with its current
certificate (mTLS) to renew; either way it is only ever issued its own identity. Bootstrap
tokens expire, and an address that keeps failing is refused for a while (see
:mod:`meshcore.ca.tokens`): a refused token is UNAUTHENTICATED, an address over the failure
limit RESOURCE_EXHAUSTED; a bad request (a CSR, a ``validity_duration`` out of range) is
INVALID_ARGUMENT.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshcore._text import shown
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
from meshcore.ca.tokens import BootstrapTokens, FailureLimiter, TokenRefused, peer_address

log = logging.getLogger("meshcore.ca")

SERVICE = "istio.v1.auth.IstioCertificateService"
METHOD = f"/{SERVICE}/CreateCertificate"


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


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A workload certificate the CA signed (what the status page shows of it)."""

    identity: str
    serial: int
    not_after: datetime.datetime


class IssuedCertificates:
    """The newest certificate issued per identity, bounded (the oldest identity goes first)."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._by_identity: OrderedDict[str, IssuedCertificate] = OrderedDict()

    def add(self, cert: IssuedCertificate) -> None:
        self._by_identity.pop(cert.identity, None)
        self._by_identity[cert.identity] = cert
        while len(self._by_identity) > self.limit:
            self._by_identity.popitem(last=False)

    def list(self) -> list[IssuedCertificate]:
        return sorted(self._by_identity.values(), key=lambda c: c.identity)


class CertificateService:
    """The CreateCertificate handler; add it to a grpc.aio server with :meth:`add_to_server`."""

    def __init__(
        self,
        ca: CertificateAuthority,
        tokens: BootstrapTokens,
        limiter: FailureLimiter | None = None,
    ) -> None:
        self.ca = ca
        self.tokens = tokens
        self.limiter = FailureLimiter() if limiter is None else limiter
        self.issued = IssuedCertificates()

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
        identity = _peer_identity(context) or await self._bootstrap(context)
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
        leaf = x509.load_pem_x509_certificate(certs[0].encode())
        self.issued.add(
            IssuedCertificate(identity.uri, leaf.serial_number, leaf.not_valid_after_utc)
        )
        roots = [r for r in self.ca.trust_bundle() if r not in certs]
        # Istio's response: the leaf and its issuers, then the trust bundle (during a root
        # rotation both roots: the agent's next secret trusts peers signed by either).
        return IstioCertificateResponse(cert_chain=[*certs, *roots])

    async def _bootstrap(self, context: grpc.aio.ServicerContext[object, object]) -> SpiffeId:
        """The identity the caller's bootstrap token grants; aborts the call otherwise."""
        address = peer_address(context.peer())
        wait = self.limiter.blocked(address)
        if wait > 0:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed bootstrap attempts from this address; retry in {wait:.0f} s",
            )
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[len("Bearer ") :]
                break
        if token is None:
            why = (
                "authenticate with a bootstrap token (authorization: Bearer TOKEN) "
                "or with your current certificate (mTLS)"
            )
        else:
            try:
                return self.tokens.check(token)
            except TokenRefused as exc:
                why = str(exc)
            log.warning("CSR refused from %s: %s", shown(address), why)
        self.limiter.failed(address)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)
        raise AssertionError("unreachable")  # pragma: no cover


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
    issued: IssuedCertificates
    tls: ServerTLS

    def use(self, ca: CertificateAuthority) -> None:
        """Signs with ``ca`` from now on (a root rotation): the next handshake on either port
        gets a serving certificate from it, and the mTLS port trusts its bundle."""
        self.tls.use(ca)

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)


class ServerTLS:
    """The CA ports' TLS, swappable while they run: gRPC asks :meth:`fetch` before each
    handshake and takes a new configuration when the CA changed."""

    def __init__(
        self,
        service: CertificateService,
        host: str,
        serving: ServingCertificate | None,
        serving_ttl: datetime.timedelta = datetime.timedelta(days=1),
    ) -> None:
        self.service = service
        self.host = host
        self.fixed = serving  # a serving certificate given by the caller is kept
        self.serving_ttl = serving_ttl
        self._renew_at = datetime.datetime.max.replace(tzinfo=datetime.UTC)
        # use() runs in the thread that follows the shared CA, fetch() in gRPC's: the signing
        # CA, the ports' configuration and what each port has taken change together.
        self._lock = threading.Lock()
        self._config = self._build(service.ca)
        self._fresh = {True: False, False: False}  # per port (client auth): config not taken

    def _build(self, ca: CertificateAuthority) -> tuple[bytes, bytes, bytes]:
        serving = self.fixed
        if serving is None:
            # A serving certificate of its own, renewed at half its remaining life.
            serving = issue_serving_certificate(
                ca, ips=(self.host,) if _is_ip(self.host) else (), ttl=self.serving_ttl
            )
            issued = now()
            expiry = x509.load_pem_x509_certificate(serving.cert_chain_pem).not_valid_after_utc
            self._renew_at = issued + (expiry - issued) / 2
        return serving.key_pem, serving.cert_chain_pem, ca.trust_bundle_pem().encode()

    def use(self, ca: CertificateAuthority) -> None:
        with self._lock:
            self._swap(ca)

    def _swap(self, ca: CertificateAuthority) -> None:
        config = self._build(ca)
        self.service.ca = ca
        self._config = config
        self._fresh = {True: True, False: True}

    def configuration(self, client_auth: bool) -> grpc.ServerCertificateConfiguration:
        key, chain, roots = self._config
        return grpc.ssl_server_certificate_configuration(
            [(key, chain)], root_certificates=roots if client_auth else None
        )

    def fetcher(
        self, client_auth: bool
    ) -> Callable[[], grpc.ServerCertificateConfiguration | None]:
        def fetch() -> grpc.ServerCertificateConfiguration | None:
            with self._lock:
                if now() >= self._renew_at:  # the CA read under the lock: never an older one
                    self._swap(self.service.ca)
                if not self._fresh[client_auth]:
                    return None  # unchanged
                self._fresh[client_auth] = False
                return self.configuration(client_auth)

        return fetch


async def start_ca_server(
    ca: CertificateAuthority,
    tokens: BootstrapTokens,
    *,
    port: int = 0,
    mtls_port: int = 0,
    host: str = "127.0.0.1",
    serving: ServingCertificate | None = None,
    limiter: FailureLimiter | None = None,
    serving_ttl: datetime.timedelta = datetime.timedelta(days=1),
) -> CAServer:
    """Starts the CA's gRPC service over TLS on two ports (port 0 picks a free one); without
    ``serving``, their certificate lives ``serving_ttl`` and is renewed at half its life."""
    server = grpc.aio.server()
    service = CertificateService(ca, tokens, limiter)
    service.add_to_server(server)
    tls = ServerTLS(service, host, serving, serving_ttl)
    bound, bound_mtls = (
        server.add_secure_port(
            f"{host}:{p}",
            grpc.dynamic_ssl_server_credentials(
                tls.configuration(auth),
                # The stub misses gRPC's documented None ("no change") from the fetcher.
                tls.fetcher(auth),  # type: ignore[arg-type]
                require_client_authentication=auth,
            ),
        )
        for p, auth in ((port, False), (mtls_port, True))
    )
    await server.start()
    return CAServer(server, bound, bound_mtls, service.issued, tls)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


__all__ = [
    "METHOD",
    "SERVICE",
    "BootstrapTokens",
    "CAServer",
    "CertificateService",
    "FailureLimiter",
    "IssuedCertificate",
    "IssuedCertificates",
    "ServerTLS",
    "ServingCertificate",
    "issue_serving_certificate",
    "split_pem",
    "start_ca_server",
]
