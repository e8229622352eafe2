"""HTTP/1.1 for the reference proxy (h11): a downstream request read as Envoy's HTTP/1 codec and
connection manager read it, before any route or RBAC decision; the h11 helpers both sides share.

What Envoy 1.40 does (checked against the real Envoy, ``tests/hostile/test_proxy_*``), with an
Istio sidecar's connection manager (no ``upgrade_configs``, no CONNECT route, the defaults of
``max_request_headers_kb``, ``max_headers_count``, ``accept_http_10``):

- the request target: origin-form as written; ``*`` only with OPTIONS; absolute-form
  (``http://host:port/path?query``, scheme any case, http or https) gives the authority (which
  replaces Host, RFC 7230 5.4) and the path (``/`` when it has none); anything else, a bad host or
  port, another scheme: 400. Path normalisation is the connection manager's (the listener's HCM
  options, in :class:`DataPlane`), after this;
- an unknown method, a malformed line or header, conflicting framing: 400 ``Bad Request``; an
  unsupported transfer-encoding: 501; HTTP/1.0 and any version but 1.1 (``HTTP/9.9``): 426
  ``Upgrade Required``; the HTTP/2 preface (``PRI * HTTP/2.0``) on this HTTP/1 listener: 400;
  request headers over 60 KiB or over 100 of them: 431; no Host: 400 with no body;
- ``Upgrade`` with ``Connection: upgrade`` (websocket or anything but h2c): 403 with no body;
  an h2c upgrade is served as a plain HTTP/1.1 request (Envoy drops its headers); CONNECT:
  404 (no route takes it) with no body, after the inbound RBAC filter (403 when it denies). Each of these local replies closes the connection;
- a path that does not start with '/' (``OPTIONS *``, ``http://host?q``): 404 with no body,
  before any filter (RBAC) or route, the connection kept;
- ``Expect: 100-continue``: ``100 Continue`` is sent before the body is read, and the header is
  not forwarded (Envoy's default, ``proxy_100_continue`` off).

Requests of the plainest form are read by :mod:`meshcore.dataplane.wire` (no h11; the same
requests h11 would make of them, property-tested); the first of any other form hands the
connection to h11, whose reading and the checks below make Envoy's answers. Upstream responses
are parsed by httptools (llhttp). Bodies over ``STREAM_OVER`` on the fast path stream
(:class:`Body`); h11's path buffers them (413 over ``MAX_BODY``).

Every read awaits the socket, under a deadline: the request head within ``header_timeout`` of
its first byte (408 after it), an idle kept-alive connection within ``idle_timeout``, a body
read within ``stream_idle_timeout`` (408) (Envoy's defaults: 1 h and 5 min; Envoy has no head
deadline by default, meshcore's is 60 s).

Known differences, each a refusal where Envoy also refuses or a stricter one: two Host headers
get 400 (h11 refuses them; Envoy joins them with ','); with ``--codec http1``, the HTTP/2
preface gets the 400 of Envoy's HTTP/1 codec (the default, AUTO as a sidecar's, speaks HTTP/2:
:mod:`meshcore.dataplane.http2`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import re
import ssl
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import h11

from meshcore.dataplane import wire
from meshcore.dataplane.config import Endpoint
from meshcore.dataplane.tls import uri_sans

MAX_BODY = 16 * 1024 * 1024  # a buffered body (h11's path; the fast path streams longer ones)
STREAM_OVER = 64 * 1024  # a body longer than this streams through, never whole in memory
MAX_HEADERS_BYTES = wire.MAX_HEADERS_BYTES
MAX_HEADERS_COUNT = wire.MAX_HEADERS_COUNT
HEADER_TIMEOUT_S = 60.0
IDLE_TIMEOUT_S = 3600.0  # Envoy's connection idle_timeout default
STREAM_IDLE_TIMEOUT_S = 300.0  # Envoy's stream_idle_timeout default

METHODS = wire.METHODS  # the methods Envoy's HTTP/1 parser accepts (any other: 400)
REASONS = {100: "Continue", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           408: "Request Timeout", 413: "Payload Too Large", 426: "Upgrade Required",
           431: "Request Header Fields Too Large", 501: "Not Implemented"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Body:
    """An HTTP/1.1 body that streams: ``length`` bytes (None: until its end, sent chunked),
    read from the socket chunk by chunk as ``chunks`` is consumed; the consumer writes and
    drains each before it asks for the next (backpressure both ways)."""

    length: int | None
    chunks: AsyncGenerator[bytes, None]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    stream: Any = None  # HTTP/2: the downstream stream, its body streamed (http2.Exchange)
    streamed: Body | None = None  # HTTP/1.1: a long body, streamed (then ``body`` is empty)

    @property
    def size(self) -> int:
        return self.streamed.length or 0 if self.streamed is not None else len(self.body)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stream: Any = None  # HTTP/2: the upstream call whose body follows (http2.Call)
    streamed: Body | None = None  # HTTP/1.1: a long body, streamed (then ``body`` is empty)

    @property
    def size(self) -> int:
        return self.streamed.length or 0 if self.streamed is not None else len(self.body)


class Refusal(Exception):
    """A request refused before any decision, with its local reply; after most of them the
    connection closes (``close``)."""

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        why: str = "",
        close: bool = True,
        connect: Request | None = None,
    ) -> None:
        super().__init__(why or f"{status}")
        self.status = status
        self.body = body
        self.close = close
        self.connect = connect  # a CONNECT: the filters (RBAC) still see it before the 404

    def reply(self) -> bytes:
        return local_reply(self.status, self.body, close=True)

    def response(self) -> Response:
        return Response(self.status, [("content-type", "text/plain")] if self.body else [],
                        self.body)  # fmt: skip


def codec_error(why: str, status: int = 400) -> Refusal:
    """Envoy's HTTP/1 codec errors answer with the status's reason as the body."""
    return Refusal(status, REASONS.get(status, "").encode(), why)


def local_reply(status: int, body: bytes, *, close: bool) -> bytes:
    """An Envoy-style local reply, as bytes (sent also when h11's state is past repair)."""
    head = [f"HTTP/1.1 {status} {REASONS.get(status, '')}"]
    if body:
        head += [f"content-length: {len(body)}", "content-type: text/plain"]
    else:
        head.append("content-length: 0")
    if close:
        head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# --- the request target ---------------------------------------------------------------------

_SCHEME = re.compile(r"[A-Za-z]+")
_USERINFO = re.compile(r"[A-Za-z0-9\-_.!~*'();:&=+$,%]*")
_HOST = re.compile(r"[A-Za-z0-9.\-]+")


_BAD_PATH_CHAR = re.compile(r"[^\t\f!-~]")


def _path_chars_ok(text: str) -> bool:
    """Envoy's parser: path and query bytes are TAB, FF or visible ASCII."""
    return _BAD_PATH_CHAR.search(text) is None


def request_target(method: str, target: str) -> tuple[str | None, str]:
    """The authority the target names (None: keep Host) and the path, as Envoy's HTTP/1 codec
    makes them (the URL parsed as http-parser parses it); raises :class:`Refusal` (400)."""
    if target.startswith("/") or (target == "*" and method == "OPTIONS"):
        if not _path_chars_ok(target):
            raise codec_error("invalid url")
        return None, target
    m = _SCHEME.match(target)
    if m is None or not target.startswith("://", m.end()):
        raise codec_error("invalid url")
    scheme = m.group().lower()
    rest = target[m.end() + 3 :]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    server, path = rest[:cut], rest[cut:] or "/"
    if not _path_chars_ok(path):
        raise codec_error("invalid url")
    # userinfo@host[:port]: the userinfo is dropped; the host is a name or a [v6] literal.
    _, at, hostport = server.rpartition("@")
    if at and _USERINFO.fullmatch(server[: -len(hostport) - 1]) is None:
        raise codec_error("invalid url")
    if hostport.startswith("["):
        end = hostport.find("]")
        host, port = hostport[: end + 1], hostport[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise codec_error("invalid url") from None
    else:
        host, colon, digits = hostport.partition(":")
        port = colon + digits
        if _HOST.fullmatch(host) is None:
            raise codec_error("invalid url")
    if port and not (port[1:].isascii() and port[1:].isdigit() and int(port[1:]) <= 65535):
        raise codec_error("invalid url")
    if scheme not in ("http", "https"):
        raise codec_error("invalid scheme")
    return host + port, path


# --- h11 --------------------------------------------------------------------------------------


async def read_body(conn: h11.Connection, read: Callable[[], Awaitable[bytes]]) -> bytes:
    """The message body, read with ``read`` (each call awaits the socket)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await read())
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY:
                raise h11.RemoteProtocolError("body too large", error_status_hint=413)
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        else:  # ConnectionClosed, or PAUSED (never asked again: that would spin)
            raise h11.RemoteProtocolError("connection closed mid-body")


def decoded_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]


HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                        "te", "trailer", "upgrade", "content-length"})  # fmt: skip


def end_to_end(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k not in HOP_BY_HOP]


def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Writes ``data``; ConnectionResetError when the connection is already closed (asyncio's
    loop drops such writes silently, uvloop's raises RuntimeError)."""
    if writer.is_closing():
        raise ConnectionResetError("the connection is closed")
    writer.write(data)


async def drained(writer: asyncio.StreamWriter, timeout: float) -> None:
    """Waits until ``writer``'s buffer is below its limit, at most ``timeout`` (TimeoutError: the
    peer stopped reading a streamed body; Envoy's stream_idle_timeout)."""
    async with asyncio.timeout(timeout):
        await writer.drain()


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


# --- a downstream connection ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = HEADER_TIMEOUT_S
    idle_timeout: float = IDLE_TIMEOUT_S
    stream_idle_timeout: float = STREAM_IDLE_TIMEOUT_S


DEFAULT_LIMITS = Limits()
_HEADERS_408 = local_reply(408, b"request headers timeout", close=True)
_STREAM_408 = local_reply(408, b"stream timeout", close=True)


class Expired(ConnectionError):
    """A read deadline passed: the watchdog answered (408) if a request had begun, and closed."""


class Downstream:
    """The reading side of one downstream connection: requests as Envoy's codec and connection
    manager pass them on, or :class:`Refusal` for those they answer themselves.

    Read deadlines cost no timer per request: one watchdog timer per connection, armed at the
    earliest deadline it has to enforce, re-armed when it fires early (a deadline only moves
    later while requests keep coming); a read sets the deadline it waits under."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS_BYTES)
        self._loop = asyncio.get_running_loop()
        self._first = b""  # the current request's first read (to tell HTTP/0.9 apart)
        self._received = 0  # bytes read for the current request (its head's size bound)
        self._deadline = math.inf  # of the read in progress (inf: none)
        self._late: bytes | None = None  # what the watchdog sends when it passes (None: close)
        self._timer: asyncio.TimerHandle | None = None
        self._armed = math.inf
        self._expired = False
        # The fast path (:mod:`wire`) reads plain requests from ``_buf`` until a request of
        # another form comes: h11 then takes the connection (``_h11``) for good.
        self._buf = b""
        self._eof = False
        self._h11 = False
        self._close = False  # the plain request asked to close after its response
        self._unread = 0  # bytes of a streamed request body not read yet

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)
        self._armed = when

    def _fire(self) -> None:
        self._timer, self._armed = None, math.inf
        if self._deadline == math.inf:
            return  # not reading: the next read arms it again
        if self._loop.time() < self._deadline:
            self._arm(self._deadline)
            return
        self._expired = True
        if self._late is not None and not self.writer.is_closing():
            self.writer.write(self._late)
        self.writer.close()  # the pending read then sees the end of the stream

    async def _read(self, timeout: float, late: bytes | None) -> bytes:
        """One read, the connection closed (after ``late``, if given) when ``timeout`` passes
        first (raises :class:`Expired` then)."""
        deadline = self._loop.time() + timeout
        self._deadline, self._late = deadline, late
        if deadline < self._armed:
            self._arm(deadline)
        try:
            data = await self.reader.read(65536)
        finally:
            self._deadline = math.inf
        if self._expired:
            raise Expired("read deadline passed")
        self._received += len(data)
        if not self._first:
            self._first = data
        return data

    def close(self) -> None:
        """Stops the watchdog (the connection is done)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def sniff(self, preface: bytes) -> bytes | None:
        """The connection's first bytes when they are ``preface`` (HTTP/2's), else None: they
        are then the first bytes of an HTTP/1 request, read as such."""
        data = await self._read(self.limits.idle_timeout, None)
        deadline = self._loop.time() + self.limits.header_timeout
        while data and len(data) < len(preface) and preface.startswith(data):
            more = await self._read(deadline - self._loop.time(), _HEADERS_408)
            if not more:
                self._buf, self._eof = data, True
                return None
            data += more
        if data.startswith(preface):
            return data
        self._buf, self._eof = data, not data  # b"": the client closed
        return None

    async def _head(self) -> h11.Request | None:
        """The next request's head (None: the client closed between requests)."""
        conn, limits = self.conn, self.limits
        head_deadline: float | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._malformed(exc) from None
            if event is h11.NEED_DATA:
                if head_deadline is None and self._received:
                    # The head has begun: it must be complete within header_timeout.
                    head_deadline = self._loop.time() + limits.header_timeout
                if head_deadline is None:  # idle between requests: closed quietly
                    data = await self._read(limits.idle_timeout, None)
                else:
                    data = await self._read(head_deadline - self._loop.time(), _HEADERS_408)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                return event
            return None  # ConnectionClosed (or PAUSED, which a fresh cycle never gives)

    def _malformed(self, exc: h11.RemoteProtocolError) -> Refusal:
        status = exc.error_status_hint  # 431 (head too long), 501 (transfer-encoding), 400
        if str(exc).startswith("Missing mandatory Host"):
            return Refusal(400, b"", "no host")  # the connection manager's, not the codec's
        if status == 400:
            line = self._first.split(b"\n", 1)[0].split(b" ")
            if len(line) == 2 and line[1].strip():  # "GET /": HTTP/0.9 to Envoy's parser
                status = 426
        return codec_error(str(exc), status)

    async def next_request(self) -> Request | None:
        """The next request, body read (100 Continue sent first when asked for); None when
        the client is done. Raises :class:`Refusal`."""
        if not self._h11:
            plain = await self._plain_request()
            if plain is not wire.OTHER:
                return plain  # type: ignore[return-value]
            self._h11 = True  # h11 reads this request and the rest of the connection
            self.conn.receive_data(self._buf)
            if self._eof:
                self.conn.receive_data(b"")
            self._buf = b""
        head = await self._head()
        if head is None:
            return None
        method = head.method.decode("latin-1")
        target = head.target.decode("latin-1")
        if method not in METHODS:
            raise codec_error(f"invalid method {method[:20]!r}")
        if head.http_version != b"1.1":
            raise codec_error("HTTP version", 426)
        if len(head.headers) > MAX_HEADERS_COUNT or (
            self._received > MAX_HEADERS_BYTES and _head_size(head) > MAX_HEADERS_BYTES
        ):
            raise codec_error("headers too large", 431)
        headers = decoded_headers(head.headers)
        if method == "CONNECT":
            if ":" not in target or target.startswith("/") or "://" in target:
                raise codec_error("invalid CONNECT target")
            raise Refusal(404, b"", "CONNECT (no route takes it)",
                          connect=Request(method, "", [("host", target), *headers], b""))  # fmt: skip
        authority, path = request_target(method, target)
        upgrade = connection = length = chunked = None
        for k, v in headers:
            if k == "upgrade":
                upgrade = v
            elif k == "connection":
                connection = v
            elif k == "content-length":
                length = v
            elif k == "transfer-encoding":
                chunked = v
        if length is not None and chunked is not None:
            raise codec_error("both content-length and transfer-encoding")
        drop = set()
        if upgrade is not None and "upgrade" in _tokens(connection):
            if upgrade.strip().lower() != "h2c":
                raise Refusal(403, b"", f"upgrade to {upgrade[:20]!r} not configured")
            drop.add("http2-settings")  # h2c: served as HTTP/1.1, its headers dropped
        if authority is not None:  # RFC 7230 5.4: the target's authority replaces Host
            drop.add("host")
        if self.conn.they_are_waiting_for_100_continue:  # answered here, not forwarded
            drop.add("expect")
            send(
                self.writer,
                self.conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"",
            )
        if drop:
            headers = [(k, v) for k, v in headers if k not in drop]
            if authority is not None:
                headers.insert(0, ("host", authority))
        try:
            body = await read_body(self.conn, self._body_read)
        except h11.RemoteProtocolError as exc:
            raise self._malformed(exc) from None
        if not path.startswith("/"):  # "*", "?q": the HCM serves relative paths only (404)
            raise Refusal(404, b"", "non-relative path", close=False)
        return Request(method, path, headers, body)

    async def _plain_request(self) -> Request | wire._Other | None:
        """The next request when it is of the plain form (:mod:`wire`), read without h11;
        None when the client closed between requests; :data:`wire.OTHER` for h11 to read."""
        limits = self.limits
        self._first = self._buf
        head_deadline: float | None = None
        while True:
            end = wire.head_end(self._buf)
            if end == -2:
                return wire.OTHER
            if end > 0:
                break
            if self._eof:
                return None if not self._buf else wire.OTHER
            if not self._buf:  # idle between requests: closed quietly
                data = await self._read(limits.idle_timeout, None)
            else:  # the head has begun: it must be complete within header_timeout
                if head_deadline is None:
                    head_deadline = self._loop.time() + limits.header_timeout
                data = await self._read(head_deadline - self._loop.time(), _HEADERS_408)
            if data:
                self._buf += data
            else:
                self._eof = True
        head = wire.parse_head(self._buf[:end])
        if isinstance(head, wire._Other):
            return wire.OTHER
        if head.length > STREAM_OVER:  # streamed, not buffered
            self._buf, self._unread, self._close = self._buf[end:], head.length, head.close
            return Request(head.method, head.target, head.headers, b"",
                           streamed=Body(head.length, self._body_chunks()))  # fmt: skip
        chunks, size = [self._buf[end:]], len(self._buf) - end
        while size < head.length:
            if self._eof:
                raise codec_error("connection closed mid-body")
            data = await self._body_read()
            if not data:
                self._eof = True
            chunks.append(data)
            size += len(data)
        rest = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        body, self._buf = rest[: head.length], rest[head.length :]
        self._close = head.close
        return Request(head.method, head.target, head.headers, body)

    async def _body_chunks(self) -> AsyncGenerator[bytes, None]:
        """A streamed request body's bytes, as the socket gives them (the next request's
        bytes stay in the buffer)."""
        while self._unread:
            if not self._buf:
                if self._eof:
                    raise ConnectionResetError("the client closed mid-body")
                data = await self._body_read()
                if not data:
                    self._eof = True
                    continue
                self._buf = data
            chunk, self._buf = self._buf[: self._unread], self._buf[self._unread :]
            self._unread -= len(chunk)
            yield chunk

    def _body_read(self) -> Awaitable[bytes]:
        """A body read: within stream_idle_timeout (then Envoy's 408)."""
        return self._read(self.limits.stream_idle_timeout, _STREAM_408)

    def respond(self, response: Response, *, close: bool = False) -> bytes:
        """The bytes of ``response`` (one write, one TLS record); ``close`` says so in it."""
        if not self._h11:
            return wire.response_head(response.status, response.headers, len(response.body),
                                      close or self._close) + response.body  # fmt: skip
        conn = self.conn
        out = [*response.headers, ("content-length", str(len(response.body)))]
        if close:
            out.append(("connection", "close"))
        data = conn.send(h11.Response(status_code=response.status, headers=out)) or b""
        if response.body:
            data += conn.send(h11.Data(data=response.body)) or b""
        return data + (conn.send(h11.EndOfMessage()) or b"")

    async def respond_streamed(self, response: Response, body: Body) -> None:
        """Writes ``response`` and its streamed ``body`` (Content-Length when known, else
        chunked), each chunk drained before the next is read."""
        async with contextlib.aclosing(body.chunks):  # its upstream freed even if we fail
            await self._write_streamed(response, body)

    async def _write_streamed(self, response: Response, body: Body) -> None:
        writer, idle = self.writer, self.limits.stream_idle_timeout
        chunked = body.length is None
        if not self._h11:
            send(writer, wire.response_head(response.status, response.headers, body.length,
                                            self._close))  # fmt: skip
            async for chunk in body.chunks:
                if chunk:
                    send(writer, b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await drained(writer, idle)
            if chunked:
                send(writer, b"0\r\n\r\n")
            return
        conn = self.conn
        framing = ("transfer-encoding", "chunked") if chunked else ("content-length",
                                                                     str(body.length))  # fmt: skip
        out = [*response.headers, framing]
        send(writer, conn.send(h11.Response(status_code=response.status, headers=out)) or b"")
        async for chunk in body.chunks:
            if chunk:
                send(writer, conn.send(h11.Data(data=chunk)) or b"")
                await drained(writer, idle)
        send(writer, conn.send(h11.EndOfMessage()) or b"")

    def next_cycle(self) -> bool:
        """Ready for the next request on this connection (False: it must close)."""
        if not self._h11:
            self._first, self._received = b"", 0
            return not self._close and not self._unread and not (self._eof and not self._buf)
        conn = self.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._first, self._received = b"", 0
            return True
        return False


def _head_size(head: h11.Request) -> int:
    """The request head's size as sent (request line, headers, CRLFs)."""
    fields = head.headers
    # " " + " HTTP/1.1\r\n" + the final CRLF; ": " and CRLF per header.
    return (
        len(head.method)
        + len(head.target)
        + 13
        + 4 * len(fields)
        + sum(len(k) + len(v) for k, v in fields)
    )


# --- upstream connections (h11) ---------------------------------------------------------------


class UpstreamError(Exception):
    """The upstream could not be reached or broke the exchange (Envoy's UF / UC)."""


class _Upstream:
    """One kept-alive HTTP/1.1 connection to an endpoint: requests written from headers already
    validated, responses parsed by httptools (:class:`wire.ResponseReader`)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.responses = wire.ResponseReader(MAX_BODY)
        self.peer_uris = uri_sans(writer.get_extra_info("peercert"))
        self._reusable = False
        self._idle = STREAM_IDLE_TIMEOUT_S  # a streamed response body's read deadline

    async def exchange(
        self, request: Request, host: str, idle: float = STREAM_IDLE_TIMEOUT_S
    ) -> Response:
        """One request and its response; a long or unframed response body streams (its
        :class:`Body`; the connection is reusable once that is read to its end). A streamed
        body's socket waits at most ``idle`` (then UpstreamError)."""
        self._reusable, self._idle = False, idle
        streamed = request.streamed
        length = len(request.body) if streamed is None else streamed.length
        if length is None:
            raise UpstreamError("a request body of unknown length")  # never made: h11 buffers
        try:
            head = wire.request_head(request.method, request.target, host,
                                     [(k, v) for k, v in request.headers if k != "host"],
                                     length)  # fmt: skip
        except ValueError as exc:
            raise UpstreamError(str(exc)) from None
        writer = self.writer
        if streamed is not None:
            send(writer, head)
            async for chunk in streamed.chunks:
                send(writer, chunk)
                await drained(writer, idle)
        elif request.body:
            if writer.is_closing():
                raise ConnectionResetError("the connection is closed")
            writer.writelines((head, request.body))
        else:
            send(writer, head)
        await writer.drain()
        parsed = self.responses
        parsed.reset(request.method == "HEAD")
        try:
            while not parsed.complete:
                if parsed.head_done:
                    size = self._long(parsed.headers)
                    if size != 0:  # longer than STREAM_OVER, or until the connection ends
                        parsed.stream()
                        return Response(parsed.status, parsed.headers, b"",
                                        streamed=Body(size, self._rest()))  # fmt: skip
                data = await self.reader.read(65536)
                if not data:
                    if parsed.eof():
                        break
                    raise UpstreamError("upstream closed the connection")
                parsed.feed(data)
        except wire.ResponseError as exc:
            raise UpstreamError(str(exc)) from None
        self._reusable = parsed.reusable()
        body = parsed.body[0] if len(parsed.body) == 1 else b"".join(parsed.body)
        return Response(parsed.status, parsed.headers, body)

    @staticmethod
    def _long(headers: list[tuple[str, str]]) -> int | None:
        """A response body's length when it is to stream (None: unknown), 0 when it is not."""
        length: int | None = None
        for k, v in headers:
            if k == "transfer-encoding":
                return None
            if k == "content-length":
                length = int(v) if v.isdigit() else None
        return 0 if length is not None and length <= STREAM_OVER else length

    async def _rest(self) -> AsyncGenerator[bytes, None]:
        """A streamed response body's bytes, as the upstream sends them."""
        parsed = self.responses
        while True:
            if parsed.body:
                chunks, parsed.body = parsed.body, []
                for chunk in chunks:
                    yield chunk
            if parsed.complete:
                break
            try:
                async with asyncio.timeout(self._idle):
                    data = await self.reader.read(65536)
            except TimeoutError:
                raise UpstreamError("the upstream stalled mid-body") from None
            if not data:
                if parsed.eof():
                    continue
                raise UpstreamError("upstream closed the connection mid-body")
            try:
                parsed.feed(data)
            except wire.ResponseError as exc:
                raise UpstreamError(str(exc)) from None
        self._reusable = parsed.reusable()

    def reusable(self) -> bool:
        return self._reusable and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class UpstreamPool:
    def __init__(self) -> None:
        self.idle: dict[tuple[str, int, bool, str], list[_Upstream]] = defaultdict(list)

    async def get(
        self, ep: Endpoint, ctx: ssl.SSLContext | None, sni: str, timeout: float
    ) -> _Upstream:
        key = (ep.address, ep.port, ctx is not None, sni)
        while self.idle[key]:
            up = self.idle[key].pop()
            if not up.writer.is_closing() and not up.reader.at_eof():
                return up
            up.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    ep.address, ep.port, ssl=ctx, server_hostname=(sni or None) if ctx else None
                ),
                timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamError(f"connect to {ep} failed: {exc}") from None
        return _Upstream(reader, writer)

    def put(self, ep: Endpoint, ctx: ssl.SSLContext | None, sni: str, up: _Upstream) -> None:
        idle = self.idle[(ep.address, ep.port, ctx is not None, sni)]
        if up.reusable() and len(idle) < 32:
            idle.append(up)
        else:
            up.close()

    def close(self) -> None:
        for ups in self.idle.values():
            for up in ups:
                up.close()
        self.idle.clear()
