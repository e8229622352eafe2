"""The ADS server on meshcore's own gRPC transport (``meshcore._core.ads``, Rust: h2 on a
runtime thread of its own) instead of grpc.aio.

The transport does HTTP/2 and gRPC framing and nothing of xDS: it reports streams opening,
their request messages, half-closes and ends in batches (one readable file descriptor that the
event loop watches), and takes responses without blocking. The protocol is the same code as
on grpc.aio: :func:`meshcore.xds.server._run` with :class:`~meshcore.xds.sotw.SotwStream` or
:class:`~meshcore.xds.delta.DeltaStream`, reading requests from a :class:`_Call` that stands in
for grpc.aio's request iterator and servicer context. As with grpc.aio, a stream whose client
cancels or resets (or whose connection goes) has its handler task cancelled; a handler that
returns ends the stream with status OK, one that aborts with its status and message (in the
trailers), one that fails with UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from meshcore._core import ads as core_ads
from meshcore.xds.delta import DeltaStream
from meshcore.xds.server import AdsServer, _run
from meshcore.xds.sotw import SotwStream
from meshcore.xds.stream import Stream

log = logging.getLogger("meshcore.xds")

# Send slack over the protocol's own response limit, as grpc_server_options gives grpc.aio.
SEND_SLACK_BYTES = 1024 * 1024


class _Call:
    """One stream as ``_run`` sees it: its requests, each handed to ``_run``'s ``offer`` as it
    arrives (decoded in the event loop's reader callback, no task woken unless something is
    to be done), and its status (``abort``), as grpc.aio's servicer context."""

    __slots__ = (
        "attached",
        "closed",
        "decode",
        "early",
        "ended",
        "number",
        "offer",
        "outbox",
        "task",
        "transport",
    )

    def __init__(
        self,
        transport: core_ads.AdsTransport,
        outbox: _Outbox,
        number: int,
        decode: Callable[[bytes], Any],
    ) -> None:
        self.transport = transport
        self.outbox = outbox
        self.number = number
        self.decode = decode
        self.offer: Callable[[Any], None] | None = None
        self.ended: Callable[[], None] | None = None
        self.closed = False  # the status is sent, or the stream is gone: send nothing more
        self.task: asyncio.Task[None] | None = None
        self.attached = False
        # What arrived before the handler attached (its task had not run yet): messages, and
        # None for the half-close.
        self.early: list[bytes | None] = []

    def defer(self, work: Callable[[], None]) -> None:
        self.outbox.defer(self, work)

    def send(self, response: bytes) -> None:
        if not self.closed:
            self.outbox.send(self.number, response)

    def attach(self, offer: Callable[[Any], None], ended: Callable[[], None]) -> None:
        self.offer, self.ended, self.attached = offer, ended, True
        early, self.early = self.early, []
        for data in early:
            if data is None:
                self.half_closed()
            else:
                self.message(data)

    def message(self, data: bytes) -> None:
        if not self.attached:
            self.early.append(data)
            return
        offer = self.offer
        if offer is None or self.closed:
            return
        try:
            request = self.decode(data)
        except DecodeError:
            # As grpc.aio: the stream ends with INTERNAL, its handler is cancelled.
            self.gone(grpc.StatusCode.INTERNAL, "Exception deserializing request!")
            return
        offer(request)

    def ack(self, event: tuple[Any, ...]) -> None:
        """A plain ACK (an ``ACK`` event): handed to the stream as it is, which applies it
        without decoding or decodes it (see SotwStream.receive)."""
        if not self.attached:
            self.early.append(event[6])
            return
        offer = self.offer
        if offer is not None and not self.closed:
            offer(event)

    def half_closed(self) -> None:
        if not self.attached:
            self.early.append(None)
            return
        ended, self.ended, self.offer = self.ended, None, None
        if ended is not None:
            ended()

    def gone(self, code: grpc.StatusCode | None = None, details: str = "") -> None:
        """The stream ended under the handler: cancelled as grpc.aio cancels it."""
        if not self.closed and code is not None:
            self.outbox.close(self.number, code.value[0], details)
        self.closed = True
        self.offer = self.ended = None
        if self.task is not None:
            self.task.cancel()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.outbox.close(self.number, code.value[0], details)


