"""Pods as network namespaces, for tests and the demo (issue 15's "Pods").

``PodNetwork`` makes one network namespace per workload, each with a veth pair whose other
end sits on a bridge inside a namespace of its own: nothing touches the host's interfaces
or its routes. Pod IPs come from 198.18.0.0/16, service virtual IPs (Istio's ClusterIPs)
from 198.19.0.0/16 (both RFC 2544 benchmarking ranges, never routed on a real network);
``/etc/netns/POD/hosts`` names every pod and service, and ``ip netns exec`` shows it as the
pod's /etc/hosts. Everything (processes, namespaces, hosts files) goes at ``close()``, which
the context manager and an atexit hook both call, so a failing test leaves nothing behind.

Needs root, iproute2 and a kernel with network namespaces; ``available()`` says why not.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from meshcore.capture.apply import CaptureError
from meshcore.xds.vips import SERVICE_CIDR

POD_CIDR = ipaddress.ip_network("198.18.0.0/16")
NETNS_ETC = Path("/etc/netns")


def available() -> str | None:
    """None when pods can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for binary in ("ip", "iptables", "iptables-restore", "iptables-save"):
        if shutil.which(binary) is None:
            return f"{binary} not found (Debian: apt-get install iproute2 iptables)"
    # Root is not always enough (a container without CAP_SYS_ADMIN): try one.
    probe = f"mcprobe{os.getpid() % 100000}x{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30, check=False)
    return None


def ip(*args: str) -> str:
    """Run ``ip ARGS``; a failure is a CaptureError with ip's own message."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise CaptureError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


# `ip netns exec` needs root, so the switch to the workload's user happens inside: this
# drops to UID/GID argv[1] and becomes argv[2:].
_AS_USER = (
    "import os, sys; u = int(sys.argv[1]); os.setgroups([]); os.setgid(u); os.setuid(u); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


def netns_exec(netns: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs argv inside the namespace (with its /etc/netns files)."""
    return ["ip", "netns", "exec", netns, *argv]


@dataclass(slots=True)
class Pod:
    """One workload's network namespace."""

    name: str
    netns: str
    ip: str
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def command(self, argv: Sequence[str], *, uid: int | None = None) -> list[str]:
        """The command line running argv in the pod; as ``uid`` (and the same GID, no
        supplementary groups) when given, e.g. Envoy as Istio's 1337."""
        if uid is not None:
            argv = [sys.executable, "-c", _AS_USER, str(uid), *argv]
        return netns_exec(self.netns, argv)

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run to completion inside the pod (subprocess.run keywords; a timeout is required
        so that no test waits forever)."""
        kw.setdefault("timeout", 30)
        return subprocess.run(self.command(argv), check=False, **kw)

    def popen(
        self, argv: Sequence[str], *, uid: int | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start inside the pod (as ``uid`` when given); stopped at the network's close()
        if still running."""
        proc = subprocess.Popen(self.command(argv, uid=uid), start_new_session=True, **kw)
        self._procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self._procs.clear()


class PodNetwork:
    """Pods on one private bridge; use as a context manager."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"mc{os.getpid() % 100000}x{secrets.token_hex(2)}"
        self.bridge_netns = f"{self.prefix}-br"
        self.pods: dict[str, Pod] = {}
        self.services: dict[str, str] = {}
        self._aliases: dict[str, tuple[str, ...]] = {}
        self._namespaces: list[str] = []
        self._open = False

    def __enter__(self) -> PodNetwork:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        reason = available()
        if reason:
            raise CaptureError(f"cannot create pods: {reason}")
        atexit.register(self.close)
        self._open = True
        self._add_netns(self.bridge_netns)
        ip("-n", self.bridge_netns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_netns, "link", "set", "br0", "up")

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def add_pod(self, name: str) -> Pod:
        """A namespace with eth0 on the bridge, the next pod IP, and a route to the service
        range through eth0 (so that a connect to a VIP leaves the app and can be captured)."""
        if not self._open:
            raise CaptureError("PodNetwork is not open")
        if name in self.pods or name in self.services or not name.replace("-", "").isalnum():
            raise CaptureError(f"bad or duplicate pod name {name!r}")
        index = len(self.pods) + 2  # .0.1 is left for a gateway that does not exist
        address = str(POD_CIDR.network_address + index)
        netns = f"{self.prefix}-{name}"
        self._add_netns(netns)
        port = f"p{index}"
        ip("-n", self.bridge_netns, "link", "add", port, "type", "veth",
           "peer", "name", "eth0", "netns", netns)  # fmt: skip
        ip("-n", self.bridge_netns, "link", "set", port, "master", "br0", "up")
        ip("-n", netns, "addr", "add", f"{address}/{POD_CIDR.prefixlen}", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "route", "add", str(SERVICE_CIDR), "dev", "eth0")
        pod = Pod(name, netns, address)
        self.pods[name] = pod
        self._write_hosts()
        return pod

    def add_service(self, name: str, vip: str | None = None, aliases: Sequence[str] = ()) -> str:
        """A service name with a virtual IP (nothing listens there: capture does): ``vip``
        (the translator's, :func:`meshcore.xds.vips.service_vips`), else the next one of
        198.19.0.10-255; ``aliases`` are more names for it (``reviews.default.svc...``)."""
        if name in self.pods or name in self.services or not name.replace("-", "").isalnum():
            raise CaptureError(f"bad or duplicate service name {name!r}")
        if vip is None:
            vip = str(SERVICE_CIDR.network_address + len(self.services) + 10)
        elif ipaddress.ip_address(vip) not in SERVICE_CIDR:
            raise CaptureError(f"service {name}: VIP {vip} is outside {SERVICE_CIDR}")
        self.services[name] = vip
        self._aliases[name] = tuple(aliases)
        self._write_hosts()
        return vip

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost"]
        lines += [f"{p.ip}\t{p.name}" for p in self.pods.values()]
        lines += [
            "\t".join((vip, name, *self._aliases.get(name, ())))
            for name, vip in self.services.items()
        ]
        text = "".join(line + "\n" for line in lines)
        for pod in self.pods.values():
            directory = NETNS_ETC / pod.netns
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "hosts").write_text(text)

    def close(self) -> None:
        """Stop every process started in a pod, delete the namespaces and hosts files.
        Safe to call twice; keeps going past a failure so that nothing is left."""
        if not self._open:
            return
        self._open = False
        atexit.unregister(self.close)
        for pod in self.pods.values():
            pod.stop()
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30,
                           check=False)  # fmt: skip
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        self._namespaces.clear()
