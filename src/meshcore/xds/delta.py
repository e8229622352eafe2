"""ADS delta (incremental): subscriptions changed by name, each resource with its own version,
removals said in ``removed_resources``, responses over the size limit sent in parts."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from meshcore._core.xds import Snapshot
from meshcore._text import shown
from meshcore.xds import types
from meshcore.xds.stream import TTL_FEATURE, Stream, short

log = logging.getLogger("meshcore.xds")


@dataclass(slots=True)
class DeltaType:
    subscribed: set[str] = field(default_factory=set)
    wildcard: bool = False
    requested: bool = False
    known: dict[str, str] = field(default_factory=dict)  # what the client holds
    nacked: dict[str, str] = field(default_factory=dict)  # versions it refused
    # The last response: name -> (version the client had before, version sent), for NACKs.
    in_flight: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    nonce: str = ""
    awaiting_ack: bool = False
    must_answer: set[str] = field(default_factory=set)  # names to confirm even if unchanged


class DeltaStream(Stream):
    kind = "delta"
    label = "delta"
    types: dict[str, DeltaType]

    def receive(self, req: discovery_pb2.DeltaDiscoveryRequest | tuple[Any, ...]) -> str | None:
        if type(req) is tuple:
            return self._plain_ack(req)
        assert isinstance(req, discovery_pb2.DeltaDiscoveryRequest)
        refused = self.hello(req)
        if refused is not None or self.state is None:
            return refused
        t = self.types.setdefault(req.type_url, DeltaType())
        status = self.state.status(req.type_url)
        first = not t.requested
        if first:
            t.requested = True
            t.known = dict(req.initial_resource_versions)
            if not req.resource_names_subscribe and not req.resource_names_unsubscribe:
                t.wildcard = True  # legacy wildcard: the first request names nothing
        if req.response_nonce and req.response_nonce == t.nonce:
            t.awaiting_ack = False
            if req.HasField("error_detail"):
                # The client kept its previous resources: undo what we thought it took, and
                # remember what it refused so that it is not offered again unchanged.
                for name, (before, sent) in t.in_flight.items():
                    if before is None:
                        t.known.pop(name, None)
                    else:
                        t.known[name] = before
                    t.nacked[name] = sent
                self.server.rejected(
                    self.state, req.type_url, status.sent_version, req.error_detail.message
                )
            else:
                self.server.acked(self.state, req.type_url, status.sent_version)
            t.in_flight = {}
        # Subscription changes count whatever the nonce (the spec: nonces never reject them).
        for name in req.resource_names_subscribe:
            if name == "*":
                t.wildcard = True
                continue
            t.subscribed.add(name)
            t.must_answer.add(name)
            if not (first and name in req.initial_resource_versions):
                # It asked again: send it even if we think it has it. Not on a new stream's
                # first request, where the client says what it holds (a proxy moving to
                # another replica that has the same versions is sent nothing again).
                t.known.pop(name, None)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                t.wildcard = False
                continue
            t.subscribed.discard(name)
            t.must_answer.discard(name)
            t.known.pop(name, None)
        limit = self.server.max_names_per_type
        if len(t.subscribed) > limit or len(t.known) > limit:
            return self.too_many_names()
        return None

    def _plain_ack(self, event: tuple[Any, ...]) -> str | None:
        """A plain ACK as meshcore.xds.transport delivers it (an ``ACK`` event: type_url,
        nonce, version_info, no names, the message; no subscription change): applied without
        decoding when it acknowledges the outstanding nonce, else taken the full path."""
        _, _, type_url, nonce, _, _, data = event
        t = self.types.get(type_url)
        if t is None or self.state is None or not t.requested or nonce != t.nonce:
            return self.receive(discovery_pb2.DeltaDiscoveryRequest.FromString(data))
        t.awaiting_ack = False
        self.server.acked(self.state, type_url, self.state.status(type_url).sent_version)
        t.in_flight = {}
        limit = self.server.max_names_per_type
        if len(t.subscribed) > limit or len(t.known) > limit:
            return self.too_many_names()
        return None

    def ttl(self, type_url: str) -> float | None:
        ttl = self.server.resource_ttl.get(type_url)
        if ttl is None or self.node is None or TTL_FEATURE not in self.node.client_features:
            return None
        return ttl

    def heartbeats(self) -> Iterable[bytes]:
        """Refreshes the TTLs of the resources the client holds in their current version:
        Resources with a name, version and TTL but no resource (the delta heartbeat)."""
        snap = self.held()
        if snap is None:
            return
        for type_url, t in self.types.items():
            ttl = self.ttl(type_url)
            if ttl is None or t.awaiting_ack or not t.known:
                continue
            nonce = self.next_nonce()
            beat = snap.delta_heartbeat(type_url, nonce, t.known, ttl)
            if beat is None:
                continue  # nothing held in its current version
            t.nonce = nonce
            t.awaiting_ack = True
            t.in_flight = {}
            self.server.heartbeats += 1
            yield beat

    def _part(
        self,
        snap: Snapshot,
        type_url: str,
        t: DeltaType,
        nonce: str,
        believed: dict[str, str],
        updated: list[tuple[str, str]],
        ttl: float | None,
    ) -> tuple[bytes, list[tuple[str, str]], list[str]] | None:
        """A response too large for the client: send the updated resources in parts that fit
        (a delta response may carry any of them; each later part follows the ACK of the one
        before, and removals come with the last). A single resource over the limit cannot be
        sent: it is reported (proxy-status, log) and not offered again unchanged."""
        assert self.node is not None
        assert self.state is not None
        limit = self.server.max_message_bytes - 1024  # room for the envelope
        chosen: list[str] = []
        total = 0
        for name, version in updated:
            found = snap.resource(type_url, name)
            size = len(found[1]) + len(name) + len(version) + 64 if found is not None else 0
            if size > limit:
                self.server.oversized(self.state, type_url, size, name)
                t.nacked[name] = version
                continue
            if total + size <= limit:
                chosen.append(name)
                total += size
        if not chosen:
            return None
        out = snap.delta_response(type_url, nonce, believed, chosen, set(), None, ttl)
        if out is None or len(out[0]) > self.server.max_message_bytes:
            return None
        self.server.split_responses += 1
        log.info(
            "%s for %s in parts: %d of %d resources in this one",
            short(type_url).upper(),
            shown(self.node.id),
            len(out[1]),
            len(updated),
        )
        return out

    def pushes(self) -> Iterable[bytes]:
        snap = self.held()
        if snap is None:
            return
        for type_url in types.PUSH_ORDER:
            t = self.types.get(type_url)
            if t is None or not t.requested or t.awaiting_ack:
                continue
            response = self._response(snap, type_url, t)
            if response is not None:
                yield response

    def _response(self, snap: Snapshot, type_url: str, t: DeltaType) -> bytes | None:
        started = time.perf_counter()
        believed = {**t.known, **t.nacked}
        report = t.must_answer | set(t.known)
        nonce = self.next_nonce()
        ttl = self.ttl(type_url)
        if t.wildcard:
            # Explicit names beyond the wildcard set that do not exist: say so, once.
            missing = [
                n for n in t.subscribed if n in report and snap.resource(type_url, n) is None
            ]
            out = snap.delta_response(type_url, nonce, believed, None, report, missing, ttl)
        else:
            out = snap.delta_response(type_url, nonce, believed, t.subscribed, report, None, ttl)
        t.must_answer.clear()
        if out is None:
            return None
        data, updated, removed = out
        assert self.state is not None
        if len(data) > self.server.max_message_bytes:
            split = self._part(snap, type_url, t, nonce, believed, updated, ttl)
            if split is None:
                return None
            data, updated, removed = split
        t.in_flight = {name: (t.known.get(name), version) for name, version in updated}
        for name, version in updated:
            t.known[name] = version
            t.nacked.pop(name, None)
        for name in removed:
            t.known.pop(name, None)
        t.nonce = nonce
        t.awaiting_ack = True
        self.server.sent(
            self.state, type_url, snap.version(type_url), len(data), started, len(updated)
        )
        return data
