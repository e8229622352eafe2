"""A mesh of pods for capture-mode end-to-end tests: ``meshcore serve`` in an ``istiod`` pod,
``meshcore agent --capture`` with real Envoy (UID 1337) in each workload pod holding its app
until Envoy is ready, apps that call ``http://reviews:9080/`` by name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshcore.capture.pods import Pod, PodNetwork
from meshcore.config import load
from meshcore.xds.vips import service_vips

ISTIOD_PORTS = {"xds": 15010, "ca": 15012, "ca_mtls": 15013}
STATUS_PORT = 15021
ADMIN_PORT = 15000

# The app: answers every request with its name, the path, and whether Envoy forwarded a client
# certificate (x-forwarded-client-cert: the request came over mTLS); logs each request.
APP = r"""
import http.server, json, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"name": name, "path": self.path,
                           "xfcc": self.headers.get("x-forwarded-client-cert", "")}).encode()
        print("request", self.path, self.client_address[0], flush=True)
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
"""

# One-shot client: GETs the URL COUNT times with headers; prints one JSON line per request.
GET = r"""
import json, sys, urllib.request, urllib.error
url, count, headers = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
for _ in range(count):
    try:
        req = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(req, timeout=5) as r:
            raw = r.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("latin-1")[:200]
        print(json.dumps({"status": r.status, "body": body}), flush=True)
    except urllib.error.HTTPError as e:
        print(json.dumps({"status": e.code, "body": e.read().decode()[:200]}), flush=True)
    except OSError as e:
        print(json.dumps({"status": 0, "error": type(e).__name__ + " " + str(e)}), flush=True)
"""

# Waits (bounded) until http://127.0.0.1:PORT/PATH answers 200; prints the seconds it took.
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
class Workload:
    name: str
    app: str
    sa: str
    labels: dict[str, str]
    port: int = 9080
    pod: Pod | None = None
    agent: subprocess.Popen[Any] | None = None
    workdir: Path | None = None


@dataclass
class CaptureMesh:
    """The network, the control plane's pod and directory, and the workloads."""

    net: PodNetwork
    config: Path
    root: Path
    istiod: Pod
    workloads: dict[str, Workload] = field(default_factory=dict)
    envoy: str = ""

    def write(self, name: str, objects: list[dict[str, Any]]) -> None:
        """Writes (or rewrites) one config file the control plane watches."""
        path = self.config / f"{name}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump_all(objects))
        tmp.replace(path)

    def remove(self, name: str) -> None:
        (self.config / f"{name}.yaml").unlink(missing_ok=True)

    def get(self, pod: Pod, url: str, count: int = 1, **headers: str) -> list[dict[str, Any]]:
        out = pod.run([sys.executable, "-c", GET, url, str(count), json.dumps(headers)],
                      capture_output=True, text=True, timeout=30 + 6 * count)  # fmt: skip
        return [json.loads(line) for line in str(out.stdout).splitlines() if line.strip()]

    def wait_ready(self, w: Workload, limit: float = 60) -> float:
        """Seconds until the agent's /healthz/ready answers 200 (fails after ``limit``)."""
        assert w.pod is not None
        url = f"http://127.0.0.1:{STATUS_PORT}/healthz/ready"
        out = w.pod.run([sys.executable, "-c", WAIT, url, str(limit)], capture_output=True,
                        text=True, timeout=limit + 15)  # fmt: skip
        text = str(out.stdout).strip()
        if out.returncode != 0:
            raise AssertionError(f"{w.name} not ready in {limit}s: {self.agent_log(w)}")
        return float(text)

    def agent_log(self, w: Workload) -> str:
        assert w.workdir is not None
        parts = []
        for name in ("agent.out", "envoy.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {name}\n" + (w.workdir / name).read_text()[-3000:])
        return "\n".join(parts)

    def app_requests(self, w: Workload) -> int:
        assert w.workdir is not None
        return (w.workdir / "agent.out").read_text().count("request ")

    def start_agent(self, w: Workload, *, app: bool = True, drain: float = 0) -> None:
        """``meshcore agent --capture`` in the workload's pod, its app held until ready."""
        assert w.pod is not None
        assert w.workdir is not None
        token = f"{w.sa}-token-0123456789abcdef"
        ip = self.istiod.ip
        args = [sys.executable, "-m", "meshcore.cli", "agent", "--capture",
                "--node-id", f"sidecar~{w.pod.ip}~{w.name}.default~default.svc.cluster.local",
                "--identity", spiffe(w.sa), "--xds-address", f"{ip}:{ISTIOD_PORTS['xds']}",
                "--ca-address", f"{ip}:{ISTIOD_PORTS['ca']}",
                "--ca-mtls-address", f"{ip}:{ISTIOD_PORTS['ca_mtls']}",
                "--ca-root", str(self.root / "state" / "root-cert.pem"),
                # serve's certificate on 0.0.0.0 names localhost (Istio: ISTIOD_SAN)
                "--ca-server-name", "localhost",
                "--token-file", str(self.root / "tokens-" / w.sa),
                "--workdir", str(w.workdir), "--status-port", str(STATUS_PORT),
                "--admin-port", str(ADMIN_PORT), "--envoy", self.envoy,
                "--drain-seconds", str(drain)]  # fmt: skip
        (self.root / "tokens-").mkdir(exist_ok=True)
        (self.root / "tokens-" / w.sa).write_text(token + "\n")
        if app:
            args += ["--", sys.executable, "-u", "-c", APP, w.app, str(w.port)]
        sink = (w.workdir / "agent.out").open("a")
        w.agent = w.pod.popen(args, stdout=sink, stderr=subprocess.STDOUT)
        sink.close()

    def envoy_pid(self, w: Workload) -> int:
        assert w.workdir is not None
        text = (w.workdir / "agent.out").read_text()
        return int(text.rsplit("Envoy (pid ", 1)[1].split(")", 1)[0])

    def stat(self, w: Workload, name: str) -> int:
        assert w.pod is not None
        code = (f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:"
                f"{ADMIN_PORT}/stats?filter=^{name}$', timeout=3).read().decode())")  # fmt: skip
        out = w.pod.run([sys.executable, "-c", code], capture_output=True, text=True)
        line = str(out.stdout).strip()
        return int(line.split(": ")[1]) if line else -1


