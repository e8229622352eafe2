"""HTTP/1.1 on the reference proxy's fast path: the common request head read in one pass of
regular expressions, heads written from headers already validated, upstream responses parsed
by httptools (llhttp).

The fast path takes only requests whose every byte is of the plainest form (origin-form target
of visible ASCII, ``HTTP/1.1``, CRLF line ends, token names, values of visible ASCII, spaces and
tabs, one Host, a Content-Length of digits or no body, no Transfer-Encoding, Upgrade, Expect or
connection options beyond ``keep-alive`` / ``close``, the head within Envoy's size and count
limits). A request of any other form is not refused here: it is :data:`OTHER`, and goes to h11
and :mod:`meshcore.dataplane.http1`, which make Envoy's exact answer to it (a refusal or the
same request). So the fast path changes no answer, only how fast the plain ones are read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import httptools

MAX_HEADERS_BYTES = 60 * 1024  # Envoy's max_request_headers_kb default (the whole head)
MAX_HEADERS_COUNT = 100  # Envoy's max_headers_count default

# "METHOD /target HTTP/1.1": methods are upper-case letters (the list is checked after).
_REQUEST_LINE = re.compile(r"([A-Z]{1,20}) (/[!-~]*) HTTP/1\.1")
# name ":" OWS value OWS; a value of visible ASCII with inner spaces or tabs (or empty).
_FIELD = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[!-~](?:[ \t]*[!-~])*)?)[ \t]*")
_UNSAFE = re.compile(r"[\x00\r\n]")

# The methods Envoy's HTTP/1 parser accepts (any other: 400).
METHODS: Final = frozenset({
    "ACL", "BIND", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET", "HEAD", "LINK", "LOCK",
    "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MOVE", "MSEARCH", "NOTIFY", "OPTIONS",
    "PATCH", "POST", "PROPFIND", "PROPPATCH", "PURGE", "PUT", "REBIND", "REPORT", "SEARCH",
    "SOURCE", "SUBSCRIBE", "TRACE", "UNBIND", "UNLINK", "UNLOCK", "UNSUBSCRIBE",
})  # fmt: skip
_PLAIN_METHODS = METHODS - {"CONNECT", "HEAD"}  # those two are h11's and http1's to read


@dataclass(frozen=True, slots=True)
class Head:
    """A plain request head: method, origin-form target, headers (names lower-case), the body's
    length, and whether the client asked to close after it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    length: int
    close: bool


class _Other:
    """Not a plain request head: h11 and http1 read it (:data:`OTHER`)."""


OTHER: Final = _Other()


def head_end(buf: bytes) -> int:
    """The offset just past the request head's blank line; -1 when it is not there yet, -2 when
    the bytes are not of the plain form (a lone LF, a head over the size limit)."""
    end = buf.find(b"\r\n\r\n")
    scan = buf if end < 0 else buf[:end]
    if scan.count(b"\n") != scan.count(b"\r\n"):
        return -2  # bare LF line ends: h11's to read
    if end < 0:
        return -2 if len(buf) > MAX_HEADERS_BYTES else -1
    return end + 4


def parse_head(raw: bytes) -> Head | _Other:
    """The plain request head in ``raw`` (its bytes up to and including the blank line), or
    :data:`OTHER`."""
    if len(raw) > MAX_HEADERS_BYTES:
        return OTHER
    text = raw[:-4].decode("latin-1")
    lines = text.split("\r\n")
    if len(lines) - 1 > MAX_HEADERS_COUNT:
        return OTHER
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None or m.group(1) not in _PLAIN_METHODS:
        return OTHER
    headers = []
    host = 0
    length = 0
    seen_length = False
    close = False
    field = _FIELD.fullmatch
    for line in lines[1:]:
        f = field(line)
        if f is None:
            return OTHER
        name = f.group(1).lower()
        value = f.group(2)
        if name == "host":
            host += 1
        elif name == "content-length":
            if seen_length or not value.isdigit() or len(value) > 18:
                return OTHER
            length, seen_length = int(value), True
        elif name == "connection":
            tokens = {t.strip().lower() for t in value.split(",")}
            if not tokens <= {"keep-alive", "close"}:
                return OTHER
            close = "close" in tokens
        elif name in ("transfer-encoding", "upgrade", "expect", "http2-settings"):
            return OTHER
        headers.append((name, value))
    if host != 1:
        return OTHER
    return Head(m.group(1), m.group(2), headers, length, close)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


