"""Hostile clients of the CA over real gRPC and TLS: out-of-range lifetimes, token guessing,
expired and rotated bootstrap tokens (issue 11, items 4 and 10)."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from meshcore.ca import CertificateAuthority
from meshcore.ca.service import BootstrapTokens, CAServer, start_ca_server
from meshcore.ca.tokens import FILE_TOKEN_TTL, FailureLimiter, load_tokens, peer_address
from tests.hostile._server_helpers import csr_call

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"

Body = Callable[[CertificateAuthority, BootstrapTokens, CAServer], Awaitable[None]]


def run(body: Body, tokens: BootstrapTokens | None = None, **kwargs: object) -> None:
    async def main() -> None:
        ca = CertificateAuthority.generate()
        toks = tokens or BootstrapTokens()
        server = await start_ca_server(ca, toks, **kwargs)  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(body(ca, toks, server), 25)
        finally:
            await server.stop()

    asyncio.run(main())


async def refused(
    ca: CertificateAuthority, srv: CAServer, token: str | None, **kw: int
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await csr_call(f"127.0.0.1:{srv.port}", ca.trust_bundle_pem(), REVIEWS, token, **kw)
    return info.value


@pytest.mark.parametrize("seconds", [2**63 - 1, -(2**63), -1, 10**9])
def test_validity_duration_out_of_range_is_invalid_argument(seconds: int) -> None:
    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        err = await refused(ca, srv, tokens.issue(REVIEWS), validity_duration=seconds)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert "ttl:" in (err.details() or "")

    run(body)


def test_failed_token_attempts_are_limited_per_address() -> None:
    """Three wrong tokens within the window: then every bootstrap attempt from the address,
    a right token included, is RESOURCE_EXHAUSTED until the window has passed."""

    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        good = tokens.issue(REVIEWS)
        for guess in ("0" * 64, "1" * 64, None):
            err = await refused(ca, srv, guess)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        for token in ("2" * 64, good):
            err = await refused(ca, srv, token)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many failed bootstrap attempts" in (err.details() or "")
        await asyncio.sleep(4.1)
        address = f"127.0.0.1:{srv.port}"
        response = await csr_call(address, ca.trust_bundle_pem(), REVIEWS, good)
        assert response.cert_chain

    run(body, limiter=FailureLimiter(max_failures=3, window=4.0))


def test_the_limiter_remembers_a_bounded_number_of_addresses() -> None:
    limiter = FailureLimiter(max_failures=2, window=60, max_addresses=100)
    for i in range(1000):
        limiter.failed(f"ipv4:10.0.{i // 256}.{i % 256}")
    assert len(limiter) <= 100
    limiter.failed("ipv4:10.9.9.9")
    limiter.failed("ipv4:10.9.9.9")
    assert limiter.blocked("ipv4:10.9.9.9") > 59
    assert limiter.blocked("ipv4:10.9.9.8") == 0.0
    assert peer_address("ipv4:127.0.0.1:51234") == "ipv4:127.0.0.1"
    assert peer_address("ipv6:[::1]:51234") == "ipv6:[::1]"
    assert peer_address("unix:/run/ca.sock") == "unix:/run/ca.sock"


def test_an_expired_token_says_so() -> None:
    async def body(ca: CertificateAuthority, tokens: BootstrapTokens, srv: CAServer) -> None:
        old = tokens.issue(REVIEWS, ttl=datetime.timedelta(seconds=-1))
        err = await refused(ca, srv, old)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "expired at" in (err.details() or "")
        err = await refused(ca, srv, "f" * 64)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "unknown bootstrap token" in (err.details() or "")

    run(body)


def test_file_tokens_expire_a_day_after_the_file_was_written(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    fresh, stale, dated = "a" * 32, "b" * 32, "c" * 32
    path.write_text(f"{fresh} {REVIEWS}\n{dated} {REVIEWS} expires=2000-01-01T00:00:00Z\n")
    tokens = BootstrapTokens()
    assert load_tokens(str(path), tokens) == 2
    assert tokens.verify(fresh) is not None
    assert tokens.verify(dated) is None  # its own expiry, long past
    # Written more than FILE_TOKEN_TTL ago: every line without expires= has expired.
    path.write_text(f"{stale} {REVIEWS}\n")
    written = time.time() - FILE_TOKEN_TTL.total_seconds() - 60
    os.utime(path, (written, written))
    tokens = BootstrapTokens()
    load_tokens(str(path), tokens)
    with pytest.raises(ValueError, match=r"from .*tokens\) expired at"):
        tokens.check(stale)
    for bad, why in [
        (f"{fresh} {REVIEWS} expires=tomorrow", r"tokens:1: expires=tomorrow: not a timestamp"),
        (f"{fresh} {REVIEWS} expires=2030-01-01T00:00:00", r"tokens:1: .*time zone"),
        (f"{fresh} {REVIEWS} later", r"tokens:1: expected 'TOKEN SPIFFE-ID'"),
    ]:
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=why):
            load_tokens(str(path), BootstrapTokens())


def test_rotating_the_token_file_takes_effect_without_a_restart(tmp_path: Path) -> None:
    """Write the new file and rename it over the old one: the CA serves the new tokens from
    the next attempt (it looks at most once a second), and the old ones are gone."""
    path = tmp_path / "tokens"
    old, new = "d" * 32, "e" * 32
    path.write_text(f"{old} {REVIEWS}\n")
    tokens = BootstrapTokens()
    load_tokens(str(path), tokens)

    async def body(ca: CertificateAuthority, toks: BootstrapTokens, srv: CAServer) -> None:
        address = f"127.0.0.1:{srv.port}"
        assert (await csr_call(address, ca.trust_bundle_pem(), REVIEWS, old)).cert_chain
        staged = tmp_path / "tokens.new"
        staged.write_text(f"{new} {REVIEWS} expires=2099-01-01T00:00:00Z\n")
        staged.rename(path)
        await asyncio.sleep(1.1)
        assert (await csr_call(address, ca.trust_bundle_pem(), REVIEWS, new)).cert_chain
        err = await refused(ca, srv, old)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        # A broken file is refused as a whole: the CA keeps the tokens it had.
        path.write_text("broken line\n")
        await asyncio.sleep(1.1)
        assert (await csr_call(address, ca.trust_bundle_pem(), REVIEWS, new)).cert_chain

    run(body, tokens=tokens)
