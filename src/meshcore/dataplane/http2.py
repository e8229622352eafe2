"""HTTP/2 for the reference proxy (h2): downstream connections that open with the HTTP/2 preface
(prior knowledge, over TLS or not, as Envoy's AUTO codec detects them), and multiplexed upstream
connections to the next hop when the request came as HTTP/2 (Envoy's USE_DOWNSTREAM_PROTOCOL:
gRPC goes through the mesh as HTTP/2 end to end, trailers included).

Bodies stream both ways under HTTP/2 flow control: a peer's window is given back only when the
other side has taken the bytes, so a slow reader holds back its writer instead of filling the
proxy's memory. A request body is kept for a retry up to :data:`RETRY_BUFFER` bytes (Envoy's
default buffer limit); past it the request is no longer retried.

Limits, as Envoy's HTTP/2 codec and connection manager apply them (Envoy's defaults, Istio's
sidecar): at most :data:`MAX_CONCURRENT_STREAMS` open streams per connection (SETTINGS; a peer
that opens more breaks the protocol: GOAWAY); request headers over 60 KiB or over 100 fields:
431; an idle connection (no open stream) closes after ``idle_timeout`` with GOAWAY; a request
body that stalls for ``stream_idle_timeout``: 408 when the response has not begun, a stream
reset otherwise; a client that takes no response data (gives no window back, or does not read
its socket) for ``stream_idle_timeout``: a stream reset. A gRPC request's local reply is
gRPC's (HTTP 200, ``grpc-status`` mapped from the HTTP status as Envoy maps it,
``grpc-message`` the body).

Known differences: the upstream protocol is always the downstream's (Envoy picks it per cluster:
HTTP/2 for grpc/http2 ports, HTTP/1.1 by default; the compiled cluster config does not carry
it yet), so an HTTP/2 client reaches only HTTP/2 apps; headers over the limits get a 431 reply
where Envoy's HTTP/2 codec may reset the stream instead (not checked against Envoy).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from meshcore.dataplane.http1 import MAX_HEADERS_BYTES, MAX_HEADERS_COUNT, Limits
from meshcore.dataplane.tls import uri_sans

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_CONCURRENT_STREAMS = 100
RETRY_BUFFER = 1 << 20  # Envoy's per_connection_buffer_limit_bytes default (1 MiB)
WINDOW = 1 << 20  # the stream and connection windows we give our peers
# Envoy's Grpc::Utility::httpToGrpcStatus (other statuses: UNKNOWN, 2).
GRPC_STATUS = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
# Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2); "te" only as "trailers".
_CONNECTION_FIELDS = frozenset({"connection", "keep-alive", "proxy-connection",
                                "transfer-encoding", "upgrade", "host", "http2-settings"})  # fmt: skip

Headers = list[tuple[str, str]]


def _text(headers: Any) -> Headers:
    """Header fields as h2 gives them (decoded: ``header_encoding`` is set)."""
    return cast(Headers, list(headers or []))


class StreamReset(ConnectionError):
    """The peer reset the stream, or the connection ended under it."""


def is_grpc(headers: Headers) -> bool:
    for k, v in headers:
        if k == "content-type":
            return v.startswith("application/grpc")
    return False


def grpc_local_reply(status: int, body: bytes) -> tuple[Headers, Headers]:
    """A local reply to a gRPC request as Envoy sends it: trailers-only (the headers and the
    trailers in one HEADERS frame), HTTP 200, the status mapped to gRPC's."""
    message = body.decode("utf-8", "replace") or f"HTTP {status}"
    return [(":status", "200"), ("content-type", "application/grpc"),
            ("grpc-status", str(GRPC_STATUS.get(status, 2))), ("grpc-message", message)], []  # fmt: skip


def forwarded(headers: Headers) -> Headers:
    """Request or response fields as they may go out on HTTP/2 (``te: trailers`` kept)."""
    return [
        (k, v)
        for k, v in headers
        if k not in _CONNECTION_FIELDS and (k != "te" or v.strip().lower() == "trailers")
    ]


