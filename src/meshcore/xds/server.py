"""The ADS server: Envoy's aggregated discovery service, state of the world and delta.

It follows Envoy's xDS protocol (see reference/xds-protocol-checklist.md in the design notes):
the node is remembered from the first request; nonces are per stream; an ACK or NACK is told by
``error_detail``; a NACKed version is never re-sent until the configuration changes; a stale
nonce gets no answer (SotW) but subscription changes are honoured regardless (delta); types are
pushed clusters, endpoints, listeners, routes, secrets (make-before-break), endpoints again
after every cluster push (Envoy re-warms clusters); one push per type is outstanding at a time
and later changes merge into the next, and at most ``push_throttle`` streams send at a time;
responses over the size limit are never sent: delta responses go in parts that fit, a SotW
response (or one resource) over the limit is reported in proxy-status and the log.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.json_format import MessageToDict

from meshcore._core import Snapshot
from meshcore.observability.metrics import XdsMetrics
from meshcore.xds import types
from meshcore.xds.cache import NodeInfo, SnapshotCache

log = logging.getLogger("meshcore.xds")

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
WILDCARD_TYPES = frozenset({types.LISTENER, types.CLUSTER})
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default receive limit in Envoy and grpc
DEFAULT_PUSH_THROTTLE = 100  # istiod's PILOT_PUSH_THROTTLE default
TTL_FEATURE = "xds.config.supports-resource-ttl"
# Envoy's documentation names the first; the protocol checklist the second.
SOTW_RESOURCE_FEATURES = frozenset(
    {"xds.config.resource-in-sotw", "xds.config.supports-resource-in-sotw"}
)
RESOURCE_TYPE = "type.googleapis.com/envoy.service.discovery.v3.Resource"


@dataclass
class TypeStatus:
    """What one proxy has been sent and has accepted, for one type (proxy-status)."""

    sent_version: str = ""
    acked_version: str = ""
    nacked_version: str = ""
    error: str = ""
    sent_at: float = 0.0
    acked_at: float = 0.0


@dataclass
class ProxyState:
    node: NodeInfo
    stream: str  # "sotw" or "delta"
    number: int = 0  # the stream's number on this server
    connected_at: float = field(default_factory=time.time)
    types: dict[str, TypeStatus] = field(default_factory=dict)
    converged_change: float = 0.0  # the cache change whose convergence was last recorded

    def status(self, type_url: str) -> TypeStatus:
        return self.types.setdefault(type_url, TypeStatus())


class AdsServer:
    """Serves snapshots from a :class:`SnapshotCache` to Envoy and gRPC xDS clients."""

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        metrics: XdsMetrics | None = None,
        push_throttle: int = DEFAULT_PUSH_THROTTLE,
        resource_ttl: Mapping[str, float] | None = None,
        heartbeat_interval: float | None = None,
        max_new_streams_per_second: float | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.cache = cache
        # New streams beyond this rate (a token bucket, bursts of up to one second's worth, at
        # least one stream) are refused with RESOURCE_EXHAUSTED and retried by the client
        # (istiod's PILOT_MAX_REQUESTS_PER_SECOND); None: no limit.
        self.max_new_streams_per_second = max_new_streams_per_second
        self._tokens = max(1.0, max_new_streams_per_second or 0.0)
        self._tokens_at = time.monotonic()
        # Streams are refused with UNAVAILABLE until this says the caches are ready (istiod's
        # IsServerReady); None: always ready.
        self.ready = ready
        self.refused_streams = 0
        # Per type URL, the TTL (seconds) of resources sent to clients that support it (the
        # client features TTL_FEATURE, and for SotW one of SOTW_RESOURCE_FEATURES); those
        # clients get heartbeats every heartbeat_interval (default: a third of the shortest
        # TTL), so that they drop the resources only if the control plane is gone.
        self.resource_ttl = dict(resource_ttl or {})
        self.heartbeat_interval = heartbeat_interval or (
            min(self.resource_ttl.values()) / 3 if self.resource_ttl else None
        )
        self.heartbeats = 0
        self.max_message_bytes = max_message_bytes
        # At most this many streams send pushes at a time (istiod's PILOT_PUSH_THROTTLE): a
        # change reaching every proxy does not encode and queue thousands of responses at once.
        self.push_throttle = push_throttle
        self._pushing = asyncio.Semaphore(push_throttle)
        self.pushes_in_flight = 0
        self.peak_pushes_in_flight = 0
        self.metrics = metrics or XdsMetrics()
        self.proxies: dict[str, ProxyState] = {}
        self.rejects = 0
        self.pushes = 0
        self.oversized_responses = 0  # not sent: over the limit (SotW) or one resource over it
        self.split_responses = 0  # delta responses sent in parts to stay under the limit
        self._streams = itertools.count(1)

    # The gRPC service and its two stream methods (SDS serves the same protocol under its own).
    service = SERVICE
    sotw_method = "StreamAggregatedResources"
    delta_method = "DeltaAggregatedResources"

    def rpc_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        return {
            self.sotw_method: grpc.stream_stream_rpc_method_handler(
                self.stream_aggregated_resources,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_encoded,
            ),
            self.delta_method: grpc.stream_stream_rpc_method_handler(
                self.delta_aggregated_resources,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=_encoded,
            ),
        }

    def add_to_server(self, server: grpc.aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(self.service, self.rpc_handlers())
        server.add_generic_rpc_handlers((handler,))

    # --- state of the world -------------------------------------------------------------------

    async def stream_aggregated_resources(
        self,
        requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        stream = _SotwStream(self, next(self._streams))
        async for response in _run(self, stream, requests, context):
            yield response

    async def delta_aggregated_resources(
        self,
        requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        stream = _DeltaStream(self, next(self._streams))
        async for response in _run(self, stream, requests, context):
            yield response

    # --- bookkeeping shared by both stream kinds -----------------------------------------------

    def admit(self) -> tuple[grpc.StatusCode, str] | None:
        """Why a new stream must be refused now, or None to take it."""
        if self.ready is not None and not self.ready():
            self.refused_streams += 1
            return grpc.StatusCode.UNAVAILABLE, "the control plane has no configuration yet"
        rate = self.max_new_streams_per_second
        if rate is None:
            return None
        now = time.monotonic()
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            self.refused_streams += 1
            return grpc.StatusCode.RESOURCE_EXHAUSTED, "too many new xDS streams; retry later"
        self._tokens -= 1.0
        return None

    def connected(self, node: NodeInfo, kind: str, number: int = 0) -> None:
        self.proxies[node.id] = ProxyState(node, kind, number)
        self.metrics.connect(1)

    def disconnected(self, node_id: str, kind: str, number: int = 0) -> None:
        state = self.proxies.get(node_id)
        # A proxy that reconnected before its old stream ended belongs to the new stream.
        if state is not None and state.stream == kind and state.number == number:
            del self.proxies[node_id]
            if self.cache.source is not None:
                # The cache can generate it again on reconnect: no snapshot kept per gone proxy.
                self.cache.clear(node_id)
        self.metrics.connect(-1)

    def sent(self, node_id: str, type_url: str, version: str, size: int, started: float) -> None:
        status = self.proxies[node_id].status(type_url)
        status.sent_version = version
        status.sent_at = time.time()
        self.pushes += 1
        self.metrics.push(_short(type_url), time.perf_counter() - started, size)

    def acked(self, node_id: str, type_url: str, version: str) -> None:
        state = self.proxies[node_id]
        status = state.status(type_url)
        status.acked_version = version
        status.acked_at = time.time()
        status.error = ""
        changed = self.cache.changed_at.get(node_id)
        if changed is None or state.converged_change == changed:
            return
        snap = self.cache.get(state.node)
        if snap is not None and all(
            st.acked_version == snap.version(t) for t, st in state.types.items() if st.sent_version
        ):
            state.converged_change = changed
            self.metrics.converged(time.monotonic() - changed)

    def rejected(self, node_id: str, type_url: str, version: str, message: str) -> None:
        status = self.proxies[node_id].status(type_url)
        status.nacked_version = version
        status.error = message
        self.rejects += 1
        self.metrics.reject(_short(type_url))
        log.warning(
            "proxy %s rejected %s version %s: %s", node_id, _short(type_url), version, message
        )

    def oversized(self, node_id: str, type_url: str, size: int, name: str = "") -> None:
        status = self.proxies[node_id].status(type_url)
        what = f"resource {name!r} of" if name else "response of"
        status.error = f"{what} {size} bytes exceeds the limit of {self.max_message_bytes}"
        self.oversized_responses += 1
        log.error("not sending %s to %s: %s", _short(type_url), node_id, status.error)

    # --- status ---------------------------------------------------------------------------------

    def sync_status(self) -> dict[str, dict[str, str]]:
        """For each connected proxy and type: SYNCED, STALE (sent, not yet acked or behind),
        NACKED or NOT SENT, as ``meshcore proxy-status`` prints them."""
        out: dict[str, dict[str, str]] = {}
        for node_id, state in self.proxies.items():
            snap = self.cache.get(state.node)
            row: dict[str, str] = {}
            for type_url in types.PUSH_ORDER:
                st = state.types.get(type_url)
                current = snap.version(type_url) if snap is not None else ""
                if st is None or not st.sent_version:
                    row[types.SHORT_NAMES[type_url]] = "NOT SENT"
                elif st.nacked_version and st.nacked_version == st.sent_version:
                    row[types.SHORT_NAMES[type_url]] = "NACKED"
                elif st.acked_version == st.sent_version == current:
                    row[types.SHORT_NAMES[type_url]] = "SYNCED"
                else:
                    row[types.SHORT_NAMES[type_url]] = "STALE"
            out[node_id] = row
        return out


async def _run(
    server: AdsServer,
    stream: _Stream,
    requests: AsyncIterator[Any],
    context: grpc.aio.ServicerContext[Any, Any],
) -> AsyncIterator[Any]:
    """Reads requests and snapshot changes concurrently; yields responses in push order.

    One event wakes the stream, set by the request reader and by the snapshot cache: a wake-up
    handles every request that arrived, then pushes what is due (no futures per wake-up).
    """
    refused = server.admit()
    if refused is not None:
        await context.abort(*refused)
        return
    wake = asyncio.Event()
    inbox: collections.deque[Any] = collections.deque()

    async def read() -> None:
        try:
            async for request in requests:
                inbox.append(request)
                wake.set()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            inbox.append(None)
            wake.set()

    reader = asyncio.create_task(read())
    subscribed: str | None = None
    loop = asyncio.get_running_loop()
    next_beat: float | None = None
    try:
        while True:
            interval = server.heartbeat_interval
            if interval is not None and stream.wants_heartbeats():
                if next_beat is None:
                    next_beat = loop.time() + interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.0, next_beat - loop.time()))
            else:
                next_beat = None
                await wake.wait()
            wake.clear()
            while inbox:
                request = inbox.popleft()
                if request is None:
                    return
                problem = stream.receive(request)
                if problem is not None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
                    return
                if subscribed is None and stream.node is not None:
                    subscribed = stream.node.id
                    server.cache.subscribe(subscribed, wake)
            beats: list[bytes] = []
            if next_beat is not None and loop.time() >= next_beat:
                next_beat = None
                beats = list(stream.heartbeats())
            pushes = itertools.chain(beats, stream.pushes())
            first = next(pushes, None)
            if first is None:
                continue
            async with server._pushing:  # the push throttle
                server.pushes_in_flight += 1
                server.peak_pushes_in_flight = max(
                    server.peak_pushes_in_flight, server.pushes_in_flight
                )
                try:
                    yield first
                    for response in pushes:
                        yield response
                finally:
                    server.pushes_in_flight -= 1
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if subscribed is not None:
            server.cache.unsubscribe(subscribed, wake)
        if stream.node is not None:
            server.disconnected(stream.node.id, stream.kind, stream.number)


def _ttl(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def _delta_with_ttl(data: bytes, ttl: float) -> bytes:
    """The delta response with a TTL on every resource (Resource.ttl)."""
    resp = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
    for r in resp.resources:
        r.ttl.CopyFrom(_ttl(ttl))
    out: bytes = resp.SerializeToString(deterministic=True)
    return out


def _sotw_wrapped(data: bytes, names: list[str], ttl: float) -> bytes:
    """The SotW response with each resource wrapped in a Resource carrying its name, the
    type's version (which makes a later heartbeat recognisable) and a TTL."""
    resp = discovery_pb2.DiscoveryResponse.FromString(data)
    wrapped = []
    for name, any_ in zip(names, resp.resources, strict=True):
        r = discovery_pb2.Resource(name=name, version=resp.version_info, ttl=_ttl(ttl))
        r.resource.CopyFrom(any_)
        wrapped.append(any_pb2.Any(type_url=RESOURCE_TYPE, value=r.SerializeToString()))
    del resp.resources[:]
    resp.resources.extend(wrapped)
    out: bytes = resp.SerializeToString(deterministic=True)
    return out


