"""Bootstrap tokens: a workload's credential for its first certificate, and the limit on guessing.

A token names the one identity it may obtain a certificate for, and it expires. Tokens come
from :meth:`BootstrapTokens.issue` (random, one hour by default) or from a token file
(``meshcore serve --tokens FILE``), one token per line::

    TOKEN SPIFFE-ID [expires=2026-12-03T09:00:00Z]

``#`` starts a comment. A line without ``expires=`` is valid for ``FILE_TOKEN_TTL`` (24 hours)
after the file was last written (its modification time), so a file left in place stops
granting certificates a day later. Rotation: write the new file next to the old one and rename
it over it; the CA notices the new modification time on the next bootstrap attempt (it checks
at most once a second) and serves the new set. A file with a bad line is refused as a whole
(``FILE:LINE: why``); while running, the CA then keeps the tokens it had and logs the error.

:class:`FailureLimiter` bounds how fast one address may guess: after ``max_failures`` failed
attempts within ``window`` seconds, every bootstrap attempt from that address (a right token
included) is refused with RESOURCE_EXHAUSTED until the oldest failure leaves the window.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass

from meshcore._text import shown
from meshcore.ca.authority import CAError, now
from meshcore.ca.spiffe import IdentityError, SpiffeId

log = logging.getLogger("meshcore.ca")

# How long a token-file line without expires= is valid after the file was written.
FILE_TOKEN_TTL = datetime.timedelta(hours=24)
# Expired tokens are remembered this long to say "expired" rather than "unknown".
EXPIRED_MEMORY = datetime.timedelta(days=7)
_FILE_CHECK_S = 1.0


class TokenRefused(CAError):
    """A bootstrap token the CA does not accept (unknown or expired); the message says why."""


@dataclass(frozen=True, slots=True)
class _Token:
    identity: SpiffeId
    expires: datetime.datetime
    source: str | None  # the token file it came from, None when issued or added


class BootstrapTokens:
    """Secrets, each naming the one identity it may obtain a first certificate for.

    Only a hash of each token is kept, and lookups by hash do not leak timing on the token.
    """

    def __init__(self, ttl: datetime.timedelta = datetime.timedelta(hours=1)) -> None:
        self.ttl = ttl
        self._tokens: dict[bytes, _Token] = {}
        self._lock = threading.Lock()
        self._file: str | None = None
        self._file_stamp: tuple[int, int] | None = None
        self._file_checked = 0.0

    def issue(self, identity: str, ttl: datetime.timedelta | None = None) -> str:
        spiffe = SpiffeId.parse(identity)
        # 256 bits, hex: safe to pass on a command line (a urlsafe token may start with '-').
        token = secrets.token_hex(32)
        self._put(token, _Token(spiffe, now() + (ttl or self.ttl), None))
        return token

    def add(self, token: str, identity: str, ttl: datetime.timedelta | None = None) -> None:
        """Registers a token made elsewhere, valid for ``ttl`` (default: this set's ttl)."""
        _check_token(token)
        self._put(token, _Token(SpiffeId.parse(identity), now() + (ttl or self.ttl), None))

    def _put(self, token: str, entry: _Token) -> None:
        with self._lock:
            self._forget_expired()
            self._tokens[_digest(token)] = entry

    def _forget_expired(self) -> None:
        cutoff = now() - EXPIRED_MEMORY
        for digest in [d for d, t in self._tokens.items() if t.expires < cutoff]:
            del self._tokens[digest]

    def check(self, token: str) -> SpiffeId:
        """The identity ``token`` grants; TokenRefused says why it grants none."""
        self._reload_if_changed()
        with self._lock:
            entry = self._tokens.get(_digest(token))
        if entry is None:
            raise TokenRefused("unknown bootstrap token")
        if now() >= entry.expires:
            where = f" (from {entry.source})" if entry.source else ""
            raise TokenRefused(
                f"bootstrap token{where} expired at {entry.expires:%Y-%m-%dT%H:%M:%SZ}; "
                "get a new token"
            )
        return entry.identity

    def verify(self, token: str) -> SpiffeId | None:
        """The identity ``token`` grants, or None (unknown or expired)."""
        try:
            return self.check(token)
        except TokenRefused:
            return None

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(_digest(token), None)

    # --- token files ---------------------------------------------------------------------------

    def load_file(self, path: str) -> int:
        """Reads ``path`` (see the module's docstring), replacing the tokens of the file read
        before, and watches it for changes; returns the number of tokens. A bad line raises
        ValueError naming the file and line, and changes nothing."""
        stamp = _stamp(path)
        read = read_token_file(path, stamp)
        with self._lock:
            for digest in [d for d, t in self._tokens.items() if t.source is not None]:
                del self._tokens[digest]
            self._tokens.update(read)
            self._file = path
            self._file_stamp = stamp
            self._file_checked = time.monotonic()
        expired = sum(1 for t in read.values() if now() >= t.expires)
        if expired:
            log.warning("%s: %d of %d bootstrap tokens have expired", path, expired, len(read))
        return len(read)

    def _reload_if_changed(self) -> None:
        if self._file is None or time.monotonic() - self._file_checked < _FILE_CHECK_S:
            return
        self._file_checked = time.monotonic()
        try:
            if _stamp(self._file) == self._file_stamp:
                return
            count = self.load_file(self._file)
        except (OSError, ValueError) as exc:
            log.error("bootstrap tokens not reloaded, the previous ones stay: %s", exc)
            return
        log.info("bootstrap tokens reloaded from %s: %d", self._file, count)


def read_token_file(path: str, stamp: tuple[int, int] | None = None) -> dict[bytes, _Token]:
    """The tokens of a token file by digest; ValueError ``FILE:LINE: why`` on a bad line."""
    written = datetime.datetime.fromtimestamp((stamp or _stamp(path))[0] / 1e9, datetime.UTC)
    out: dict[bytes, _Token] = {}
    with open(path, encoding="utf-8") as f:
        try:
            lines = list(f)
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        expires = written + FILE_TOKEN_TTL
        try:
            if len(parts) == 3 and parts[2].startswith("expires="):
                expires = _timestamp(parts[2][len("expires=") :])
            elif len(parts) != 2:
                raise ValueError(
                    "expected 'TOKEN SPIFFE-ID' (optionally followed by "
                    "expires=2026-01-01T00:00:00Z)"
                )
            _check_token(parts[0])
            out[_digest(parts[0])] = _Token(SpiffeId.parse(parts[1]), expires, path)
        except (CAError, IdentityError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    return out


def load_tokens(path: str, tokens: BootstrapTokens) -> int:
    """``meshcore serve --tokens FILE``: :meth:`BootstrapTokens.load_file`."""
    return tokens.load_file(path)


def _timestamp(text: str) -> datetime.datetime:
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expires={shown(text, 40)}: not a timestamp (e.g. 2026-01-01T00:00:00Z)"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"expires={text}: give the time zone (e.g. a trailing Z for UTC)")
    return when.astimezone(datetime.UTC)


def _check_token(token: str) -> None:
    if len(token) < 16:
        raise CAError("bootstrap tokens must be at least 16 characters")


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class FailureLimiter:
    """Failed attempts per address: at most ``max_failures`` within ``window`` seconds, then
    :meth:`blocked` says how long to wait. At most ``max_addresses`` are remembered (the ones
    whose failures left the window go first, then the oldest)."""

    def __init__(
        self, max_failures: int = 10, window: float = 60.0, max_addresses: int = 10000
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_addresses = max_addresses
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, address: str) -> float:
        """Seconds until ``address`` may try again; 0.0 when it may now."""
        with self._lock:
            times = self._failures.get(address)
            if times is None or len(times) < self.max_failures:
                return 0.0
            wait = times[0] + self.window - time.monotonic()
            return max(0.0, wait)

    def failed(self, address: str) -> None:
        with self._lock:
            times = self._failures.get(address)
            if times is None:
                if len(self._failures) >= self.max_addresses:
                    self._evict()
                times = self._failures[address] = collections.deque(maxlen=self.max_failures)
            times.append(time.monotonic())

    def _evict(self) -> None:
        cutoff = time.monotonic() - self.window
        for address in [a for a, t in self._failures.items() if t[-1] < cutoff]:
            del self._failures[address]
        while len(self._failures) >= self.max_addresses:
            del self._failures[next(iter(self._failures))]

    def __len__(self) -> int:
        return len(self._failures)


def peer_address(peer: str | None) -> str:
    """The address part of a gRPC peer (``ipv4:10.0.0.1:5555`` -> ``ipv4:10.0.0.1``): the
    client's port changes with each connection, its address does not."""
    if not peer:
        return "unknown"
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer
