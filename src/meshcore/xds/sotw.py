"""ADS state of the world: one DiscoveryRequest/DiscoveryResponse stream per client, every
type's subscription replaced by each request, LDS and CDS answered with the full set."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from meshcore._core.xds import Snapshot
from meshcore.xds import types
from meshcore.xds.stream import SOTW_RESOURCE_FEATURES, TTL_FEATURE, WILDCARD_TYPES, Stream


@dataclass(slots=True)
class SotwType:
    names: set[str] = field(default_factory=set)
    legacy_wildcard: bool = False
    requested: bool = False
    dirty: bool = False  # the subscription changed: answer even if the version did not
    nonce: str = ""
    sent_version: str | None = None
    nacked_version: str | None = None
    awaiting_ack: bool = False
    sent_names: list[str] = field(default_factory=list)  # with a TTL: for heartbeats
    # (wildcard, explicit names in order) of the subscription; None: to be worked out again.
    selection: tuple[bool, tuple[str, ...]] | None = None
    # The resource_names of a request that left ``names`` as they are, as encoded (the key of
    # a plain ACK from meshcore.xds.transport); None: none since ``names`` last changed.
    names_key: bytes | None = None

    @property
    def wildcard(self) -> bool:
        return self.legacy_wildcard or "*" in self.names


class SotwStream(Stream):
    kind = "sotw"
    label = "state of the world"
    types: dict[str, SotwType]

    def receive(self, req: discovery_pb2.DiscoveryRequest | tuple[Any, ...]) -> str | None:
        if self.lane_pending:
            self.settle()
        if type(req) is tuple:
            return self._plain_ack(req)
        assert isinstance(req, discovery_pb2.DiscoveryRequest)
        refused = self.hello(req)
        if refused is not None or self.state is None:
            return refused
        names = set(req.resource_names)
        if len(names) > self.server.max_names_per_type:
            return self.too_many_names()
        t = self.types.setdefault(req.type_url, SotwType())
        if req.response_nonce:
            if req.response_nonce != t.nonce:
                return None  # a stale nonce: superseded by a later response
            t.awaiting_ack = False
            if req.HasField("error_detail"):
                t.nacked_version = t.sent_version
                self.server.rejected(
                    self.state, req.type_url, t.sent_version or "", req.error_detail.message
                )
            else:
                self.server.acked(self.state, req.type_url, req.version_info)
        first = not t.requested
        t.requested = True
        if req.type_url in WILDCARD_TYPES:
            if first and not names:
                t.legacy_wildcard = True
            elif names:
                t.legacy_wildcard = False
        if names != t.names or first:
            t.names = names
            t.names_key = None
            t.dirty = True
            t.selection = None
            self.quiet_since = None
        return None

    def _plain_ack(self, event: tuple[Any, ...]) -> str | None:
        """A plain ACK as meshcore.xds.transport delivers it (an ``ACK`` event: type_url,
        nonce, version_info, the names as encoded, the message): applied without decoding
        when it acknowledges the outstanding nonce with the names already subscribed (what
        the full path would do with it), else decoded and taken the full path."""
        _, _, type_url, nonce, version, key, data = event
        t = self.types.get(type_url)
        if t is None or self.state is None or nonce != t.nonce or key != t.names_key:
            req = discovery_pb2.DiscoveryRequest.FromString(data)
            problem = self.receive(req)
            t = self.types.get(type_url)
            if problem is None and t is not None and t.names == set(req.resource_names):
                t.names_key = key  # the same request again changes nothing but the ACK
            return problem
        t.awaiting_ack = False
        self.server.acked(self.state, type_url, version)
        if self.lane is not None and self.quiet_since is not None:
            change = self.server.cache.changed_at.get(self.node.id) if self.node else None
            if self.quiet_since == change:  # nothing due: the next ACK may go the lane
                self._expect(None, change)
        return None

    def settle(self) -> None:
        """Applies the plain ACKs that meshcore.xds.transport's lane took for this stream
        (the one a push pass left it waiting for, see _expect), as _plain_ack would have
        applied them when they came; what the lane expected is no longer taken."""
        if self.lane_pending:
            assert self.lane is not None
            self._apply(self.lane.settle(self.lane_id))

    def taken(self) -> None:
        """As settle, but what the lane expects, if it did not come, is still taken."""
        if self.lane_pending:
            assert self.lane is not None
            acks = self.lane.taken(self.lane_id)
            if acks:
                self._apply(acks)

    def _apply(self, acks: list[tuple[str, str, float, float]]) -> None:
        self.lane_pending = False
        converges, self.lane_converges = self.lane_converges, None
        for type_url, version, wall, monotonic in acks:
            t = self.types.get(type_url)
            if t is not None and self.state is not None:
                t.awaiting_ack = False
                self.server.lane_acked(self.state, type_url, version, (wall, monotonic), converges)

    def _expect(self, snap: Snapshot | None, change: float | None) -> None:
        """After a pass that left nothing due: the lane takes the plain ACK of the one
        response outstanding (the nonce, the names already subscribed), so that it never
        reaches this code as an event; streams with TTLs (heartbeats) are left out."""
        lane, state = self.lane, self.state
        if lane is None or state is None:
            return
        waiting = [(u, t) for u, t in self.types.items() if t.awaiting_ack]
        if len(waiting) != 1 or waiting[0][1].names_key is None:
            return
        if self.server.resource_ttl and self.wants_heartbeats():
            return
        type_url, t = waiting[0]
        if snap is None:
            snap = self.held()
            if snap is None:
                return
        assert t.names_key is not None
        self.lane_converges = self.server.converges(state, snap, change, type_url)
        lane.expect(self.lane_id, type_url, t.nonce, t.names_key)
        self.lane_pending = True

    def may_push(self) -> bool:
        assert self.node is not None
        quiet = self.quiet_since
        return quiet is None or quiet != self.server.cache.changed_at.get(self.node.id)

    def ttl(self, type_url: str) -> float | None:
        """The TTL for this type, if the client takes Resource wrappers and TTLs in SotW."""
        ttl = self.server.resource_ttl.get(type_url)
        if ttl is None or self.node is None:
            return None
        features = self.node.client_features
        if TTL_FEATURE not in features or not features & SOTW_RESOURCE_FEATURES:
            return None
        return ttl

    def heartbeats(self) -> Iterable[bytes]:
        """Refreshes the TTLs of what the client holds: for RDS/EDS/SDS a response whose
        Resources carry no resource and the current version (Envoy's heartbeat); LDS and CDS
        responses are full state, so they are sent again in full (see pushes)."""
        self.settle()
        snap = self.held()
        if snap is None:
            return
        for type_url, t in self.types.items():
            ttl = self.ttl(type_url)
            if ttl is None or t.awaiting_ack or not t.sent_version:
                continue
            if t.sent_version != snap.version(type_url) or t.sent_version == t.nacked_version:
                continue  # a change is due: the push refreshes the TTLs
            if type_url in types.FULL_STATE_TYPES:
                t.dirty = True
                self.quiet_since = None
                continue
            nonce = self.next_nonce()
            beat = snap.sotw_heartbeat(type_url, t.sent_version, nonce, t.sent_names, ttl)
            t.nonce = nonce
            t.awaiting_ack = True
            self.server.heartbeats += 1
            yield beat

    def pushes(self) -> Iterable[bytes]:
        assert self.node is not None
        # A pass that left nothing due (sent all that was, deferred nothing to an ACK) stays
        # true until the snapshot or the subscriptions change: an ACK then costs no look at
        # the snapshot.
        if self.lane_pending:
            self.settle()
        change = self.server.cache.changed_at.get(self.node.id)
        if self.quiet_since is not None and self.quiet_since == change:
            self._expect(None, change)
            return
        snap = self.held()
        if snap is None:
            return
        due = False
        for type_url in types.PUSH_ORDER:
            t = self.types.get(type_url)
            if t is None or not t.requested:
                continue
            version = snap.version(type_url)
            if not t.dirty and (version in (t.sent_version, t.nacked_version)):
                continue
            if t.awaiting_ack:
                due = True  # after the ACK
                continue
            response = self._response(snap, type_url, t, version)
            if response is None:
                continue
            # Sent: its ACK makes nothing due unless something changes meanwhile.
            yield response
            if type_url == types.CLUSTER and types.ENDPOINT in self.types:
                # Envoy re-warms every cluster it is sent and needs fresh endpoints for it.
                self.types[types.ENDPOINT].dirty = True
        self.quiet_since = None if due else change
        if not due:
            self._expect(snap, change)

    def _response(self, snap: Snapshot, type_url: str, t: SotwType, version: str) -> bytes | None:
        started = time.perf_counter()
        selection = t.selection
        if selection is None:
            selection = t.selection = (t.wildcard, tuple(sorted(t.names - {"*"})))
        wildcard, explicit = selection
        if not wildcard and not explicit and type_url not in WILDCARD_TYPES:
            t.dirty = False
            return None  # nothing asked for: an empty RDS/EDS/SDS answer means nothing
        nonce = self.next_nonce()
        ttl = self.ttl(type_url)
        # The same bytes for every proxy that is sent the same resources: encoded once in the
        # core (no protobuf objects), then only the nonce is this stream's.
        body = self.server.cache.sotw_body(snap, type_url, version, wildcard, explicit, ttl)
        data = with_nonce(body, nonce)
        assert self.state is not None
        if ttl is not None:
            listed = snap.names(type_url) if wildcard else explicit
            named = set(listed).union(explicit)
            t.sent_names = sorted(n for n in named if snap.resource(type_url, n) is not None)
        if len(data) > self.server.max_message_bytes:
            self.server.oversized(self.state, type_url, len(data))
            t.dirty = False
            t.nacked_version = version  # do not retry the same content
            return None
        t.nonce = nonce
        t.sent_version = version
        t.dirty = False
        t.awaiting_ack = True
        # How many resources the response names (meshcore_xds_resources_sent).
        if not wildcard:
            count = len(explicit)
        elif explicit:
            count = len(set(snap.names(type_url)).union(explicit))
        else:
            count = snap.count(type_url)
        self.server.sent(self.state, type_url, version, len(data), started, count)
        return data


def with_nonce(body: bytes, nonce: str) -> bytes:
    """A DiscoveryResponse encoded without its nonce, with this one (field 5, its last)."""
    raw = nonce.encode()
    size = len(raw)
    length = bytearray()
    while size >= 0x80:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return b"".join((body, b"\x2a", length, raw))