def _encoded(response: bytes) -> bytes:
    # Responses are encoded by the Rust core already (see Snapshot.sotw_response).
    return response


def _short(type_url: str) -> str:
    return types.SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1]).lower()


def _node(msg: Any) -> NodeInfo:
    metadata = MessageToDict(msg.metadata) if msg.HasField("metadata") else {}
    return NodeInfo(
        id=msg.id,
        cluster=msg.cluster,
        metadata=metadata,
        user_agent=msg.user_agent_name,
        client_features=frozenset(msg.client_features),
    )


@dataclass
class _SotwType:
    names: set[str] = field(default_factory=set)
    legacy_wildcard: bool = False
    requested: bool = False
    dirty: bool = False  # the subscription changed: answer even if the version did not
    nonce: str = ""
    sent_version: str | None = None
    nacked_version: str | None = None
    awaiting_ack: bool = False
    sent_names: list[str] = field(default_factory=list)  # with a TTL: for heartbeats

    @property
    def wildcard(self) -> bool:
        return self.legacy_wildcard or "*" in self.names


class _Stream:
    """What both stream kinds keep: the server, the node (from the first request), the
    per-type state, nonces."""

    kind = ""
    label = ""  # for the log

    def __init__(self, server: AdsServer, number: int) -> None:
        self.server = server
        self.number = number
        self.node: NodeInfo | None = None
        self.types: dict[str, Any] = {}
        self._nonces = itertools.count(1)

    def hello(self, req: Any) -> str | None:
        """Remembers the node of the stream's first request; why a request is refused."""
        if self.node is None:
            if not req.HasField("node") or not req.node.id:
                return "the first request on a stream must carry node.id"
            self.node = _node(req.node)
            self.server.connected(self.node, self.kind, self.number)
            log.info(
                "proxy %s connected (ADS %s, stream %d)", self.node.id, self.label, self.number
            )
        if not req.type_url:
            return "type_url is required on ADS requests"
        return None

    def receive(self, req: Any) -> str | None:
        raise NotImplementedError

    def pushes(self) -> Iterable[bytes]:
        raise NotImplementedError

    def heartbeats(self) -> Iterable[bytes]:
        raise NotImplementedError

    def ttl(self, type_url: str) -> float | None:
        raise NotImplementedError

    def wants_heartbeats(self) -> bool:
        return any(t.requested and self.ttl(u) is not None for u, t in self.types.items())

    def held(self) -> Snapshot | None:
        """The snapshot the stream's node is to hold now (None before the node is known)."""
        return None if self.node is None else self.server.cache.get(self.node)


