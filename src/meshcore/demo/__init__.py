"""The demo mesh (``make demo``, ``meshcore demo``): meshcore's control plane and CA, three small
services behind real Envoy sidecars, the ``examples/`` config, live traffic and a live change.

Everything runs on 127.0.0.0/8 in the loopback layout of :mod:`meshcore.xds.translate`: the
workload at ``127.0.X.Y`` (its WorkloadEntry address) has its sidecar's inbound listener there,
its app on ``127.1.X.Y`` and its sidecar's outbound listeners on ``127.2.X.Y``. Traffic enters
at the frontend app (as from an ingress), and every hop after that goes app → own sidecar →
mTLS → the callee's sidecar → callee app.

:class:`DemoMesh` is the reusable part (the tests drive it and inject failures);
:func:`run_demo` is the scripted tour that prints what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import http.client
import http.server
import io
import json
import logging
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from meshcore.config import MeshModel, validate
from meshcore.demo.apps import CALLED_PORT, App, ZipkinCollector
from meshcore.xds.node import APP_ADDRESS_KEY, OUTBOUND_ADDRESS_KEY

# The example mesh ships in the package (examples/ at the top of the repo links here).
EXAMPLES = Path(__file__).resolve().parent / "examples"
FRONTEND_PATH = "/productpage"
CANARY_FILE = "traffic.yaml"
FLAKY_INSTANCE = "ratings-2"
FLAKY_RATIO = 0.3
PROXIES = ("envoy", "reference")
RBAC_DENIED = re.compile(r"rbac_access_denied_matched_policy\[(\S*?)\](?=[\"\s])")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free now (all probed at once, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]


def _shifted(address: str, second: int) -> str:
    parts = address.split(".")
    if len(parts) != 4 or parts[0] != "127":
        raise ValueError(f"demo workloads need 127.0.0.0/8 addresses, not {address!r}")
    return f"127.{second}.{parts[2]}.{parts[3]}"


@dataclass(frozen=True)
class Workload:
    """One WorkloadEntry of the demo config and where its parts listen."""

    name: str
    namespace: str
    kind: str  # the app label: frontend, reviews or ratings
    version: str
    address: str  # the sidecar's inbound listeners
    port: int
    service_account: str

    @property
    def app_address(self) -> str:
        return _shifted(self.address, 1)

    @property
    def outbound_address(self) -> str:
        return _shifted(self.address, 2)

    @property
    def node_id(self) -> str:
        return (
            f"sidecar~{self.address}~{self.name}.{self.namespace}~"
            f"{self.namespace}.svc.cluster.local"
        )

    @property
    def identity(self) -> str:
        return f"spiffe://cluster.local/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def metadata(self) -> dict[str, str]:
        return {APP_ADDRESS_KEY: self.app_address, OUTBOUND_ADDRESS_KEY: self.outbound_address}


def workloads_of(mesh: MeshModel) -> list[Workload]:
    out = []
    for w in mesh.workload_entries:
        labels = w.workload_labels
        ports = list(w.ports.values())
        out.append(
            Workload(
                name=w.name,
                namespace=w.namespace,
                kind=labels.get("app", ""),
                version=labels.get("version", ""),
                address=w.address,
                port=ports[0] if ports else 0,
                service_account=w.service_account or "default",
            )
        )
    return sorted(out, key=lambda w: w.name)


# --- results -------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """What a batch of requests to the frontend saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    ratings: Counter[int] = field(default_factory=Counter)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        """Requests that got through end to end: frontend, reviews and ratings all 200."""
        return sum(
            1 for b in self.bodies if b.get("reviews_status") == 200 and b.get("ratings") == 200
        )

    def share(self, version: str) -> float:
        n = sum(self.versions.values())
        return self.versions[version] / n if n else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class DemoReport:
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(name, passed, detail))
        return passed

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


# --- the mesh ------------------------------------------------------------------------------------


