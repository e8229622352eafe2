"""The control plane loop and its change pipeline: watch the config, debounce, update, push.

A VirtualService edit travels one line. file: the loader stats the files once per poll
(``IncrementalLoader.poll``); after istiod's debounce (100 ms quiet, at most 10 s) it reads the
files that poll saw change, cuts and parses again only the stretch of a file around what
changed, and validates only the changed documents. keys: it reports a ``ChangeSet`` of resource
keys (the etcd source, ``EtcdSource``, the same from its watch), which the new model carries
(``MeshModel.changes_since``) and is derived with (documents edited in place: their resources
replaced in the last model, ``MeshModel.replacing``); keys pile up here until proxies are
updated (across invalid configs, which never replace the last good one). affected proxies:
``DependencyIndex.plan``, the one place keys become work: the objects that changed, the proxies
whose own resources they touch, the shared layers of the types the changed kinds reach (an
endpoint change: clusters and endpoints only) with as few holders as cover them to translate
them for. builders: the translator derives the new mesh's translation from the last, told the
keys. snapshot diff: a shared layer's difference (by identity) goes to all holders at once in
the Rust store (``SnapshotCache.update_shared``; the holders' group keeps its number: nothing
per holder in Python but the stream's wake-up); affected proxies get new snapshots. push: each
ADS stream.

What invalidates each cache: loader files, pieces, documents: stat stamp; the text around what
changed (pieces before it and after it are kept, moved by the lines the change added); value
and line. The assembled documents and the model: a document edited in place (same key, no
problems) replaces its resource, anything else assembles them again. Reference warnings:
Service/ServiceEntry/DestinationRule/Gateway keys. Index: any key but WorkloadEntries (they
patch it). Clusters and endpoints per service port: their inputs' value (service,
DestinationRule, selected workloads; endpoints: PeerAuthentications); the clusters with a
localityLbSetting and whether any workload has a locality: any key but WorkloadEntries.
Routes: Service/ServiceEntry/VirtualService/DestinationRule keys; outbound listeners: Service
and ServiceEntry keys; authorization filters: AuthorizationPolicy and Service keys, providers;
inbound listeners: those, Peer/RequestAuthentication keys, the workload's value. Shared layers
translated again: those of every type, but only clusters' and endpoints' when only
WorkloadEntries changed (``deps._LAYER_TYPES``). Serialized messages and shared resource sets:
dropped after each update unless still held. All of it: a new trust domain, root namespace or
MeshConfig.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from meshcore._core.xds import Snapshot
from meshcore.config import IncrementalLoader, MeshModel, ValidationReport
from meshcore.config.changes import EVERYTHING, NOTHING, ChangeSet, changed_keys
from meshcore.config.loader import MAX_FILE_BYTES, collector_paused
from meshcore.errors import ConfigProblem
from meshcore.xds.cache import Layered, NodeInfo, SnapshotCache
from meshcore.xds.deps import DependencyIndex
from meshcore.xds.types import Resources

log = logging.getLogger("meshcore.controlplane")

Generator = Callable[[MeshModel, NodeInfo], Resources | None]
# The translation problems of a mesh found when it is loaded (Translator.load_problems).
Checker = Callable[[MeshModel], list[ConfigProblem]]


class ConfigSource(Protocol):
    """Where the config comes from besides directories (the etcd store,
    :class:`meshcore.store.source.EtcdSource`), as the directory loader does it: ``poll``
    says whether the source moved since the last poll, ``validate`` reports the whole config,
    and ``changes`` the keys that changed in the last ``validate``."""

    @property
    def changes(self) -> ChangeSet: ...

    def poll(self) -> bool: ...

    def validate(self) -> ValidationReport: ...


DEBOUNCE_AFTER = 0.1
DEBOUNCE_MAX = 10.0
POLL_INTERVAL = 0.05
# How often the generator's own inputs (JWKS) are looked at: only those due are fetched.
REFRESH_INTERVAL = 5.0
FULL_COLLECT_EVERY = 64


class ControlPlane:
    """Config files in, per-proxy snapshots out (served by an AdsServer over ``cache``).

    With a :class:`~meshcore.xds.deps.DependencyIndex` (``dependencies``; the generator must
    then be the translator's, which gives every type as own-over-shared layers), a change is
    incremental: only the files that changed are read and validated again, and only what the
    changed objects touch is translated again and pushed (see :mod:`meshcore.xds.deps`).
    Without one, every change translates every connected proxy again.

    With ``check`` (the translator's ``load_problems``), each mesh loaded is also checked for
    what proxies will not get, once, and those problems logged and kept in ``problems``.
    """

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        generate: Generator,
        *,
        dependencies: DependencyIndex | None = None,
        debounce_after: float = DEBOUNCE_AFTER,
        debounce_max: float = DEBOUNCE_MAX,
        poll_interval: float = POLL_INTERVAL,
        settle_gc: bool = False,
        max_file_bytes: int = MAX_FILE_BYTES,
        check: Checker | None = None,
        refresh: Callable[[], bool] | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
        source: ConfigSource | None = None,
        overlay: Callable[[MeshModel], MeshModel] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        # Another source instead of the directories (``paths`` then unused).
        self.source = source
        # What is served on top of the loaded config (auto-registered WorkloadEntries, see
        # meshcore.xds.autoregistration): mesh = overlay(loaded); ``base`` is the loaded one.
        self.overlay = overlay
        self.base: MeshModel | None = None
        self.generate = generate
        self.check = check
        # What the generator fetches itself (the translator's JWKS): called every
        # refresh_interval in a worker thread; True -> every proxy is translated again.
        self.refresh = refresh
        self.refresh_interval = refresh_interval
        self.index = dependencies
        self.debounce_after = debounce_after
        self.debounce_max = debounce_max
        self.poll_interval = poll_interval
        self.cache = SnapshotCache(source=self.snapshot_for)
        if dependencies is not None:
            self.cache.dropped = dependencies.remove
        self.loader: IncrementalLoader | ConfigSource = source or IncrementalLoader(
            self.paths, max_file_bytes=max_file_bytes
        )
        self.mesh: MeshModel | None = None
        # Every problem the last load found (validation, then translation), and apart: those
        # of the last load's validation, and the translation problems of the mesh served
        # (what proxies will not get, from ``check``; kept through invalid configurations).
        self.problems: tuple[ConfigProblem, ...] = ()
        self.load_problems: tuple[ConfigProblem, ...] = ()
        self.translation_problems: tuple[ConfigProblem, ...] = ()
        self.rebuilds = 0
        self.last_update: dict[str, float] = {}  # what the last update did (for benchmarks)
        self.last_load = 0.0  # seconds the last load took
        # The mesh the proxies' snapshots were last brought up to date with, and the keys
        # changed since (through invalid configurations too): what the next update plans from.
        self._served: MeshModel | None = None
        self._pending: ChangeSet = NOTHING
        # gc.freeze() long-lived objects (see _settle): for the process that runs the control
        # plane (meshcore serve), not for a library user's process by default.
        self.settle_gc = settle_gc
        self._settled_nodes = 0
        self._updates_since_collect = 0
        self.loader.poll()  # the files as they are now: what run() watches for changes

    def load(self) -> bool:
        """(Re)loads the config; on errors keeps the last good mesh. True when it changed.
        A reload logs its problems; after the first load they are in ``problems``, for the
        caller to report."""
        return self._apply(self._read())

    async def load_async(self) -> bool:
        """:meth:`load` with the reading, parsing and validation in a worker thread, so that
        the event loop (ADS streams, /metrics) keeps answering while a large config is read."""
        return self._apply(await asyncio.to_thread(self._read))

    def _read(self) -> ValidationReport:
        started = time.perf_counter()
        with collector_paused():
            report = self.loader.validate()
            if self.settle_gc:
                # What was read (kept by the loader's cache) and the model are long-lived,
                # valid or not: out of the collector's sight before it runs again, rather than
                # scanned by a full collection that stops the event loop (seconds for 50 MB).
                gc.freeze()
        self.last_load = time.perf_counter() - started
        return report

    def _apply(self, report: ValidationReport) -> bool:
        self.problems = self.load_problems = report.problems
        if self.mesh is not None:  # a reload; the first load's problems are the caller's
            for p in report.problems:
                (log.error if p.severity == "error" else log.warning)("%s", p)
        if report.model is None:
            if self.mesh is not None:
                log.error(
                    "configuration invalid: keeping the last good one (%d errors)",
                    len(report.errors),
                )
            return False
        self.base = report.model
        self.mesh = report.model if self.overlay is None else self.overlay(report.model)
        self._pending = self._pending | self.loader.changes
        if self.check is not None:
            found = self.check(self.mesh)
            for p in found:
                (log.error if p.severity == "error" else log.warning)("%s", p)
            self.translation_problems = tuple(found)
            self.problems = (*self.problems, *found)
        if self.index is None:
            # The generator builds new messages for a new mesh: old serializations are garbage.
            self.cache.forget()
        return True

    def reoverlay(self, source: str) -> None:
        """The overlay changed (its objects have ``file == source``): serves the loaded mesh
        with the new overlay and brings the proxies up to date."""
        if self.base is None or self.overlay is None or self.mesh is None:
            return
        before = [r for r in self.mesh.resources if r.file == source]
        self.mesh = self.overlay(self.base)
        after = [r for r in self.mesh.resources if r.file == source]
        self._pending = self._pending | ChangeSet(frozenset(changed_keys(before, after)))
        self.update()

    def snapshot_for(self, node: NodeInfo) -> Snapshot | None:
        if self.mesh is None:
            return None
        resources = self.generate(self.mesh, node)
        if self.index is not None:
            if self._served is None:  # the first snapshot: what later changes start from
                self._served, self._pending = self.mesh, NOTHING
            self.index.add(self.mesh, node, resources)
        return None if resources is None else self.cache.snapshot(resources)

    def rebuild(self, nodes: Iterable[NodeInfo]) -> None:
        """New snapshots for the given (connected) proxies; unchanged ones push nothing."""
        self.rebuilds += 1
        for node in nodes:
            self._regenerate(node)

    def _regenerate(self, node: NodeInfo) -> None:
        snap = self.snapshot_for(node)
        if snap is not None:
            self.cache.set(node.id, snap)
        else:
            self.cache.clear(node.id)

    def regenerate_all(self, nodes: Iterable[NodeInfo] = ()) -> None:
        """Translates every proxy holding a snapshot again (``nodes`` without a dependency
        index): what the generator fetched itself changed, not the config."""
        if self.index is None:
            self.rebuild(nodes)
            return
        self.rebuilds += 1
        for node in self.index.nodes():
            self._regenerate(node)
        self.cache.forget(keep=[g.shared for g in self.index.groups.values()])

    def update(self, nodes: Iterable[NodeInfo] = ()) -> None:
        """Brings the proxies up to date with the mesh just loaded: incrementally with a
        dependency index (``nodes`` unused: the index knows every proxy holding a snapshot),
        else by rebuilding ``nodes``."""
        if self.index is None:
            self.rebuild(nodes)
            return
        assert self.mesh is not None
        self.rebuilds += 1
        t0 = time.perf_counter()
        index, mesh = self.index, self.mesh
        plan = index.plan(self._served, mesh, self._pending if self._served else EVERYTHING)
        affected = plan.affected
        self._served, self._pending = mesh, NOTHING
        t1 = time.perf_counter()
        if affected is None:
            for node in index.nodes():
                self._regenerate(node)
            self.cache.forget(keep=[g.shared for g in index.groups.values()])
            self._record(t0, t1, len(plan.changes), len(index), len(index))
            return
        # Shared layers first: each is translated once, for one proxy holding it that the
        # change does not otherwise touch, and its difference goes to all of its holders.
        # Nothing per holder in Python: its snapshot is updated in the Rust fleet, and its
        # group, moved to the new layer as a whole, keeps its number.
        fresh: dict[str, Resources | None] = {}
        for gk, rep in plan.layers:
            group = index.groups.get(gk)
            if group is None:
                continue  # merged into another group this update
            holders = group.members - affected if affected else group.members
            if not holders:
                continue
            if rep not in fresh:
                fresh[rep] = self.generate(mesh, index.node(rep))
            got = fresh[rep]
            new = got.get(group.type_url) if got is not None else None
            if not isinstance(new, Layered):
                affected.update(holders)  # cannot tell: translate them again
                continue
            if new.shared is group.shared:
                continue
            self.cache.update_shared(group.type_url, group.shared, new.shared, list(holders))
            # The affected members leave the group when they are translated again below.
            index.move(gk, new.shared)
        # Then the proxies whose own resources the change may touch: translated again.
        for node_id in sorted(affected):
            if node_id in index:
                self._regenerate(index.node(node_id))
        self.cache.forget(keep=[g.shared for g in index.groups.values()])
        self._record(t0, t1, len(plan.changes), len(affected), len(fresh))

    def _record(self, t0: float, t1: float, changes: int, retranslated: int, reps: int) -> None:
        self.last_update = {
            "seconds": time.perf_counter() - t0,
            "diff_seconds": t1 - t0,
            "objects_changed": changes,
            "proxies_translated": retranslated,
            "shared_layers_translated": reps,
        }

    async def run(self, nodes: Callable[[], Iterable[NodeInfo]], stop: asyncio.Event) -> None:
        """Watches the config until ``stop``; debounces changes, then reloads and updates the
        snapshots (of every proxy holding one with a dependency index, else of ``nodes()``,
        the proxies connected at that moment)."""
        first_change: float | None = None
        last_change = 0.0
        last_refresh = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval)
            changed = self.loader.poll()
            now = time.monotonic()
            if self.refresh is not None and now - last_refresh >= self.refresh_interval:
                last_refresh = now
                if await asyncio.to_thread(self.refresh) and self.mesh is not None:
                    self.regenerate_all(nodes())
            if changed:
                last_change = now
                if first_change is None:
                    first_change = now
            if first_change is None:
                continue
            quiet = now - last_change >= self.debounce_after
            overdue = now - first_change >= self.debounce_max
            if quiet or overdue:
                first_change = None
                if await self.load_async():
                    self.update(list(nodes()) if self.index is None else ())
                    self._settle(updated=True)
            elif self.settle_gc and len(self.cache) != self._settled_nodes:
                self._settle(updated=False)

    def _settle(self, updated: bool) -> None:
        """Moves what exists now (meshes, translations, snapshots, streams: long-lived) out of
        the garbage collector's sight (``gc.freeze``), so that the next change does not pay for
        full collections scanning the whole fleet's objects (hundreds of ms at 2,000 proxies).
        Objects still die by reference counting; every FULL_COLLECT_EVERY updates a full
        collection runs first, for cycles among them."""
        if not self.settle_gc:
            return
        if updated:
            self._updates_since_collect += 1
            if self._updates_since_collect >= FULL_COLLECT_EVERY:
                self._updates_since_collect = 0
                gc.unfreeze()
                gc.collect()
        gc.freeze()
        self._settled_nodes = len(self.cache)
