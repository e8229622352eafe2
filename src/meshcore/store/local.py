"""A single etcd member on 127.0.0.1 for the demo (``meshcore demo --replicas N``): Debian's
``etcd`` binary with a data directory of its own, stopped with :meth:`LocalEtcd.stop`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from meshcore.store.etcd import EtcdClient, StoreUnavailable


class EtcdNotFound(RuntimeError):
    """No etcd binary on PATH."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalEtcd:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise EtcdNotFound("no etcd binary on PATH (Debian: apt-get install etcd-server)")
        self.directory = directory
        self.client_port, self.peer_port = _free_port(), _free_port()
        directory.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://127.0.0.1:{self.client_port}"
        with (directory / "etcd.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--name", "demo", "--data-dir", str(directory / "data"),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"demo={peer}", "--log-level", "warn", "--logger", "zap"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def _wait(self, timeout: float = 20.0) -> None:
        client = EtcdClient([self.endpoint], timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        "etcd exited:\n" + (self.directory / "etcd.log").read_text()[-2000:]
                    )
                try:
                    client.get("/")
                    return
                except StoreUnavailable:
                    if time.monotonic() > deadline:
                        raise RuntimeError("etcd did not start in time") from None
                    time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