class Progress:
    """One line per step on a terminal (stderr), with the time since the start."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stderr
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {message}", file=self.out, flush=True)


class DemoMesh:
    """The control plane, the apps and their sidecars, started and stopped together."""

    def __init__(
        self,
        config: Path | None = None,
        workdir: Path | None = None,
        *,
        progress: Progress | None = None,
        flaky: dict[str, float] | None = None,
        seed: int = 1,
        proxy: str = "envoy",
    ) -> None:
        if proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {', '.join(PROXIES)}, not {proxy!r}")
        self.proxy_kind = proxy
        report = validate([config or EXAMPLES])
        if report.model is None:
            raise ValueError(
                "the demo config is invalid:\n" + "\n".join(str(p) for p in report.errors)
            )
        self.mesh = report.model
        self._tmp = (
            None if workdir is not None else tempfile.TemporaryDirectory(prefix="meshcore-demo-")
        )
        self.workdir = workdir if workdir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.config = self.workdir / "config"
        shutil.copytree(config or EXAMPLES, self.config, dirs_exist_ok=True)
        self.workloads = workloads_of(self.mesh)
        self.progress = progress or Progress(io.StringIO())  # quiet unless asked
        self.flaky = {FLAKY_INSTANCE: FLAKY_RATIO} if flaky is None else flaky
        self.seed = seed
        self.xds_port, self.metrics_port, self.ca_port, self.ca_mtls_port = free_ports(4)
        self.ca_state = self.workdir / "ca"
        # One bootstrap token per workload (Istio uses the pod's service-account JWT).
        self.tokens = {w.name: secrets.token_hex(24) for w in self.workloads}
        self.tokens_file = self.workdir / "tokens"
        self.tokens_file.write_text(
            "".join(f"{self.tokens[w.name]} {w.identity}\n" for w in self.workloads)
        )
        self.tokens_file.chmod(0o600)
        self.control_plane: subprocess.Popen[bytes] | None = None
        self.zipkin = ZipkinCollector()
        # Istio's MeshConfig for the demo: JSON access logs on every sidecar (the RBAC policy
        # ids of denials are in them) and every request traced to the demo's collector.
        self.mesh_config = self.workdir / "mesh-config.yaml"
        self.mesh_config.write_text(
            "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\nenableTracing: true\n"
            "defaultConfig:\n  tracing:\n    sampling: 100\n"
            f"    zipkin: {{address: {self.zipkin.address}}}\n"
        )
        self.apps: dict[str, App] = {}
        self.sidecars: dict[str, Sidecar | ReferenceSidecar] = {}
        self.access = AccessRecords()  # the reference proxy's access records

    # -- lifecycle --

    async def start(self) -> None:
        try:
            self.start_control_plane()
            for w in self.workloads:
                self.start_app(w)
            self.progress(f"{len(self.apps)} apps up: " + ", ".join(
                f"{w.name}@{w.app_address}:{w.port}" for w in self.workloads))  # fmt: skip
            kind = Sidecar if self.proxy_kind == "envoy" else ReferenceSidecar
            if kind is ReferenceSidecar:
                access = logging.getLogger("meshcore.proxy.access")
                access.addHandler(self.access)
                access.setLevel(logging.INFO)  # counted here, not printed
                access.propagate = False
            for w in self.workloads:
                self.sidecars[w.name] = kind(w, self)
            await asyncio.gather(*(s.start() for s in self.sidecars.values()))
            self.progress(f"{len(self.sidecars)} sidecars ready ({kind.kind}; ADS and "
                          "certificates from meshcore)")  # fmt: skip
            await asyncio.to_thread(self.wait_for_traffic)
            self.progress("traffic flows end to end: frontend → reviews → ratings")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.sidecars.values()), return_exceptions=True)
        if self.access in (access := logging.getLogger("meshcore.proxy.access")).handlers:
            access.removeHandler(self.access)
            access.setLevel(logging.NOTSET)
            access.propagate = True
        for app in self.apps.values():
            app.stop()
        self.apps.clear()
        self.stop_control_plane()
        self.zipkin.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def start_control_plane(self) -> None:
        log = (self.workdir / "control-plane.log").open("ab")
        self.control_plane = subprocess.Popen(
            [sys.executable, "-m", "meshcore.cli", "serve", "--config", str(self.config),
             "--xds-port", str(self.xds_port), "--metrics-port", str(self.metrics_port),
             "--mesh-config", str(self.mesh_config), "--ca-port", str(self.ca_port),
             "--ca-mtls-port", str(self.ca_mtls_port), "--state-dir", str(self.ca_state),
             "--tokens", str(self.tokens_file)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while not self._get_ok(f"http://127.0.0.1:{self.metrics_port}/ready"):
            if self.control_plane.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "meshcore serve did not start:\n"
                    + (self.workdir / "control-plane.log").read_text()[-2000:]
                )
            time.sleep(0.05)
        self.progress(
            f"control plane up: ADS on 127.0.0.1:{self.xds_port}, CA on 127.0.0.1:{self.ca_port}, "
            f"metrics on http://127.0.0.1:{self.metrics_port}/metrics"
        )

    def ca_root(self) -> str:
        """The CA's root certificate (PEM), which agents verify the CA server with."""
        return (self.ca_state / "root-cert.pem").read_text()

    def stop_control_plane(self) -> None:
        cp, self.control_plane = self.control_plane, None
        if cp is None:
            return
        cp.terminate()
        try:
            cp.wait(timeout=10)
        except subprocess.TimeoutExpired:
            cp.kill()
            cp.wait()

    def start_app(self, w: Workload) -> App:
        app = App(
            w.kind, w.name, w.version, w.app_address, w.port, w.outbound_address,
            fail_ratio=self.flaky.get(w.name, 0.0), seed=self.seed,
        ).start()  # fmt: skip
        self.apps[w.name] = app
        return app

    def kill_app(self, name: str) -> None:
        self.apps.pop(name).stop()

    def workload(self, name: str) -> Workload:
        return next(w for w in self.workloads if w.name == name)

    def frontend(self) -> Workload:
        return next(w for w in self.workloads if w.kind == "frontend")

    # -- traffic --

    def wait_for_traffic(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            t = self.send(1)
            if t.ok:
                return
            last = t.bodies or t.statuses
            time.sleep(0.1)
        raise RuntimeError(f"no end-to-end traffic after {timeout:.0f} s: {last}")

    def send(
        self,
        n: int,
        path: str = FRONTEND_PATH,
        headers: dict[str, str] | None = None,
        concurrency: int = 4,
    ) -> Traffic:
        """``n`` requests to the frontend app, ``concurrency`` at a time (kept-alive)."""
        fe = self.frontend()
        result = Traffic()

        def worker(count: int) -> list[tuple[int, dict[str, Any], float]]:
            out = []
            conn = http.client.HTTPConnection(fe.app_address, fe.port, timeout=10)
            try:
                for _ in range(count):
                    started = time.perf_counter()
                    try:
                        conn.request("GET", path, headers=headers or {})
                        resp = conn.getresponse()
                        raw = resp.read()
                        status = resp.status
                        body = json.loads(raw) if raw else {}
                    except (OSError, http.client.HTTPException, ValueError) as e:
                        conn.close()
                        status, body = 0, {"error": str(e)}
                    out.append((status, body, (time.perf_counter() - started) * 1000))
            finally:
                conn.close()
            return out

        shares = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
        with ThreadPoolExecutor(concurrency) as pool:
            for rows in pool.map(worker, [s for s in shares if s]):
                for status, body, ms in rows:
                    result.statuses[status] += 1
                    result.bodies.append(body)
                    result.latencies_ms.append(ms)
                    if body.get("reviews"):
                        result.versions[str(body["reviews"])] += 1
                    if "ratings" in body:
                        result.ratings[int(body["ratings"])] += 1
        return result

    # -- observing --

    @staticmethod
    def _get_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @staticmethod
    def _get(url: str) -> str:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def control_plane_metrics(self) -> str:
        return self._get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def sync_status(self) -> dict[str, dict[str, str]]:
        data = json.loads(self._get(f"http://127.0.0.1:{self.metrics_port}/debug/syncz"))
        return dict(data["proxies"])

    # -- changing config --

    def set_canary(self, v1: int, v2: int) -> None:
        path = self.config / CANARY_FILE
        text = path.read_text()
        new, n = re.subn(
            r"(subset: v1\}\s*\n\s*weight: )\d+(\s*\n\s*- destination: \{host: reviews, subset: v2\}\s*\n\s*weight: )\d+",
            rf"\g<1>{v1}\g<2>{v2}",
            text,
        )
        if n != 1:
            raise ValueError(f"{path}: the reviews canary weights were not found")
        path.write_text(new)

    def config_updates(self) -> dict[str, int]:
        """Per sidecar: config updates it has applied so far (its own count)."""
        return {name: sc.config_updates() for name, sc in self.sidecars.items()}

    def total(self, names: list[str], what: str, *args: str) -> int:
        """The sum of one observation (a Sidecar method) over some sidecars."""
        return sum(int(getattr(self.sidecars[n], what)(*args)) for n in names)


# --- sidecars ------------------------------------------------------------------------------------


class Sidecar:
    """A real Envoy for one workload, run by meshcore's agent (certificate from the CA, served
    to Envoy over SDS; config over ADS from the control plane)."""

    def __init__(self, workload: Workload, mesh: DemoMesh) -> None:
        from meshcore.dataplane.agent import Agent

        self.workload = workload
        self.dir = mesh.workdir / "sidecars" / workload.name
        self.agent = Agent(
            node_id=workload.node_id,
            identity=workload.identity,
            xds_address=f"127.0.0.1:{mesh.xds_port}",
            ca_address=f"127.0.0.1:{mesh.ca_port}",
            ca_mtls_address=f"127.0.0.1:{mesh.ca_mtls_port}",
            ca_root=mesh.ca_root(),
            token=mesh.tokens[workload.name],
            workdir=self.dir,
            metadata=workload.metadata,
        )

    @property
    def admin_port(self) -> int:
        return self.agent.admin_port

    async def start(self) -> None:
        await self.agent.start()
        await self.agent.wait_ready(30)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await self.agent.wait_ready(timeout)

    async def restart_envoy(self) -> None:
        await self.agent.restart_envoy()

    # -- what the sidecar saw (Envoy's own counters and access log) --

    kind = "Envoy"

    def stats(self, pattern: str = "") -> dict[str, int]:
        """Counters and gauges of this Envoy (admin /stats), filtered by a regex."""
        url = f"http://127.0.0.1:{self.admin_port}/stats?filter={urllib.parse.quote(pattern)}"
        out = {}
        for line in DemoMesh._get(url).splitlines():
            key, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[key] = int(value)
        return out

    def _sum(self, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(v for k, v in self.stats(pattern).items() if rx.search(k))

    def retries(self, service: str) -> int:
        return self._sum(
            rf"^cluster\.outbound\|\d+\|[^|]*\|{re.escape(service)}\..*\.upstream_rq_retry$"
        )

    def ejections(self, service: str) -> int:
        return self._sum(
            rf"^cluster\.outbound\|\d+\|[^|]*\|{re.escape(service)}\..*"
            r"\.outlier_detection\.ejections_enforced_total$"
        )

    def tls_handshakes(self) -> int:
        """TLS handshakes on its inbound listeners."""
        return self._sum(r"^listener\.127\..*\.ssl\.handshake$")

    def config_updates(self) -> int:
        """RouteConfiguration updates Envoy accepted."""
        return self._sum(r"\.rds\..*\.update_success$")

    def denials(self) -> list[str]:
        """The policy ids in this sidecar's access log entries for RBAC denials (Envoy writes
        ``rbac_access_denied_matched_policy[ID]`` into the response code details)."""
        path = self.dir / "envoy.log"
        if not path.exists():
            return []
        return RBAC_DENIED.findall(path.read_text(errors="replace"))

    async def stop(self) -> None:
        await self.agent.stop()


class AccessRecords(logging.Handler):
    """Collects the reference proxy's structured access records (logger
    ``meshcore.proxy.access``), per workload."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: dict[str, list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            with self._lock:
                self.records.setdefault(str(access.get("workload")), []).append(access)

    def of(self, workload: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records.get(workload, ()))


class ReferenceSidecar:
    """meshcore's reference proxy (:mod:`meshcore.dataplane.proxy`) in front of one workload,
    in this process: config over delta ADS, certificate from the CA, Envoy's decisions from
    the Rust core."""

    kind = "reference proxy"

    def __init__(self, workload: Workload, mesh: DemoMesh) -> None:
        self.workload = workload
        self.mesh = mesh
        self.proxy: Any = None
        self.admin_port = 0  # no Envoy admin

    async def start(self) -> None:
        from meshcore.dataplane import DataPlane
        from meshcore.dataplane.proxy import ReferenceProxy

        w, mesh = self.workload, self.mesh
        dp = await DataPlane.aconnect(
            f"127.0.0.1:{mesh.xds_port}", node_id=w.node_id, bootstrap_token=mesh.tokens[w.name],
            ca_address=f"127.0.0.1:{mesh.ca_port}", ca_mtls_address=f"127.0.0.1:{mesh.ca_mtls_port}",
            trust_bundle=mesh.ca_root(), identity=w.identity, metadata=w.metadata,
        )  # fmt: skip
        # Apps call every service on OUTBOUND:9080 (the loopback layout), naming it in Host.
        self.proxy = ReferenceProxy(dp, outbound=(w.outbound_address, CALLED_PORT))
        await self.proxy.start()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        return None  # start() returns once config and certificate are in

    async def restart_envoy(self) -> None:
        raise NotImplementedError("the reference proxy has no Envoy to restart")

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
            await self.proxy.dp.aclose()
            self.proxy = None

    def _records(self, direction: str) -> list[dict[str, Any]]:
        return [r for r in self.mesh.access.of(self.workload.name) if r["direction"] == direction]

    def retries(self, service: str) -> int:
        return sum(
            max(0, int(r["attempts"]) - 1)
            for r in self._records("outbound")
            if f"|{service}." in str(r["cluster"])
        )

    def ejections(self, service: str) -> int:
        return 0  # not counted by the reference proxy

    def tls_handshakes(self) -> int:
        """Inbound requests that came over mTLS with a verified SPIFFE peer."""
        return sum(1 for r in self._records("inbound") if r.get("peer"))

    def config_updates(self) -> int:
        return int(self.proxy.dp.config.generation) if self.proxy is not None else 0

    def denials(self) -> list[str]:
        return [
            str(r.get("policy_id") or "none")
            for r in self._records("inbound")
            if not r.get("allowed", True)
        ]


# --- the tour ------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


async def tour(dm: DemoMesh, report: DemoReport, requests: int = 400) -> None:
    """Traffic, checks and a live change on a started mesh; results go into ``report``."""
    say = dm.progress
    reviews = [w.name for w in dm.workloads if w.kind == "reviews"]
    ratings = [w.name for w in dm.workloads if w.kind == "ratings"]

    # 1. The 90/10 canary.
    t = await asyncio.to_thread(dm.send, requests)
    report.facts["canary_before"] = dict(t.versions)
    report.facts["latency_ms"] = {"p50": t.percentile(0.5), "p99": t.percentile(0.99)}
    v2 = t.share("v2")
    report.check("canary 90/10", 0.04 <= v2 <= 0.18 and t.ok == t.total,
                 f"{t.versions['v1']} v1 / {t.versions['v2']} v2 of {t.total} "
                 f"(v2 {_pct(v2)}, expected 10%); {t.ok}/{t.total} ok end to end"
                 + _failures(t))  # fmt: skip
    say(f"canary: v1 {_pct(t.share('v1'))}, v2 {_pct(v2)} of {t.total} requests")

    # 2. Header routing: testers always get v2.
    t = await asyncio.to_thread(dm.send, 50, FRONTEND_PATH, {"x-user": "tester"})
    report.check("header route x-user: tester → v2", t.versions == Counter({"v2": t.total}),
                 f"{dict(t.versions)}")  # fmt: skip
    say(f"header route: x-user=tester → {dict(t.versions)}")

    # 3. Retries and outlier detection on the flaky ratings instance.
    injected = sum(dm.apps[n].stats.failures_injected for n in ratings if n in dm.apps)
    retried = dm.total(reviews, "retries", "ratings")
    ejected = dm.total(reviews, "ejections", "ratings")
    report.facts["flaky"] = {"injected_503": injected, "envoy_retries": retried,
                             "outlier_ejections": ejected}  # fmt: skip
    report.check("retries hide the flaky ratings instance", injected > 0 and retried > 0,
                 f"ratings answered 503 {injected} times; reviews' sidecars retried {retried} "
                 f"times and ejected an instance {ejected} times; callers saw no failure")  # fmt: skip
    say(f"retries: {injected} injected 503s, {retried} retries, {ejected} ejections")

    # 4. Authorization: a denied path, and a caller that is not allowed.
    t = await asyncio.to_thread(dm.send, 5, "/probe/ratings-admin")
    admin = Counter(b.get("ratings") for b in t.bodies)
    t2 = await asyncio.to_thread(dm.send, 5, "/probe/ratings")
    direct = Counter(b.get("ratings") for b in t2.bodies)
    policies: Counter[str] = Counter()
    deadline = time.monotonic() + 3  # Envoy flushes access logs every second
    while sum(policies.values()) < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        policies = Counter(d for n in ratings for d in dm.sidecars[n].denials())
    report.facts["denials"] = dict(policies)
    report.check("AuthorizationPolicy denies /admin", admin == Counter({403: 5}),
                 f"reviews → ratings /admin: {dict(admin)}")  # fmt: skip
    report.check("only reviews may call ratings", direct == Counter({403: 5}),
                 f"frontend → ratings: {dict(direct)}")  # fmt: skip
    say(f"authorization: /admin → {dict(admin)}, frontend → ratings → {dict(direct)}; "
        f"policies: {dict(policies)}")  # fmt: skip

    # 5. mTLS between sidecars, and plaintext refused under STRICT.
    handshakes = {n: dm.sidecars[n].tls_handshakes() for n in reviews + ratings}
    plaintext = _plaintext_refused(dm.workload(ratings[0]))
    what = "handshakes" if dm.proxy_kind == "envoy" else "requests from verified peers"
    report.facts["mtls"] = {"inbound_tls_handshakes": handshakes, "plaintext_refused": plaintext}
    report.check("mTLS between sidecars", all(v > 0 for v in handshakes.values()) and plaintext,
                 f"inbound mTLS ({what}) {handshakes}; plaintext to ratings "
                 f"{'refused' if plaintext else 'ACCEPTED'}")  # fmt: skip
    say(f"mTLS: inbound {what} {handshakes}; plaintext {'refused' if plaintext else 'accepted'}")

    # 6. A live change: the canary goes to 50/50.
    before = await asyncio.to_thread(dm.config_updates)
    written = time.monotonic()
    dm.set_canary(50, 50)
    converged: dict[str, float] = {}
    while len(converged) < len(before) and time.monotonic() - written < 15:
        now = await asyncio.to_thread(dm.config_updates)
        for name, count in now.items():
            if count > before[name] and name not in converged:
                converged[name] = (time.monotonic() - written) * 1000
        await asyncio.sleep(0.02)
    report.facts["convergence_ms"] = converged
    say(f"canary → 50/50: all {len(converged)} sidecars applied it within "
        f"{max(converged.values(), default=0):.0f} ms of the file write")  # fmt: skip
    t = await asyncio.to_thread(dm.send, requests)
    v2 = t.share("v2")
    report.facts["canary_after"] = dict(t.versions)
    report.check("live change converges", len(converged) == len(before),
                 f"{len(converged)}/{len(before)} sidecars, slowest "
                 f"{max(converged.values(), default=0):.0f} ms after the write")  # fmt: skip
    report.check("canary 50/50 after the change", 0.40 <= v2 <= 0.60 and t.ok == t.total,
                 f"{t.versions['v1']} v1 / {t.versions['v2']} v2 (v2 {_pct(v2)})" + _failures(t))  # fmt: skip
    say(f"canary after the change: v1 {_pct(t.share('v1'))}, v2 {_pct(v2)}")
    report.facts["control_plane"] = _convergence_metric(dm.control_plane_metrics())

    if dm.proxy_kind != "envoy":
        return  # the reference proxy does not trace
    # 7. Tracing: Envoy's Zipkin tracer, configured by the control plane from MeshConfig.
    await asyncio.sleep(1.2)  # Envoy flushes spans every second
    traces = dm.zipkin.traces()
    services = {
        str((sp.get("localEndpoint") or {}).get("serviceName", "")) for spans in traces.values()
        for sp in spans
    }  # fmt: skip
    deep = sum(1 for spans in traces.values() if len(spans) >= 4)
    report.facts["tracing"] = {"traces": len(traces), "spans": sum(map(len, traces.values())),
                               "traces_with_4_or_more_spans": deep, "services": sorted(services)}  # fmt: skip
    report.check("traces reach the Zipkin collector", deep > 0,
                 f"{len(traces)} traces, {deep} through all three services; "
                 f"services {sorted(services)}")  # fmt: skip
    say(f"tracing: {len(traces)} traces, {deep} spanning frontend → reviews → ratings")


def _failures(t: Traffic) -> str:
    """The first requests that did not get through, for the report."""
    bad = [b for b in t.bodies if b.get("reviews_status") != 200 or b.get("ratings") != 200]
    return f"; failed: {bad[:3]}" if bad else ""


def _plaintext_refused(w: Workload) -> bool:
    """A plaintext HTTP request straight to the workload's inbound listener must fail."""
    conn = http.client.HTTPConnection(w.address, w.port, timeout=3)
    try:
        conn.request("GET", "/ratings", headers={"Host": "ratings"})
        conn.getresponse()
        return False  # any HTTP answer at all means the listener took plaintext
    except (OSError, http.client.HTTPException):
        return True
    finally:
        conn.close()


def _convergence_metric(text: str) -> dict[str, float]:
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("pilot_proxy_convergence_time_sum"):
            total = float(line.split()[-1])
        elif line.startswith("pilot_proxy_convergence_time_count"):
            count = float(line.split()[-1])
    return {"pushes_acked": count, "mean_ms": 1000 * total / count if count else 0.0}


class StatusPage(http.server.ThreadingHTTPServer):
    """``--serve``: a page with the tour's results and links to every live endpoint."""

    daemon_threads = True

    def __init__(self, dm: DemoMesh, report: DemoReport) -> None:
        self.dm, self.report = dm, report
        super().__init__(("127.0.0.1", 0), _StatusHandler)
        threading.Thread(target=self.serve_forever, name="demo-status", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def page(self) -> str:
        dm, esc = self.dm, html.escape
        rows = "".join(
            f"<tr><td>{'PASS' if c.passed else 'FAIL'}</td><td>{esc(c.name)}</td>"
            f"<td>{esc(c.detail)}</td></tr>"
            for c in self.report.checks
        )
        try:
            sync = dm.sync_status()
        except OSError:
            sync = {}
        sync_rows = "".join(
            f"<tr><td>{esc(node)}</td>"
            + "".join(f"<td>{esc(v)}</td>" for v in row.values())
            + "</tr>"
            for node, row in sorted(sync.items())
        )
        sidecars = "".join(
            f'<li>{esc(name)}: <a href="http://127.0.0.1:{sc.admin_port}/">Envoy admin</a>, '
            f'<a href="http://127.0.0.1:{sc.admin_port}/stats/prometheus">stats</a></li>'
            for name, sc in sorted(dm.sidecars.items())
        )
        return (
            "<!doctype html><title>meshcore demo</title><h1>meshcore demo mesh</h1>"
            f"<h2>Checks</h2><table>{rows}</table>"
            f"<h2>Facts</h2><pre>{esc(json.dumps(self.report.facts, indent=2, default=str))}</pre>"
            f"<h2>xDS sync (live)</h2><table>{sync_rows}</table>"
            f'<h2>Endpoints</h2><ul><li><a href="http://127.0.0.1:{dm.metrics_port}/metrics">'
            f"control plane metrics</a></li>{sidecars}</ul>"
        )


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    server: StatusPage

    def do_GET(self) -> None:
        if self.path == "/report.json":
            body = json.dumps({"checks": [vars(c) for c in self.server.report.checks],
                               "facts": self.server.report.facts}, default=str).encode()  # fmt: skip
            kind = "application/json"
        else:
            body, kind = self.server.page().encode(), "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def print_report(report: DemoReport, out: TextIO) -> None:
    print("\nmeshcore demo: what happened", file=out)
    for c in report.checks:
        print(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}", file=out)
    denials = report.facts.get("denials", {})
    if denials:
        print("  denials (policy ids from the sidecars' access logs): "
              + ", ".join(f"{pid} ×{n}" for pid, n in sorted(denials.items())), file=out)  # fmt: skip
    lat = report.facts.get("latency_ms", {})
    if lat:
        print(f"  latency frontend → reviews → ratings (4 sidecar hops): "
              f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms", file=out)  # fmt: skip
    cp = report.facts.get("control_plane", {})
    if cp:
        print(f"  control plane: {cp['pushes_acked']:.0f} proxy convergences recorded, "
              f"mean push → ACK {cp['mean_ms']:.1f} ms (pilot_proxy_convergence_time)", file=out)  # fmt: skip
    print(f"\n{'all checks passed' if report.passed else 'SOME CHECKS FAILED'}", file=out)


async def run_demo(
    *,
    serve: bool = False,
    config: Path | None = None,
    workdir: Path | None = None,
    proxy: str = "envoy",
    out: TextIO | None = None,
) -> int:
    """The scripted tour; 0 when every check passed. With ``serve`` it keeps running."""
    out = out if out is not None else sys.stdout
    # The agents run in this process: their routine news would bury the progress display.
    quiet = logging.getLogger("meshcore")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return await _run_demo(serve, config, workdir, proxy, out)
    finally:
        quiet.setLevel(level)


async def _run_demo(
    serve: bool, config: Path | None, workdir: Path | None, proxy: str, out: TextIO
) -> int:
    progress = Progress()
    progress("starting the demo mesh")
    dm = DemoMesh(config, workdir, progress=progress, proxy=proxy)
    report = DemoReport()
    await dm.start()
    try:
        await tour(dm, report)
        print_report(report, out)
        if serve:
            status = StatusPage(dm, report)
            print(f"\nserving (Ctrl-C stops):\n  status page  {status.url}\n"
                  f"  metrics      http://127.0.0.1:{dm.metrics_port}/metrics\n"
                  f"  xDS sync     http://127.0.0.1:{dm.metrics_port}/debug/syncz\n"
                  f"  frontend     http://{dm.frontend().app_address}:{dm.frontend().port}{FRONTEND_PATH}",
                  file=out, flush=True)  # fmt: skip
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
            finally:
                status.stop()
    finally:
        await dm.stop()
    return 0 if report.passed else 1
