"""The control plane loop: watch the config, debounce changes, rebuild and push snapshots.

Changes are debounced as istiod does it (PILOT_DEBOUNCE_AFTER 100 ms of quiet, at most
PILOT_DEBOUNCE_MAX 10 s after the first change), so a burst of writes becomes one rebuild and
one push. An invalid config never replaces the last good one: the problems are logged and
reported, and proxies keep what they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from google.protobuf.message import Message

from meshcore._core import Snapshot
from meshcore.config import MeshModel, validate
from meshcore.config.loader import iter_config_files
from meshcore.errors import ConfigProblem
from meshcore.xds.cache import NodeInfo, SnapshotCache

log = logging.getLogger("meshcore.controlplane")

Resources = Mapping[str, Mapping[str, Message | bytes]]
Generator = Callable[[MeshModel, NodeInfo], Resources | None]

DEBOUNCE_AFTER = 0.1
DEBOUNCE_MAX = 10.0
POLL_INTERVAL = 0.05


class ControlPlane:
    """Config files in, per-proxy snapshots out (served by an AdsServer over ``cache``)."""

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        generate: Generator,
        *,
        debounce_after: float = DEBOUNCE_AFTER,
        debounce_max: float = DEBOUNCE_MAX,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.generate = generate
        self.debounce_after = debounce_after
        self.debounce_max = debounce_max
        self.poll_interval = poll_interval
        self.cache = SnapshotCache(source=self.snapshot_for)
        self.mesh: MeshModel | None = None
        self.problems: tuple[ConfigProblem, ...] = ()
        self.rebuilds = 0
        self._fingerprint = self._scan()

    def load(self) -> bool:
        """(Re)loads the config; on errors keeps the last good mesh. True when it changed."""
        report = validate(self.paths)
        self.problems = report.problems
        for p in report.problems:
            (log.error if p.severity == "error" else log.warning)("%s", p)
        if report.model is None:
            log.error(
                "configuration invalid: keeping the last good one (%d errors)", len(report.errors)
            )
            return False
        self.mesh = report.model
        # The translator builds new messages for a new mesh: old serializations are garbage.
        self.cache.forget()
        return True

    def snapshot_for(self, node: NodeInfo) -> Snapshot | None:
        if self.mesh is None:
            return None
        resources = self.generate(self.mesh, node)
        return None if resources is None else self.cache.snapshot(resources)

    def rebuild(self, nodes: Iterable[NodeInfo]) -> None:
        """New snapshots for the given (connected) proxies; unchanged ones push nothing."""
        self.rebuilds += 1
        for node in nodes:
            snap = self.snapshot_for(node)
            if snap is not None:
                self.cache.set(node.id, snap)
            else:
                self.cache.clear(node.id)

    async def run(self, nodes: Callable[[], Iterable[NodeInfo]], stop: asyncio.Event) -> None:
        """Watches the config until ``stop``; debounces changes, then reloads and rebuilds the
        snapshots of ``nodes()`` (the proxies connected at that moment)."""
        first_change: float | None = None
        last_change = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval)
            fingerprint = self._scan()
            now = time.monotonic()
            if fingerprint != self._fingerprint:
                self._fingerprint = fingerprint
                last_change = now
                if first_change is None:
                    first_change = now
            if first_change is None:
                continue
            quiet = now - last_change >= self.debounce_after
            overdue = now - first_change >= self.debounce_max
            if quiet or overdue:
                first_change = None
                if self.load():
                    self.rebuild(list(nodes()))

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for f in iter_config_files(self.paths):
            try:
                st = f.stat()
            except OSError:
                continue
            out.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(out)
