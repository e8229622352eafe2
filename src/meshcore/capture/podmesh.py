"""A mesh of pods in capture mode (``meshcore demo --capture`` and the capture end-to-end
tests): ``meshcore serve`` in an ``istiod`` pod, ``meshcore agent --capture`` with real Envoy
(UID 1337) in each workload pod holding its app until Envoy is ready, and apps that call the
next service by its plain name (``http://ratings:9080/``), unaware of the mesh.

The WorkloadEntries are written from the pods (their addresses are the pod IPs); the Services
get the translator's VIPs (:func:`meshcore.xds.vips.service_vips`) in every pod's hosts file.
Needs root and network namespaces (:func:`meshcore.capture.pods.available`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshcore.capture.pods import Pod, PodNetwork
from meshcore.capture.sidecar import capture_counts
from meshcore.config import load
from meshcore.demo.apps import PROPAGATED
from meshcore.xds.vips import service_vips

__all__ = ["PodMesh", "PodWorkload", "obj", "pod_mesh", "spiffe", "usable_envoy"]

ISTIOD_PORTS = {"xds": 15010, "ca": 15012, "ca_mtls": 15013, "zipkin": 9411}
STATUS_PORT = 15021
ADMIN_PORT = 15000

# The app: answers GET with its name and version, the path, and the x-forwarded-client-cert
# Envoy added (the request came over mTLS); when told a URL, calls it for each request (the
# x-user header passed on) and includes the answer; fails a given fraction of requests with
# 503 (a flaky instance). Logs each request.
APP = r"""
import http.server, json, random, socket, sys, urllib.request, urllib.error
name, version, port, call, flaky = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
PROPAGATED = set(sys.argv[6].split(","))
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        # headers and body are two writes: without this, Nagle holds the body for the peer's
        # delayed ACK (40 ms) on Envoy's kept-alive connection
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def do_GET(self):
        print("request", self.path, self.client_address[0], flush=True)
        if flaky and random.random() < flaky:
            return self.answer(503, {"name": name, "error": "flaky"})
        out = {"name": name, "version": version, "path": self.path,
               "xfcc": self.headers.get("x-forwarded-client-cert", "")}
        code = 200
        if call:
            # the user (header routing) and the trace context, as Istio asks of apps
            hdrs = {k: v for k, v in self.headers.items() if k.lower() in PROPAGATED}
            try:
                with urllib.request.urlopen(urllib.request.Request(call, headers=hdrs), timeout=5) as r:
                    out["next"] = json.loads(r.read())
            except urllib.error.HTTPError as e:
                code, out["next"] = 502, {"status": e.code}
            except OSError as e:
                code, out["next"] = 502, {"error": str(e)}
        self.answer(code, out)
    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
