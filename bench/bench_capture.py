"""Capture mode's cost (issue 15): the captured path against the loopback layout in the same
run, connection setup through 15001, and pod start to ready.

One PodNetwork, one ``meshcore serve`` (in an ``istiod`` pod), STRICT mTLS, two client/server
pairs of pods: one pair in Istio's capture layout (``meshcore agent --capture``: iptables
REDIRECT to 15001/15006, the client calls ``http://reviews:9080/`` by name, the VIP), one in the
loopback layout (no rules, the client calls its sidecar at 127.0.0.1:9080 with the Host header).
Both paths have the same hops (client app -> Envoy -> mTLS -> Envoy -> server app); the
difference is the kernel's REDIRECT, Envoy's original-destination hand-off and filter chain
match. Each request opens a new connection (so the rate is the connection setup rate through
15001); the two layouts alternate in rounds. Pod start: a fresh pod's ``meshcore agent
--capture`` from its start (rules, certificate, Envoy as 1337, config) to ``/healthz/ready``.

Needs root and network namespaces. ``make bench`` measures 4 x 300 requests a layout and 5
starts; ``make test`` runs it once, small and unmeasured.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from meshcore.capture.podmesh import PodMesh, PodWorkload, obj, pod_mesh, usable_envoy
from meshcore.capture.pods import Pod, available
from meshcore.dataplane.agent import find_envoy

UNAVAILABLE = available()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no namespaces: {UNAVAILABLE}")

# The servers' app (on 127.0.0.2, the loopback server's app address; on 0.0.0.0 behind
# capture), answering every GET; HTTP/1.1 kept alive, as Envoy's pool uses it.
SERVER = r"""
import http.server, socket, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""

# N sequential requests, a new connection each; prints the milliseconds of each as JSON.
CLIENT = r"""
import http.client, json, sys, time
host, port, header, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
out = []
for _ in range(n):
    start = time.perf_counter()
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("GET", "/", headers={"Host": header, "Connection": "close"})
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 200, r.status
    out.append(1000 * (time.perf_counter() - start))
print(json.dumps(out))
"""


def _run(pod: Pod, host: str, header: str, n: int) -> list[float]:
    out = pod.run([sys.executable, "-c", CLIENT, host, "9080", header, str(n)],
                  capture_output=True, text=True, timeout=60 + n)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    ms: list[float] = json.loads(out.stdout)
    return ms


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _measure(mesh: PodMesh, rounds: int, n: int, starts: int) -> dict[str, Any]:
    cap, lb = mesh.workloads["cap-client"].the_pod(), mesh.workloads["lb-client"].the_pod()
    _run(cap, "reviews", "reviews", 5)  # warm both paths (connections to the CA, clusters)
    _run(lb, "127.0.0.1", "reviewslb", 5)
    times: dict[str, list[float]] = {"capture": [], "loopback": []}
    elapsed = {"capture": 0.0, "loopback": 0.0}
    for _ in range(rounds):
        for layout, pod, host, header in (("capture", cap, "reviews", "reviews"),
                                          ("loopback", lb, "127.0.0.1", "reviewslb")):  # fmt: skip
            ms = _run(pod, host, header, n)
            times[layout] += ms
            elapsed[layout] += sum(ms) / 1000
    ready: list[float] = []
    for i in range(starts):
        pod = mesh.net.add_pod(f"start{i}")
        w = PodWorkload(f"start{i}", "capclient", "capclient", {}, pod=pod,
                        workdir=mesh.root / f"start{i}")  # fmt: skip
        w.the_pod()
        w.dir().mkdir()
        begun = time.monotonic()
        mesh.start_agent(w)
        mesh.wait_ready(w)
        ready.append(time.monotonic() - begun)
    return {
        layout: {"p50_ms": _pct(ms, 0.5), "p99_ms": _pct(ms, 0.99), "requests": len(ms),
                 "connections_per_s": len(ms) / elapsed[layout]}
        for layout, ms in times.items()
    } | {"start_to_ready_s": {"median": statistics.median(ready), "max": max(ready),
                              "runs": len(ready)}}  # fmt: skip


def test_capture_vs_loopback(benchmark: Any) -> None:
    quick = benchmark.disabled
    rounds, n, starts = (1, 20, 1) if quick else (4, 300, 5)
    workloads = [
        PodWorkload("cap-client", "capclient", "capclient", {}),
        PodWorkload(
            "cap-server",
            "reviews",
            "reviews",
            {},
            command=[sys.executable, "-c", SERVER, "0.0.0.0", "9080"],
        ),
        PodWorkload("lb-client", "lbclient", "lbclient", {}, capture=False),
        # Its outbound listeners take 127.0.0.1:9080: the app listens on 127.0.0.2.
        PodWorkload(
            "lb-server",
            "reviewslb",
            "reviews",
            {},
            capture=False,
            metadata={"MESHCORE_APP_ADDRESS": "127.0.0.2"},
        ),
    ]
    config = [obj("Service", name, {"selector": {"app": name},
                  "ports": [{"name": "http", "port": 9080}]})
              for name in ("reviews", "reviewslb")]  # fmt: skip
    config.append(obj("PeerAuthentication", "default", {"mtls": {"mode": "STRICT"}},
                      "istio-system"))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mc-bench-envoy-") as tmp:
        envoy = usable_envoy(Path(tmp), find_envoy())
        with pod_mesh(workloads, config, envoy) as mesh:
            lb = mesh.workloads["lb-server"].the_pod()
            lb.popen([sys.executable, "-c", SERVER, "127.0.0.2", "9080"])
            time.sleep(0.3)
            result: dict[str, Any] = benchmark.pedantic(
                _measure, args=(mesh, rounds, n, starts), rounds=1, iterations=1
            )
    benchmark.extra_info.update(result)
    c, lo, s = result["capture"], result["loopback"], result["start_to_ready_s"]
    print(f"\n| layout | p50 | p99 | connections/s | requests |\n| --- | ---: | ---: | ---: | ---: |"
          f"\n| capture (15001/15006) | {c['p50_ms']:.2f} ms | {c['p99_ms']:.2f} ms |"
          f" {c['connections_per_s']:.0f} | {c['requests']} |"
          f"\n| loopback | {lo['p50_ms']:.2f} ms | {lo['p99_ms']:.2f} ms |"
          f" {lo['connections_per_s']:.0f} | {lo['requests']} |"
          f"\n| added by capture | {c['p50_ms'] - lo['p50_ms']:+.2f} ms |"
          f" {c['p99_ms'] - lo['p99_ms']:+.2f} ms | | |"
          f"\npod start to ready (agent --capture): median {s['median']:.2f} s,"
          f" max {s['max']:.2f} s over {s['runs']}")  # fmt: skip
