"""Config stores: where the control plane's resources live besides a directory.

``etcd://HOST:PORT[,HOST:PORT...]/PREFIX``: etcd v3, one resource per key
``PREFIX/<apiGroup>/<Kind>/<namespace>/<name>`` holding the YAML or JSON that was applied,
its ``mod_revision`` the resource's version (see :mod:`meshcore.store.etcd`,
:mod:`meshcore.store.source`, :mod:`meshcore.store.apply`).

This module needs only the standard library: the URL and the key layout. The client needs
the ``etcd`` extra (``pip install 'meshcore-xds[etcd]'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SCHEME = "etcd://"


class StoreURLError(ValueError):
    """A store address that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    """Client TLS to etcd, as etcdctl's ``--cacert``, ``--cert`` and ``--key``: PEM files.
    ``cacert`` None trusts the system's roots; ``cert`` and ``key`` (both or neither) are the
    client certificate etcd's ``--client-cert-auth`` asks for."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def check(self) -> None:
        """StoreURLError when the files cannot be used (absent, unreadable, half a pair)."""
        if (self.cert is None) != (self.key is None):
            raise StoreURLError("--etcd-cert and --etcd-key go together (the client certificate)")
        for flag, path in (("cacert", self.cacert), ("cert", self.cert), ("key", self.key)):
            if path is not None and not Path(path).is_file():
                raise StoreURLError(f"--etcd-{flag} {path}: no such file")

    def read(self) -> tuple[bytes | None, bytes | None, bytes | None]:
        """(CA bundle, private key, certificate chain) as bytes, as gRPC takes them."""

        def load(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return load(self.cacert), load(self.key), load(self.cert)


@dataclass(frozen=True, slots=True)
class StoreURL:
    """``etcd://HOST:PORT[,HOST:PORT...]/PREFIX``, parsed; ``tls`` when etcd is reached over
    TLS (the ``--etcd-cacert``, ``--etcd-cert``, ``--etcd-key`` flags)."""

    endpoints: tuple[str, ...]  # HOST:PORT each
    prefix: str  # without a trailing slash, e.g. "/meshcore"
    tls: EtcdTLS | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{SCHEME}{','.join(self.endpoints)}{self.prefix}"

    def key(self, group: str, kind: str, namespace: str, name: str) -> str:
        """The key of one resource (the core group is written ``core``)."""
        return f"{self.prefix}/{group or 'core'}/{kind}/{namespace}/{name}"

    @property
    def config_prefix(self) -> str:
        """What every resource key starts with (the meta keys live elsewhere)."""
        return f"{self.prefix}/"

    def meta(self, *parts: str) -> str:
        """A key of the control plane's own state (CA, leader, proxies), outside the config:
        ``PREFIX`` + ``.meshcore/...`` is not ``PREFIX/``... so the config watch never sees
        it."""
        return "/".join((f"{self.prefix}.meshcore", *parts))


def is_store(address: str) -> bool:
    return address.startswith(SCHEME)


def parse_store_url(address: str) -> StoreURL:
    """Parses ``etcd://HOST:PORT[,HOST:PORT...]/PREFIX``; StoreURLError says what is wrong."""
    if not address.startswith(SCHEME):
        raise StoreURLError(f"{address!r}: a store address starts with {SCHEME}")
    rest = address[len(SCHEME) :]
    hosts, slash, path = rest.partition("/")
    if not slash or not path.strip("/"):
        raise StoreURLError(
            f"{address!r}: give a key prefix after the endpoints, e.g. {SCHEME}127.0.0.1:2379/mesh"
        )
    endpoints = []
    for ep in hosts.split(","):
        host, colon, port = ep.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StoreURLError(f"{address!r}: endpoint {ep!r} is not HOST:PORT")
        endpoints.append(f"{host}:{int(port)}")
    prefix = "/" + path.strip("/")
    if any(c in prefix for c in "\x00\n"):
        raise StoreURLError(f"{address!r}: the prefix holds a control character")
    return StoreURL(tuple(endpoints), prefix)


def split_key(url: StoreURL, key: str) -> tuple[str, str, str, str] | None:
    """(group, kind, namespace, name) of a resource key under ``url``; None when the key does
    not have that shape."""
    if not key.startswith(url.config_prefix):
        return None
    parts = key[len(url.config_prefix) :].split("/")
    if len(parts) != 4 or not all(parts):
        return None
    group, kind, namespace, name = parts
    return ("" if group == "core" else group), kind, namespace, name


__all__ = [
    "SCHEME",
    "EtcdTLS",
    "StoreURL",
    "StoreURLError",
    "is_store",
    "parse_store_url",
    "split_key",
]
