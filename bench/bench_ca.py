"""CSR signing: meshcore's CA against cryptography doing the same job by hand, in the same run.

The peer is the least code that turns the same CSR into the same X.509-SVID with the same
library (parse, verify the CSR signature, build the certificate with the same extensions, sign
with P-256, encode PEM): the ratio is what meshcore's checks and bookkeeping cost.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshcore.ca import CertificateAuthority

WORKLOADS = 5000
ROUND = 500


def identity(i: int) -> str:
    return f"spiffe://cluster.local/ns/ns{i % 10}/sa/workload{i}"


@pytest.fixture(scope="module")
def csrs() -> list[bytes]:
    out = []
    for i in range(WORKLOADS):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity(i))]),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.PEM))
    return out


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate()


def raw_sign(ca: CertificateAuthority, csr_pem: bytes) -> str:
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    start = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(hours=24))
        .add_extension(
            csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=True
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )  # type: ignore[arg-type]
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_sign_csr_meshcore(benchmark: Any, ca: CertificateAuthority, csrs: list[bytes]) -> None:
    def run() -> None:
        for i in range(ROUND):
            ca.sign_csr(csrs[i], identity(i))

    benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    if not benchmark.disabled:  # make test runs each body once, unmeasured
        benchmark.extra_info["per_second"] = ROUND / benchmark.stats.stats.median


def test_sign_csr_peer_raw_cryptography(
    benchmark: Any, ca: CertificateAuthority, csrs: list[bytes]
) -> None:
    def run() -> None:
        for i in range(ROUND):
            raw_sign(ca, csrs[i])

    benchmark.pedantic(run, rounds=7, iterations=1, warmup_rounds=1)
    if not benchmark.disabled:  # make test runs each body once, unmeasured
        benchmark.extra_info["per_second"] = ROUND / benchmark.stats.stats.median


def test_ratio_in_one_run(
    ca: CertificateAuthority, csrs: list[bytes], request: pytest.FixtureRequest
) -> None:
    """Interleaved rounds, so machine load hits both sides alike; goal: at least 85%."""
    ours, peer = [], []
    for _ in range(5):
        t = time.perf_counter()
        for i in range(ROUND):
            ca.sign_csr(csrs[i], identity(i))
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(ROUND):
            raw_sign(ca, csrs[i])
        peer.append(time.perf_counter() - t)
    ratio = min(peer) / min(ours)
    print(
        f"\nCA signing: meshcore {ROUND / min(ours):.0f}/s, raw cryptography {ROUND / min(peer):.0f}/s, ratio {ratio:.2f}"
    )
    if not request.config.getoption("benchmark_disable"):  # a goal for make bench's build
        assert ratio >= 0.85


def test_certify_5000_workloads(
    ca: CertificateAuthority, csrs: list[bytes], request: pytest.FixtureRequest
) -> None:
    t = time.perf_counter()
    chains = [ca.sign_csr(csrs[i], identity(i)) for i in range(WORKLOADS)]
    elapsed = time.perf_counter() - t
    print(f"\nCA: {WORKLOADS} workloads certified in {elapsed:.2f}s ({WORKLOADS / elapsed:.0f}/s)")
    assert len(chains) == WORKLOADS
    if not request.config.getoption("benchmark_disable"):  # a goal for make bench's build
        assert elapsed <= 2.0
