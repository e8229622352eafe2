"""The reference proxy against a real Envoy sidecar on hostile HTTP/1.1 input: the same config
(``meshcore serve`` over ADS), the same app, the same raw bytes sent to both inbound listeners;
the same status, the same path and Host at the app for what gets through, and the connection
closed after every refusal. Absolute-form targets must not get past inbound RBAC path rules
(issue 11, item 12); malformed requests get Envoy's answers, not a silent close (item 13)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile._proxy_helpers import (
    RawConnection,
    Reply,
    Sidecars,
    exchange,
    request,
    sidecars,
)

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecars]:
    with sidecars(Path(tmp_path_factory.mktemp("hostile-envoy"))) as sc:
        yield sc


def targets(port: int) -> list[str]:
    """Request targets: absolute-form (scheme and host in any case, dot segments, escaped
    slashes and dots, double slashes, fragments, queries, userinfo, IPv6, bad hosts and ports,
    other schemes), '*', authority-form, and origin-form ones for contrast."""
    a = f"http://guarded:{port}"
    return [
        f"{a}/admin", f"{a}/api/x", f"HTTP://GuArDeD:{port}/admin", f"HtTp://guarded:{port}/ok",
        f"http://GuArDeD:{port}/ok", f"{a}/api/../admin", f"{a}/api/%2e%2e/admin",
        f"{a}/.%2e/admin", f"{a}/admin%2Fx", f"{a}/api%2F..%2Fadmin", f"{a}/%2e%2e%2fadmin",
        f"{a}/api/..%5Cadmin", f"{a}//admin", f"{a}/admin#frag", f"{a}/api/x?q=1#f",
        f"{a}#x", f"{a}/api/x?a=/../admin", f"{a}/secret", a, f"{a}?x=1",
        f"https://guarded:{port}/api/x", f"http://user@guarded:{port}/x", "http://[::1]:80/x",
        "ftp://guarded/x", "http:/x", "http://", "http:///x", "http://guarded:/x",
        "http://GUARDED:99999/x", "http://g_u.x/ok", "http://gu%61rded/x", "http://a@@b/x",
        "http://blocked.example/api/x", "*", "guarded:80", "api/x", "/api/x", "//admin",
        "/admin#x", "/a/%2f/../admin", "/%61dmin", "/admin%00", "/a\\..\\admin", "/%zz",
        "/a?b#c", "/secret/../api",
    ]  # fmt: skip


# Authorities without the service's port: the inbound listener takes them all; the proxy's one
# outbound listener takes the port from the authority (80 when none), unlike Envoy's
# per-port outbound listeners, so these are compared inbound only.
PORTLESS = ["http://guarded", "http://guarded?x=1", "HtTp://guarded/ok", "http://GuArDeD/ok",
            "http://guarded/.%2e/admin", "http://user@guarded/x", "https://guarded/api/x",
            "http://guarded:80/ok", "http://guarded./ok", "http://blocked.example:81/api/x"]  # fmt: skip


def same(envoy: Reply, proxy: Reply) -> bool:
    if envoy.status != proxy.status:
        return False
    if envoy.status == 200:  # what the app saw: method, path, Host, body length
        return envoy.seen() == proxy.seen()
    return True


def test_request_targets_reach_the_app_as_through_envoy(mesh: Sidecars) -> None:
    """Absolute-form targets: the authority from the target (Host ignored), the path normalised
    as the inbound HCM does, RBAC on that path and authority; other forms as Envoy's codec."""
    host = [("host", f"guarded:{mesh.port}")]
    cases = [("GET", t, host) for t in targets(mesh.port) + PORTLESS]
    cases += [
        ("GET", "http://guarded/api/x", [("host", "blocked.example")]),  # the target wins
        ("GET", "/api/x", [("host", "blocked.example")]),
        ("POST", f"http://guarded:{mesh.port}/api/x?z", host),
        ("OPTIONS", "*", host),  # RBAC allows it, the inbound route (prefix /) misses: 404
        ("OPTIONS", "*", [("host", "blocked.example")]),
    ]
    mismatches = []
    statuses = set()
    for method, target, headers in cases:
        data = request(method, target, headers)
        envoy, proxy = exchange(mesh.envoy, data), exchange(mesh.proxy, data)
        statuses.add(envoy.status)
        if not same(envoy, proxy):
            mismatches.append((method, target, headers, envoy.status, envoy.body[:80],
                               proxy.status, proxy.body[:80]))  # fmt: skip
    assert not mismatches, "\n".join(map(repr, mismatches))
    assert statuses == {200, 400, 403, 404}, statuses
    # The bypass of issue 11: an absolute-form target naming a denied path is denied.
    denied = exchange(mesh.proxy, request("GET", f"http://guarded:{mesh.port}/admin", host))
    assert (denied.status, denied.body) == (403, b"RBAC: access denied")


