"""The workload's side of the certificate lifecycle, as Istio's agent does it.

The key is generated here and never leaves the process (it lives in memory only); a CSR goes to
meshcore's CA with a bootstrap token the first time and over mTLS with the current certificate
after that; the certificate is renewed when half of its lifetime has passed (Istio's default
SECRET_GRACE_PERIOD_RATIO of 0.5, with a little jitter so that workloads started together do
not renew together). On a 24 h certificate that is 12 h of margin to ride out a CA outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshcore.ca._proto.ca_pb2 import IstioCertificateRequest, IstioCertificateResponse
from meshcore.ca.service import METHOD
from meshcore.ca.spiffe import SpiffeId
from meshcore.errors import MeshcoreError

log = logging.getLogger("meshcore.dataplane.certs")

ROTATE_AT = 0.5
JITTER = 0.01
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 30.0


class CertificateError(MeshcoreError):
    """The CA refused or could not be reached; the message carries its answer."""


@dataclass(frozen=True, slots=True)
class WorkloadSecret:
    """An X.509-SVID with its key (in memory only) and the roots to verify peers with."""

    identity: SpiffeId
    cert_chain_pem: str  # the workload certificate, then its intermediates
    private_key_pem: bytes = field(repr=False)
    roots_pem: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int
    received_at: datetime.datetime

    def rotate_at(self, ratio: float = ROTATE_AT) -> datetime.datetime:
        """When to renew: after ``ratio`` of the time it had left when it arrived (measured on
        this clock, not from not_before, which CAs backdate against clock skew)."""
        return self.received_at + (self.not_after - self.received_at) * ratio

    def expired(self, at: datetime.datetime | None = None) -> bool:
        return (at or datetime.datetime.now(datetime.UTC)) >= self.not_after


Listener = Callable[[WorkloadSecret], Awaitable[None] | None]


class CertificateClient:
    """Obtains and rotates one workload's certificate from meshcore's CA."""

    def __init__(
        self,
        address: str,
        identity: str,
        *,
        trust_bundle_pem: str,
        mtls_address: str | None = None,
        bootstrap_token: str | None = None,
        ttl: datetime.timedelta | None = None,
        rotate_at: float = ROTATE_AT,
        server_name: str | None = None,
    ) -> None:
        if not 0.0 < rotate_at < 1.0:
            raise ValueError("rotate_at must be a fraction of the lifetime in (0, 1)")
        self.address = address
        self.mtls_address = mtls_address or address
        self.identity = SpiffeId.parse(identity)
        self.trust_bundle_pem = trust_bundle_pem
        self.bootstrap_token = bootstrap_token
        self.ttl = ttl
        self.rotate_ratio = rotate_at
        self.server_name = server_name
        self._current: WorkloadSecret | None = None
        self._due = datetime.datetime.min.replace(tzinfo=datetime.UTC)
        self._listeners: list[Listener] = []
        self.renewals = 0
        self._answered = 0  # the replica (of a comma-separated address) that answered last

    @property
    def current(self) -> WorkloadSecret | None:
        return self._current

    def subscribe(self, listener: Listener) -> None:
        """Calls ``listener`` with every new certificate (e.g. to push it over SDS)."""
        self._listeners.append(listener)

    async def fetch(self) -> WorkloadSecret:
        """A new key and certificate; authenticates with the current certificate when valid,
        else with the bootstrap token."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(self.identity.uri)]),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        request = IstioCertificateRequest(
            csr=csr.public_bytes(serialization.Encoding.PEM).decode(),
            validity_duration=int(self.ttl.total_seconds()) if self.ttl else 0,
        )
        current = self._current
        # meshcore's CA takes renewals (mTLS) on a port of their own; given only the token
        # port, a client that still has its bootstrap token renews with it there.
        renew_with_token = self.mtls_address == self.address and self.bootstrap_token
        use_mtls = current is not None and not current.expired() and not renew_with_token
        response = await self._call(request, current if use_mtls else None)
        secret = self._secret(response, key)
        self._current = secret
        self._due = secret.rotate_at(self.rotate_ratio * (1 + random.uniform(-JITTER, JITTER)))
        self.renewals += int(current is not None)
        log.info(
            "certificate for %s valid until %s (serial %x)",
            self.identity,
            secret.not_after,
            secret.serial,
        )
        for listener in list(self._listeners):
            result = listener(secret)
            if result is not None:
                await result
        return secret

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Keeps the certificate fresh until ``stop`` is set: fetch, sleep until rotation time,
        repeat; failures are retried with capped exponential backoff."""
        stop = stop or asyncio.Event()
        delay = RETRY_INITIAL_S
        while not stop.is_set():
            try:
                if self._current is None or datetime.datetime.now(datetime.UTC) >= self._due:
                    await self.fetch()
                delay = RETRY_INITIAL_S
                wait = (self._due - datetime.datetime.now(datetime.UTC)).total_seconds()
            except CertificateError as exc:
                log.warning("certificate refresh failed (retrying in %.1fs): %s", delay, exc)
                wait, delay = delay, min(delay * 2, RETRY_MAX_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(wait, 0.0))

    async def _call(
        self, request: IstioCertificateRequest, current: WorkloadSecret | None
    ) -> IstioCertificateResponse:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.trust_bundle_pem.encode(),
            private_key=current.private_key_pem if current else None,
            certificate_chain=current.cert_chain_pem.encode() if current else None,
        )
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        metadata = []
        if current is None:
            if not self.bootstrap_token:
                raise CertificateError(
                    "no current certificate and no bootstrap token to get a first one"
                )
            metadata.append(("authorization", f"Bearer {self.bootstrap_token}"))
        # "a:p,b:p,c:p": CA replicas (one signing key, see meshcore.ca); an unreachable one is
        # skipped for the next, starting from the one that answered last.
        addresses = [a.strip() for a in (self.mtls_address if current else self.address).split(",")]
        last: grpc.aio.AioRpcError | None = None
        for i in range(len(addresses)):
            address = addresses[(self._answered + i) % len(addresses)]
            async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
                call = channel.unary_unary(
                    METHOD,
                    request_serializer=IstioCertificateRequest.SerializeToString,
                    response_deserializer=IstioCertificateResponse.FromString,
                )
                try:
                    response: IstioCertificateResponse = await call(
                        request, metadata=metadata, timeout=10
                    )
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in (
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ):
                        raise CertificateError(f"{exc.code().name}: {exc.details()}") from None
                    last = exc
                    continue
            self._answered = (self._answered + i) % len(addresses)
            return response
        assert last is not None
        raise CertificateError(f"{last.code().name}: {last.details()}")

    def _secret(
        self, response: IstioCertificateResponse, key: ec.EllipticCurvePrivateKey
    ) -> WorkloadSecret:
        pems = list(response.cert_chain)
        if not pems:
            raise CertificateError("the CA answered with an empty certificate chain")
        try:
            certs = [x509.load_pem_x509_certificate(p.encode()) for p in pems]
        except ValueError as exc:
            raise CertificateError(f"the CA answered with a bad certificate: {exc}") from None
        leaf = certs[0]
        if leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CertificateError("the CA's certificate is not for the key this workload sent")
        uris = leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
        if uris != [self.identity.uri]:
            raise CertificateError(f"the CA issued {uris}, not {self.identity.uri}")
        # The last certificate is the root the chain ends at; it is trusted, not sent.
        chain = [p for p, c in zip(pems, certs, strict=True) if c.issuer != c.subject or c is leaf]
        # The CA's trust bundle follows the chain (its self-signed roots).
        sent = [
            (p, c)
            for p, c in zip(pems, certs, strict=True)
            if c is not leaf and c.issuer == c.subject
        ]
        try:
            trusted = x509.load_pem_x509_certificates(self.trust_bundle_pem.encode())
        except ValueError:
            trusted = []
        if sent and not any(c in trusted for _, c in sent):
            log.info(
                "the CA's root is not in the configured trust bundle; trusting the configured bundle only"
            )
        elif sent and [c for _, c in sent] != trusted:
            # A root rotation: the CA, reached over TLS verified with the current bundle, sends
            # a bundle that still holds a root trusted now; it becomes the bundle (peers' and
            # the CA's certificates from the new root verify, the old root's until it leaves).
            log.info("the CA's trust bundle changed (a root rotation): %d root(s)", len(sent))
            self.trust_bundle_pem = "".join(p if p.endswith("\n") else p + "\n" for p, _ in sent)
        return WorkloadSecret(
            identity=self.identity,
            cert_chain_pem="".join(chain),
            private_key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            roots_pem=self.trust_bundle_pem,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            serial=leaf.serial_number,
            received_at=datetime.datetime.now(datetime.UTC),
        )