class Body:
    """A body as it arrives (data, then trailers), read once or, while everything read is still
    kept (up to ``keep`` bytes), again for a retry. ``ack`` gives the window back as bytes are
    taken for the first time."""

    def __init__(self, ack: Callable[[int], None], keep: int = RETRY_BUFFER) -> None:
        self._chunks: list[bytes] = []
        self._base = 0  # the index of _chunks[0] (chunks before it were dropped)
        self._size = 0
        self._keep = keep
        self._taken = 0  # chunks given out at least once (their window given back)
        self._ack = ack
        self._waiter: asyncio.Future[None] | None = None
        self.done = False
        self.trailers: Headers = []
        self.error: BaseException | None = None
        self.length = 0
        self.timed_out = False  # a read waited past its timeout (the stream is given up)

    @property
    def replayable(self) -> bool:
        return self._base == 0

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.length += len(data)
        self._wake()

    def end(self, trailers: Headers | None = None) -> None:
        if trailers:
            self.trailers = trailers
        self.done = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self.error = exc
        self._wake()

    async def chunks(self, timeout: float | None = None) -> AsyncIterator[bytes]:
        """The data from the start; raises TimeoutError when nothing comes within ``timeout``."""
        if self.timed_out:
            raise TimeoutError("the body stalled")
        if self._base:
            raise StreamReset("the body was not kept: it cannot be sent again")
        i = 0
        while True:
            while i - self._base < len(self._chunks):
                chunk = self._chunks[i - self._base]
                i += 1
                if i > self._taken:
                    self._taken = i
                    self._ack(len(chunk))
                    if self._size > self._keep:  # too big to keep: drop what was read
                        drop = i - self._base
                        self._size -= sum(map(len, self._chunks[:drop]))
                        del self._chunks[:drop]
                        self._base = i
                yield chunk
            if self.error is not None:
                raise self.error
            if self.done:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._waiter, timeout)
            except TimeoutError:
                self.timed_out = True
                raise
            finally:
                self._waiter = None


