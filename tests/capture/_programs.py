"""Tiny programs run inside pod namespaces (``python -c``): a listener that reports the
original destination of each connection it accepts, and a one-shot client."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from meshcore.capture.pods import Pod

# Accepts up to MAX connections (or stops after 20 s idle); answers each with
# "NAME ADDR:PORT", the connection's original destination read with SO_ORIGINAL_DST (80)
# when NAME is a capture port's listener, else its own local address.
LISTENER = r"""
import socket, struct, sys
name, host, port, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
s.settimeout(20)
print("ready", flush=True)
for _ in range(limit):
    try:
        c, _ = s.accept()
    except socket.timeout:
        break
    with c:
        if name in ("outbound", "inbound"):
            raw = c.getsockopt(socket.SOL_IP, 80, 16)
            dport, = struct.unpack("!H", raw[2:4])
            dst = "%s:%d" % (socket.inet_ntoa(raw[4:8]), dport)
        else:
            dst = "%s:%d" % c.getsockname()[:2]
        c.sendall(("%s %s\n" % (name, dst)).encode())
"""

# Connects (as UID/GID 1337 when told), prints the first line it gets or the error.
CLIENT = r"""
import encodings.idna, os, socket, sys  # idna: importable no more once UID 1337
host, port, uid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
try:
    with socket.create_connection((host, port), timeout=5) as c:
        c.settimeout(5)
        print(c.makefile().readline().strip())
except OSError as e:
    print("error", type(e).__name__, e)
"""


def start_listener(pod: Pod, name: str, host: str, port: int, limit: int = 4) -> Any:
    proc = pod.popen(
        [sys.executable, "-c", LISTENER, name, host, str(port), str(limit)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"{name} listener in {pod.name} did not start"
    return proc


def connect(pod: Pod, host: str, port: int, uid: int = -1) -> str:
    out = pod.run(
        [sys.executable, "-c", CLIENT, host, str(port), str(uid)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return str(out.stdout).strip() or str(out.stderr).strip()