"""

# The demo's Zipkin collector (meshcore.demo.apps), serving until stopped.
COLLECTOR = (
    "import sys, time; from meshcore.demo.apps import ZipkinCollector;"
    " ZipkinCollector(sys.argv[1], int(sys.argv[2])); time.sleep(1e9)"
)

# One-shot client: GETs the URL COUNT times with headers; one JSON line per request with the
# status, the body (JSON when it is) and the milliseconds it took.
GET = r"""
import json, sys, time, urllib.request, urllib.error
url, count, headers = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
for _ in range(count):
    start = time.perf_counter()
    out = {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            out["status"], raw = r.status, r.read()
        try:
            out["body"] = json.loads(raw)
        except ValueError:
            out["body"] = raw.decode("latin-1")[:200]
    except urllib.error.HTTPError as e:
        out["status"], out["body"] = e.code, e.read().decode("latin-1")[:200]
    except OSError as e:
        out["status"], out["error"] = 0, type(e).__name__ + " " + str(e)
    out["ms"] = 1000 * (time.perf_counter() - start)
    print(json.dumps(out), flush=True)
"""

# Waits (bounded) until URL answers 200; prints the seconds it took, or "timeout".
WAIT = r"""
import sys, time, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
start = time.monotonic()
while time.monotonic() - start < limit:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                print("%.3f" % (time.monotonic() - start))
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.02)
print("timeout")
sys.exit(1)
"""


def obj(kind: str, name: str, spec: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    """An Istio or Kubernetes resource as a YAML document."""
    api = {
        "Service": "v1",
        "PeerAuthentication": "security.istio.io/v1",
        "AuthorizationPolicy": "security.istio.io/v1",
    }.get(kind, "networking.istio.io/v1")
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns},
            "spec": spec}  # fmt: skip


def spiffe(sa: str, ns: str = "default") -> str:
    return f"spiffe://cluster.local/ns/{ns}/sa/{sa}"


@dataclass
class PodWorkload:
    """A workload: its pod (named ``name``), app label, service account, labels, app port,
    the URL its app calls for each request (by plain name), and how flaky the app is."""

    name: str
    app: str
    sa: str
    labels: dict[str, str]
    port: int = 9080
    calls: str = ""
    flaky: float = 0.0
    # False: the loopback layout in the pod (no rules, no held app; for comparisons)
    capture: bool = True
    metadata: dict[str, str] = field(default_factory=dict)  # node metadata (agent --metadata)
    command: list[str] | None = None  # the app instead of the standard one
    pod: Pod | None = None
    agent: subprocess.Popen[Any] | None = None
    workdir: Path | None = None

    def the_pod(self) -> Pod:
        if self.pod is None:
            raise RuntimeError(f"{self.name} has no pod yet")
        return self.pod

    def dir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError(f"{self.name} has no work directory yet")
        return self.workdir


@dataclass
class PodMesh:
    """The network, the control plane's pod and config directory, and the workloads."""

    net: PodNetwork
    config: Path
    root: Path
    istiod: Pod
    workloads: dict[str, PodWorkload] = field(default_factory=dict)
    envoy: str = ""

    def write(self, name: str, objects: Sequence[dict[str, Any]]) -> None:
        """Writes (or replaces, atomically) one config file the control plane watches."""
        path = self.config / f"{name}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump_all(list(objects)))
        tmp.replace(path)

    def get(self, pod: Pod, url: str, count: int = 1, **headers: str) -> list[dict[str, Any]]:
        """``count`` GETs of ``url`` from inside ``pod`` (one process; bounded)."""
        out = pod.run([sys.executable, "-c", GET, url, str(count), json.dumps(headers)],
                      capture_output=True, text=True, timeout=30 + 6 * count)  # fmt: skip
        return [json.loads(line) for line in str(out.stdout).splitlines() if line.strip()]

    def wait_ready(self, w: PodWorkload, limit: float = 60) -> float:
        """Seconds until the agent's /healthz/ready answers 200; RuntimeError after ``limit``."""
        url = f"http://127.0.0.1:{STATUS_PORT}/healthz/ready"
        out = w.the_pod().run([sys.executable, "-c", WAIT, url, str(limit)],
                              capture_output=True, text=True, timeout=limit + 15)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"{w.name} not ready in {limit:g}s: {self.agent_log(w)}")
        return float(str(out.stdout).strip())

    def agent_log(self, w: PodWorkload) -> str:
        parts = []
        for name in ("agent.out", "envoy.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {name}\n" + (w.dir() / name).read_text()[-3000:])
        return "\n".join(parts)

    def app_requests(self, w: PodWorkload) -> int:
        """Requests the workload's app has answered (its log)."""
        return (w.dir() / "agent.out").read_text().count("request ")

    def start_agent(self, w: PodWorkload, *, app: bool = True, drain: float = 0) -> None:
        """``meshcore agent --capture`` in the workload's pod, its app held until ready."""
        ip = self.istiod.ip
        tokens = self.root / "tokens.d"
        tokens.mkdir(exist_ok=True)
        (tokens / w.sa).write_text(_token(w.sa) + "\n")
        args = [sys.executable, "-m", "meshcore.cli", "agent",
                "--node-id", f"sidecar~{w.the_pod().ip}~{w.name}.default~default.svc.cluster.local",
                "--identity", spiffe(w.sa), "--xds-address", f"{ip}:{ISTIOD_PORTS['xds']}",
                "--ca-address", f"{ip}:{ISTIOD_PORTS['ca']}",
                "--ca-mtls-address", f"{ip}:{ISTIOD_PORTS['ca_mtls']}",
                "--root-cert", str(self.root / "state" / "root-cert.pem"),
                # serve's certificate on 0.0.0.0 names localhost (Istio: ISTIOD_SAN)
                "--ca-server-name", "localhost",
                "--token-file", str(tokens / w.sa),
                "--workdir", str(w.dir()), "--status-port", str(STATUS_PORT),
                "--admin-port", str(ADMIN_PORT), "--envoy", self.envoy,
                "--drain-seconds", str(drain)]  # fmt: skip
        for key, value in w.metadata.items():
            args += ["--metadata", f"{key}={value}"]
        if w.capture:
            args.append("--capture")
        if app and w.capture and w.command is not None:
            args += ["--", *w.command]
        elif app and w.capture:
            version = w.labels.get("version", "")
            args += ["--", sys.executable, "-u", "-c", APP, w.app, version, str(w.port), w.calls,
                     str(w.flaky), ",".join(PROPAGATED)]  # fmt: skip
        with (w.dir() / "agent.out").open("a") as sink:
            w.agent = w.the_pod().popen(args, stdout=sink, stderr=subprocess.STDOUT)

    def envoy_pid(self, w: PodWorkload) -> int:
        """The pid of the Envoy the agent started first."""
        text = (w.dir() / "agent.out").read_text()
        return int(text.rsplit("Envoy (pid ", 1)[1].split(")", 1)[0])

    def stats(self, w: PodWorkload, pattern: str) -> dict[str, int]:
        """Envoy's counters matching a regex (its admin /stats?filter=)."""
        code = ("import sys, urllib.request; print(urllib.request.urlopen('http://127.0.0.1:"
                f"{ADMIN_PORT}/stats?filter=' + sys.argv[1], timeout=3).read().decode())")  # fmt: skip
        out = w.the_pod().run([sys.executable, "-c", code, pattern], capture_output=True,
                              text=True)  # fmt: skip
        found: dict[str, int] = {}
        for line in str(out.stdout).splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().isdigit():
                found[name] = int(value)
        return found

    def traces(self) -> dict[str, list[dict[str, Any]]]:
        """The spans the istiod pod's Zipkin collector received (``pod_mesh(tracing=True)``),
        by trace id."""
        url = f"http://{self.istiod.ip}:{ISTIOD_PORTS['zipkin']}/api/v2/traces"
        code = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
        out = self.istiod.run([sys.executable, "-c", code, url], capture_output=True, text=True)
        found: dict[str, list[dict[str, Any]]] = {}
        for trace in json.loads(str(out.stdout) or "[]"):
            for span in trace:
                found.setdefault(str(span.get("traceId", "")), []).append(span)
        return found

    def listener_changes(self) -> dict[str, int]:
        """Listener updates each sidecar has taken (Envoy's ``listener_modified`` and
        ``listener_in_place_updated``), by workload: :meth:`wait_drained` waits past these."""
        pattern = r"^listener_manager\.(listener_modified|listener_in_place_updated)$"
        return {name: sum(self.stats(w, pattern).values()) for name, w in self.workloads.items()}

    def wait_drained(
        self, before: dict[str, int], changed: Sequence[str] | None = None, limit: float = 15
    ) -> float:
        """Seconds until the sidecars of ``changed`` (default: every workload) have taken a
        listener update since ``before`` (:meth:`listener_changes`) and every sidecar has
        finished draining the connections of the listeners and filter chains it replaced;
        RuntimeError after ``limit``.

        A changed listener (e.g. ``virtualInbound`` when a PeerAuthentication's mode changes)
        keeps serving the connections it had for Envoy's drain time, then closes them, with
        any request still on them: the caller's sidecar answers those 503 (Istio's default
        retry policy does not retry a reset), in Istio too. So a step that measures traffic
        waits for the previous change's drain to end instead of counting its failures."""
        pattern = (r"^listener_manager\.(listener_modified|listener_in_place_updated"
                   r"|total_filter_chains_draining|total_listeners_draining)$")  # fmt: skip
        expected = set(self.workloads if changed is None else changed)
        start = time.monotonic()
        waiting: list[str] = list(self.workloads)
        while time.monotonic() - start < limit:  # bounded
            waiting = []
            for name, w in self.workloads.items():
                got = self.stats(w, pattern)
                updates = sum(v for k, v in got.items() if "draining" not in k)
                draining = sum(v for k, v in got.items() if "draining" in k)
                if draining or (name in expected and updates <= before.get(name, 0)):
                    waiting.append(name)
            if not waiting:
                return time.monotonic() - start
            time.sleep(0.1)
        raise RuntimeError(
            f"listeners of {', '.join(waiting)} not updated and drained in {limit:g}s"
        )

    def stat(self, w: PodWorkload, name: str) -> int:
        """One counter of the workload's Envoy (-1 when it has none)."""
        return self.stats(w, f"^{name}$").get(name, -1)

    def capture_counts(self, pod: Pod) -> dict[str, int]:
        """Packets per ISTIO_* chain in the pod (:func:`capture_counts`)."""
        out = pod.run(["iptables-save", "-c"], capture_output=True, text=True)
        return capture_counts(str(out.stdout))


