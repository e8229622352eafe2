"""The control plane's config from etcd: list at a revision, then watch from the next one.

:class:`EtcdSource` is what :class:`~meshcore.xds.controlplane.ControlPlane` reads instead of
a directory: the same ``validate()`` giving a :class:`~meshcore.config.ValidationReport` and
the keys that changed since the last one (``reread``: the directory loader's files, here
resource keys), and a ``fingerprint()`` that moves when the store did.

- No write is missed: the watch starts at the revision after the list; a watch cancelled by
  compaction lists again and takes the difference; a member that goes away (or loses its
  leader) is left for the next endpoint, and the watch resumes where it was.
- While etcd is unreachable the last config keeps being served; ``status()`` (``/ready``,
  ``/debug/syncz``, the ``meshcore_config_store_connected`` metric) says so, and the watch
  catches up when etcd is back.
- A resource another writer put into etcd invalid is reported with its key, and the last
  valid version of that resource keeps being served (nothing else is lost).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from meshcore.config import Derivation, MeshModel, ValidationReport, _validated
from meshcore.config.changes import ChangeSet, ResourceKey, changed_keys
from meshcore.config.loader import Document, collector_paused, parse_yaml
from meshcore.config.model import DEFAULT_ROOT_NAMESPACE
from meshcore.config.values import DEFAULT_DOMAIN
from meshcore.errors import ConfigProblem
from meshcore.store import EtcdTLS, StoreURL, split_key
from meshcore.store.etcd import EtcdClient, StoreUnavailable, Watch

log = logging.getLogger("meshcore.store")

RETRY_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class _Entry:
    """One key as read: its revision, the document served for it and its validation."""

    mod_revision: int
    doc: Document | None
    checked: tuple[Any, tuple[ConfigProblem, ...]]


def _resource_of(entry: _Entry | None) -> list[Any]:
    """The resource an entry serves, if any (as :func:`changed_keys` compares them)."""
    if entry is None or entry.doc is None or entry.checked[0] is None:
        return []
    return [entry.checked[0]]


def group_of(api_version: object) -> str:
    """The API group of an apiVersion ('' for the core group's ``v1``)."""
    if not isinstance(api_version, str):
        return ""
    return api_version.rpartition("/")[0]


def parse_value(
    key: str, value: bytes, url: StoreURL
) -> tuple[Document | None, list[ConfigProblem]]:
    """The one document stored under ``key``; problems when it is not one resource of the
    kind, namespace and name the key says (a resource under another's key would shadow it)."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [ConfigProblem(f"the value is not UTF-8 (byte {exc.start})", file=key)]
    docs, problems = parse_yaml(text, key)
    docs = [d for d in docs if d.value is not None]
    if problems:
        return None, problems
    if len(docs) != 1:
        return None, [ConfigProblem(f"a key holds one resource, found {len(docs)}", file=key)]
    doc = docs[0]
    want = split_key(url, key)
    v = doc.value
    if want is not None and isinstance(v, dict):
        raw = v.get("metadata")
        meta: dict[str, Any] = raw if isinstance(raw, dict) else {}
        got = (
            group_of(v.get("apiVersion")),
            v.get("kind"),
            meta.get("namespace") or "default",
            meta.get("name"),
        )
        if got != want:
            return None, [
                ConfigProblem(
                    f"the key names {'/'.join(want)} but the value is "
                    f"{'/'.join(str(p) for p in got)}",
                    file=key,
                    line=doc.line,
                )
            ]
    elif want is None:
        return None, [
            ConfigProblem(
                "not a resource key (PREFIX/<apiGroup>/<Kind>/<namespace>/<name>)", file=key
            )
        ]
    return doc, []


class EtcdSource:
    """Resources under ``url.prefix``, kept up to date by a watch thread (:meth:`start`)."""

    def __init__(
        self,
        url: StoreURL,
        *,
        client: EtcdClient | None = None,
        domain: str = DEFAULT_DOMAIN,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.url = url
        self.client = client or EtcdClient(url.endpoints, tls=url.tls)
        self.domain = domain
        self.root_namespace = root_namespace
        self.retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._kvs: dict[str, tuple[int, bytes]] = {}  # key -> (mod_revision, value)
        self.revision = 0  # the store revision the view holds
        self._changes = 0  # bumps with every change to the view
        self.connected = False
        self.disconnected_since: float | None = None
        self.relists = 0
        self.reconnects = 0
        self.last_error = ""
        # What validate() served for each key, and the last valid version of each key.
        self._served: dict[str, _Entry] = {}
        self._valid: dict[str, _Entry] = {}
        self.rejected: dict[str, tuple[ConfigProblem, ...]] = {}
        self.reread: list[str] = []
        # The models validate() gives, each derived from the last with the keys of the
        # resources that changed (what the control plane's pipeline reads: ``changes``), as
        # the directory loader does it.
        self._derivation = Derivation(domain, root_namespace)
        self._polled = -1
        self.served_revision = 0
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._thread: threading.Thread | None = None
        # Called (from the watch thread) after every change to the view, e.g. to wake a loop.
        self.on_change: Any = None
        # What the replica adds to status() (its id, whether it leads; set by the server).
        self.replica_status: Callable[[], dict[str, Any]] | None = None

    # ----- reading the store -----

    def list(self) -> None:
        """Lists every key at the store's current revision and takes the difference with the
        view (a first list, or after a compaction). StoreUnavailable when etcd is not there."""
        revision, kvs = self.client.range_prefix(self.url.config_prefix)
        fresh = {
            kv.key.decode("utf-8", "replace"): (int(kv.mod_revision), bytes(kv.value)) for kv in kvs
        }
        with self._lock:
            changed = fresh != self._kvs
            self._kvs = fresh
            self.revision = revision
            if changed:
                self._changes += 1
        self._connected()
        if changed:
            self._notify()

    def _connected(self) -> None:
        if not self.connected:
            if self.disconnected_since is not None:
                log.warning(
                    "config store %s reachable again (after %.1f s); catching up from revision %d",
                    self.url,
                    time.monotonic() - self.disconnected_since,
                    self.revision,
                )
            self.connected = True
            self.disconnected_since = None

    def _lost(self, why: str) -> None:
        self.last_error = why
        if self.connected or self.disconnected_since is None:
            log.error(
                "config store %s unreachable (%s): serving the last config (revision %d)",
                self.url,
                why,
                self.revision,
            )
            self.connected = False
            self.disconnected_since = time.monotonic()

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def start(self) -> None:
        """The first list (raises StoreUnavailable), then the watch in a thread of its own."""
        self.list()
        self.follow()

    def follow(self) -> None:
        """Watches from the revision after the view's, in a thread of its own, until
        :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="meshcore-etcd-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.client.close()

    def _run(self) -> None:
        need_list = False
        while not self._stop.is_set():
            try:
                if need_list:
                    self.relists += 1
                    self.list()
                    need_list = False
                need_list = self._watch_once()
            except (grpc.RpcError, StoreUnavailable) as exc:
                if self._stop.is_set():
                    return
                details = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                self._lost(str(details))
                self.reconnects += 1
                self.client.failover(self._watch.generation if self._watch else None)
                self._stop.wait(self.retry_seconds)

    def _watch_once(self, until: dict[str, tuple[int, bytes]] | None = None) -> bool:
        """Watches from the revision after the view's until the stream ends (or, with
        ``until``, until the view is that); True when the watch was cancelled by compaction
        (list again)."""
        # From the view's own revision, not the next: etcd cancels a watch that starts below
        # the compaction revision (we then list again), but a compaction AT the start
        # revision drops the tombstones of deletes made there without cancelling, and those
        # deletes would be missed. Events at the view's revision are already in it: skipped.
        seen = self.revision
        watch = self.client.watch(self.url.config_prefix, max(seen, 1))
        self._watch = watch
        try:
            for resp in watch:
                if self._stop.is_set():
                    return False
                if resp.compact_revision:
                    log.warning(
                        "config store compacted past revision %d (now %d): listing again",
                        self.revision,
                        resp.compact_revision,
                    )
                    return True
                if resp.canceled:
                    raise StoreUnavailable(f"watch cancelled: {resp.cancel_reason or 'no reason'}")
                if resp.created:
                    self._connected()
                elif resp.events:
                    self._apply(resp, seen)
                if until is not None and self.items() == until:
                    return False
            raise StoreUnavailable("the watch stream ended")
        finally:
            watch.cancel()

    def catch_up(self, attempts: int = 5) -> None:
        """Brings the view to the store's current content in the calling thread (a watch from
        where it is, a new list after compaction): what the watch thread does, on demand, for
        a store nobody writes to meanwhile (tests drive replicas that lag this way)."""
        target, kvs = self.client.range_prefix(self.url.config_prefix)
        want = {
            kv.key.decode("utf-8", "replace"): (int(kv.mod_revision), bytes(kv.value)) for kv in kvs
        }
        for _ in range(attempts):
            if self.items() == want:
                with self._lock:
                    self.revision = max(self.revision, target)
                return
            if self._watch_once(until=want):
                self.relists += 1
                self.list()

    def _apply(self, resp: Any, seen: int) -> None:
        fresh = [ev for ev in resp.events if ev.kv.mod_revision > seen]
        with self._lock:
            for ev in fresh:
                key = ev.kv.key.decode("utf-8", "replace")
                if ev.type == 1:  # DELETE
                    self._kvs.pop(key, None)
                else:
                    self._kvs[key] = (int(ev.kv.mod_revision), bytes(ev.kv.value))
            # The events' own revisions (a response's header may run ahead of what it holds).
            self.revision = max([self.revision, *(int(ev.kv.mod_revision) for ev in fresh)])
            self._changes += bool(fresh)
        self._connected()
        if fresh:
            self._notify()

    # ----- what the control plane reads -----

    def fingerprint(self) -> int:
        return self._changes

    def poll(self) -> bool:
        """Whether the view moved since the last poll (the control plane's watch loop)."""
        now = self._changes
        moved, self._polled = now != self._polled, now
        return moved

    def items(self) -> dict[str, tuple[int, bytes]]:
        """A copy of the view: key -> (mod_revision, value)."""
        with self._lock:
            return dict(self._kvs)

    def validate(self) -> ValidationReport:
        """The report of the view (each key validated once per revision); ``reread`` names
        the keys whose served document changed."""
        with self._lock:
            kvs = dict(self._kvs)
            revision = self.revision
        with collector_paused():
            return self._validate(kvs, revision)

    def _validate(self, kvs: dict[str, tuple[int, bytes]], revision: int) -> ValidationReport:
        served: dict[str, _Entry] = {}
        reread: list[str] = []
        keys: set[ResourceKey] = set()
        for key in sorted(kvs):
            mod_revision, value = kvs[key]
            old = self._served.get(key)
            if old is not None and old.mod_revision == mod_revision:
                served[key] = old
                continue
            doc, problems = parse_value(key, value, self.url)
            checked = _validated(doc, self.domain) if doc is not None else (None, tuple(problems))
            entry = _Entry(mod_revision, doc, checked)
            if not any(p.severity == "error" for p in checked[1]):
                self._valid[key] = entry
                self.rejected.pop(key, None)
            else:
                self.rejected[key] = checked[1]
                for p in checked[1]:
                    log.error("config store: %s (serving its last valid version, if any)", p)
                last = self._valid.get(key)
                entry = last if last is not None else _Entry(mod_revision, None, (None, ()))
            served[key] = entry
            if old is None or entry.doc is not old.doc:
                reread.append(key)
                keys |= changed_keys(_resource_of(old), _resource_of(entry))
        for key, gone in self._served.items():
            if key not in kvs:
                reread.append(key)
                keys |= changed_keys(_resource_of(gone), ())
                self._valid.pop(key, None)
                self.rejected.pop(key, None)
        self._served = served
        self.reread = reread
        self.served_revision = revision
        entries = [e for e in served.values() if e.doc is not None]
        return self._derivation.report(
            [e.doc for e in entries if e.doc is not None], [], [e.checked for e in entries], keys
        )

    @property
    def changes(self) -> ChangeSet:
        """The keys of the resources changed since the last model :meth:`validate` gave (each
        key's resource as served, its last valid version for a key written invalid)."""
        return self._derivation.changes

    def build(self) -> MeshModel | None:
        """The model of the view as a fresh source would build it (tests compare replicas)."""
        return (
            EtcdSource(self.url, client=self.client, domain=self.domain)
            ._validate(self.items(), self.revision)
            .model
        )

    # ----- what the control plane says about it -----

    def status(self) -> dict[str, Any]:
        since = self.disconnected_since
        return {
            "store": str(self.url),
            "endpoint": self.client.endpoint,
            "connected": self.connected,
            "revision": self.revision,
            "served_revision": self.served_revision,
            "disconnected_seconds": round(time.monotonic() - since, 3) if since else 0.0,
            "last_error": "" if self.connected else self.last_error,
            "relists": self.relists,
            "reconnects": self.reconnects,
            "rejected": {k: [p.to_dict() for p in v] for k, v in sorted(self.rejected.items())},
            **({"replica": self.replica_status()} if self.replica_status else {}),
        }

    def ready_note(self) -> str:
        """What ``/ready`` adds: empty when the store is in sync."""
        if self.connected:
            return ""
        since = self.disconnected_since or time.monotonic()
        return (
            f"config store {self.url} unreachable for {time.monotonic() - since:.1f} s: "
            f"serving the last config (revision {self.served_revision})"
        )

    def collect(self) -> Iterator[Any]:
        """Prometheus metrics (a collector for the monitoring port's registry)."""
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily(
            "meshcore_config_store_connected",
            "1 while the config store (etcd) is reachable and watched, 0 while the last config is served.",
            labels=["store"],
        )
        g.add_metric([str(self.url)], 1.0 if self.connected else 0.0)
        yield g
        r = GaugeMetricFamily(
            "meshcore_config_store_revision", "The store revision being served.", labels=["store"]
        )
        r.add_metric([str(self.url)], float(self.served_revision))
        yield r
        bad = GaugeMetricFamily(
            "meshcore_config_store_rejected",
            "Keys whose current value is invalid (their last valid version is served).",
            labels=["store"],
        )
        bad.add_metric([str(self.url)], float(len(self.rejected)))
        yield bad


def read_store(
    address: str,
    *,
    domain: str = DEFAULT_DOMAIN,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
    tls: EtcdTLS | None = None,
) -> ValidationReport:
    """The config under an ``etcd://`` address as one list reads it (no watch): the report a
    replica would serve at that revision, with the problems of the keys it would refuse (their
    key as the file). StoreURLError for a bad address, StoreUnavailable when no member answers.
    What ``meshcore analyze --store`` and ``x explain --store`` read (``tls``: etcd over TLS)."""
    from dataclasses import replace

    from meshcore.store import parse_store_url

    url = replace(parse_store_url(address), tls=tls)
    source = EtcdSource(url, domain=domain, root_namespace=root_namespace)
    try:
        source.list()
        report = source._validate(source.items(), source.revision)
    finally:
        source.client.close()
    refused = [p for problems in source.rejected.values() for p in problems]
    return ValidationReport((*report.problems, *refused), report.model)
