"""A SPIFFE certificate authority on ``cryptography``: X.509-SVIDs for workloads, from CSRs.

The caller proves who it is (``requested_by`` is the authenticated identity); a CSR for any
other identity is refused and logged. Keys never appear in logs or error messages.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore.ca.spiffe import IdentityError, SpiffeId
from meshcore.errors import MeshcoreError

log = logging.getLogger("meshcore.ca")

DEFAULT_TTL = datetime.timedelta(hours=24)  # Istio's default workload certificate lifetime
MAX_TTL = datetime.timedelta(days=90)  # Istio's default maximum (MAX_WORKLOAD_CERT_TTL)
ROOT_TTL = datetime.timedelta(days=3650)
# A self-signed root is rotated when less than this fraction of its lifetime is left (Istio's
# CITADEL_SELF_SIGNED_CA_CERT_GRACE_PERIOD_PERCENTILE default: 20).
ROOT_GRACE = 0.2
CLOCK_SKEW = datetime.timedelta(minutes=1)  # certificates start slightly in the past

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
_NOT_CA = x509.BasicConstraints(ca=False, path_length=None)
_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, key_encipherment=True, content_commitment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False,
)  # fmt: skip
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, key_encipherment=False, content_commitment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


class CAError(MeshcoreError, ValueError):
    """A request the CA refuses: bad CSR, wrong identity, bad lifetime. The message says why."""


class IdentityMismatchError(CAError, PermissionError):
    """The CSR asks for an identity other than the caller's own."""


