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

Streams and proxies. Each stream is its own connection (as in istiod, where a connection is
keyed by node id and a counter): it keeps its own per-type state and its own registry entry
(:class:`ProxyState`, in ``connections`` by stream number). Two streams with the same node id
(a proxy reconnecting before its old stream ended, or one proxy opening several) both live and
are both served; ``proxies`` (what ``/debug/syncz``, ``proxy-status`` and the control plane see
as the connected proxies) holds the newest live stream of each node id, and falls back to the
newest remaining one when that stream ends. The node's snapshot is dropped when its last stream
ends.

Every stream end, however it comes (the client cancels or half-closes, the server refuses a
request, the connection resets, a deadline passes, an exception), runs the same disconnect
path: the registry entries, the cache subscription, the connected-clients gauge and the
per-stream state are released before anything else in the handler's ``finally`` can be
interrupted. A stream that sends no valid first request (with a node) within
``hello_timeout`` seconds is closed with DEADLINE_EXCEEDED; nodes over the size limits are
refused with INVALID_ARGUMENT (see :mod:`meshcore.xds.stream`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from meshcore._core.xds import Snapshot
from meshcore._text import shown
from meshcore.observability.metrics import XdsMetrics
from meshcore.xds import types
from meshcore.xds.cache import NodeInfo, SnapshotCache
from meshcore.xds.delta import DeltaStream
from meshcore.xds.sotw import SotwStream
from meshcore.xds.stream import Stream, short

if TYPE_CHECKING:
    from meshcore.xds.transport import CoreAdsServer

log = logging.getLogger("meshcore.xds")

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default receive limit in Envoy and grpc
DEFAULT_PUSH_THROTTLE = 100  # istiod's PILOT_PUSH_THROTTLE default
# Istio's node ids (sidecar~IP~pod.namespace~namespace.svc.cluster.local) stay far below this.
DEFAULT_MAX_NODE_ID_CHARS = 1024
# The whole Node message, metadata included (Istio puts the pod's labels and annotations there).
DEFAULT_MAX_NODE_BYTES = 256 * 1024
# Envoy and gRPC clients send their first request as soon as the stream opens.
DEFAULT_HELLO_TIMEOUT_S = 15.0
# Names one stream may subscribe to per type (a proxy of a large mesh without Sidecar scoping
# asks for tens of thousands of clusters' endpoints).
DEFAULT_MAX_NAMES_PER_TYPE = 100_000
# What a proxy's NACK said, as kept for proxy-status and logged.
MAX_ERROR_CHARS = 2000
# Streams gRPC's core holds for the server before its event loop takes them (a fleet
# reconnecting at once). gRPC's defaults (1,000, then random early drops up to 3,000, and 30 s)
# cancel the streams over them (the client sees INTERNAL "Internal error from Core" or
# RESOURCE_EXHAUSTED): a replica meant for 10,000 proxies lost a quarter of them on connect.
# Admission control is ours (max_new_streams_per_second, the readiness check), not the queue's.
MAX_PENDING_STREAMS = 100_000
MAX_PENDING_SECONDS = 300


@dataclass(slots=True)
class TypeStatus:
    """What one proxy has been sent and has accepted, for one type (proxy-status)."""

    sent_version: str = ""
    acked_version: str = ""
    nacked_version: str = ""
    error: str = ""
    sent_at: float = 0.0
    acked_at: float = 0.0


@dataclass(slots=True)
class ProxyState:
    """One stream's entry in the registry: its node and what it was sent and accepted."""

    node: NodeInfo
    stream: str  # "sotw" or "delta"
    number: int = 0  # the stream's number on this server
    connected_at: float = field(default_factory=time.time)
    by_type: dict[str, TypeStatus] = field(default_factory=dict)
    converged_change: float = 0.0  # the cache change whose convergence was last recorded
    # Applies the ACKs the transport took for the stream and has not told yet (SotW on
    # meshcore's own transport, see SotwStream.settle): called before the status is read.
    settle: Callable[[], None] | None = None

    @property
    def types(self) -> dict[str, TypeStatus]:
        """What the proxy was sent and accepted, by type URL (up to date)."""
        if self.settle is not None:
            self.settle()
        return self.by_type

    def status(self, type_url: str) -> TypeStatus:
        return self.by_type.setdefault(type_url, TypeStatus())


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
        max_node_id_chars: int = DEFAULT_MAX_NODE_ID_CHARS,
        max_node_bytes: int = DEFAULT_MAX_NODE_BYTES,
        hello_timeout: float | None = DEFAULT_HELLO_TIMEOUT_S,
        max_names_per_type: int = DEFAULT_MAX_NAMES_PER_TYPE,
    ) -> None:
        self.cache = cache
        # Refused with INVALID_ARGUMENT: longer node ids, larger Node messages (metadata).
        self.max_node_id_chars = max_node_id_chars
        self.max_node_bytes = max_node_bytes
        self.max_names_per_type = max_names_per_type
        # A stream with no valid first request (with a node) by then is closed; None: never.
        self.hello_timeout = hello_timeout
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
        self.metrics.before_read.append(self.settle_all)  # the convergence of ACKs not told yet
        # Every live stream that sent its node, by stream number; and per node id the newest of
        # them (the connected proxies), and all of them.
        self.connections: dict[int, ProxyState] = {}
        self.proxies: dict[str, ProxyState] = {}
        self._of_node: dict[str, dict[int, ProxyState]] = {}
        self.rejects = 0
        self.pushes = 0
        self.oversized_responses = 0  # not sent: over the limit (SotW) or one resource over it
        self.split_responses = 0  # delta responses sent in parts to stay under the limit
        self._streams = itertools.count(1)
        # Told (node, True) when a node's first stream arrives, (node, False) when its last
        # one closes (auto-registration, see ControlPlaneServer).
        self.lifecycle: Callable[[NodeInfo, bool], None] | None = None

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
        stream = SotwStream(self, next(self._streams))
        async with contextlib.aclosing(_run(self, stream, requests, context)) as responses:
            async for response in responses:
                yield response

    async def delta_aggregated_resources(
        self,
        requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[bytes]:
        stream = DeltaStream(self, next(self._streams))
        async with contextlib.aclosing(_run(self, stream, requests, context)) as responses:
            async for response in responses:
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

    def connected(self, node: NodeInfo, kind: str, number: int = 0) -> ProxyState:
        """Registers stream ``number``, which has just sent ``node``; returns its entry."""
        state = ProxyState(node, kind, number)
        first = node.id not in self._of_node
        self.connections[number] = state
        self._of_node.setdefault(node.id, {})[number] = state
        self.proxies[node.id] = state  # the newest stream of the node
        self.metrics.connect(1)
        if first and self.lifecycle is not None:
            self.lifecycle(node, True)
        return state

    def disconnected(self, state: ProxyState) -> None:
        """Releases what stream ``state.number`` held; a second call does nothing."""
        if self.connections.pop(state.number, None) is None:
            return
        self.metrics.connect(-1)
        node_id = state.node.id
        others = self._of_node.get(node_id, {})
        others.pop(state.number, None)
        if others:
            # Another stream of the node lives on: the newest of them is the proxy now.
            if self.proxies.get(node_id) is state:
                self.proxies[node_id] = others[max(others)]
            return
        self._of_node.pop(node_id, None)
        self.proxies.pop(node_id, None)
        if self.lifecycle is not None:
            self.lifecycle(state.node, False)
        if self.cache.source is not None:
            # The cache can generate it again on reconnect: no snapshot kept per gone proxy.
            self.cache.clear(node_id)

    def sent(
        self,
        state: ProxyState,
        type_url: str,
        version: str,
        size: int,
        started: float,
        resources: int = 0,
    ) -> None:
        """A response went out (``resources`` in it: what a failover resends is counted)."""
        status = state.status(type_url)
        status.sent_version = version
        status.sent_at = time.time()
        self.pushes += 1
        self.metrics.push(short(type_url), time.perf_counter() - started, size, resources)

    def acked(self, state: ProxyState, type_url: str, version: str) -> None:
        status = state.status(type_url)
        status.acked_version = version
        status.acked_at = time.time()
        status.error = ""
        changed = self.cache.changed_at.get(state.node.id)
        if changed is None or state.converged_change == changed:
            return
        snap = self.cache.get(state.node)
        if snap is not None and all(
            st.acked_version == snap.version(t)
            for t, st in state.by_type.items()
            if st.sent_version
        ):
            state.converged_change = changed
            self.metrics.converged(time.monotonic() - changed)

    def lane_acked(
        self,
        state: ProxyState,
        type_url: str,
        version: str,
        at: tuple[float, float],
        converges: tuple[float, str | None] | None,
    ) -> None:
        """An ACK the transport took (see SotwStream.settle), applied as :meth:`acked` applied
        it when it came: ``at`` its (wall, monotonic) time; ``converges`` the change stamp and
        the type's version with which it completes the proxy's convergence, worked out when it
        was expected (no snapshot changed meanwhile: the transport took it only then)."""
        status = state.status(type_url)
        status.acked_version = version
        status.acked_at = at[0]
        status.error = ""
        if converges is None or state.converged_change == converges[0]:
            return
        if converges[1] is None or converges[1] == version:
            state.converged_change = converges[0]
            self.metrics.converged(at[1] - converges[0])

    def converges(
        self, state: ProxyState, snap: Snapshot, change: float | None, type_url: str
    ) -> tuple[float, str | None] | None:
        """Whether an ACK of ``type_url`` would complete the convergence of ``change`` (see
        :meth:`acked`), and with which version of it; for :meth:`lane_acked`."""
        if change is None or state.converged_change == change:
            return None
        acked_type: TypeStatus | None = None
        for t, st in state.by_type.items():
            if t == type_url:
                acked_type = st
            elif st.sent_version and st.acked_version != snap.version(t):
                return None
        wanted = snap.version(type_url) if acked_type and acked_type.sent_version else None
        return change, wanted

    def settle_all(self) -> None:
        """Applies every ACK the transport took and has not told yet (see ProxyState.settle)."""
        for state in list(self.connections.values()):
            if state.settle is not None:
                state.settle()

    def rejected(self, state: ProxyState, type_url: str, version: str, message: str) -> None:
        status = state.status(type_url)
        status.nacked_version = version
        status.error = message[:MAX_ERROR_CHARS]  # as the proxy said it, for proxy-status
        self.rejects += 1
        self.metrics.reject(short(type_url))
        log.warning(
            "proxy %s rejected %s version %s: %s",
            shown(state.node.id),
            short(type_url),
            version,
            shown(message, MAX_ERROR_CHARS),
        )

    def oversized(self, state: ProxyState, type_url: str, size: int, name: str = "") -> None:
        status = state.status(type_url)
        what = f"resource '{shown(name)}' of" if name else "response of"
        status.error = f"{what} {size} bytes exceeds the limit of {self.max_message_bytes}"
        self.oversized_responses += 1
        log.error("not sending %s to %s: %s", short(type_url), shown(state.node.id), status.error)

    # --- status ---------------------------------------------------------------------------------

    def sync_status(self) -> dict[str, dict[str, str]]:
        """For each connected proxy and type: SYNCED, STALE (sent, not yet acked or behind),
        NACKED or NOT SENT, as ``meshcore proxy-status`` prints them."""
        out: dict[str, dict[str, str]] = {}
        self.settle_all()
        for node_id, state in self.proxies.items():
            snap = self.cache.get(state.node)
            row: dict[str, str] = {}
            for type_url in types.PUSH_ORDER:
                st = state.by_type.get(type_url)
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


class Aborts(Protocol):
    """What ``_run`` needs of a stream's context (grpc.aio's, or meshcore.xds.transport's)."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None: ...


@runtime_checkable
class Delivers(Protocol):
    """A transport whose sends do not block (meshcore.xds.transport): requests handed over as
    they arrive instead of an iterator, and passes run from one callback for all streams."""

    def attach(self, offer: Callable[[Any], None], ended: Callable[[], None]) -> None: ...

    def defer(self, work: Callable[[], None]) -> None:
        """Runs ``work`` soon, with the other streams' deferred work, outside any task."""

    def send(self, response: bytes) -> None:
        """Queues a response of this stream without blocking."""


class _Wake(asyncio.Event):
    """A stream's wake-up. With ``inline`` set (a transport whose sends do not block), a
    change found while the stream is idle is pushed from the transport's deferred callback
    instead of waking the stream's task: ``inline`` says whether it took the change."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: Callable[[], bool] | None = None

    def set(self) -> None:
        if self.inline is None or not self.inline():
            super().set()

    def wake(self) -> None:
        super().set()


async def _run(
    server: AdsServer,
    stream: Stream,
    requests: AsyncIterator[Any] | Delivers,
    context: Aborts,
) -> AsyncGenerator[Any, None]:
    """Reads requests and snapshot changes concurrently; yields responses in push order.

    One event wakes the stream, set by the request reader and by the snapshot cache: a wake-up
    handles every request that arrived, then pushes what is due (no futures per wake-up).
    """
    refused = server.admit()
    if refused is not None:
        await context.abort(*refused)
        return
    wake = _Wake()
    inbox: collections.deque[Any] = collections.deque()

    idle = False  # the loop below waits for a wake-up, between passes
    next_beat: float | None = None
    done = False

    def offer(request: Any) -> None:
        """One request, as it arrives."""
        if idle and not inbox and stream.node is not None:
            # Handled where it arrives: an ACK after which nothing is due (the common case in
            # a push to a fleet) wakes nobody.
            problem = stream.receive(request)
            if problem is not None:
                inbox.append(problem)
            elif not stream.may_push():
                return
        else:
            inbox.append(request)
        wake.set()

    def ended() -> None:
        """No more requests (half-close, cancel, reset)."""
        inbox.append(None)
        wake.set()

    async def read(requests: AsyncIterator[Any]) -> None:
        try:
            async for request in requests:
                offer(request)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            ended()

    # A transport that calls back with each request as it arrives (meshcore.xds.transport)
    # needs no reader task; grpc.aio's request iterator is read by one.
    def quiet() -> bool:
        """Idle, nothing to read, the node known, no heartbeat timer: a pass is only pushes."""
        return idle and not done and not inbox and stream.node is not None and next_beat is None

    reader: asyncio.Task[None] | None = None
    if isinstance(requests, Delivers):
        transport = requests

        def push_pass() -> None:
            if not quiet():
                if not done:
                    wake.wake()
                return
            server.pushes_in_flight += 1
            server.peak_pushes_in_flight = max(
                server.peak_pushes_in_flight, server.pushes_in_flight
            )
            try:
                for response in stream.pushes():
                    transport.send(response)
            finally:
                server.pushes_in_flight -= 1

        def inline() -> bool:
            if not quiet():
                return False
            transport.defer(push_pass)
            return True

        wake.inline = inline
        transport.attach(offer, ended)
    else:
        reader = asyncio.create_task(read(requests))
    subscribed: str | None = None
    loop = asyncio.get_running_loop()
    hello_by = None if server.hello_timeout is None else loop.time() + server.hello_timeout
    try:
        while True:
            interval = server.heartbeat_interval
            wait_until: float | None = None
            if stream.node is None:
                wait_until = hello_by
            elif interval is not None and stream.wants_heartbeats():
                if next_beat is None:
                    next_beat = loop.time() + interval
                wait_until = next_beat
            else:
                next_beat = None
            idle = True
            try:
                if wait_until is None:
                    await wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), max(0.0, wait_until - loop.time()))
            finally:
                idle = False
            wake.clear()
            while inbox:
                request = inbox.popleft()
                if request is None:
                    return
                # A request, or why one the reader handled was refused.
                problem = request if isinstance(request, str) else stream.receive(request)
                if problem is not None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
                    return
                if subscribed is None and stream.node is not None:
                    subscribed = stream.node.id
                    server.cache.subscribe(subscribed, wake)
            if stream.node is None:
                if hello_by is not None and loop.time() >= hello_by:
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"no DiscoveryRequest with a node within {server.hello_timeout:g} s",
                    )
                    return
                continue
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
        # First what must never be skipped, with no await before it (a second cancellation
        # of the handler could interrupt an await); then the reader.
        done = True
        if subscribed is not None:
            server.cache.unsubscribe(subscribed, wake)
        if stream.state is not None:
            stream.settle()  # ACKs the transport took count before the stream goes
            server.disconnected(stream.state)
        stream.types.clear()
        inbox.clear()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def _encoded(response: bytes) -> bytes:
    # Responses are encoded by the Rust core already (see Snapshot.sotw_response).
    return response


def grpc_server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """The gRPC server settings of an ADS server (see MAX_PENDING_STREAMS)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes + 1024 * 1024),
        ("grpc.server.max_pending_requests", MAX_PENDING_STREAMS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_STREAMS),
        ("grpc.server_max_unrequested_time_in_server", MAX_PENDING_SECONDS),
    ]


