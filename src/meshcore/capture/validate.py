"""Istio's ``--run-validation``: prove that the rules in this namespace capture traffic.

As Istio's validator does: listen on 127.0.0.1 at the outbound and inbound capture ports,
connect as the proxy's UID/GID to 127.0.0.6:PROBE_PORT (nothing listens there), and pass only
when a listener accepts that connection and reads PROBE_PORT as its original destination
(SO_ORIGINAL_DST). The proxy's calls to its own pod over lo go to Envoy's inbound side, so this
exercises the rules Envoy's traffic meets, without any network beyond lo.
"""

from __future__ import annotations

import contextlib
import encodings.idna  # noqa: F401 - the probe connects after dropping to the proxy UID
import grp
import os
import pwd
import select
import signal
import socket
import struct
import time

from meshcore.capture.apply import CaptureError
from meshcore.capture.config import CaptureConfig, split

SO_ORIGINAL_DST = 80
PROBE_ADDRESS = "127.0.0.6"
DEFAULT_PROBE_PORT = 15002
EXIT_VALIDATION_FAILED = 126  # Istio's ValidationErrorCode


def _ident(value: str, *, group: bool) -> int:
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid if group else pwd.getpwnam(value).pw_uid
    except KeyError as exc:
        raise CaptureError(f"no such {'group' if group else 'user'}: {value}") from exc


def original_port(conn: socket.socket) -> int:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port: int = struct.unpack("!H", raw[2:4])[0]
    return port


def _probe(uid: int, gid: int, port: int, timeout: float) -> None:
    """In the forked child: become the proxy and connect; never returns."""
    code = 1
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        with socket.socket() as c:
            c.settimeout(timeout)
            c.bind(("127.0.0.1", 0))
            c.connect((PROBE_ADDRESS, port))
            c.recv(16)
        code = 0
    except BaseException:
        pass
    finally:
        os._exit(code)


def run_validation(
    cfg: CaptureConfig, *, probe_port: int = DEFAULT_PROBE_PORT, timeout: float = 5.0
) -> None:
    """Raise CaptureError unless a probe connection is captured; needs root (to switch UID)."""
    uid = _ident(split(cfg.proxy_uid)[0], group=False)
    gid = _ident(split(cfg.gid)[0], group=True)
    listeners: list[socket.socket] = []
    for port in (cfg.proxy_port, cfg.inbound_capture_port):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError:  # Envoy may hold it already; the other port can still prove it
            s.close()
            continue
        s.listen(4)
        listeners.append(s)
    if not listeners:
        raise CaptureError(f"validation: cannot listen on {cfg.proxy_port} nor {cfg.inbound_capture_port}")  # fmt: skip
    pid = os.fork()
    if pid == 0:
        _probe(uid, gid, probe_port, timeout)
    try:
        _await_probe(listeners, pid, probe_port, timeout)
    finally:
        for s in listeners:
            s.close()
        _reap(pid)


def _reap(pid: int) -> None:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped already: its pid may belong to someone else now
        return
    if done != pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _await_probe(listeners: list[socket.socket], pid: int, probe_port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    child_done = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select(listeners, [], [], 0.1)
        for s in ready:
            conn, _ = s.accept()
            with conn:
                port = original_port(conn)
                conn.sendall(str(port).encode())
            if port == probe_port:
                return
        if child_done:
            break
        # A probe that was not captured is refused at once (nothing listens on the probe
        # port): one more look at the listeners, then fail without waiting out the timeout.
        done, _ = os.waitpid(pid, os.WNOHANG)
        child_done = done == pid
    raise CaptureError(
        f"validation failed: a connection to {PROBE_ADDRESS}:{probe_port} as the proxy's "
        "UID was not captured; this network namespace does not have working capture rules"
    )