# Callers renew the same identities over and over; parsing each once is enough.
_parse_identity = functools.lru_cache(maxsize=65536)(SpiffeId.parse)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def signature_hash(key: SigningKey) -> hashes.SHA256 | None:
    """The digest to sign with (Ed25519 signs without a separate one)."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


class CertificateAuthority:
    """Signs workload certificates. Build with :meth:`generate` or :meth:`load`."""

    def __init__(
        self,
        *,
        cert: x509.Certificate,
        key: SigningKey,
        chain: Sequence[x509.Certificate] = (),
        roots: Sequence[x509.Certificate] = (),
        trust_domain: str = "cluster.local",
        default_ttl: datetime.timedelta = DEFAULT_TTL,
        max_ttl: datetime.timedelta = MAX_TTL,
    ) -> None:
        """``cert``/``key`` sign; ``chain`` is the issuer chain up to (excluding) the root;
        ``roots`` are every root currently trusted (the signing cert itself when self-signed)."""
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise CAError(
                "the signing certificate is not a CA certificate (basicConstraints CA:FALSE)"
            )
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CAError("the CA key does not match the CA certificate")
        if default_ttl <= datetime.timedelta(0) or default_ttl > max_ttl:
            raise CAError("default_ttl must be positive and at most max_ttl")
        self.cert = cert
        self.key = key
        self.chain = tuple(chain)
        self._roots = tuple(roots) or (cert,)
        self.trust_domain = trust_domain
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._hash = signature_hash(key)
        self._not_after = cert.not_valid_after_utc
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        # Sent after every leaf: the signing certificate and its intermediates (a self-signed
        # signing certificate is the root itself, sent once).
        self._chain_pem = "".join(
            c.public_bytes(serialization.Encoding.PEM).decode() for c in (cert, *self.chain)
        )

    # --- construction --------------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        trust_domain: str = "cluster.local",
        *,
        organization: str = "meshcore",
        ttl: datetime.timedelta = ROOT_TTL,
        default_ttl: datetime.timedelta = DEFAULT_TTL,
        max_ttl: datetime.timedelta = MAX_TTL,
    ) -> CertificateAuthority:
        """A new self-signed root (ECDSA P-256), as istiod creates one when none is plugged in."""
        key = ec.generate_private_key(ec.SECP256R1())
        # A name of its own per root: during a rotation two roots are trusted together, and
        # TLS stacks (BoringSSL in Envoy and gRPC) pick an issuer by name, then check it.
        serial = x509.random_serial_number()
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshcore root CA ({trust_domain})"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, f"{serial:x}"),
        ])  # fmt: skip
        start = now() - CLOCK_SKEW
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(start + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(
            cert=cert, key=key, trust_domain=trust_domain, default_ttl=default_ttl, max_ttl=max_ttl
        )

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        trust_domain: str = "cluster.local",
        default_ttl: datetime.timedelta = DEFAULT_TTL,
        max_ttl: datetime.timedelta = MAX_TTL,
    ) -> CertificateAuthority:
        """Istio's plug-in CA layout: ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem.

        ``cert-chain.pem`` is the signing certificate followed by its issuers (Istio's format);
        ``root-cert.pem`` may hold several roots (during a root rotation).
        """
        d = Path(directory)
        files = {n: d / n for n in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")}
        missing = [n for n, p in files.items() if not p.is_file() and n != "cert-chain.pem"]
        if missing:
            raise CAError(f"{d}: missing {', '.join(missing)} (Istio's plug-in CA layout)")
        try:
            cert = x509.load_pem_x509_certificate(files["ca-cert.pem"].read_bytes())
        except ValueError as exc:
            raise CAError(f"{files['ca-cert.pem']}: not a PEM certificate ({exc})") from None
        try:
            key = serialization.load_pem_private_key(
                files["ca-key.pem"].read_bytes(), password=None
            )
        except (ValueError, TypeError):
            # Never echo key material or parser detail about it.
            raise CAError(f"{files['ca-key.pem']}: not an unencrypted PEM private key") from None
        if not isinstance(
            key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)
        ):
            raise CAError(
                f"{files['ca-key.pem']}: unsupported key type (use ECDSA, RSA or Ed25519)"
            )
        try:
            roots = x509.load_pem_x509_certificates(files["root-cert.pem"].read_bytes())
            chain: list[x509.Certificate] = []
            if files["cert-chain.pem"].is_file():
                chain = x509.load_pem_x509_certificates(files["cert-chain.pem"].read_bytes())
        except ValueError as exc:
            raise CAError(f"{d}: bad PEM certificate file ({exc})") from None
        intermediates = [c for c in chain if c != cert and c not in roots]
        return cls(
            cert=cert,
            key=key,
            chain=intermediates,
            roots=roots,
            trust_domain=trust_domain,
            default_ttl=default_ttl,
            max_ttl=max_ttl,
        )

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Writes the plug-in layout; the key file is created 0600 (never readable by others)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        key_bytes = self.key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        key_path = d / "ca-key.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # also when the file existed with wider permissions
            os.write(fd, key_bytes)
        finally:
            os.close(fd)
        (d / "ca-cert.pem").write_bytes(self.cert.public_bytes(pem))
        (d / "cert-chain.pem").write_bytes(
            b"".join(c.public_bytes(pem) for c in (self.cert, *self.chain))
        )
        (d / "root-cert.pem").write_bytes(b"".join(c.public_bytes(pem) for c in self._roots))

    # --- trust ---------------------------------------------------------------------------------

    def trust_bundle(self) -> list[str]:
        """Every root currently trusted, in PEM (several during a root rotation)."""
        return [c.public_bytes(serialization.Encoding.PEM).decode() for c in self._roots]

    def trust_bundle_pem(self) -> str:
        return "".join(self.trust_bundle())

    def roots(self) -> tuple[x509.Certificate, ...]:
        """Every root currently trusted (several during a root rotation)."""
        return self._roots

    def with_roots(self, extra: Iterable[x509.Certificate]) -> CertificateAuthority:
        """The same CA trusting more roots (for a rotation: trust old and new together)."""
        roots = list(self._roots)
        roots += [c for c in extra if c not in roots]
        return CertificateAuthority(
            cert=self.cert, key=self.key, chain=self.chain, roots=roots,
            trust_domain=self.trust_domain, default_ttl=self.default_ttl, max_ttl=self.max_ttl,
        )  # fmt: skip

    # --- signing -------------------------------------------------------------------------------

    def sign_csr(
        self,
        csr_pem: str | bytes,
        requested_by: str,
        ttl: datetime.timedelta | int | None = None,
    ) -> str:
        """Signs a workload CSR for ``requested_by`` (the caller's authenticated SPIFFE ID).

        Returns the PEM chain: the leaf, then the CA chain. ``ttl`` (seconds or timedelta)
        defaults to 24 h and is capped by ``max_ttl`` and by the CA's own expiry.
        """
        csr, public_key = self._parse_csr(csr_pem)
        requested = self._csr_identity(csr)
        try:
            caller = _parse_identity(requested_by)
        except IdentityError as exc:
            raise CAError(f"requested_by: {exc}") from None
        if requested != caller:
            log.warning("refused CSR: caller %s asked for identity %s", caller, requested)
            raise IdentityMismatchError(
                f"the CSR asks for {requested} but the caller is {caller}: a workload may only "
                "obtain its own identity"
            )
        if requested.trust_domain != self.trust_domain:
            log.warning("refused CSR: %s is outside trust domain %s", requested, self.trust_domain)
            raise IdentityMismatchError(
                f"{requested} is not in this CA's trust domain {self.trust_domain!r}"
            )
        lifetime = self._lifetime(ttl)
        leaf = self._issue(requested, public_key, lifetime)
        log.info(
            "issued certificate for %s (serial %x, %ds)",
            requested,
            leaf.serial_number,
            lifetime.total_seconds(),
        )
        return leaf.public_bytes(serialization.Encoding.PEM).decode() + self._chain_pem

    def _parse_csr(self, csr_pem: str | bytes) -> tuple[x509.CertificateSigningRequest, _PublicKey]:
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError:
            raise CAError("csr: not a PEM certificate signing request") from None
        try:
            valid = csr.is_signature_valid
        except (ValueError, InvalidSignature, TypeError):
            valid = False
        if not valid:
            raise CAError(
                "csr: the signature does not verify (proof of possession of the key failed)"
            )
        key = csr.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in ("secp256r1", "secp384r1"):
                raise CAError(f"csr: unsupported curve {key.curve.name} (use P-256 or P-384)")
        elif isinstance(key, rsa.RSAPublicKey):
            if key.key_size < 2048:
                raise CAError(f"csr: RSA key of {key.key_size} bits is too small (at least 2048)")
        elif not isinstance(key, ed25519.Ed25519PublicKey):
            raise CAError(
                f"csr: unsupported key type {type(key).__name__} (use ECDSA P-256, RSA or Ed25519)"
            )
        return csr, key

    @staticmethod
    def _csr_identity(csr: x509.CertificateSigningRequest) -> SpiffeId:
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise CAError(
                "csr: no subjectAltName; exactly one URI SAN spiffe://TD/ns/NS/sa/SA is required"
            ) from None
        except ValueError as exc:
            raise CAError(f"csr: unreadable extensions ({exc})") from None
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        others = len(list(san)) - len(uris)
        if len(uris) != 1 or others:
            raise CAError(
                f"csr: exactly one URI SAN is required, found {len(uris)} URI and {others} other SAN(s)"
            )
        try:
            return SpiffeId.parse(uris[0])
        except IdentityError as exc:
            raise CAError(f"csr: {exc}") from None

    def _lifetime(self, ttl: datetime.timedelta | int | None) -> datetime.timedelta:
        if ttl is None or ttl == 0:
            lifetime = self.default_ttl
        elif isinstance(ttl, int) and not 0 < ttl <= self.max_ttl.total_seconds():
            # Checked before it becomes a timedelta: 2**63-1 seconds would overflow one.
            why = "must be positive" if ttl < 0 else "exceeds the maximum of"
            limit = f" {self.max_ttl.total_seconds():g}s" if ttl > 0 else ""
            raise CAError(f"ttl: {ttl}s {why}{limit}")
        else:
            lifetime = (
                ttl if isinstance(ttl, datetime.timedelta) else datetime.timedelta(seconds=ttl)
            )
        if lifetime <= datetime.timedelta(0):
            raise CAError(f"ttl: must be positive, got {lifetime.total_seconds():g}s")
        if lifetime > self.max_ttl:
            raise CAError(
                f"ttl: {lifetime.total_seconds():g}s exceeds the maximum of {self.max_ttl.total_seconds():g}s"
            )
        return lifetime

    def _issue(
        self,
        identity: SpiffeId,
        public_key: _PublicKey,
        lifetime: datetime.timedelta,
    ) -> x509.Certificate:
        start = now() - CLOCK_SKEW
        end = min(start + CLOCK_SKEW + lifetime, self._not_after)
        return (
            x509.CertificateBuilder()
            # An SVID names its identity in the SAN only; with an empty subject the SAN is critical.
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                critical=True,
            )
            .add_extension(_NOT_CA, critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(_EKU, critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self.key, self._hash)
        )