class _Connection:
    """An h2 connection on a stream pair: the read loop, writes, flow-controlled sends."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, client: bool
    ) -> None:
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(client_side=client, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(
            client=client,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADERS_BYTES,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            },
        )
        self._window_waiters: list[asyncio.Future[None]] = []
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def start(self) -> None:
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(WINDOW)
        self.flush()

    def ack(self, stream_id: int) -> Callable[[int], None]:
        def give_back(n: int) -> None:
            if n and not self.closed:
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.conn.acknowledge_received_data(n, stream_id)
                    self.flush()

        return give_back

    def _windows_changed(self) -> None:
        waiters, self._window_waiters = self._window_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def send_data(self, stream_id: int, data: bytes, timeout: float | None = None) -> None:
        """Sends ``data`` as the peer's windows allow; TimeoutError when the peer takes none of
        it (no window, or the socket not read) for ``timeout`` (a slow reader is cut off)."""
        view = memoryview(data)
        while view:
            if self.closed:
                raise StreamReset("connection closed")
            try:
                window = self.conn.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError:
                raise StreamReset("stream closed") from None
            size = min(window, len(view), self.conn.max_outbound_frame_size)
            if size <= 0:
                fut = asyncio.get_running_loop().create_future()
                self._window_waiters.append(fut)
                async with asyncio.timeout(timeout):
                    await fut
                continue
            self.conn.send_data(stream_id, view[:size].tobytes())
            view = view[size:]
            self.flush()
        async with asyncio.timeout(timeout):  # a timer, no task
            await self.writer.drain()

    def end(self, stream_id: int, trailers: Headers | None = None) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            if trailers:
                self.conn.send_headers(stream_id, trailers, end_stream=True)
            else:
                self.conn.end_stream(stream_id)
            self.flush()

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if not self.closed:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.conn.reset_stream(stream_id, code)
                self.flush()

    def events(self, data: bytes) -> list[h2.events.Event]:
        events = self.conn.receive_data(data)
        for event in events:
            if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._windows_changed()
        return events

    def shut(self) -> None:
        self.closed = True
        self._windows_changed()
        self.writer.close()


# --- downstream ----------------------------------------------------------------------------


class Exchange:
    """One downstream request stream: its head, its body as it arrives, and the replies."""

    def __init__(self, server: Server, stream_id: int, head: Headers, body: Body) -> None:
        self.server = server
        self.stream_id = stream_id
        self.body = body
        self.method = self.authority = self.path = self.scheme = ""
        self.headers: Headers = []
        for k, v in head:
            if k == ":method":
                self.method = v
            elif k == ":authority":
                self.authority = v
            elif k == ":path":
                self.path = v
            elif k == ":scheme":
                self.scheme = v
            elif k[:1] != ":":
                self.headers.append((k, v))
        self.started = False  # response headers sent
        self.task: asyncio.Task[None] | None = None

    def send_headers(self, headers: Headers, *, end: bool = False) -> None:
        self.started = True
        self.server.conn.send_headers(self.stream_id, headers, end_stream=end)
        self.server.flush()

    def send_data(self, data: bytes) -> Awaitable[None]:
        """Within ``stream_idle_timeout`` of progress (then TimeoutError: a slow reader)."""
        return self.server.send_data(self.stream_id, data, self.server.limits.stream_idle_timeout)

    def end(self, trailers: Headers | None = None) -> None:
        self.server.end(self.stream_id, trailers)

    def reset(self) -> None:
        self.server.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)

    def local_reply(self, status: int, headers: Headers, body: bytes) -> None:
        """A reply made here (a refusal, a denial, an upstream failure)."""
        if self.started:
            self.reset()
            return
        if is_grpc(self.headers):
            head, _ = grpc_local_reply(status, body)
            self.send_headers(head, end=True)
            return
        head = [(":status", str(status)), *forwarded(headers),
                ("content-length", str(len(body)))]  # fmt: skip
        self.send_headers(head, end=not body)
        if body:
            self.server.conn.send_data(self.stream_id, body, end_stream=True)
            self.server.flush()


class Server(_Connection):
    """A downstream HTTP/2 connection; ``handle`` serves each request stream (a task each)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: Limits,
        handle: Callable[[Exchange], Awaitable[None]],
    ) -> None:
        super().__init__(reader, writer, client=False)
        self.limits = limits
        self.handle = handle
        self.streams: dict[int, Exchange] = {}

    async def run(self, first: bytes) -> None:
        self.start()
        data = first
        try:
            while True:
                if data:
                    try:
                        events = self.events(data)
                    except h2.exceptions.ProtocolError:
                        self.flush()  # the GOAWAY h2 queued
                        return
                    for event in events:
                        self._on(event)
                    self.flush()
                if self.streams:
                    data = await self.reader.read(65536)
                else:
                    try:
                        async with asyncio.timeout(self.limits.idle_timeout):
                            data = await self.reader.read(65536)
                    except TimeoutError:
                        self.conn.close_connection()
                        self.flush()
                        return
                if not data:
                    return
        finally:
            self.closed = True
            self._windows_changed()
            for ex in list(self.streams.values()):
                ex.body.fail(StreamReset("connection closed"))
                if ex.task is not None:
                    ex.task.cancel()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            sid = event.stream_id
            head: Headers = _text(event.headers)
            size = sum(len(k) + len(v) for k, v in head)
            ex = Exchange(self, sid, head, Body(self.ack(sid)))
            self.streams[sid] = ex
            if event.stream_ended is not None:
                ex.body.end()
            if len(head) > MAX_HEADERS_COUNT or size > MAX_HEADERS_BYTES:
                ex.local_reply(431, [], b"")
                self.streams.pop(sid, None)
                return
            ex.task = asyncio.ensure_future(self._serve(ex))
        elif isinstance(event, h2.events.DataReceived):
            got = self.streams.get(event.stream_id)
            padding = (event.flow_controlled_length or 0) - len(event.data or b"")
            if got is None:
                self.ack(event.stream_id or 0)(event.flow_controlled_length or 0)
                return
            if padding:
                self.ack(got.stream_id)(padding)
            got.body.feed(bytes(event.data or b""))
        elif isinstance(event, h2.events.TrailersReceived):
            got = self.streams.get(event.stream_id)
            if got is not None:
                got.body.end(_text(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            got = self.streams.get(event.stream_id)
            if got is not None:
                got.body.end()
        elif isinstance(event, h2.events.StreamReset):
            gone = self.streams.pop(event.stream_id or 0, None)
            if gone is not None:
                gone.body.fail(StreamReset("reset by the client"))
                if gone.task is not None:
                    gone.task.cancel()

    async def _serve(self, ex: Exchange) -> None:
        try:
            await self.handle(ex)
        except asyncio.CancelledError:
            pass
        except (StreamReset, ConnectionError, h2.exceptions.H2Error):
            self.reset(ex.stream_id)
        finally:
            self.streams.pop(ex.stream_id, None)


# --- upstream ------------------------------------------------------------------------------


class Call:
    """One upstream request stream: its response head (awaited) and body."""

    def __init__(self, client: Client, stream_id: int) -> None:
        self.client = client
        self.stream_id = stream_id
        self.head: asyncio.Future[tuple[int, Headers]] = asyncio.get_running_loop().create_future()
        self.body = Body(client.ack(stream_id))
        self.pump: asyncio.Future[None] | None = None

    def fail(self, exc: BaseException) -> None:
        if not self.head.done():
            self.head.set_exception(exc)
            self.head.exception()  # retrieved: no "never retrieved" warning if unused
        self.body.fail(exc)

    def close(self) -> None:
        """Done with it: the request pump stops, an unfinished stream is reset."""
        if self.pump is not None:
            self.pump.cancel()
        if self.client.calls.pop(self.stream_id, None) is not None:
            self.client.reset(self.stream_id)


class Client(_Connection):
    """A multiplexed upstream HTTP/2 connection (prior knowledge)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer, client=True)
        self.calls: dict[int, Call] = {}
        self.peer_uris = uri_sans(writer.get_extra_info("peercert"))
        self.start()
        self._loop = asyncio.ensure_future(self._read())

    def stop(self) -> None:
        self.shut()
        self._loop.cancel()

    def usable(self) -> bool:
        return (
            not self.closed
            and not self.writer.is_closing()
            and len(self.calls) < self.conn.remote_settings.max_concurrent_streams
        )

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                for event in self.events(data):
                    self._on(event)
                self.flush()
        except (h2.exceptions.ProtocolError, ConnectionError, OSError):
            return
        finally:
            self.shut()
            for call in list(self.calls.values()):
                call.fail(StreamReset("upstream connection closed"))
            self.calls.clear()

    def _on(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", 0) or 0
        call = self.calls.get(sid)
        if call is None:  # a stream we gave up: its bytes still count against the window
            if isinstance(event, h2.events.DataReceived):
                self.ack(sid)(event.flow_controlled_length or 0)
            return
        if isinstance(event, h2.events.ResponseReceived):
            if not call.head.done():
                head = _text(event.headers)
                status = next((int(v) for k, v in head if k == ":status"), 502)
                call.head.set_result((status, [(k, v) for k, v in head if k[:1] != ":"]))
                if event.stream_ended is not None:
                    call.body.end()
        elif isinstance(event, h2.events.DataReceived):
            data = bytes(event.data or b"")
            padding = (event.flow_controlled_length or 0) - len(data)
            if padding:
                self.ack(sid)(padding)
            call.body.feed(data)
        elif isinstance(event, h2.events.TrailersReceived):
            call.body.end(_text(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            call.body.end()
            self.calls.pop(sid, None)
        elif isinstance(event, h2.events.StreamReset):
            self.calls.pop(sid, None)
            call.fail(StreamReset(f"upstream reset the stream ({event.error_code})"))

    async def request(self, headers: Headers, body: Body, timeout: float | None) -> Call:
        """Sends the request (the body streamed from ``body``, then its trailers)."""
        sid = self.conn.get_next_available_stream_id()
        call = Call(self, sid)
        self.calls[sid] = call
        self.conn.send_headers(sid, headers, end_stream=body.done and not body.length)
        self.flush()
        if not (body.done and not body.length):
            call.pump = asyncio.ensure_future(self._pump(call, body, timeout))
        return call

    async def _pump(self, call: Call, body: Body, timeout: float | None) -> None:
        try:
            async for chunk in body.chunks(timeout):
                await self.send_data(call.stream_id, chunk, timeout)
            self.end(call.stream_id, forwarded(body.trailers))
        except (StreamReset, TimeoutError, ConnectionError, h2.exceptions.H2Error) as exc:
            call.fail(exc if isinstance(exc, StreamReset) else StreamReset(str(exc)))
            call.close()


async def relay(call: Call, ex: Exchange, timeout: float | None) -> None:
    """The upstream response's body and trailers to the downstream stream."""
    try:
        async for chunk in call.body.chunks(timeout):
            await ex.send_data(chunk)
        ex.end(forwarded(call.body.trailers) or None)
    except (StreamReset, TimeoutError, ConnectionError, h2.exceptions.H2Error):
        ex.reset()
    finally:
        call.close()


class ClientPool:
    """One multiplexed connection per endpoint, TLS setting and SNI."""

    def __init__(self) -> None:
        self.clients: dict[tuple[str, bool, str], Client] = {}

    async def get(
        self, address: str, port: int, ctx: ssl.SSLContext | None, sni: str, timeout: float
    ) -> Client:
        key = (f"{address}:{port}", ctx is not None, sni)
        client = self.clients.get(key)
        if client is not None and client.usable():
            return client
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                address, port, ssl=ctx, server_hostname=(sni or None) if ctx else None
            ),
            timeout,
        )
        client = self.clients[key] = Client(reader, writer)
        return client

    def close(self) -> None:
        for client in self.clients.values():
            client.stop()
        self.clients.clear()