# The ADS transports: meshcore's own (Rust, the default) and grpc.aio.
TRANSPORTS = ("core", "grpc")
# gRPC's server defaults: an HTTP/2 PING every 2 hours on an idle connection, 20 s to answer.
KEEPALIVE_TIME_S = 7200.0
KEEPALIVE_TIMEOUT_S = 20.0


async def start_ads_server(
    cache: SnapshotCache,
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    transport: str | None = None,
    **kwargs: Any,
) -> tuple[grpc.aio.Server | CoreAdsServer, AdsServer, int]:
    """Starts a plaintext ADS server on host:port (0 picks a free port).

    ``transport``: "core" (meshcore's own HTTP/2 server in the Rust extension, see
    :mod:`meshcore.xds.transport`) or "grpc" (grpc.aio); None: $MESHCORE_ADS_TRANSPORT, else
    "core". The protocol is the same code on both.
    """
    chosen = transport or os.environ.get("MESHCORE_ADS_TRANSPORT") or "core"
    if chosen not in TRANSPORTS:
        raise ValueError(
            f"unknown ADS transport '{shown(chosen)}' (one of {', '.join(TRANSPORTS)})"
        )
    ads = AdsServer(cache, **kwargs)
    if chosen == "core":
        from meshcore.xds.transport import CoreAdsServer

        core = CoreAdsServer(
            ads, host, port, keepalive_time=KEEPALIVE_TIME_S, keepalive_timeout=KEEPALIVE_TIMEOUT_S
        )
        await core.start()
        return core, ads, core.port
    server = grpc.aio.server(options=grpc_server_options(ads.max_message_bytes))
    ads.add_to_server(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, ads, bound