def _tokens(workloads: list[Workload]) -> str:
    return "".join(f"{w.sa}-token-0123456789abcdef {spiffe(w.sa)}\n" for w in workloads)


@contextlib.contextmanager
def capture_mesh(
    workloads: list[Workload],
    config: list[dict[str, Any]],
    envoy: str,
    extra_pods: tuple[str, ...] = (),
    mesh_config: dict[str, Any] | None = None,
) -> Iterator[CaptureMesh]:
    """Pods for istiod, each workload and ``extra_pods`` (no sidecar); Services and
    WorkloadEntries from the workloads (one Service per app, port 9080), ``config`` beside;
    serve started; agents started and ready (apps held until then)."""
    root = Path(tempfile.mkdtemp(prefix="mc-capture-"))
    root.chmod(0o755)
    try:
        with PodNetwork() as net:
            istiod = net.add_pod("istiod")
            for w in workloads:
                w.pod = net.add_pod(w.name)
                w.workdir = root / w.name
                w.workdir.mkdir()
            for name in extra_pods:
                net.add_pod(name)
            apps = sorted({w.app for w in workloads})
            objects = [obj("Service", a, {"selector": {"app": a},
                           "ports": [{"name": "http", "port": 9080}]}) for a in apps]  # fmt: skip
            for w in workloads:
                assert w.pod is not None
                objects.append(obj("WorkloadEntry", w.name, {
                    "address": w.pod.ip, "labels": {"app": w.app, **w.labels},
                    "serviceAccount": w.sa}))  # fmt: skip
            cfg = root / "config"
            cfg.mkdir()
            mesh = CaptureMesh(net, cfg, root, istiod, {w.name: w for w in workloads}, envoy)
            mesh.write("services", objects)
            mesh.write("policy", config)
            vips, _ = service_vips(load(cfg).services)
            for a in apps:
                host = f"{a}.default.svc.cluster.local"
                net.add_service(a, vips[host], aliases=(f"{a}.default", f"{a}.default.svc", host))
            (root / "tokens").write_text(_tokens(workloads))
            args = [sys.executable, "-m", "meshcore.cli", "serve", "--config", str(cfg),
                    "--host", "0.0.0.0", "--xds-port", str(ISTIOD_PORTS["xds"]),
                    "--ca-port", str(ISTIOD_PORTS["ca"]),
                    "--ca-mtls-port", str(ISTIOD_PORTS["ca_mtls"]),
                    "--state-dir", str(root / "state"), "--tokens", str(root / "tokens"),
                    "--monitoring-port", "0"]  # fmt: skip
            if mesh_config is not None:
                (root / "mesh.yaml").write_text(yaml.safe_dump(mesh_config))
                args += ["--mesh-config", str(root / "mesh.yaml")]
            log = root / "serve.log"
            with log.open("w") as sink:
                serve = istiod.popen(args, stdout=sink, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 30
            while "ADS" not in log.read_text():
                assert serve.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            for w in workloads:
                mesh.start_agent(w)
            for w in workloads:
                mesh.wait_ready(w)
            yield mesh
    finally:
        shutil.rmtree(root, ignore_errors=True)


def usable_envoy(tmp: Path) -> str:
    """Envoy's binary where UID 1337 can run it (else a copy in ``tmp``, made 0755)."""
    from tests.envoy._sidecar import envoy_binary

    path = Path(envoy_binary()).resolve()
    if all(os.stat(d).st_mode & 0o001 for d in path.parents) and path.stat().st_mode & 0o005:
        return str(path)
    copy = tmp / "envoy"
    shutil.copy(path, copy)
    copy.chmod(0o755)
    return str(copy)
