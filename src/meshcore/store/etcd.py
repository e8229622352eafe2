"""A small, synchronous etcd v3 client over gRPC, with failover between endpoints.

The protocol stubs are etcd's own ``rpc.proto`` as compiled and shipped by the maintained
asyncio client ``aetcd`` (``aetcd.rpc``; protobuf 5-7). aetcd's ``Client`` itself talks to
one endpoint and is asyncio-only; meshcore needs every member of a cluster (a call that
finds its member gone moves on to the next one) and the same calls from threads (the
config watch runs in one, off the event loop) and from the CLI, so it drives the stubs over
its own channel here.

Calls are thread-safe. A call that cannot reach any endpoint raises :class:`StoreUnavailable`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from meshcore._extras import require
from meshcore.store import EtcdTLS

require("etcd", "the etcd config store")

from aetcd import rpc  # noqa: E402  (untyped generated code: messages are Any here)

log = logging.getLogger("meshcore.store")

CALL_TIMEOUT = 5.0
# Watches and leases ask for a member that has a leader: a member cut off from the others
# cancels them (etcd's WithRequireLeader) instead of serving a stale view forever.
REQUIRE_LEADER = (("hasleader", "true"),)
# gRPC keepalive below etcd's enforcement minimum (5 s) would get the connection closed.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 2**20),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class StoreUnavailable(ConnectionError):
    """No etcd endpoint answered; the message names them and the last error."""


def prefix_end(prefix: bytes) -> bytes:
    """The end of etcd's range holding every key that starts with ``prefix``."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def _check_pem(tls: EtcdTLS, root: bytes | None, key: bytes | None, chain: bytes | None) -> None:
    """StoreUnavailable naming the file that is not what its flag wants (gRPC would only say
    it failed to create a handshaker). Looks for the PEM blocks only (the ``etcd`` extra has
    no X.509 parser); never echoes a key's content."""
    for flag, path, data in (("--etcd-cacert", tls.cacert, root), ("--etcd-cert", tls.cert, chain)):
        if data is not None and b"-----BEGIN CERTIFICATE-----" not in data:
            raise StoreUnavailable(f"etcd TLS: {flag} {path} holds no PEM certificate")
    if key is not None and (
        b"PRIVATE KEY-----" not in key or b"ENCRYPTED" in key or b"-----BEGIN" not in key
    ):
        raise StoreUnavailable(
            f"etcd TLS: --etcd-key {tls.key} is not an unencrypted PEM private key"
        )


