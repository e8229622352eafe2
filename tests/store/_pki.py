"""A test PKI for etcd over TLS, made with ``cryptography``: a CA, etcd's server certificate
(for 127.0.0.1), a client certificate, and a second CA that signed neither."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.envoy._gateway import make_ca

DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed etcd's server certificate and the client certificate
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here
    other_cert: Path  # a client certificate from other_ca
    other_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key, cert = make_ca(cn)
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], cn: str, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(ca[1], hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("meshcore test etcd CA")
    other = _ca("some other CA")
    server = _leaf(ca, "etcd", server=True)
    client = _leaf(ca, "meshcore", server=False)
    stranger = _leaf(other, "meshcore", server=False)
    d = directory
    return Pki(
        ca=_write_cert(ca[0], d / "ca.pem"),
        server_cert=_write_cert(server[0], d / "server.pem"),
        server_key=_write_key(server[1], d / "server-key.pem"),
        client_cert=_write_cert(client[0], d / "client.pem"),
        client_key=_write_key(client[1], d / "client-key.pem"),
        other_ca=_write_cert(other[0], d / "other-ca.pem"),
        other_cert=_write_cert(stranger[0], d / "other-client.pem"),
        other_key=_write_key(stranger[1], d / "other-client-key.pem"),
    )
