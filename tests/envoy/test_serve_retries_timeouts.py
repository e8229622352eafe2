"""End to end through ``meshcore serve`` (the real CLI, with its CA) and real Envoy sidecars run
by ``meshcore agent`` (certificates over SDS, mTLS STRICT, the default), state of the world and
delta: VirtualService retries are observed (a backend failing the first attempts; the
request succeeds and Envoy's upstream_rq_retry rises), timeouts are observed (a slow backend
gives 504 after the route timeout), and restarting the control plane drops no traffic (the
sidecars keep their config, reconnect, and follow a change made while it was down)."""

from __future__ import annotations

import http.server
import re
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.envoy._sidecar import free_ports, http_get, running_agent, serve_process, wait_for

pytestmark = pytest.mark.envoy

MESH = """
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

# Istio: retry settings need attempts > 0, so "no retries" is {attempts: 0} alone.
RETRY_3 = "{attempts: 3, perTryTimeout: 2s, retryOn: 5xx}"
ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky}}
spec:
  hosts: [flaky]
  http:
  - route: [{{destination: {{host: flaky}}}}]
    retries: {retries}
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


def _node(name: str, address: str) -> str:
    return f"sidecar~{address}~{name}.default~default.svc.cluster.local"


def _stat(admin: int, name: str) -> int:
    query = urllib.parse.urlencode({"filter": f"^{re.escape(name)}$"})
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?{query}", timeout=5) as r:
        lines = r.read().decode().splitlines()
    found = [int(line.rsplit(": ", 1)[1]) for line in lines if line.startswith(f"{name}: ")]
    assert len(found) == 1, lines
    return found[0]


def _spiffe(sa: str) -> str:
    return f"spiffe://cluster.local/ns/default/sa/{sa}"


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_retries_timeouts_and_control_plane_restart(tmp_path: Path, delta: bool) -> None:
    flaky_port, slow_port, xds, metrics, ca, ca_mtls = free_ports(6)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(flaky=flaky_port, slow=slow_port))
    (config / "routes.yaml").write_text(ROUTES.format(retries=RETRY_3, timeout="0.5s"))
    ports = {"xds": xds, "metrics": metrics, "ca": ca, "ca_mtls": ca_mtls}
    tokens = {sa: f"{sa}-token-0123456789abcdef" for sa in ("web", "flaky", "slow")}
    (tmp_path / "tokens").write_text("".join(f"{t} {_spiffe(sa)}\n" for sa, t in tokens.items()))
    flaky = type("Flaky", (_Flaky,), {"attempts": {}, "lock": threading.Lock()})
    with (
        ExitStack() as stack,
        _backend("127.0.71.2", flaky_port, flaky),
        _backend("127.0.72.2", slow_port, _Slow),
    ):
        cp = stack.enter_context(serve_process(tmp_path, config, ports))
        common: dict[str, Any] = {
            "xds": ports["xds"], "ca": ports["ca"], "ca_mtls": ports["ca_mtls"],
            "ca_root": tmp_path / "state" / "root-cert.pem", "delta": delta,
        }  # fmt: skip
        for name, sa, ip in (("flaky-1", "flaky", "71"), ("slow-1", "slow", "72")):
            stack.enter_context(running_agent(
                tmp_path, name, node_id=_node(name, f"127.0.{ip}.1"), identity=_spiffe(sa),
                token=tokens[sa], metadata={"MESHCORE_APP_ADDRESS": f"127.0.{ip}.2",
                                            "MESHCORE_OUTBOUND_ADDRESS": f"127.0.{ip}.3"},
                **common,
            ))  # fmt: skip
        web_admin = stack.enter_context(running_agent(
            tmp_path, "web-1", node_id=_node("web-1", "127.0.70.1"), identity=_spiffe("web"),
            token=tokens["web"], metadata={"MESHCORE_OUTBOUND_ADDRESS": "127.0.70.3"}, **common,
        ))  # fmt: skip
        flaky_url = f"http://127.0.70.3:{flaky_port}"
        slow_url = f"http://127.0.70.3:{slow_port}"
        retry_stat = (
            f"cluster.outbound|{flaky_port}||flaky.default.svc.cluster.local.upstream_rq_retry"
        )
        wait_for(
            lambda: http_get(f"{flaky_url}/warmup", "flaky")[0] == 200,
            "the flaky route",
            timeout=60,
        )
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
        (config / "routes.yaml").write_text(ROUTES.format(retries="{attempts: 0}", timeout="0.5s"))
        for i in range(20):
            assert http_get(f"{flaky_url}/down{i}", "flaky") == (200, "flaky ok")
            time.sleep(0.05)
        with serve_process(tmp_path, config, ports):
            # The first attempt fails and is no longer retried.
            wait_for(
                lambda: http_get(f"{flaky_url}/after{time.monotonic()}", "flaky")[0] == 503,
                "the change made while the control plane was down",
                timeout=60,
            )
            assert http_get(f"{slow_url}/c", "slow")[0] == 504
