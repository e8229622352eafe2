"""What control-plane replicas on one etcd store share, under ``PREFIX.meshcore/`` (outside
the config prefix, so the config watch never sees it):

- ``ca``: the self-signed CA's signing key and certificate, created once by whichever replica
  wins an etcd create-if-absent transaction and read by every other (:func:`shared_authority`);
  the leader rotates its root before it expires (:func:`rotation_step`) and every replica
  watches it (:class:`CAWatch`) and signs with the new version as soon as it is committed.
- ``leader``: a key held under a lease by the one replica doing once-only work
  (:class:`LeaderElection`); it is gone within the lease's TTL of the holder's loss.
- ``proxies/<replica>/<shard>``: each replica's connected proxies and their sync state, under
  the replica's lease (:class:`ProxyRegistry`; ``meshcore proxy-status --store`` reads them).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshcore.ca import CAError, CertificateAuthority
from meshcore.ca.authority import ROOT_GRACE, ROOT_TTL
from meshcore.store import StoreURL
from meshcore.store.etcd import EtcdClient, StoreUnavailable, Watch, rpc

log = logging.getLogger("meshcore.store")

LEASE_TTL = 10  # seconds: a lost replica's leadership and proxies are gone within this


def _key_pem(ca: CertificateAuthority) -> str:
    pem = serialization.Encoding.PEM
    return ca.key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _encode_ca(ca: CertificateAuthority, upcoming: CertificateAuthority | None = None) -> bytes:
    """The stored record: the signing key and certificate, the trust bundle, and during a
    rotation the next root (``next-key.pem``, ``next-cert.pem``), trusted but not signing yet."""
    pem = serialization.Encoding.PEM
    data = {
        "ca-key.pem": _key_pem(ca),
        "ca-cert.pem": ca.cert.public_bytes(pem).decode(),
        "root-cert.pem": ca.trust_bundle_pem(),
    }
    if upcoming is not None:
        data["next-key.pem"] = _key_pem(upcoming)
        data["next-cert.pem"] = upcoming.cert.public_bytes(pem).decode()
    return json.dumps(data).encode()


def _decode_ca(value: bytes, trust_domain: str) -> CertificateAuthority:
    return _decode_record(value, trust_domain)[0]


def _decode_record(
    value: bytes, trust_domain: str
) -> tuple[CertificateAuthority, CertificateAuthority | None]:
    """The signing CA and, during a rotation, the next root (see :func:`_encode_ca`)."""
    try:
        data = json.loads(value)
        cert = x509.load_pem_x509_certificate(data["ca-cert.pem"].encode())
        key: Any = serialization.load_pem_private_key(data["ca-key.pem"].encode(), password=None)
        roots = x509.load_pem_x509_certificates(data["root-cert.pem"].encode())
        upcoming = None
        if "next-cert.pem" in data:
            next_cert = x509.load_pem_x509_certificate(data["next-cert.pem"].encode())
            next_key: Any = serialization.load_pem_private_key(
                data["next-key.pem"].encode(), password=None
            )
            upcoming = CertificateAuthority(
                cert=next_cert, key=next_key, roots=roots, trust_domain=trust_domain
            )
        signing = CertificateAuthority(cert=cert, key=key, roots=roots, trust_domain=trust_domain)
    except (ValueError, KeyError, TypeError, AttributeError):
        # Never echo key material or parser detail about it.
        raise CAError("the shared CA in the store is unreadable") from None
    return signing, upcoming


def rotation_step(
    value: bytes,
    *,
    trust_domain: str = "cluster.local",
    grace: float = ROOT_GRACE,
    root_ttl: datetime.timedelta | None = None,
    at: datetime.datetime | None = None,
) -> bytes | None:
    """The stored CA record's next state in a root rotation, or None when nothing is due:

    1. less than ``grace`` of the signing root's lifetime left: a new root (of ``root_ttl``,
       else the old one's lifetime) joins the trust bundle, not signing yet, so that every
       proxy trusts it before any certificate it signs is presented;
    2. less than half of ``grace`` left: the new root signs; the old one stays in the bundle
       (the certificates it signed end with it: a leaf never outlives its issuer);
    3. a root in the bundle that has expired leaves it.
    """
    when = at or datetime.datetime.now(datetime.UTC)
    signing, upcoming = _decode_record(value, trust_domain)
    cert = signing.cert
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    left = cert.not_valid_after_utc - when
    roots = [c for c in signing.roots() if c.not_valid_after_utc > when]
    if upcoming is None and left < lifetime * grace:
        upcoming = CertificateAuthority.generate(trust_domain, ttl=root_ttl or lifetime)
        roots = [upcoming.cert, *roots]
    elif upcoming is not None and left < lifetime * grace / 2:
        signing, upcoming = upcoming, None
    elif roots == list(signing.roots()):
        return None
    signing = CertificateAuthority(
        cert=signing.cert, key=signing.key, roots=roots, trust_domain=trust_domain
    )
    return _encode_ca(signing, upcoming)


def shared_authority(
    client: EtcdClient,
    url: StoreURL,
    *,
    trust_domain: str = "cluster.local",
    root_ttl: datetime.timedelta | None = None,
    lease_ttl: int = LEASE_TTL,
    wait: float | None = None,
    poll: float = 0.1,
) -> tuple[CertificateAuthority, bool]:
    """The replicas' one CA: read from the store, or generated (a root of ``root_ttl``, else
    10 years) and stored by this replica (True then). Never logged.

    Creating it is done under a lock, ``PREFIX.meshcore/ca-lock``, created if absent under
    this replica's lease: only the lock's holder generates a key, and its write is one
    transaction that holds only while the lock is still its own and no record exists (so a
    holder whose lease expired writes nothing). The others wait for the record; a holder lost
    before writing frees the lock within ``lease_ttl``, and the next replica takes it. After
    ``wait`` seconds (default: three lease TTLs) with neither record nor lock, CAError."""
    key, lock = url.meta("ca"), url.meta("ca-lock")
    waited = 3 * lease_ttl if wait is None else wait
    deadline = time.monotonic() + waited
    while True:
        _, kv = client.get(key)
        if kv is not None:
            return _decode_ca(bytes(kv.value), trust_domain), False
        _, held = client.get(lock)
        if held is None:
            made = _create_under_lock(client, key, lock, lease_ttl, trust_domain, root_ttl)
            if made is not None:
                return made
        if time.monotonic() >= deadline:
            raise CAError(
                f"no shared CA in the store after {waited:g} s: another replica holds the"
                " creation lock and has not written it"
            )
        time.sleep(poll)


def _create_under_lock(
    client: EtcdClient,
    key: str,
    lock: str,
    lease_ttl: int,
    trust_domain: str,
    root_ttl: datetime.timedelta | None,
) -> tuple[CertificateAuthority, bool] | None:
    """Takes the creation lock and, holding it, generates and stores the CA (or reads the one
    stored meanwhile); None when another replica took the lock first or this one lost it."""
    lease = client.grant(lease_ttl)
    try:
        taken = client.txn(
            [_absent(lock)],
            [rpc.RequestOp(request_put=rpc.PutRequest(key=lock.encode(), lease=lease))],
        )
        if not taken.succeeded:
            return None
        candidate = CertificateAuthority.generate(
            trust_domain=trust_domain, ttl=root_ttl or ROOT_TTL
        )
        resp = client.txn(
            [
                _absent(key),
                rpc.Compare(
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.LEASE,
                    key=lock.encode(),
                    lease=lease,
                ),
            ],
            [
                rpc.RequestOp(
                    request_put=rpc.PutRequest(key=key.encode(), value=_encode_ca(candidate))
                )
            ],
            [rpc.RequestOp(request_range=rpc.RangeRequest(key=key.encode()))],
        )
        if resp.succeeded:
            log.info("generated the replicas' shared CA root (stored in the config store)")
            return candidate, True
        stored = resp.responses[0].response_range.kvs
        return (_decode_ca(bytes(stored[0].value), trust_domain), False) if stored else None
    finally:
        # Revoking the lease deletes the lock; a lease already gone is gone either way.
        with contextlib.suppress(StoreUnavailable, grpc.RpcError):
            client.revoke(lease)


def _absent(key: str) -> rpc.Compare:
    return rpc.Compare(
        result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key.encode(), create_revision=0
    )


class LeaderElection:
    """One leader among the replicas, on an etcd lease: the holder of ``PREFIX.meshcore/leader``
    (created if absent under its lease) is leader while it keeps the lease alive; a holder that
    cannot refresh it stops being leader at once (``leader`` False) and the key expires with
    the lease, within ``ttl`` seconds, for another replica to take."""

    def __init__(
        self, client: EtcdClient, url: StoreURL, identity: str, ttl: int = LEASE_TTL
    ) -> None:
        self.client = client
        self.key = url.meta("leader")
        self.identity = identity
        self.ttl = ttl
        self.lease = 0
        self.leader = False
        self.on_change: Callable[[bool], None] | None = None

    def step(self) -> bool:
        """One round: keep the lease alive (or get one), try to take the key; whether this
        replica leads now. StoreUnavailable leaves it not leading."""
        try:
            if self.lease and self.client.keep_alive(self.lease) <= 0:
                self.lease = 0
            if not self.lease:
                self.lease = self.client.grant(self.ttl)
            k = self.key.encode()
            resp = self.client.txn(
                [_absent(self.key)],
                [
                    rpc.RequestOp(
                        request_put=rpc.PutRequest(
                            key=k, value=self.identity.encode(), lease=self.lease
                        )
                    )
                ],
                [rpc.RequestOp(request_range=rpc.RangeRequest(key=k))],
            )
            if resp.succeeded:
                now = True
            else:
                kvs = resp.responses[0].response_range.kvs
                now = bool(kvs) and int(kvs[0].lease) == self.lease
        except (StoreUnavailable, grpc.RpcError) as exc:
            log.debug("leader election: %s", exc)
            now, self.lease = False, 0
        if now != self.leader:
            log.info("%s %s the leader", self.identity, "is now" if now else "is no longer")
            self.leader = now
            if self.on_change is not None:
                self.on_change(now)
        return now

    def resign(self) -> None:
        if self.lease:
            # A lease already expired is NOT_FOUND: gone either way.
            with contextlib.suppress(StoreUnavailable, grpc.RpcError):
                self.client.revoke(self.lease)
        self.lease, self.leader = 0, False


SHARDS = 16  # keys per replica for its proxies: a change rewrites its shard, not the fleet


class ProxyRegistry:
    """A replica's connected proxies in the store, under its lease, in ``SHARDS`` keys
    (``PREFIX.meshcore/proxies/<replica>/<shard>``, a JSON map node id -> sync state per
    type, a proxy's shard from a hash of its id): a call writes only the shards that changed,
    in one transaction, so the store sees at most ``SHARDS`` writes per replica per interval
    however many proxies a push moves (one key per proxy would be two writes per proxy per
    push: STALE, then SYNCED)."""

    def __init__(
        self, client: EtcdClient, url: StoreURL, replica: str, ttl: int = LEASE_TTL
    ) -> None:
        self.client = client
        self.url = url
        self.replica = replica
        self.ttl = ttl
        self.lease = 0
        self._written: dict[int, bytes] = {}

    def prefix(self) -> str:
        return self.url.meta("proxies", self.replica) + "/"

    def sync(self, status: dict[str, dict[str, str]]) -> None:
        """Writes the shards that changed since the last call (StoreUnavailable: tried again
        next time, everything rewritten under a new lease)."""
        if self.lease and self.client.keep_alive(self.lease) <= 0:
            self.lease = 0
        if not self.lease:
            self.lease = self.client.grant(self.ttl)
            self._written = {}
        shards: dict[int, dict[str, dict[str, str]]] = {}
        for node, types in status.items():
            shards.setdefault(zlib.crc32(node.encode()) % SHARDS, {})[node] = types
        want = {
            i: json.dumps({"replica": self.replica, "proxies": proxies}, sort_keys=True).encode()
            for i, proxies in shards.items()
        }
        ops = []
        for i, value in want.items():
            if self._written.get(i) != value:
                key = f"{self.prefix()}{i}".encode()
                ops.append(
                    rpc.RequestOp(
                        request_put=rpc.PutRequest(key=key, value=value, lease=self.lease)
                    )
                )
        for i in self._written.keys() - want.keys():
            key = f"{self.prefix()}{i}".encode()
            ops.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key)))
        if ops:
            self.client.txn([], ops)
        self._written = want

    def close(self) -> None:
        if self.lease:
            # A lease already expired is NOT_FOUND: gone either way.
            with contextlib.suppress(StoreUnavailable, grpc.RpcError):
                self.client.revoke(self.lease)
        self.lease = 0


def all_proxies(client: EtcdClient, url: StoreURL) -> dict[str, dict[str, Any]]:
    """Every replica's registered proxies: node id -> {"replica": ..., "types": {...}}. A
    proxy that a replica which died still lists (until its lease expires) is taken from the
    most recent registration."""
    _, kvs = client.range_prefix(url.meta("proxies") + "/")
    out: dict[str, dict[str, Any]] = {}
    for kv in sorted(kvs, key=lambda kv: int(kv.mod_revision)):
        try:
            shard = json.loads(kv.value)
            for node, types in shard["proxies"].items():
                out[node] = {"replica": shard["replica"], "types": types}
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


class CAWatch:
    """Follows the shared CA record (``PREFIX.meshcore/ca``) with an etcd watch, in a thread of
    its own: reads it (``on_ca`` with its CA), watches the key from the revision after that
    read, hands every new version to ``on_ca`` as it is committed (a root rotation reaches
    each replica in one watch delivery, not a poll interval), and reads it again after a
    compaction or a lost member. A record that cannot be decoded is logged (never its
    content) and skipped: the replica keeps signing with the last one it took; a deleted
    record likewise."""

    def __init__(
        self,
        client: EtcdClient,
        url: StoreURL,
        on_ca: Callable[[CertificateAuthority], None],
        trust_domain: str = "cluster.local",
        retry_seconds: float = 0.5,
    ) -> None:
        self.client = client
        self.key = url.meta("ca")
        self.on_ca = on_ca
        self.trust_domain = trust_domain
        self.retry_seconds = retry_seconds
        self.revision = 0  # the mod_revision of the record last taken
        self.reads = 0  # full reads of the key (the first, then after compaction or loss)
        self._watch: Watch | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meshcore-ca-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.cancel()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow(self._read())
            except (StoreUnavailable, grpc.RpcError) as exc:
                if self._stop.is_set():
                    return
                log.debug("shared CA watch: %s", exc)
                self.client.failover(self._watch.generation if self._watch else None)
                self._stop.wait(self.retry_seconds)

    def _read(self) -> int:
        """Takes the record as it is now; the store's revision of that read."""
        self.reads += 1
        revision, kv = self.client.get(self.key)
        if kv is not None:
            self._take(kv)
        return revision

    def _follow(self, revision: int) -> None:
        """Watches the key after ``revision`` until a compaction (returns: read again) or the
        stream breaks (raises)."""
        watch = self.client.watch(self.key, revision + 1, single=True)
        self._watch = watch
        try:
            for resp in watch:
                if self._stop.is_set():
                    return
                if resp.compact_revision:
                    return
                if resp.canceled:
                    raise StoreUnavailable(f"watch cancelled: {resp.cancel_reason or 'no reason'}")
                for ev in resp.events:
                    if ev.type == 1:  # DELETE
                        log.error("shared CA: the record was deleted; signing with the last one")
                    else:
                        self._take(ev.kv)
            raise StoreUnavailable("the watch stream ended")
        finally:
            watch.cancel()

    def _take(self, kv: Any) -> None:
        revision = int(kv.mod_revision)
        if revision <= self.revision:
            return
        self.revision = revision
        try:
            ca = _decode_ca(bytes(kv.value), self.trust_domain)
        except CAError as exc:
            log.error("shared CA: %s (revision %d); signing with the last one", exc, revision)
            return
        try:
            self.on_ca(ca)
        except Exception:  # e.g. the state directory not writable: the watch goes on
            log.exception("shared CA: taking revision %d failed", revision)


def leader_of(client: EtcdClient, url: StoreURL) -> str | None:
    """The replica holding ``PREFIX.meshcore/leader`` now (None: no leader, e.g. for up to a
    lease TTL after the last one died)."""
    _, kv = client.get(url.meta("leader"))
    return bytes(kv.value).decode("utf-8", "replace") if kv is not None else None


class ReplicaDuties:
    """The thread that keeps a replica's shared state: leadership and its proxies, every
    ``interval`` seconds until :meth:`stop` (``status`` gives the proxies' sync state)."""

    def __init__(
        self,
        client: EtcdClient,
        url: StoreURL,
        replica: str,
        status: Callable[[], dict[str, dict[str, str]]],
        interval: float = 1.0,
        ttl: int = LEASE_TTL,
        analysis: Callable[[], dict[str, Any]] | None = None,
        on_ca: Callable[[CertificateAuthority], None] | None = None,
        trust_domain: str = "cluster.local",
        root_grace: float = ROOT_GRACE,
        root_ttl: datetime.timedelta | None = None,
    ) -> None:
        self.client = client
        self.url = url
        self.election = LeaderElection(client, url, replica, ttl)
        self.registry = ProxyRegistry(client, url, replica, ttl)
        self.status = status
        # The leader's once-only work: the config's analysis (problems by resource, at which
        # revision) written back to PREFIX.meshcore/status/analysis when it changes (istiod
        # writes analysis status back to resources from its leader only).
        self.analysis = analysis
        self._analysis_written = b""
        # The shared CA (PREFIX.meshcore/ca): the leader rotates its root (rotation_step);
        # every replica, the leader too, watches it and takes each new version (``on_ca``).
        self.on_ca = on_ca
        self.trust_domain = trust_domain
        self.root_grace = root_grace
        self.root_ttl = root_ttl
        self.ca_watch = (
            CAWatch(client.clone(), url, on_ca, trust_domain) if on_ca is not None else None
        )
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="meshcore-replica", daemon=True)

    def start(self) -> None:
        if self.ca_watch is not None:
            self.ca_watch.start()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.election.step():
                if self.analysis is not None:
                    self._write_analysis(self.analysis())
                if self.on_ca is not None:
                    self._rotate_root()
            try:
                self.registry.sync(self.status())
            except (StoreUnavailable, grpc.RpcError):
                self.registry.lease = 0
            except Exception:  # the event loop gone at shutdown, and the like: next round
                log.debug("proxy registry: skipped a round", exc_info=True)
            self._stop.wait(self.interval)

    def _as_leader(self) -> rpc.Compare:
        """The guard of the leader's writes: this replica still holds the leader key under
        its lease (a replica that lost it writes nothing)."""
        return rpc.Compare(
            result=rpc.Compare.EQUAL,
            target=rpc.Compare.LEASE,
            key=self.election.key.encode(),
            lease=self.election.lease,
        )

    def _rotate_root(self) -> None:
        k = self.url.meta("ca")
        try:
            _, kv = self.client.get(k)
            if kv is None:
                return
            value = rotation_step(
                bytes(kv.value),
                trust_domain=self.trust_domain,
                grace=self.root_grace,
                root_ttl=self.root_ttl,
            )
            if value is None:
                return
            resp = self.client.txn(
                [
                    self._as_leader(),
                    rpc.Compare(
                        result=rpc.Compare.EQUAL,
                        target=rpc.Compare.MOD,
                        key=k.encode(),
                        mod_revision=int(kv.mod_revision),
                    ),
                ],
                [rpc.RequestOp(request_put=rpc.PutRequest(key=k.encode(), value=value))],
            )
        except (StoreUnavailable, grpc.RpcError):
            return
        except CAError as exc:
            log.error("root rotation: %s", exc)
            return
        if resp.succeeded:
            log.info("%s: root rotation: the shared CA record advanced", self.election.identity)

    def _write_analysis(self, analysis: dict[str, Any]) -> None:
        value = json.dumps(analysis, sort_keys=True).encode()
        if value == self._analysis_written:
            return
        k = self.url.meta("status", "analysis").encode()
        try:
            # Only while this replica still holds the leader key under its lease.
            self.client.txn(
                [self._as_leader()],
                [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value))],
            )
        except (StoreUnavailable, grpc.RpcError):
            return
        self._analysis_written = value

    def stop(self, resign: bool = True) -> None:
        """Stops the thread; ``resign`` gives up the lease at once (else it expires: a
        replica that dies)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self.ca_watch is not None:
            self.ca_watch.stop()
            self.ca_watch.client.close()
        if resign:
            self.registry.close()
            self.election.resign()