class _SotwStream(_Stream):
    kind = "sotw"
    label = "state of the world"
    types: dict[str, _SotwType]

    def receive(self, req: discovery_pb2.DiscoveryRequest) -> str | None:
        refused = self.hello(req)
        if refused is not None or self.node is None:
            return refused
        t = self.types.setdefault(req.type_url, _SotwType())
        names = set(req.resource_names)
        if req.response_nonce:
            if req.response_nonce != t.nonce:
                return None  # a stale nonce: superseded by a later response
            t.awaiting_ack = False
            if req.HasField("error_detail"):
                t.nacked_version = t.sent_version
                self.server.rejected(
                    self.node.id, req.type_url, t.sent_version or "", req.error_detail.message
                )
            else:
                self.server.acked(self.node.id, req.type_url, req.version_info)
        first = not t.requested
        t.requested = True
        if req.type_url in WILDCARD_TYPES:
            if first and not names:
                t.legacy_wildcard = True
            elif names:
                t.legacy_wildcard = False
        if names != t.names or first:
            t.names = names
            t.dirty = True
        return None

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
                continue
            nonce = f"{self.number}-{next(self._nonces)}"
            resp = discovery_pb2.DiscoveryResponse(
                version_info=t.sent_version, type_url=type_url, nonce=nonce
            )
            for name in t.sent_names:
                beat = discovery_pb2.Resource(name=name, version=t.sent_version, ttl=_ttl(ttl))
                resp.resources.add(type_url=RESOURCE_TYPE, value=beat.SerializeToString())
            t.nonce = nonce
            t.awaiting_ack = True
            self.server.heartbeats += 1
            yield resp.SerializeToString(deterministic=True)

    def pushes(self) -> Iterable[bytes]:
        snap = self.held()
        if snap is None:
            return
        for type_url in types.PUSH_ORDER:
            t = self.types.get(type_url)
            if t is None or not t.requested or t.awaiting_ack:
                continue
            version = snap.version(type_url)
            if not t.dirty and (version in (t.sent_version, t.nacked_version)):
                continue
            response = self._response(snap, type_url, t, version)
            if response is None:
                continue
            yield response
            if type_url == types.CLUSTER and types.ENDPOINT in self.types:
                # Envoy re-warms every cluster it is sent and needs fresh endpoints for it.
                self.types[types.ENDPOINT].dirty = True

    def _response(self, snap: Snapshot, type_url: str, t: _SotwType, version: str) -> bytes | None:
        started = time.perf_counter()
        explicit = t.names - {"*"}
        if not t.wildcard and not explicit and type_url not in WILDCARD_TYPES:
            t.dirty = False
            return None  # nothing asked for: an empty RDS/EDS/SDS answer means nothing
        if t.wildcard and not explicit:
            names = None  # all of the type
        elif t.wildcard:
            names = sorted(set(snap.names(type_url)) | explicit)
        else:
            names = sorted(explicit)
        nonce = f"{self.number}-{next(self._nonces)}"
        # Encoded in the core from the interned resources: no protobuf objects per push.
        data, _ = snap.sotw_response(type_url, version, nonce, names)
        assert self.node is not None
        ttl = self.ttl(type_url)
        if ttl is not None:
            listed = names if names is not None else snap.names(type_url)
            sent = sorted(n for n in listed if snap.resource(type_url, n) is not None)
            data = _sotw_wrapped(data, sent, ttl)
            t.sent_names = sent
        if len(data) > self.server.max_message_bytes:
            self.server.oversized(self.node.id, type_url, len(data))
            t.dirty = False
            t.nacked_version = version  # do not retry the same content
            return None
        t.nonce = nonce
        t.sent_version = version
        t.dirty = False
        t.awaiting_ack = True
        self.server.sent(self.node.id, type_url, version, len(data), started)
        return data


