"""Per-proxy snapshots for the ADS server, and the wake-ups that tell streams to push."""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from meshcore._core.xds import Fleet, ResourceStore, Snapshot


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a proxy said about itself on its first request."""

    id: str
    cluster: str = ""
    metadata: Mapping[str, object] = field(default_factory=dict)
    user_agent: str = ""
    client_features: frozenset[str] = frozenset()


class Layered(Mapping[str, Any]):
    """A proxy's own resources of one type over resources shared with other proxies.

    Read-only; iterates the names of both layers merged (in name order when each layer is).
    The snapshot store reuses the shared layer (by identity) for every proxy that has it.
    """

    __slots__ = ("own", "shared")

    def __init__(self, own: Mapping[str, Any], shared: Mapping[str, Any]) -> None:
        self.own = own
        self.shared = shared

    def __getitem__(self, name: str) -> Any:
        if name in self.own:
            return self.own[name]
        return self.shared[name]

    def __iter__(self) -> Iterator[str]:
        # Both layers in name order (as the translator builds them) give names in order.
        return heapq.merge(self.own, (name for name in self.shared if name not in self.own))

    def __len__(self) -> int:
        return len(self.own) + sum(1 for name in self.shared if name not in self.own)


# Mappings at least this large are remembered by identity (see SnapshotCache.snapshot).
SHARE_AT_LEAST = 64

# Encoded SotW responses kept for sharing (bodies of a few KB: a few MB at most).
MAX_SHARED_RESPONSES = 4096

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
        # Told when a node's snapshot is dropped (the control plane's dependency index).
        self.dropped: Callable[[str], None] | None = None
        self._fleet = Fleet(self.store)
        self.changed_at: dict[str, float] = {}  # monotonic time of each node's last change
        self._events: dict[str, set[asyncio.Event]] = {}
        self._serialized: dict[int, tuple[Message, bytes]] = {}
        # Resource sets built from mapping objects, by (type, identity); each entry holds its
        # mapping so that the identity cannot be reused while remembered.
        self._sets: dict[tuple[str, int], tuple[Mapping[str, Any], Snapshot]] = {}
        # SotW responses without their nonce, by what determines their bytes.
        self._responses: dict[tuple[str, str, bool, tuple[str, ...], float | None], bytes] = {}
        self.encoded_responses = 0  # SotW responses encoded (each then shared)
        # Called before any snapshot changes (ADS transports that take expected ACKs stop
        # taking those expected before it: see meshcore.xds.transport).
        self.changing: list[Callable[[], None]] = []

    def snapshot(self, resources: Mapping[str, Mapping[str, bytes | Message]]) -> Snapshot:
        """A snapshot from {type_url: {name: message or serialized bytes}}.

        Built to share: a mapping object seen before (the translator hands every proxy the
        same endpoint and route maps) becomes the same resource set again without reading it;
        a :class:`Layered` mapping is the proxy's own layer over a shared one; a message seen
        before is not serialized again. So mappings and messages handed in must not be changed
        afterwards; call :meth:`forget` when they are replaced (the control plane does, on
        every new mesh).
        """
        snap = self.store.snapshot({})
        for type_url, by_name in resources.items():
            if isinstance(by_name, Layered):
                # A shared layer is remembered whatever its size: one route configuration
                # for a thousand hosts is not copied into the store again for every proxy.
                shared = self._shared(type_url, by_name.shared, remember=True)
                snap = snap.with_type_from(shared, type_url)
                if by_name.own:
                    # The proxy's own: not remembered (no other proxy will hand them in).
                    own = {name: _serialize(r) for name, r in by_name.own.items()}
                    snap, _ = snap.with_changes(type_url, own)
            else:
                snap = snap.with_type_from(self._shared(type_url, by_name), type_url)
        return snap

    def _shared(
        self, type_url: str, by_name: Mapping[str, bytes | Message], remember: bool = False
    ) -> Snapshot:
        if not remember and len(by_name) < SHARE_AT_LEAST:
            # Small, usually per-proxy maps: cheaper to build than to remember.
            return self.store.snapshot({type_url: {n: self._bytes(r) for n, r in by_name.items()}})
        key = (type_url, id(by_name))
        hit = self._sets.get(key)
        if hit is not None and hit[0] is by_name:
            return hit[1]
        built = self.store.snapshot(
            {type_url: {name: self._bytes(r) for name, r in by_name.items()}}
        )
        self._sets[key] = (by_name, built)
        return built

    def _bytes(self, resource: bytes | Message) -> bytes:
        """The serialized resource; messages are remembered (they are shared by proxies)."""
        if isinstance(resource, bytes):
            return resource
        # Keyed by identity, holding the message so that its id cannot be reused meanwhile.
        hit = self._serialized.get(id(resource))
        if hit is not None and hit[0] is resource:
            return hit[1]
        data = resource.SerializeToString(deterministic=True)
        self._serialized[id(resource)] = (resource, data)
        return data

    def forget(self, keep: Iterable[Mapping[str, Any]] = ()) -> None:
        """Drops remembered serializations (the messages they belong to are being replaced)
        and the resource sets built from mappings, except those of ``keep`` (still in use)."""
        self._serialized.clear()
        kept = {id(m) for m in keep}
        self._sets = {k: v for k, v in self._sets.items() if k[1] in kept}

    def update_shared(
        self,
        type_url: str,
        old: Mapping[str, bytes | Message],
        new: Mapping[str, bytes | Message],
        nodes: list[str],
    ) -> list[str]:
        """``nodes`` held ``old`` as their shared layer of ``type_url`` and now hold ``new``:
        applies the difference (found by identity, so unchanged messages must be the same
        objects to cost nothing) to all of them at once; returns the nodes whose view changed.
        The resource set of ``new`` is derived from ``old``'s when that one was built, so
        proxies connecting later share it without serializing it again."""
        changes: dict[str, bytes | Message | None] = {
            name: r for name, r in new.items() if old.get(name) is not r
        }
        changes.update((name, None) for name in old if name not in new)
        known = self._sets.get((type_url, id(old)))
        if known is not None and known[0] is old:
            derived, _ = known[1].with_changes(
                type_url, {n: None if r is None else self._bytes(r) for n, r in changes.items()}
            )
            self._sets[(type_url, id(new))] = (new, derived)
        if not changes:
            return []
        return self.apply(type_url, changes, nodes)

    def sotw_body(
        self,
        snap: Snapshot,
        type_url: str,
        version: str,
        wildcard: bool,
        explicit: tuple[str, ...],
        ttl: float | None,
    ) -> bytes:
        """The SotW response (without its nonce) of ``snap``'s resources of ``type_url``: all
        of them (``wildcard``) and those of ``explicit`` (in name order) that exist, wrapped
        with ``ttl`` if given. Encoded once for every proxy sent the same: the type's
        ``version`` is a hash of all its resources, so it and the selection fix the bytes."""
        key = (type_url, version, wildcard, explicit, ttl)
        body = self._responses.get(key)
        if body is None:
            names: list[str] | None
            if wildcard and not explicit:
                names = None  # all of the type
            elif wildcard:
                names = sorted(set(snap.names(type_url)).union(explicit))
            else:
                names = list(explicit)
            body, _ = snap.sotw_response(type_url, version, "", names, ttl)
            self.encoded_responses += 1
            if len(self._responses) >= MAX_SHARED_RESPONSES:
                self._responses.clear()  # stale versions go with the rest
            self._responses[key] = body
        return body

    def _changing(self) -> None:
        for hook in self.changing:
            hook()

    def set(self, node_id: str, snapshot: Snapshot) -> None:
        self._changing()
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
        changes_bytes = {name: None if r is None else self._bytes(r) for name, r in changes.items()}
        self._changing()
        changed = self._fleet.apply(
            type_url,
            changes_bytes,
            nodes,
        )
        # One time for all of them, and the streams woken: nothing else per proxy here.
        now = time.monotonic()
        self.changed_at.update(dict.fromkeys(changed, now))
        events = self._events
        for node_id in changed:
            for event in events.get(node_id, ()):
                event.set()
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
                self._changing()
                self._fleet.set(node.id, snap)
        return snap

    def clear(self, node_id: str) -> None:
        self._changing()
        self._fleet.remove(node_id)
        self.changed_at.pop(node_id, None)
        if self.dropped is not None:
            self.dropped(node_id)

    def nodes(self) -> list[str]:
        return self._fleet.nodes()

    def __len__(self) -> int:
        return len(self._fleet)

    def subscribe(self, node_id: str, event: asyncio.Event | None = None) -> asyncio.Event:
        """An event set whenever the node's snapshot changes (``event``, or a new one)."""
        event = event or asyncio.Event()
        self._events.setdefault(node_id, set()).add(event)
        return event

    def unsubscribe(self, node_id: str, event: asyncio.Event) -> None:
        events = self._events.get(node_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[node_id]


def _serialize(resource: bytes | Message) -> bytes:
    if isinstance(resource, bytes):
        return resource
    return resource.SerializeToString(deterministic=True)