class _Outbox:
    """Responses of every stream, handed to the transport together once per pass of the event
    loop (one call, the GIL released while the transport queues them), after the streams'
    deferred push passes of that pass; a stream's status goes after what was queued for it."""

    __slots__ = ("items", "loop", "scheduled", "transport", "work")

    def __init__(self, transport: core_ads.AdsTransport) -> None:
        self.transport = transport
        self.items: list[tuple[int, bytes]] = []
        self.work: list[tuple[_Call, Callable[[], None]]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scheduled = False

    def _schedule(self) -> None:
        if not self.scheduled and self.loop is not None:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def send(self, number: int, data: bytes) -> None:
        self.items.append((number, data))
        self._schedule()

    def defer(self, call: _Call, work: Callable[[], None]) -> None:
        self.work.append((call, work))
        self._schedule()

    def flush(self) -> None:
        try:
            work, self.work = self.work, []
            for call, item in work:
                try:
                    item()
                except Exception as exc:
                    log.exception("ADS stream %d failed", call.number)
                    call.gone(grpc.StatusCode.UNKNOWN, f"{exc!r}")
            items, self.items = self.items, []
            if items:
                self.transport.send_many(items)
        finally:
            self.scheduled = False

    def close(self, number: int, code: int, details: str) -> None:
        self.flush()
        self.transport.close(number, code, details)


class CoreAdsServer:
    """Serves an :class:`~meshcore.xds.server.AdsServer` on the Rust transport; ``stop`` as
    grpc.aio.Server's (GOAWAY, then streams still open after ``grace`` are cancelled)."""

    def __init__(
        self,
        ads: AdsServer,
        host: str,
        port: int,
        *,
        keepalive_time: float | None = None,
        keepalive_timeout: float = 20.0,
    ) -> None:
        self.ads = ads
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.transport = core_ads.AdsTransport(
            address,
            max_receive_bytes=ads.max_message_bytes,
            max_send_bytes=ads.max_message_bytes + SEND_SLACK_BYTES,
            keepalive_time=keepalive_time,
            keepalive_timeout=keepalive_timeout,
            clock=time.monotonic(),
        )
        self.port = self.transport.port
        self.calls: dict[int, _Call] = {}
        self.outbox = _Outbox(self.transport)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.outbox.loop = self._loop
        self._loop.add_reader(self.transport.fileno(), self._events)
        # Plain ACKs expected before a snapshot change are not taken by the lane after it.
        self.ads.cache.changing.append(self.transport.bump)

    def _events(self) -> None:
        """Everything the transport reported since the last call, in order."""
        calls = self.calls
        for event in self.transport.events():
            kind = event[0]
            if kind == core_ads.ACK:
                call = calls.get(event[1])
                if call is not None:
                    call.ack(event)
            elif kind == core_ads.MESSAGE:
                call = calls.get(event[1])
                if call is not None:
                    call.message(event[2])
            elif kind == core_ads.OPENED:
                self._open(event[1], event[2])
            elif kind == core_ads.HALF_CLOSED:
                call = calls.get(event[1])
                if call is not None:
                    call.half_closed()
            else:  # CANCELLED: as grpc.aio does, the handler is cancelled
                call = calls.pop(event[1], None)
                if call is not None:
                    call.gone()

    def _open(self, number: int, method: int) -> None:
        ads = self.ads
        stream: Stream
        decode: Callable[[bytes], Any]
        if method == 0:
            stream = SotwStream(ads, next(ads._streams))
            stream.lane, stream.lane_id = self.transport, number
            decode = discovery_pb2.DiscoveryRequest.FromString
        else:
            stream = DeltaStream(ads, next(ads._streams))
            decode = discovery_pb2.DeltaDiscoveryRequest.FromString
        call = _Call(self.transport, self.outbox, number, decode)
        self.calls[number] = call
        assert self._loop is not None
        call.task = self._loop.create_task(self._serve(call, stream))

    async def _serve(self, call: _Call, stream: Stream) -> None:
        send = self.outbox.send
        number = call.number
        try:
            async with contextlib.aclosing(_run(self.ads, stream, call, call)) as responses:
                async for response in responses:
                    if call.closed:
                        break
                    send(number, response)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.exception("ADS stream %d failed", number)
            if not call.closed:
                call.closed = True
                self.outbox.close(number, grpc.StatusCode.UNKNOWN.value[0], f"{exc!r}")
        finally:
            self.calls.pop(number, None)
            call.offer = call.ended = None
            if not call.closed:
                call.closed = True
                self.outbox.close(number, 0, "")

    async def stop(self, grace: float | None) -> None:
        """Stops taking streams; after ``grace`` seconds (None: none) cancels what is left."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(ValueError):
            self.ads.cache.changing.remove(self.transport.bump)
        self.outbox.flush()
        await asyncio.to_thread(self.transport.shutdown, grace or 0.0)
        # Every handler is awaited, also those whose streams the shutdown ended (the
        # events below cancel them and drop them from ``calls``): a stream releases its
        # proxy in its handler's clean-up, which must have run when stop returns.
        tasks = {c.task for c in self.calls.values() if c.task is not None}
        if self._loop is not None:
            self._events()
            self._loop.remove_reader(self.transport.fileno())
        tasks.update(c.task for c in self.calls.values() if c.task is not None)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_for_termination(self) -> None:
        while not self._stopped:
            await asyncio.sleep(0.5)
