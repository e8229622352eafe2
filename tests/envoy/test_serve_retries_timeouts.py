"""End to end through ``meshcore serve`` (the real CLI) and real Envoy sidecars, state of the
world and delta: VirtualService retries are observed (a backend failing the first attempts; the
request succeeds and Envoy's upstream_rq_retry rises), timeouts are observed (a slow backend
gives 504 after the route timeout), and restarting the control plane drops no traffic (the
sidecars keep their config, reconnect, and follow a change made while it was down)."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.envoy._sidecar import free_port, http_get, running_envoy

from meshcore.dataplane.bootstrap import ads_bootstrap

pytestmark = pytest.mark.envoy

MESH = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: DISABLE}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-1}}
spec: {{address: 127.0.70.1, labels: {{app: web}}, serviceAccount: web}}
---
apiVersion: v1
kind: Service
metadata: {{name: flaky}}
spec:
  selector: {{app: flaky}}
  ports: [{{name: http, port: {flaky}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: flaky-1}}
spec: {{address: 127.0.71.1, labels: {{app: flaky}}, serviceAccount: flaky}}
---
apiVersion: v1
kind: Service
metadata: {{name: slow}}
spec:
  selector: {{app: slow}}
  ports: [{{name: http, port: {slow}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: slow-1}}
spec: {{address: 127.0.72.1, labels: {{app: slow}}, serviceAccount: slow}}
"""

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky}}
spec:
  hosts: [flaky]
  http:
  - route: [{{destination: {{host: flaky}}}}]
    retries: {{attempts: {attempts}, perTryTimeout: 2s, retryOn: 5xx}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: slow}}
spec:
  hosts: [slow]
  http:
  - route: [{{destination: {{host: slow}}}}]
    timeout: {timeout}
"""


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` attempts at each path, then 200."""

    failures = 2
    attempts: dict[str, int]
    lock: threading.Lock

    def do_GET(self) -> None:
        with self.lock:
            n = self.attempts[self.path] = self.attempts.get(self.path, 0) + 1
        code, body = (503, b"try again") if n <= self.failures else (200, b"flaky ok")
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Slow(http.server.BaseHTTPRequestHandler):
    delay = 3.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        body = b"slow ok"
        try:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the caller gave up (the timeout under test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def _backend(address: str, port: int, handler: type[Any]) -> Iterator[Any]:
    server = http.server.ThreadingHTTPServer((address, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _serve(config: Path, xds: int, metrics: int) -> Iterator[subprocess.Popen[str]]:
    cp = subprocess.Popen(
        [sys.executable, "-m", "meshcore.cli", "serve", "--config", str(config),
         "--xds-port", str(xds), "--metrics-port", str(metrics)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert cp.stdout is not None
        lines = [cp.stdout.readline() for _ in range(2)]
        assert "ADS" in lines[1], lines
        yield cp
    finally:
        cp.terminate()
        try:
            cp.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cp.kill()
            cp.wait()
        if cp.stdout is not None:
            cp.stdout.close()


def _node(name: str, address: str) -> str:
    return f"sidecar~{address}~{name}.default~default.svc.cluster.local"


def _stat(admin: int, name: str) -> int:
    query = urllib.parse.urlencode({"filter": f"^{re.escape(name)}$"})
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?{query}", timeout=5) as r:
        lines = r.read().decode().splitlines()
    found = [int(line.rsplit(": ", 1)[1]) for line in lines if line.startswith(f"{name}: ")]
    assert len(found) == 1, lines
    return found[0]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_retries_timeouts_and_control_plane_restart(tmp_path: Path, delta: bool) -> None:
    flaky_port, slow_port = free_port(), free_port()
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(flaky=flaky_port, slow=slow_port))
    (config / "routes.yaml").write_text(ROUTES.format(attempts=3, timeout="0.5s"))
    xds, metrics = free_port(), free_port()
    flaky = type("Flaky", (_Flaky,), {"attempts": {}, "lock": threading.Lock()})

    def sidecar(name: str, address: str, app: str, outbound: str) -> dict[str, Any]:
        meta = {"MESHCORE_APP_ADDRESS": app, "MESHCORE_OUTBOUND_ADDRESS": outbound}
        return ads_bootstrap(_node(name, address), "127.0.0.1", xds, admin_port=free_port(),
                             metadata=meta, delta=delta)  # fmt: skip

    web = sidecar("web-1", "127.0.70.1", "127.0.70.2", "127.0.70.3")
    with (
        ExitStack() as first_plane,
        _backend("127.0.71.2", flaky_port, flaky),
        _backend("127.0.72.2", slow_port, _Slow),
    ):
        cp = first_plane.enter_context(_serve(config, xds, metrics))
        _run(tmp_path, config, xds, metrics, flaky_port, slow_port, flaky, sidecar, web, cp)


def _run(tmp_path: Path, config: Path, xds: int, metrics: int, flaky_port: int, slow_port: int,
         flaky: Any, sidecar: Any, web: dict[str, Any], cp: subprocess.Popen[str]) -> None:  # fmt: skip
    with ExitStack() as sidecars:
        for name, args in (("flaky", ("flaky-1", "127.0.71.1", "127.0.71.2", "127.0.71.3")),
                           ("slow", ("slow-1", "127.0.72.1", "127.0.72.2", "127.0.72.3"))):  # fmt: skip
            sidecars.enter_context(running_envoy(sidecar(*args), tmp_path, name))
        web_admin = sidecars.enter_context(running_envoy(web, tmp_path, "web"))
        flaky_url = f"http://127.0.70.3:{flaky_port}"
        slow_url = f"http://127.0.70.3:{slow_port}"
        retry_stat = (
            f"cluster.outbound|{flaky_port}||flaky.default.svc.cluster.local.upstream_rq_retry"
        )
        _wait(lambda: http_get(f"{flaky_url}/warmup", "flaky")[0] == 200)
        # Retries: two 503s, then 200; the client sees only the success.
        before = _stat(web_admin, retry_stat)
        assert http_get(f"{flaky_url}/a", "flaky") == (200, "flaky ok")
        assert flaky.attempts["/a"] == 3
        assert _stat(web_admin, retry_stat) - before == 2
        # Timeouts: the slow backend answers after 3 s; the route gives up at 0.5 s with 504.
        started = time.monotonic()
        code, _ = http_get(f"{slow_url}/b", "slow")
        elapsed = time.monotonic() - started
        assert code == 504
        assert 0.4 <= elapsed < 2.0, elapsed
        # The control plane stops: no request fails meanwhile, and a change made while it is
        # down (no retries now) reaches the sidecars once it is back.
        cp.terminate()
        cp.wait(timeout=10)
        (config / "routes.yaml").write_text(ROUTES.format(attempts=0, timeout="0.5s"))
        for i in range(20):
            assert http_get(f"{flaky_url}/down{i}", "flaky") == (200, "flaky ok")
            time.sleep(0.05)
        with _serve(config, xds, metrics):
            # The first attempt fails and is no longer retried.
            _wait(lambda: http_get(f"{flaky_url}/after{time.monotonic()}", "flaky")[0] == 503)
            assert http_get(f"{slow_url}/c", "slow")[0] == 504


def _wait(ok: Any, timeout: float = 60.0) -> float:
    """Polls ``ok`` until it holds; returns the seconds it took."""
    started = time.monotonic()
    while not ok():
        if time.monotonic() - started > timeout:
            raise AssertionError("not reached in time")
        time.sleep(0.1)
    return time.monotonic() - started