def test_outbound_targets_as_through_envoy(mesh: Sidecars) -> None:
    """The same targets sent to the outbound listeners (Envoy's and the proxy's): the route
    decided on the target's authority and the normalised path, the upstream given that path
    (then the callee's inbound sidecar, Envoy or the proxy, guards the app the same way)."""
    host = [("host", f"guarded:{mesh.port}")]
    mismatches = []
    for target in targets(mesh.port):
        data = request("GET", target, host)
        envoy = exchange(mesh.envoy_outbound, data)
        proxy = exchange(mesh.proxy_outbound, data)
        if not same(envoy, proxy):
            mismatches.append((target, envoy.status, envoy.body[:80], proxy.status,
                               proxy.body[:80]))  # fmt: skip
    assert not mismatches, "\n".join(map(repr, mismatches))


def refusals(port: int) -> list[tuple[str, bytes]]:
    # fmt: off
    host = [("host", f"guarded:{port}")]
    ws = [("connection", "Upgrade"), ("upgrade", "websocket"),
          ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="), ("sec-websocket-version", "13")]  # fmt: skip
    return [
        ("CONNECT", request("CONNECT", f"guarded:{port}", host)),
        ("CONNECT absolute", request("CONNECT", f"http://guarded:{port}/", host)),
        ("websocket upgrade", request("GET", "/api/x", host + ws)),
        ("websocket upgrade, body", request("POST", "/", host + ws, b"hello")),
        ("other upgrade", request("GET", "/", host + [("connection", "keep-alive, Upgrade"),
                                                      ("upgrade", "foo/2")])),
        ("h2c upgrade", request("GET", "/api/x", host + [
            ("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")])),
        ("upgrade without connection: upgrade", request("GET", "/", host + [("upgrade", "x")])),
        ("garbage", b"GARBAGE\r\n\r\n"),
        ("HTTP/9.9", request("GET", "/", host, version="HTTP/9.9")),
        ("HTTP/2.0", request("GET", "/", host, version="HTTP/2.0")),
        ("HTTP/1.0", request("GET", "/", host, version="HTTP/1.0")),
        ("HTTP/0.9", b"GET /\r\n\r\n"),
        ("unknown method", request("FOO", "/", host)),
        ("lower-case method", request("get", "/", host)),
        ("header without colon", b"GET / HTTP/1.1\r\nhost: g\r\nbadheader\r\n\r\n"),
        ("space before colon", b"GET / HTTP/1.1\r\nhost : g\r\n\r\n"),
        ("bad header name", b"GET / HTTP/1.1\r\nhost: g\r\nx(y: 1\r\n\r\n"),
        ("NUL in a header", b"GET / HTTP/1.1\r\nhost: g\r\nx: a\x00b\r\n\r\n"),
        ("content-length and chunked", b"POST / HTTP/1.1\r\nhost: g\r\ncontent-length: 3\r\n"
                                       b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("bad content-length", b"POST / HTTP/1.1\r\nhost: g\r\ncontent-length: abc\r\n\r\n"),
        ("two content-lengths", b"POST / HTTP/1.1\r\nhost: g\r\ncontent-length: 3\r\n"
                                b"content-length: 4\r\n\r\nabcd"),
        ("transfer-encoding gzip", b"POST / HTTP/1.1\r\nhost: g\r\ntransfer-encoding: gzip\r\n\r\n"),
        ("bad chunk", b"POST / HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
        ("no host", b"GET / HTTP/1.1\r\n\r\n"),
        ("LF line ends", b"GET /api/x HTTP/1.1\nhost: g\n\n"),
        ("folded header", b"GET /api/x HTTP/1.1\r\nhost: g\r\nx: a\r\n b\r\n\r\n"),
        ("59 KiB of headers", request("GET", "/", host + [("x-big", "a" * 59 * 1024)])),
        ("61 KiB of headers", request("GET", "/", host + [("x-big", "a" * 61 * 1024)])),
        ("70 KiB of headers", request("GET", "/", host + [("x-big", "a" * 70 * 1024)])),
        ("70 KiB target", request("GET", "/" + "a" * 70 * 1024, host)),
        ("150 headers", request("GET", "/", host + [(f"x-h{i}", "v") for i in range(150)])),
    ]
    # fmt: on


def test_refusals_as_envoy(mesh: Sidecars) -> None:
    """CONNECT, upgrades, bad versions, malformed lines and framing, oversized heads: Envoy's
    status (and body), and the proxy closes the connection after each refusal."""
    mismatches = []
    for name, data in refusals(mesh.port):
        envoy, proxy = exchange(mesh.envoy, data), exchange(mesh.proxy, data, closes=True)
        if not same(envoy, proxy) or (envoy.status != 200 and envoy.body != proxy.body):
            mismatches.append((name, envoy.status, envoy.body[:60], proxy.status, proxy.body[:60]))
        elif envoy.status != 200:
            assert envoy.header("connection") == "close", (name, envoy.raw[:300])
            assert proxy.header("connection") == "close", (name, proxy.raw)
            assert proxy.closed, (name, proxy.raw)
    assert not mismatches, "\n".join(map(repr, mismatches))


def test_h2_preface_is_refused(mesh: Sidecars) -> None:
    """``PRI * HTTP/2.0`` on the proxy's HTTP/1 listener (``--codec http1``, as this mesh's
    proxy runs): 400 and close, which is Envoy's answer on a listener whose codec is HTTP1
    (checked by hand: the sidecar's AUTO codec would speak HTTP/2 instead, as the reference
    proxy does by default: tests/dataplane/test_proxy_grpc.py)."""
    for data in (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\n"):
        reply = exchange(mesh.proxy, data, closes=True)
        assert (reply.status, reply.body, reply.closed) == (400, b"Bad Request", True)


def test_expect_100_continue_as_envoy(mesh: Sidecars) -> None:
    """``100 Continue`` comes before the body is sent (the client waits for it), then the
    request goes through with its body, without the Expect header (answered already)."""
    head = request("POST", "/api/upload", [("host", "guarded"), ("expect", "100-continue"),
                                           ("content-length", "5")])  # fmt: skip
    for address in (mesh.envoy, mesh.proxy):
        with RawConnection(address, timeout=3) as c:
            c.send(head)
            interim = c.response(final=False)
            assert interim.status == 100, (address, interim.raw)
            c.send(b"hello")
            reply = c.response()
            assert reply.status == 200, (address, reply.raw)
            assert reply.seen() == {"method": "POST", "target": "/api/upload", "host": "guarded",
                                    "body": 5, "expect": None}  # fmt: skip


def test_connect_to_a_denied_host_as_envoy(mesh: Sidecars) -> None:
    """CONNECT to a host an inbound DENY rule names: Envoy's RBAC filter answers 403 before the
    route misses (404 for an allowed one); the proxy answers the same, and closes."""
    blocked, guarded = f"blocked.example:{mesh.port}", f"guarded:{mesh.port}"
    cases = {
        "denied": request("CONNECT", blocked, [("host", blocked)]),
        "allowed": request("CONNECT", guarded, [("host", guarded)]),
    }
    got = {}
    for name, data in cases.items():
        envoy, proxy = exchange(mesh.envoy, data), exchange(mesh.proxy, data, closes=True)
        got[name] = (envoy.status, proxy.status, envoy.body == proxy.body, proxy.closed)
    assert got == {"denied": (403, 403, True, True), "allowed": (404, 404, True, True)}, got
