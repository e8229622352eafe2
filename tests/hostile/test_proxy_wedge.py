"""The reference proxy cannot be wedged or held (issue 11, items 11 and 13): after CONNECT and
upgrade requests on every listener its CPU stays idle and every listener answers; a client
trickling its request head gets 408 and is closed; idle connections are closed; clients that
hang up mid-request leave no traceback in the log. ``meshcore proxy`` runs as a process (its
CPU time read from /proc); the timeouts are checked on an in-process proxy with short limits."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshcore.dataplane import DataPlane
from meshcore.dataplane.http1 import Limits
from meshcore.dataplane.proxy import ReferenceProxy
from tests.envoy._sidecar import LoopThread
from tests.hostile._proxy_helpers import (
    RawConnection,
    Sidecars,
    exchange,
    node,
    request,
    sidecars,
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecars]:
    with sidecars(Path(tmp_path_factory.mktemp("hostile-proxy")), envoy=False) as sc:
        yield sc


def answers(mesh: Sidecars) -> list[int | None]:
    """One request to each listener: inbound (the app), outbound (no route: 404), metrics."""
    out = []
    for address, target, host in ((mesh.proxy, "/api/x", "guarded"),
                                  (mesh.proxy_outbound, "/", "nowhere:1"),
                                  (mesh.proxy_metrics, "/healthz", "x")):  # fmt: skip
        try:
            out.append(exchange(address, request("GET", target, [("host", host)]), 3).status)
        except OSError:  # a timeout: the listener does not answer
            out.append(None)
    return out


def test_connect_and_upgrades_do_not_wedge_the_proxy(mesh: Sidecars) -> None:
    assert answers(mesh) == [200, 404, 200]
    held = []
    try:
        for address in (mesh.proxy, mesh.proxy_outbound, mesh.proxy_metrics):
            for data in (
                request("CONNECT", f"guarded:{mesh.port}", [("host", f"guarded:{mesh.port}")]),
                request("GET", "/", [("host", f"guarded:{mesh.port}"),
                                     ("connection", "upgrade"), ("upgrade", "websocket")]),
            ):  # fmt: skip
                c = RawConnection(address, timeout=3)
                held.append(c)  # the clients keep their connections open
                c.send(data + b"\x16\x03\x01 tunnel bytes that are not HTTP")
        time.sleep(0.3)
        before = mesh.cpu_seconds()
        time.sleep(1.0)
        spent = mesh.cpu_seconds() - before
        assert spent < 0.3, f"the proxy spent {spent:.2f} s of CPU in 1 s while idle"
        assert answers(mesh) == [200, 404, 200]
        # Each was refused (as Envoy: 404 for CONNECT, 403 for the upgrade) and closed.
        for c in held:
            reply = c.response()
            assert reply.status in (403, 404), reply.raw
            assert c.closed_after(1.0)
    finally:
        for c in held:
            c.close()


def rst(sock: socket.socket) -> None:
    """Closes with a TCP reset (SO_LINGER 0), as a client that vanishes does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_hang_up_leave_no_traceback(mesh: Sidecars) -> None:
    host = [("host", "guarded")]
    for data in (
        request("GET", "/api/x", host),  # the whole request, gone before the answer
        b"GET /api/x HTTP/1.1\r\nhost: gua",  # gone mid-head
        b"POST /api/x HTTP/1.1\r\nhost: guarded\r\ncontent-length: 100\r\n\r\nabc",  # mid-body
        request("POST", "/api/x", host + [("expect", "100-continue"), ("content-length", "9")]),
    ):
        for address in (mesh.proxy, mesh.proxy_outbound, mesh.proxy_metrics):
            for reset in (False, True):
                with RawConnection(address) as c:
                    c.send(data)
                    if reset:
                        rst(c.sock)
    time.sleep(0.5)
    assert answers(mesh) == [200, 404, 200]
    text = mesh.log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "ERROR" not in text, text[-3000:]


def test_slow_and_idle_clients_are_cut_off(mesh: Sidecars) -> None:
    """A head trickled a byte at a time: 408 once ``header_timeout`` has passed since its
    first byte (it never completes); a connection that sends nothing: closed after
    ``idle_timeout``; a slow body: closed after ``stream_idle_timeout`` of silence."""
    loop = LoopThread()
    dp = loop.run(DataPlane.aconnect(f"127.0.0.1:{mesh.xds}", node_id=node("slow-1", "127.0.95.1")))
    proxy = ReferenceProxy(dp, outbound=("127.0.95.1", 0), inbound=False,
                           limits=Limits(header_timeout=0.6, idle_timeout=0.6,
                                         stream_idle_timeout=0.6))  # fmt: skip
    try:
        loop.run(proxy.start())
        assert proxy.outbound_port is not None
        address = ("127.0.95.1", proxy.outbound_port)
        with RawConnection(address, timeout=5) as c:
            started = time.monotonic()
            reply = None
            for byte in b"GET / HTTP/1.1\r\nhost: nowhere:1\r\nx-slow: " + b"a" * 100:
                try:
                    c.send(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.05)
                if time.monotonic() - started > 3:
                    break
            reply = c.response()
            took = time.monotonic() - started
            assert reply.status == 408, reply.raw
            assert c.closed_after(1.0)
            assert 0.5 < took < 2.5, took
        with RawConnection(address, timeout=5) as c:
            started = time.monotonic()
            assert c.closed_after(3.0)
            assert 0.5 < time.monotonic() - started < 2.5
        with RawConnection(address, timeout=5) as c:
            c.send(b"POST / HTTP/1.1\r\nhost: nowhere:1\r\ncontent-length: 10\r\n\r\nab")
            started = time.monotonic()
            reply = c.response()
            assert (reply.status, reply.body) == (408, b"stream timeout"), reply.raw
            assert c.closed_after(1.0)
            assert 0.5 < time.monotonic() - started < 2.5
        # And a normal request still goes through at normal speed.
        assert exchange(address, request("GET", "/", [("host", "nowhere:1")])).status == 404
    finally:
        loop.run(proxy.stop())
        loop.run(dp.aclose())
        loop.close()
