"""The HTTP/1.1 fast path (:mod:`meshcore.dataplane.wire`) against h11 (issue 17): a head the
fast path takes is the request h11 and http1 make of the same bytes; every other head is left
to them (OTHER), so the fast path cannot change an answer. Upstream responses parsed by
httptools as h11 parsed them."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.dataplane import wire
from meshcore.dataplane.http1 import MAX_BODY, decoded_headers


def h11_request(raw: bytes) -> tuple[str, str, list[tuple[str, str]], bool] | None:
    """What h11 reads from ``raw`` (method, target, headers, keep-alive), None if it refuses."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=wire.MAX_HEADERS_BYTES)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    return (event.method.decode(), event.target.decode("latin-1"),
            decoded_headers(event.headers), conn.their_state is not h11.MUST_CLOSE
            and h11._connection._keep_alive(event))  # fmt: skip


PLAIN = [
    b"GET /ratings/1 HTTP/1.1\r\nHost: ratings:9080\r\nAccept-Encoding: identity\r\n\r\n",
    b"POST /a?b=c HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nX-A:  v  w \t\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\nx-empty:\r\n\r\n",
]
OTHERS = [
    b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
    b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: foo\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nbad name: v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nx: a\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nx: \xe9\r\n\r\n",
    b"GET /\xe9 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nx: a\x00b\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"x: y\r\n" * 100 + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nx: " + b"y" * 61_440 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1%s\r\n\r\n" % (b"0" * 18),
]


@pytest.mark.parametrize("raw", PLAIN)
def test_a_plain_head_is_what_h11_reads(raw: bytes) -> None:
    head = wire.parse_head(raw)
    assert isinstance(head, wire.Head), raw
    assert h11_request(raw) == (head.method, head.target, head.headers, not head.close)


@pytest.mark.parametrize("raw", OTHERS)
def test_any_other_head_is_left_to_h11(raw: bytes) -> None:
    assert wire.head_end(raw) == -2 or wire.parse_head(raw) is wire.OTHER


def test_bare_lf_line_ends_are_left_to_h11() -> None:
    assert wire.head_end(b"GET / HTTP/1.1\nHost: x\n\n") == -2
    assert wire.head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1  # not complete yet
    assert wire.head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody\n") == 27


_NAME = st.text(st.sampled_from("!#$%&'*+-.^_`|~0123456789abcXYZ :\t\x00"), min_size=0,
                max_size=6)  # fmt: skip
_VALUE = st.text(st.sampled_from('ab =:;,\t\x7f\x01\r\n\x00\xe9"'), max_size=8)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_NAME, _VALUE), max_size=4),
       st.sampled_from(["/", "/a?b", "/%2F#f", "/\t", "*", "/x y"]),
       st.sampled_from(["GET", "POST", "DELETE", "PURGE", "Get", "HEAD"]))  # fmt: skip
def test_the_fast_path_takes_only_what_h11_reads_the_same(
    fields: list[tuple[str, str]], target: str, method: str
) -> None:
    raw = f"{method} {target} HTTP/1.1\r\nhost: h\r\n".encode("latin-1")
    raw += b"".join(f"{k}:{v}\r\n".encode("latin-1") for k, v in fields) + b"\r\n"
    if wire.head_end(raw) != len(raw):
        return  # not a plain head (or its end is elsewhere): h11's, as asserted above
    head = wire.parse_head(raw)
    if head is wire.OTHER:
        return
    assert isinstance(head, wire.Head)
    read = h11_request(raw)
    assert read == (head.method, head.target, head.headers, not head.close), raw


def test_heads_written_are_what_h11_reads_back() -> None:
    raw = wire.response_head(200, [("content-type", "text/plain"), ("x-a", "b c")], 2, False)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw + b"ok")
    event = conn.next_event()
    assert isinstance(event, h11.Response)
    assert event.status_code == 200
    assert event.reason == b"OK"
    assert decoded_headers(event.headers) == [("content-type", "text/plain"), ("x-a", "b c"),
                                              ("content-length", "2")]  # fmt: skip
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        wire.response_head(200, [("x", "a\r\nset-cookie: evil")], 0, False)
    with pytest.raises(ValueError, match="CR, LF, NUL or a space"):
        wire.request_head("GET", "/ HTTP/1.0\r\n", "h", [], 0)


def _read(chunks: list[bytes], head_only: bool = False) -> wire.ResponseReader:
    reader = wire.ResponseReader(MAX_BODY)
    reader.reset(head_only)
    for chunk in chunks:
        reader.feed(chunk)
        if reader.complete:
            break
    else:
        assert reader.eof()
    return reader


def test_upstream_responses() -> None:
    r = _read([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
               b"X-A: b\r\n\r\nhel", b"lo"])  # fmt: skip
    assert (r.status, r.headers, b"".join(r.body)) == (
        200, [("content-length", "5"), ("x-a", "b")], b"hello")  # fmt: skip
    assert r.reusable()
    r = _read([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"])
    assert (r.status, b"".join(r.body), r.reusable()) == (200, b"abc", True)
    r = _read([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"])
    assert (b"".join(r.body), r.reusable()) == (b"until the end", False)
    r = _read([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"], head_only=True)
    assert (r.status, r.body, r.reusable()) == (200, [], False)
    r = _read([b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n"])
    assert (r.status, r.reusable()) == (204, False)  # bytes after the response
    with pytest.raises(wire.ResponseError):
        _read([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"])
    with pytest.raises(wire.ResponseError):
        _read([b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n"])
    big = wire.ResponseReader(10)
    big.reset(False)
    with pytest.raises(wire.ResponseError, match="too large"):
        big.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11)
