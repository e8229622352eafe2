"""Python ``ssl`` contexts from a workload's SVID that verify the peer's SPIFFE identity.

The chain is verified against the mesh's trust bundle as usual (no host names: SPIFFE
certificates carry URI SANs); then, as Envoy's ``match_typed_subject_alt_names`` does, the
peer's URI SAN must be one of the cluster's expected SPIFFE ids, or at least in the trust
domain when the cluster names none. The check runs inside the handshake (the context's SSL
object and socket classes do it), so a wrong peer fails the connection before a byte of the
request is sent.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from meshcore.dataplane.certs import WorkloadSecret

Check = Callable[[dict[str, Any] | None], None]


def uri_sans(peercert: dict[str, Any] | None) -> list[str]:
    """The URI SANs of a certificate as ``SSLObject.getpeercert()`` returns it."""
    if not peercert:
        return []
    return [v for k, v in peercert.get("subjectAltName", ()) if k == "URI"]


def spiffe_check(expected: Sequence[str], trust_domain: str) -> Check:
    allowed = frozenset(expected)
    prefix = f"spiffe://{trust_domain}/"

    def check(peercert: dict[str, Any] | None) -> None:
        uris = uri_sans(peercert)
        if allowed:
            if not allowed.intersection(uris):
                raise ssl.SSLCertVerificationError(
                    f"peer SPIFFE id {uris or 'none'} is not one of {sorted(allowed)}"
                )
        elif not any(u.startswith(prefix) for u in uris):
            raise ssl.SSLCertVerificationError(
                f"peer SPIFFE id {uris or 'none'} is not in trust domain {trust_domain!r}"
            )

    return check


def _install_check(ctx: ssl.SSLContext, check: Check) -> None:
    class SpiffeSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            check(self.getpeercert())

    class SpiffeSSLSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            check(self.getpeercert())

    ctx.sslobject_class = SpiffeSSLObject
    ctx.sslsocket_class = SpiffeSSLSocket


def _load_identity(ctx: ssl.SSLContext, secret: WorkloadSecret) -> None:
    # ssl loads a key only from a file: a private temporary one, removed right away.
    fd, path = tempfile.mkstemp(prefix="meshcore-svid-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secret.private_key_pem)
            f.write(secret.cert_chain_pem.encode())
        ctx.load_cert_chain(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    ctx.load_verify_locations(cadata=secret.roots_pem)


def client_context(
    secret: WorkloadSecret,
    *,
    sans: Sequence[str] = (),
    trust_domain: str,
    alpn: Sequence[str] = ("http/1.1",),
) -> ssl.SSLContext:
    """A client context presenting the SVID and verifying the server's SPIFFE id."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # SPIFFE ids, not host names, are checked (below)
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_identity(ctx, secret)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    _install_check(ctx, spiffe_check(sans, trust_domain))
    return ctx


def server_context(
    secret: Callable[[], WorkloadSecret],
    *,
    trust_domain: str,
    alpn: Sequence[str] = ("http/1.1",),
) -> ssl.SSLContext:
    """A server context requiring a client certificate from the trust domain. It follows
    certificate rotation: each handshake switches to a context for the current SVID."""
    current: dict[int, ssl.SSLContext] = {}

    def build(s: WorkloadSecret) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        _load_identity(ctx, s)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        _install_check(ctx, spiffe_check((), trust_domain))
        return ctx

    first = secret()
    outer = build(first)
    current[first.serial] = outer

    def sni_callback(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: Any) -> None:
        del name, ctx
        s = secret()
        found = current.get(s.serial)
        if found is None:
            current.clear()
            found = current[s.serial] = build(s)
            found.sni_callback = sni_callback
        if obj.context is not found:
            obj.context = found

    outer.sni_callback = sni_callback
    return outer
