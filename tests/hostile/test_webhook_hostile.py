"""Hostile clients of the admission webhook, over real TLS sockets: every body gets an answer
(400, or a denied AdmissionReview), a slow client is cut off at the request deadline, the
connection count is capped, and a client hanging up leaves no traceback (issue 11, item 9)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcore.config.webhook import WebhookServer, make_server, serve_in_thread
from tests.hostile._server_helpers import tls_pair


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tls_pair(tmp_path_factory.mktemp("webhook-tls"))


def _running(tls: tuple[Path, Path], **limits: Any) -> Iterator[WebhookServer]:
    srv = make_server(str(tls[0]), str(tls[1]), 0, **limits)
    thread = serve_in_thread(srv)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server(tls: tuple[Path, Path]) -> Iterator[WebhookServer]:
    yield from _running(tls, request_deadline=1.5, max_connections=4)


def _client(srv: WebhookServer, tls: tuple[Path, Path]) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(tls[0]))
    raw = socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _post(srv: WebhookServer, tls: tuple[Path, Path], body: bytes) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(tls[0]))
    conn = http.client.HTTPSConnection("127.0.0.1", srv.server_address[1], context=ctx, timeout=10)
    try:
        conn.request("POST", "/validate", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _review(obj: Any, uid: str = "u-1") -> dict[str, Any]:
    request = {"uid": uid, "operation": "CREATE", "object": obj}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"spec": value}
    return value


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"kind": "\xff\xfe"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": 1e999}', "out of range"),
        (b'{"a": NaN}', "not JSON"),
        (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON"),
        (b'"just a string"', "JSON object"),
        (b"[]", "JSON object"),
        (json.dumps(_review({}, uid="")).encode().replace(b'"uid": ""', b'"uid": 7'), "uid"),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
         "uid"),
    ],
    ids=["utf8", "deep", "overflow", "nan", "bigint", "string", "list", "uid-type", "no-request"],
)  # fmt: skip
def test_every_bad_body_gets_a_400_with_the_reason(
    server: WebhookServer, tls: tuple[Path, Path], body: bytes, reason: str
) -> None:
    status, answer = _post(server, tls, body)
    assert status == 400
    assert reason in answer["error"]


def test_a_review_nested_too_deep_is_denied(server: WebhookServer, tls: tuple[Path, Path]) -> None:
    obj = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", **_nested(150)}
    status, answer = _post(server, tls, json.dumps(_review(obj)).encode())
    assert status == 200
    response = answer["response"]
    assert response["uid"] == "u-1"
    assert response["allowed"] is False
    assert "nested deeper than 100" in response["status"]["message"]


def test_a_review_whose_object_is_not_an_object_is_denied(
    server: WebhookServer, tls: tuple[Path, Path]
) -> None:
    status, answer = _post(server, tls, json.dumps(_review([1, 2])).encode())
    assert status == 200
    assert answer["response"]["allowed"] is False
    assert "must be a JSON object" in answer["response"]["status"]["message"]


def test_a_body_over_the_limit_gets_413(server: WebhookServer, tls: tuple[Path, Path]) -> None:
    with _client(server, tls) as s:
        s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")


def test_a_trickling_client_is_cut_off_at_the_deadline(
    server: WebhookServer, tls: tuple[Path, Path]
) -> None:
    """One byte every 0.3 s: each read is quick, the whole request is not; at the 1.5 s
    deadline the server answers 408 and closes (it used to hold the thread for ever)."""
    body = json.dumps(_review({"kind": "VirtualService"})).encode()
    with _client(server, tls) as s:
        s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        started = time.monotonic()
        reply = b""
        for byte in body:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                break
            s.settimeout(0.3)
            try:
                reply = s.recv(4096)
            except TimeoutError:
                continue
            break
        took = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert took < 3.0


def test_a_client_sending_nothing_is_closed_at_the_deadline(
    server: WebhookServer, tls: tuple[Path, Path]
) -> None:
    with _client(server, tls) as s:
        s.settimeout(5)
        started = time.monotonic()
        assert s.recv(4096) == b""  # closed, no request ever came
        assert time.monotonic() - started < 3.0


def _closed_at_once(srv: WebhookServer, tls: tuple[Path, Path]) -> bool:
    try:
        with _client(srv, tls) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return extra.recv(4096) == b""
    except (ssl.SSLError, OSError):
        return True


def test_connections_over_the_cap_are_closed_and_the_slots_come_back(
    server: WebhookServer, tls: tuple[Path, Path]
) -> None:
    idle = [_client(server, tls) for _ in range(4)]  # every slot taken (cap 4)
    try:
        assert _closed_at_once(server, tls)
        assert server.refused_connections >= 1
    finally:
        for s in idle:
            s.close()
    # The slots come back once the idle connections are gone.
    deadline = time.monotonic() + 5
    while True:
        try:
            status, _ = _post(server, tls, b"[]")
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert status == 400


def test_clients_hanging_up_leave_no_traceback(
    server: WebhookServer,
    tls: tuple[Path, Path],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with caplog.at_level(logging.DEBUG, logger="meshcore.webhook"):
        for cut_after in (b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
                          b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Le"):  # fmt: skip
            s = _client(server, tls)
            s.sendall(cut_after)
            s.close()
        raw = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5)
        raw.sendall(b"\x16\x03\x01garbage")  # a broken TLS handshake
        raw.close()
        # And the server still answers.
        status, _ = _post(server, tls, b"[]")
        assert status == 400
        time.sleep(0.3)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert all(r.exc_info is None for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert threading.active_count() < 50