class EtcdClient:
    """KV, Txn, Watch, Lease and Compact against a list of endpoints (``HOST:PORT``)."""

    def __init__(
        self, endpoints: Sequence[str], *, timeout: float = CALL_TIMEOUT, tls: EtcdTLS | None = None
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self.tls = tls
        # Read once (StoreUnavailable when a file cannot be); a channel per endpoint uses them.
        self._credentials: grpc.ChannelCredentials | None = None
        if tls is not None:
            try:
                root, key, chain = tls.read()
            except OSError as exc:
                raise StoreUnavailable(
                    f"etcd TLS: cannot read {exc.filename}: {exc.strerror}"
                ) from None
            _check_pem(tls, root, key, chain)
            self._credentials = grpc.ssl_channel_credentials(root, key, chain)
        self._lock = threading.Lock()
        self._current = 0
        self._channel: grpc.Channel | None = None
        self._generation = 0  # bumped when the channel is replaced

    # ----- the channel -----

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    def clone(self) -> EtcdClient:
        """Another client (its own channel) to the same endpoints, with the same TLS."""
        return EtcdClient(self.endpoints, timeout=self.timeout, tls=self.tls)

    def _stubs(self) -> tuple[int, grpc.Channel]:
        with self._lock:
            if self._channel is None:
                if self._credentials is not None:
                    self._channel = grpc.secure_channel(
                        self.endpoint, self._credentials, options=CHANNEL_OPTIONS
                    )
                else:
                    self._channel = grpc.insecure_channel(self.endpoint, options=CHANNEL_OPTIONS)
            return self._generation, self._channel

    def failover(self, generation: int | None = None) -> None:
        """Moves to the next endpoint (unless another thread already did since
        ``generation``)."""
        with self._lock:
            if generation is not None and generation != self._generation:
                return
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._current = (self._current + 1) % len(self.endpoints)
            self._generation += 1
            log.info("etcd: trying %s", self.endpoint)

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._generation += 1

    def _unary(self, service: str, method: str, request: Any, *, leader: bool = False) -> Any:
        last: grpc.RpcError | None = None
        for _ in range(len(self.endpoints)):
            generation, channel = self._stubs()
            stub = getattr(rpc, f"{service}Stub")(channel)
            try:
                return getattr(stub, method)(
                    request, timeout=self.timeout, metadata=REQUIRE_LEADER if leader else None
                )
            except grpc.RpcError as exc:
                if exc.code() not in _RETRYABLE and "no leader" not in str(exc.details()):
                    raise
                last = exc
                self.failover(generation)
        details = (last.details() if last is not None else None) or "no endpoint"
        raise StoreUnavailable(
            f"etcd at {', '.join(self.endpoints)} is unreachable: {details}{self._hint(details)}"
        )

    def _hint(self, details: str) -> str:
        """What a refused TLS session most likely means, after gRPC's terse reason."""
        if self.tls is None:
            if "Socket closed" in details or "Connection reset" in details:
                return " (does etcd want TLS? give --etcd-cacert, --etcd-cert and --etcd-key)"
            return ""
        if "CERTIFICATE_VERIFY_FAILED" in details:
            return " (etcd's server certificate is not signed by --etcd-cacert, or not for this address)"
        if "TSI_DATA_CORRUPTED" in details or "BAD_CERTIFICATE" in details:
            return (
                " (etcd refused this client: its --trusted-ca-file did not sign --etcd-cert, "
                "or none was given)"
            )
        if "WRONG_VERSION_NUMBER" in details or "TSI_PROTOCOL_FAILURE" in details:
            return " (is etcd serving TLS on this address?)"
        return ""

    # ----- KV -----

    def range_prefix(self, prefix: str, revision: int = 0) -> tuple[int, list[Any]]:
        """(the store's revision, every KeyValue under ``prefix`` at ``revision`` (0: now))."""
        key = prefix.encode()
        resp = self._unary(
            "KV",
            "Range",
            rpc.RangeRequest(key=key, range_end=prefix_end(key), revision=revision),
        )
        return int(resp.header.revision), list(resp.kvs)

    def get(self, key: str) -> tuple[int, Any | None]:
        """(the store's revision, the key's KeyValue or None)."""
        resp = self._unary("KV", "Range", rpc.RangeRequest(key=key.encode()))
        return int(resp.header.revision), (resp.kvs[0] if resp.kvs else None)

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        resp = self._unary("KV", "Put", rpc.PutRequest(key=key.encode(), value=value, lease=lease))
        return int(resp.header.revision)

    def delete(self, key: str) -> int:
        resp = self._unary("KV", "DeleteRange", rpc.DeleteRangeRequest(key=key.encode()))
        return int(resp.deleted)

    def txn(
        self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> Any:
        """One transaction (all of ``success`` when every compare holds, else ``failure``)."""
        return self._unary(
            "KV",
            "Txn",
            rpc.TxnRequest(compare=list(compare), success=list(success), failure=list(failure)),
        )

    def compact(self, revision: int) -> None:
        self._unary("KV", "Compact", rpc.CompactionRequest(revision=revision, physical=True))

    # ----- Lease -----

    def grant(self, ttl: int) -> int:
        resp = self._unary("Lease", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl), leader=True)
        if resp.error:
            raise StoreUnavailable(f"etcd refused a lease: {resp.error}")
        return int(resp.ID)

    def keep_alive(self, lease: int) -> int:
        """Refreshes a lease once; its TTL left (0: the lease is gone)."""
        generation, channel = self._stubs()
        stub = rpc.LeaseStub(channel)
        try:
            for resp in stub.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease)]),
                timeout=self.timeout,
                metadata=REQUIRE_LEADER,
            ):
                return int(resp.TTL)
        except grpc.RpcError as exc:
            if exc.code() in _RETRYABLE:
                self.failover(generation)
                raise StoreUnavailable(f"etcd lease refresh failed: {exc.details()}") from None
            raise
        return 0

    def revoke(self, lease: int) -> None:
        self._unary("Lease", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease))

    # ----- Watch -----

    def watch(self, prefix: str, start_revision: int, *, single: bool = False) -> Watch:
        """A watch of every key under ``prefix`` (``single``: of that one key) from
        ``start_revision`` (inclusive)."""
        return Watch(self, prefix, start_revision, single=single)


class Watch:
    """One watch stream: iterate for WatchResponses; :meth:`cancel` ends it (from any thread).
    A broken stream raises grpc.RpcError (or StoreUnavailable) from the iteration."""

    def __init__(
        self, client: EtcdClient, prefix: str, start_revision: int, *, single: bool = False
    ) -> None:
        self.client = client
        key = prefix.encode()
        create = rpc.WatchCreateRequest(
            key=key, range_end=b"" if single else prefix_end(key), start_revision=start_revision
        )
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(rpc.WatchRequest(create_request=create))
        self.generation, channel = client._stubs()
        self._call: Any = rpc.WatchStub(channel).Watch(
            self._request_iter(), metadata=REQUIRE_LEADER
        )

    def _request_iter(self) -> Iterator[Any]:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def __iter__(self) -> Iterator[Any]:
        return iter(self._call)

    def cancel(self) -> None:
        self._requests.put(None)
        self._call.cancel()


__all__ = ["EtcdClient", "StoreUnavailable", "Watch", "prefix_end", "rpc"]