def _token(sa: str) -> str:
    return f"{sa}-token-{'0123456789abcdef' * 2}"


@contextlib.contextmanager
def pod_mesh(
    workloads: Sequence[PodWorkload],
    config: Sequence[dict[str, Any]],
    envoy: str,
    extra_pods: Sequence[str] = (),
    mesh_config: dict[str, Any] | None = None,
    progress: Any = None,
    tracing: bool = False,
) -> Iterator[PodMesh]:
    """Pods for istiod, each workload and ``extra_pods`` (no sidecar); ``config`` (Services,
    routing, policies) with WorkloadEntries written from the pods; serve started, then the
    agents, waited for until ready (their apps held until then). ``tracing``: a Zipkin
    collector in the istiod pod, every request traced to it (MeshConfig, as Istio's
    ``meshConfig.defaultConfig.tracing``; :meth:`PodMesh.traces`). Everything goes at exit."""
    say = progress or (lambda _text: None)
    root = Path(tempfile.mkdtemp(prefix="mc-capture-"))
    root.chmod(0o755)  # Envoy runs as 1337 and reads its bootstrap below
    try:
        with PodNetwork() as net:
            say("creating the pods (network namespaces on a private bridge)")
            istiod = net.add_pod("istiod")
            for w in workloads:
                w.pod = net.add_pod(w.name)
                w.workdir = root / w.name
                w.workdir.mkdir()
            for name in extra_pods:
                net.add_pod(name)
            entries = [obj("WorkloadEntry", w.name, {"address": w.the_pod().ip,
                           "labels": {"app": w.app, **w.labels}, "serviceAccount": w.sa})
                       for w in workloads]  # fmt: skip
            cfg = root / "config"
            cfg.mkdir()
            mesh = PodMesh(net, cfg, root, istiod, {w.name: w for w in workloads}, envoy)
            mesh.write("workloads", entries)
            mesh.write("config", config)
            vips, _ = service_vips(load(cfg).services)
            for host, vip in sorted(vips.items()):
                name, ns = host.split(".")[:2]
                if ns == "default" and name not in net.pods:
                    net.add_service(name, vip, aliases=(f"{name}.{ns}", f"{name}.{ns}.svc", host))
            (root / "tokens").write_text(
                "".join(f"{_token(w.sa)} {spiffe(w.sa)}\n" for w in workloads)
            )
            args = [sys.executable, "-m", "meshcore.cli", "serve", "--config", str(cfg),
                    "--host", "0.0.0.0", "--xds-port", str(ISTIOD_PORTS["xds"]),
                    "--ca-port", str(ISTIOD_PORTS["ca"]),
                    "--ca-mtls-port", str(ISTIOD_PORTS["ca_mtls"]),
                    "--state-dir", str(root / "state"), "--tokens", str(root / "tokens"),
                    "--monitoring-port", "0"]  # fmt: skip
            if tracing:
                zipkin = f"{istiod.ip}:{ISTIOD_PORTS['zipkin']}"
                istiod.popen([sys.executable, "-c", COLLECTOR, istiod.ip,
                              str(ISTIOD_PORTS["zipkin"])], stdout=subprocess.DEVNULL)  # fmt: skip
                mesh_config = {**(mesh_config or {}), "enableTracing": True,
                               "defaultConfig": {"tracing": {"sampling": 100,
                                                             "zipkin": {"address": zipkin}}}}  # fmt: skip
            if mesh_config is not None:
                (root / "mesh.yaml").write_text(yaml.safe_dump(mesh_config))
                args += ["--mesh-config", str(root / "mesh.yaml")]
            say("starting meshcore serve in the istiod pod")
            log = root / "serve.log"
            with log.open("w") as sink:
                serve = istiod.popen(args, stdout=sink, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 30
            while "ADS" not in log.read_text():
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"meshcore serve did not start: {log.read_text()[-3000:]}")
                time.sleep(0.05)
            say("starting the sidecars (meshcore agent --capture); apps held until ready")
            for w in workloads:
                mesh.start_agent(w)
            for w in workloads:
                mesh.wait_ready(w)
            yield mesh
    finally:
        shutil.rmtree(root, ignore_errors=True)


def usable_envoy(tmp: Path, path: str) -> str:
    """``path`` when UID 1337 can run it, else a copy in ``tmp`` made 0755 (a checkout under
    /root is out of its reach)."""
    real = Path(path).resolve()
    if all(os.stat(d).st_mode & 0o001 for d in real.parents) and real.stat().st_mode & 0o005:
        return str(real)
    tmp.chmod(0o755)
    copy = tmp / "envoy"
    shutil.copy(real, copy)
    copy.chmod(0o755)
    return str(copy)
