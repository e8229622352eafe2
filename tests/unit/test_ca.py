"""The SPIFFE CA: what it signs, what it refuses, Istio's plug-in layout, root rotation."""

from __future__ import annotations

import datetime
import logging
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from meshcore.ca import CAError, CertificateAuthority, IdentityMismatchError, SpiffeId
from meshcore.ca.authority import now

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"


def make_csr(*sans: x509.GeneralName, key: object = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def uri(u: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(u)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(trust_domain="cluster.local")


def verify(ca: CertificateAuthority, chain_pem: str) -> x509.Certificate:
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    roots = [x509.load_pem_x509_certificate(r.encode()) for r in ca.trust_bundle()]
    verifier = PolicyBuilder().store(Store(roots)).build_client_verifier()
    verified = verifier.verify(certs[0], certs[1:])
    assert verified.subjects is not None
    return certs[0]


def test_svid_properties(ca: CertificateAuthority) -> None:
    leaf = verify(ca, ca.sign_csr(make_csr(uri(REVIEWS)), requested_by=REVIEWS))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [REVIEWS]
    assert len(list(san.value)) == 1
    assert leaf.subject == x509.Name([])
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.key_encipherment
    assert not ku.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert datetime.timedelta(hours=24) <= lifetime <= datetime.timedelta(hours=24, minutes=2)
    assert leaf.not_valid_before_utc <= now()


def test_ttl_requests_and_limits(ca: CertificateAuthority) -> None:
    leaf = verify(ca, ca.sign_csr(make_csr(uri(REVIEWS)), REVIEWS, ttl=3600))
    assert leaf.not_valid_after_utc - now() < datetime.timedelta(hours=1, minutes=1)
    with pytest.raises(CAError, match="exceeds the maximum"):
        ca.sign_csr(make_csr(uri(REVIEWS)), REVIEWS, ttl=datetime.timedelta(days=91))
    with pytest.raises(CAError, match="must be positive"):
        ca.sign_csr(make_csr(uri(REVIEWS)), REVIEWS, ttl=-5)


def test_only_your_own_identity(ca: CertificateAuthority, caplog: pytest.LogCaptureFixture) -> None:
    csr = make_csr(uri("spiffe://cluster.local/ns/default/sa/admin"))
    with (
        caplog.at_level(logging.WARNING, logger="meshcore.ca"),
        pytest.raises(
            IdentityMismatchError,
            match=r"asks for spiffe://cluster\.local/ns/default/sa/admin but the caller is",
        ),
    ):
        ca.sign_csr(csr, requested_by=REVIEWS)
    assert "refused CSR" in caplog.text
    other_td = "spiffe://evil.example/ns/default/sa/reviews"
    with pytest.raises(IdentityMismatchError, match="trust domain"):
        ca.sign_csr(make_csr(uri(other_td)), requested_by=other_td)


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"garbage", "not a PEM certificate signing request"),
        (make_csr(), "no subjectAltName"),
        (make_csr(uri(REVIEWS), uri(REVIEWS + "2")), "exactly one URI SAN"),
        (make_csr(uri(REVIEWS), x509.DNSName("reviews.default")), "1 other SAN"),
        (make_csr(uri("https://example.com/x")), "not a SPIFFE ID"),
        (make_csr(uri("spiffe://cluster.local/reviews")), "/ns/NAMESPACE/sa/SERVICE_ACCOUNT"),
        (make_csr(uri(REVIEWS), key=rsa.generate_private_key(65537, 1024)), "too small"),
        (make_csr(uri(REVIEWS), key=ec.generate_private_key(ec.SECP521R1())), "unsupported curve"),
    ],
)
def test_bad_csrs_are_refused_clearly(ca: CertificateAuthority, csr: bytes, message: str) -> None:
    with pytest.raises(CAError, match=message) as info:
        ca.sign_csr(csr, requested_by=REVIEWS)
    assert "PRIVATE KEY" not in str(info.value)


def test_tampered_csr_signature(ca: CertificateAuthority) -> None:
    good = x509.load_pem_x509_csr(make_csr(uri(REVIEWS)))
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CAError, match="signature does not verify"):
        ca.sign_csr(pem, requested_by=REVIEWS)


def test_plugin_layout_with_intermediate(tmp_path: Path) -> None:
    root = CertificateAuthority.generate(trust_domain="cluster.local")
    inter_key = ec.generate_private_key(ec.SECP256R1())
    start = now() - datetime.timedelta(minutes=1)
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")]))
        .issuer_name(root.cert.subject)
        .public_key(inter_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(root.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    pem = serialization.Encoding.PEM
    (tmp_path / "ca-cert.pem").write_bytes(inter.public_bytes(pem))
    (tmp_path / "ca-key.pem").write_bytes(
        inter_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "root-cert.pem").write_bytes(root.cert.public_bytes(pem))
    (tmp_path / "cert-chain.pem").write_bytes(inter.public_bytes(pem) + root.cert.public_bytes(pem))
    ca = CertificateAuthority.load(tmp_path)
    chain = ca.sign_csr(make_csr(uri(REVIEWS)), REVIEWS)
    assert len(x509.load_pem_x509_certificates(chain.encode())) == 2  # leaf + intermediate
    leaf = verify(ca, chain)
    assert leaf.issuer == inter.subject
    assert ca.trust_bundle() == [root.cert.public_bytes(pem).decode()]


def test_save_writes_the_key_0600_and_round_trips(tmp_path: Path, ca: CertificateAuthority) -> None:
    (tmp_path / "ca-key.pem").write_text("old")
    (tmp_path / "ca-key.pem").chmod(0o644)
    ca.save(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca-key.pem").stat().st_mode) == 0o600
    again = CertificateAuthority.load(tmp_path)
    verify(ca, again.sign_csr(make_csr(uri(REVIEWS)), REVIEWS))


def test_load_errors_never_show_the_key(tmp_path: Path) -> None:
    with pytest.raises(CAError, match=r"missing ca-cert\.pem, ca-key\.pem, root-cert\.pem"):
        CertificateAuthority.load(tmp_path)
    CertificateAuthority.generate().save(tmp_path)
    secret = "MC4CAQAwBQYDK2VwBCIEIGSECRETSECRETSECRET"
    (tmp_path / "ca-key.pem").write_text(
        f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"
    )
    with pytest.raises(CAError) as info:
        CertificateAuthority.load(tmp_path)
    assert secret not in str(info.value)
    assert "ca-key.pem: not an unencrypted PEM private key" in str(info.value)


def test_root_rotation_trusts_both(ca: CertificateAuthority) -> None:
    new = CertificateAuthority.generate(trust_domain="cluster.local")
    both = new.with_roots([ca.cert])
    assert len(both.trust_bundle()) == 2
    # A certificate from the old root still verifies against the combined bundle.
    verify(both, ca.sign_csr(make_csr(uri(REVIEWS)), REVIEWS))
    verify(both, both.sign_csr(make_csr(uri(REVIEWS)), REVIEWS))


def test_spiffe_ids() -> None:
    sid = SpiffeId.parse(REVIEWS)
    assert (sid.trust_domain, sid.namespace, sid.service_account) == (
        "cluster.local",
        "default",
        "reviews",
    )
    assert sid.principal == "cluster.local/ns/default/sa/reviews"
    assert str(sid) == REVIEWS