_REASONS = {status: _reason(status) for status in range(100, 600)}


def _fields(headers: Sequence[tuple[str, str]]) -> str:
    text = "".join(f"{k}: {v}\r\n" for k, v in headers)
    n = len(headers)  # one CR and one LF per line, ours: any other is in a name or value
    if text.count("\n") != n or text.count("\r") != n or "\x00" in text:
        raise ValueError("a header name or value holds CR, LF or NUL")
    return text


def response_head(status: int, headers: Sequence[tuple[str, str]], length: int | None,
                  close: bool) -> bytes:  # fmt: skip
    """A response head: Content-Length framing (``length``), or chunked (None). The headers
    were validated where they were read (this codec, h11, llhttp) or are ours; a CR, LF or NUL
    in one raises ValueError all the same."""
    framing = "transfer-encoding: chunked" if length is None else f"content-length: {length}"
    close_line = "connection: close\r\n" if close else ""
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n{_fields(headers)}"
        f"{framing}\r\n{close_line}\r\n"
    ).encode("latin-1")


def request_head(method: str, target: str, host: str, headers: Sequence[tuple[str, str]],
                 length: int) -> bytes:  # fmt: skip
    """An upstream request head (Content-Length framing; ``host`` first, as h11 wrote it)."""
    if _UNSAFE.search(method + target + host) is not None or " " in target:
        raise ValueError("the request line or Host holds CR, LF, NUL or a space")
    return (
        f"{method} {target} HTTP/1.1\r\nhost: {host}\r\n{_fields(headers)}"
        f"content-length: {length}\r\n\r\n"
    ).encode("latin-1")


# --- upstream responses (httptools) -----------------------------------------------------------


class ResponseError(Exception):
    """The upstream's response is not HTTP/1.1 httptools accepts, or is too large."""


class ResponseReader:
    """Reads one upstream response at a time from the bytes of a kept-alive connection: feed
    it what the socket gives until :attr:`complete` (or :meth:`eof`). 1xx responses are
    skipped; bytes after the final response make the connection not reusable."""

    __slots__ = ("_final", "_head_only", "_keep_alive", "_max_body", "_parser", "_size", "body",
                 "complete", "extra", "head_done", "headers", "status")  # fmt: skip

    def __init__(self, max_body: int) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._max_body = max_body
        self.reset(False)

    def reset(self, head_only: bool) -> None:
        """Ready for the next response (``head_only``: it answers a HEAD, so has no body)."""
        self._head_only = head_only
        self._final = False
        self._keep_alive = False
        self._size = 0
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.head_done = False
        self.complete = False
        self.extra = False

    # httptools' callbacks
    def on_message_begin(self) -> None:
        if self._final:
            self.extra = True  # another message after the final one: not reusable
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status >= 200 or status == 101:
            self.status, self._final, self.head_done = status, True, True
            self._keep_alive = self._parser.should_keep_alive()
            if self._head_only:
                self.complete = True

    def stream(self) -> None:
        """The rest of this response's body streams: no size bound, taken as it comes."""
        self._size = -(1 << 62)

    def on_body(self, body: bytes) -> None:
        if self._final:
            self._size += len(body)
            if self._size > self._max_body:
                raise ResponseError("response body too large")
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self._final:
            self.complete = True

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise ResponseError("upstream switched protocols") from None
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, ResponseError):
                raise exc.__context__ from None
            if self.complete and self._head_only:
                return  # the body llhttp expected after a HEAD's head is not coming
            raise ResponseError(f"upstream response: {exc}") from None

    def eof(self) -> bool:
        """The connection ended: True when that completes the response (no length given)."""
        if self.complete:
            return True
        if self.head_done and not any(
            k in ("content-length", "transfer-encoding") for k, _ in self.headers
        ):
            self.complete = True
            self.extra = True  # the connection is done
            return True
        return False

    def reusable(self) -> bool:
        return self.complete and not self.extra and not self._head_only and self._keep_alive