@dataclass
class _DeltaType:
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


class _DeltaStream(_Stream):
    kind = "delta"
    label = "delta"
    types: dict[str, _DeltaType]

    def receive(self, req: discovery_pb2.DeltaDiscoveryRequest) -> str | None:
        refused = self.hello(req)
        if refused is not None or self.node is None:
            return refused
        t = self.types.setdefault(req.type_url, _DeltaType())
        status = self.server.proxies[self.node.id].status(req.type_url)
        if not t.requested:
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
                    self.node.id, req.type_url, status.sent_version, req.error_detail.message
                )
            else:
                self.server.acked(self.node.id, req.type_url, status.sent_version)
            t.in_flight = {}
        # Subscription changes count whatever the nonce (the spec: nonces never reject them).
        for name in req.resource_names_subscribe:
            if name == "*":
                t.wildcard = True
                continue
            t.subscribed.add(name)
            t.must_answer.add(name)
            t.known.pop(name, None)  # it asked again: send it even if we think it has it
        for name in req.resource_names_unsubscribe:
            if name == "*":
                t.wildcard = False
                continue
            t.subscribed.discard(name)
            t.must_answer.discard(name)
            t.known.pop(name, None)
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
            current = []
            for name, version in sorted(t.known.items()):
                found = snap.resource(type_url, name)
                if found is not None and found[0] == version:
                    current.append((name, version))
            if not current:
                continue
            nonce = f"{self.number}-{next(self._nonces)}"
            resp = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=snap.version(type_url), type_url=type_url, nonce=nonce
            )
            for name, version in current:
                resp.resources.add(name=name, version=version, ttl=_ttl(ttl))
            t.nonce = nonce
            t.awaiting_ack = True
            t.in_flight = {}
            self.server.heartbeats += 1
            yield resp.SerializeToString(deterministic=True)

    def _part(
        self,
        snap: Snapshot,
        type_url: str,
        t: _DeltaType,
        nonce: str,
        believed: dict[str, str],
        updated: list[tuple[str, str]],
    ) -> tuple[bytes, list[tuple[str, str]], list[str]] | None:
        """A response too large for the client: send the updated resources in parts that fit
        (a delta response may carry any of them; each later part follows the ACK of the one
        before, and removals come with the last). A single resource over the limit cannot be
        sent: it is reported (proxy-status, log) and not offered again unchanged."""
        assert self.node is not None
        limit = self.server.max_message_bytes - 1024  # room for the envelope
        chosen: list[str] = []
        total = 0
        for name, version in updated:
            found = snap.resource(type_url, name)
            size = len(found[1]) + len(name) + len(version) + 64 if found is not None else 0
            if size > limit:
                self.server.oversized(self.node.id, type_url, size, name)
                t.nacked[name] = version
                continue
            if total + size <= limit:
                chosen.append(name)
                total += size
        if not chosen:
            return None
        out = snap.delta_response(type_url, nonce, believed, chosen, set())
        if out is None or len(out[0]) > self.server.max_message_bytes:
            return None
        self.server.split_responses += 1
        log.info(
            "%s for %s in parts: %d of %d resources in this one",
            _short(type_url).upper(),
            self.node.id,
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

    def _response(self, snap: Snapshot, type_url: str, t: _DeltaType) -> bytes | None:
        started = time.perf_counter()
        believed = {**t.known, **t.nacked}
        report = t.must_answer | set(t.known)
        nonce = f"{self.number}-{next(self._nonces)}"
        if t.wildcard:
            # Explicit names beyond the wildcard set that do not exist: say so, once.
            missing = [
                n for n in t.subscribed if n in report and snap.resource(type_url, n) is None
            ]
            out = snap.delta_response(type_url, nonce, believed, None, report, missing)
        else:
            out = snap.delta_response(type_url, nonce, believed, t.subscribed, report)
        t.must_answer.clear()
        if out is None:
            return None
        data, updated, removed = out
        assert self.node is not None
        if len(data) > self.server.max_message_bytes:
            split = self._part(snap, type_url, t, nonce, believed, updated)
            if split is None:
                return None
            data, updated, removed = split
        ttl = self.ttl(type_url)
        if ttl is not None:
            data = _delta_with_ttl(data, ttl)
        t.in_flight = {name: (t.known.get(name), version) for name, version in updated}
        for name, version in updated:
            t.known[name] = version
            t.nacked.pop(name, None)
        for name in removed:
            t.known.pop(name, None)
        t.nonce = nonce
        t.awaiting_ack = True
        self.server.sent(self.node.id, type_url, snap.version(type_url), len(data), started)
        return data


async def start_ads_server(
    cache: SnapshotCache, *, port: int = 0, host: str = "127.0.0.1", **kwargs: Any
) -> tuple[grpc.aio.Server, AdsServer, int]:
    """Starts a plaintext ADS server on host:port (0 picks a free port)."""
    ads = AdsServer(cache, **kwargs)
    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", ads.max_message_bytes + 1024 * 1024)]
    )
    ads.add_to_server(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, ads, bound
