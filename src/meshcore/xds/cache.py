"""Per-proxy snapshots for the ADS server, and the wake-ups that tell streams to push."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from meshcore._core import Fleet, ResourceStore, Snapshot


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a proxy said about itself on its first request."""

    id: str
    cluster: str = ""
    metadata: Mapping[str, object] = field(default_factory=dict)
    user_agent: str = ""


# Called for a node that connects without a snapshot: the control plane generates one.
SnapshotSource = Callable[[NodeInfo], Snapshot | None]


class SnapshotCache:
    """The latest snapshot of every proxy; streams wait on it for changes.

    Resources are content-addressed and interned (the Rust ResourceStore), so proxies that see
    the same clusters and endpoints share them.
    """

    def __init__(self, source: SnapshotSource | None = None) -> None:
        self.store = ResourceStore()
        self.source = source
        self._fleet = Fleet(self.store)
        self.changed_at: dict[str, float] = {}  # monotonic time of each node's last change
        self._events: dict[str, set[asyncio.Event]] = {}

    def snapshot(self, resources: Mapping[str, Mapping[str, bytes | Message]]) -> Snapshot:
        """A snapshot from {type_url: {name: message or serialized bytes}}."""
        return self.store.snapshot(
            {
                type_url: {
                    name: r if isinstance(r, bytes) else r.SerializeToString(deterministic=True)
                    for name, r in by_name.items()
                }
                for type_url, by_name in resources.items()
            }
        )

    def set(self, node_id: str, snapshot: Snapshot) -> None:
        self._fleet.set(node_id, snapshot)
        self._changed(node_id)

    def apply(
        self,
        type_url: str,
        changes: Mapping[str, bytes | Message | None],
        nodes: list[str] | None = None,
    ) -> list[str]:
        """Upserts/removes resources of one type in every snapshot that holds them (or in
        ``nodes``); wakes the streams of the proxies whose view changed and returns them."""
        changed = self._fleet.apply(
            type_url,
            {
                name: r
                if r is None or isinstance(r, bytes)
                else r.SerializeToString(deterministic=True)
                for name, r in changes.items()
            },
            nodes,
        )
        for node_id in changed:
            self._changed(node_id)
        return changed

    def _changed(self, node_id: str) -> None:
        self.changed_at[node_id] = time.monotonic()
        for event in self._events.get(node_id, ()):
            event.set()

    def get(self, node: NodeInfo) -> Snapshot | None:
        snap = self._fleet.get(node.id)
        if snap is None and self.source is not None:
            snap = self.source(node)
            if snap is not None:
                self._fleet.set(node.id, snap)
        return snap

    def clear(self, node_id: str) -> None:
        self._fleet.remove(node_id)

    def nodes(self) -> list[str]:
        return self._fleet.nodes()

    def subscribe(self, node_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events.setdefault(node_id, set()).add(event)
        return event

    def unsubscribe(self, node_id: str, event: asyncio.Event) -> None:
        events = self._events.get(node_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[node_id]
