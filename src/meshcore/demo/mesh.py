"""The demo mesh: its workloads, the control plane, the apps and their sidecars, started
and stopped together, and the traffic sent through them."""

from __future__ import annotations

import asyncio
import contextlib
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
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from meshcore.config import MeshModel, validate
from meshcore.config.model import Gateway
from meshcore.demo.apps import App, ZipkinCollector
from meshcore.demo.expect import CanaryRoute
from meshcore.xds.node import APP_ADDRESS_KEY, OUTBOUND_ADDRESS_KEY

if TYPE_CHECKING:
    from meshcore.demo.sidecars import AccessRecords, IngressGateway, ReferenceSidecar, Sidecar

# The example mesh ships in the package (examples/ at the top of the repo links here).
EXAMPLES = Path(__file__).resolve().parent / "examples"
FRONTEND_PATH = "/productpage"
FLAKY_INSTANCE = "ratings-2"
FLAKY_RATIO = 0.3
PROXIES = ("envoy", "reference")
# The ingress gateway (envoy mode): a router proxy in front of frontend, where the tour's
# requests enter; its listener port comes from the Gateway in the config that selects it.
INGRESS_ADDRESS = "127.0.40.1"
INGRESS_LABELS = {"istio": "ingressgateway"}
INGRESS_NODE = (
    f"router~{INGRESS_ADDRESS}~istio-ingressgateway.istio-system~istio-system.svc.cluster.local"
)
INGRESS_IDENTITY = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"
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


def check_addresses(mesh: MeshModel, workloads: list[Workload]) -> None:
    """Fails first, with the cause, when an address the demo would listen on is taken (else
    the sidecars would start without their listeners and the checks fail for no visible
    reason). The addresses come from the config, so they cannot be chosen freely."""
    service_ports = sorted({p.port for s in mesh.services for p in s.ports})
    target_ports = sorted({p.target_port for s in mesh.services for p in s.ports})
    wanted = []
    for w in workloads:
        wanted += [(w.address, p, f"{w.name}'s inbound listener") for p in target_ports]
        wanted += [(w.app_address, w.port, f"{w.name}'s app")]
        wanted += [(w.outbound_address, p, f"{w.name}'s outbound listener") for p in service_ports]
    taken = []
    for host, port, what in wanted:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                s.bind((host, port))
            except OSError as exc:
                taken.append(f"{host}:{port} ({what}): {exc.strerror}")
    if taken:
        raise ValueError("cannot run: addresses of the demo mesh are taken: " + "; ".join(taken))


def ingress_port(mesh: MeshModel) -> int | None:
    """The first HTTP server port of a Gateway selecting the demo's ingress gateway."""
    from meshcore.config.gateway import is_http
    from meshcore.xds.gateway import gateways_for

    gateways = tuple(r for r in mesh.resources if isinstance(r, Gateway))
    for gw in gateways_for(gateways, INGRESS_LABELS):
        for server in gw.servers:
            port = server.get("port") or {}
            if is_http(str(port.get("protocol", ""))) and not server.get("bind"):
                return int(port["number"])
    return None


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
        replicas: int = 1,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
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
        self.source = config or EXAMPLES
        shutil.copytree(self.source, self.config, dirs_exist_ok=True)
        self.workloads = workloads_of(self.mesh)
        self.progress = progress or Progress(io.StringIO())  # quiet unless asked
        self.flaky = {FLAKY_INSTANCE: FLAKY_RATIO} if flaky is None else flaky
        self.seed = seed
        # With replicas > 1: the config in etcd (meshcore.store), N `meshcore serve` replicas
        # on it; the sidecars know them all. The first replica's ports are the "main" ones.
        self.replicas = replicas
        self.replica_ports = [free_ports(4) for _ in range(replicas)]
        self.xds_port, self.metrics_port, self.ca_port, self.ca_mtls_port = self.replica_ports[0]
        self.replica_procs: dict[int, subprocess.Popen[bytes]] = {}
        self.etcd: Any = None  # meshcore.store.local.LocalEtcd, with replicas > 1
        self.store = ""
        self.ca_state = self.workdir / "ca"
        # One bootstrap token per workload (Istio uses the pod's service-account JWT).
        self.tokens = {w.name: secrets.token_hex(24) for w in self.workloads}
        # The ingress gateway runs with real Envoy only (the reference proxy is a sidecar).
        self.ingress_port = ingress_port(self.mesh) if proxy == "envoy" else None
        self.ingress: IngressGateway | None = None
        identities = {self.tokens[w.name]: w.identity for w in self.workloads}
        if self.ingress_port is not None:
            self.tokens["ingress"] = secrets.token_hex(24)
            identities[self.tokens["ingress"]] = INGRESS_IDENTITY
        self.tokens_file = self.workdir / "tokens"
        self.tokens_file.write_text("".join(f"{t} {i}\n" for t, i in identities.items()))
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
        from meshcore.demo.sidecars import AccessRecords

        self.access: AccessRecords = AccessRecords()  # the reference proxy's access records

    # -- lifecycle --

    async def start(self) -> None:
        try:
            check_addresses(self.mesh, self.workloads)
            if self.ingress_port is not None:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((INGRESS_ADDRESS, self.ingress_port))
                    except OSError as exc:
                        raise ValueError(
                            f"cannot run: {INGRESS_ADDRESS}:{self.ingress_port} (the ingress"
                            f" gateway's listener) is taken: {exc.strerror}"
                        ) from None
            self.start_control_plane()
            for w in self.workloads:
                self.start_app(w)
            self.progress(f"{len(self.apps)} apps up: " + ", ".join(
                f"{w.name}@{w.app_address}:{w.port}" for w in self.workloads))  # fmt: skip
            from meshcore.demo.sidecars import ReferenceSidecar, Sidecar

            kind: type[Sidecar | ReferenceSidecar] = (
                Sidecar if self.proxy_kind == "envoy" else ReferenceSidecar
            )
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
            if self.ingress_port is not None:
                from meshcore.demo.sidecars import IngressGateway

                self.ingress = IngressGateway(self)
                await self.ingress.start()
                self.progress(f"ingress gateway ready: http://{self.entry}{FRONTEND_PATH}")
            await asyncio.to_thread(self.wait_for_traffic)
            self.progress(
                "traffic flows end to end: "
                + ("ingress gateway → " if self.ingress is not None else "")
                + "frontend → reviews → ratings"
            )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.ingress is not None:
            with contextlib.suppress(Exception):
                await self.ingress.stop()
            self.ingress = None
        await asyncio.gather(*(s.stop() for s in self.sidecars.values()), return_exceptions=True)
        if self.access in (access := logging.getLogger("meshcore.proxy.access")).handlers:
            access.removeHandler(self.access)
            access.setLevel(logging.NOTSET)
            access.propagate = True
        for app in self.apps.values():
            app.stop()
        self.apps.clear()
        self.stop_control_plane()
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
        self.zipkin.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def addresses(self, which: int) -> str:
        """Every replica's port ``which`` (0 ADS, 2 CA, 3 CA renewals), comma-separated."""
        return ",".join(f"127.0.0.1:{ports[which]}" for ports in self.replica_ports)

    def start_control_plane(self) -> None:
        if self.replicas > 1 and self.etcd is None:
            self._start_store()
        for i, (xds, metrics, ca, ca_mtls) in enumerate(self.replica_ports):
            suffix = f"-{i}" if i else ""
            log = (self.workdir / f"control-plane{suffix}.log").open("ab")
            config = self.store or str(self.config)
            proc = subprocess.Popen(
                [sys.executable, "-m", "meshcore.cli", "serve", "--config", config,
                 "--xds-port", str(xds), "--monitoring-port", str(metrics),
                 "--mesh-config", str(self.mesh_config), "--ca-port", str(ca),
                 "--ca-mtls-port", str(ca_mtls), "--state-dir", str(self.ca_state) + suffix,
                 "--tokens", str(self.tokens_file)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            log.close()
            self.replica_procs[i] = proc
            if i == 0:
                self.control_plane = proc
            deadline = time.monotonic() + 30
            while not self._get_ok(f"http://127.0.0.1:{metrics}/ready"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "meshcore serve did not start:\n"
                        + (self.workdir / f"control-plane{suffix}.log").read_text()[-2000:]
                    )
                time.sleep(0.05)
        where = f"{self.replicas} replicas on {self.store}, " if self.replicas > 1 else ""
        self.progress(
            f"control plane up: {where}ADS on 127.0.0.1:{self.xds_port}, CA on 127.0.0.1:"
            f"{self.ca_port}, metrics on http://127.0.0.1:{self.metrics_port}/metrics"
        )

    def _start_store(self) -> None:
        """etcd on 127.0.0.1 with the demo's config applied (one transaction)."""
        from meshcore.store.local import LocalEtcd

        self.etcd = LocalEtcd(self.workdir / "etcd")
        self.store = f"etcd://{self.etcd.endpoint}/demo"
        self._apply([str(self.config)])
        self.progress(f"config in etcd: {self.store}")

    def _apply(self, paths: list[str]) -> None:
        from meshcore.store import parse_store_url
        from meshcore.store.apply import commit, read_items
        from meshcore.store.etcd import EtcdClient

        url = parse_store_url(self.store)
        items, problems = read_items(paths, url)
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            raise ValueError("\n".join(map(str, errors)))
        client = EtcdClient(url.endpoints)
        try:
            commit(client, items)
        finally:
            client.close()

    def kill_replica(self, i: int) -> None:
        """Kills control-plane replica ``i`` (SIGKILL: no goodbye to its proxies); the main
        ports become a survivor's."""
        proc = self.replica_procs.pop(i)
        proc.kill()
        proc.wait()
        if self.control_plane is proc:
            j = min(self.replica_procs)
            self.xds_port, self.metrics_port, self.ca_port, self.ca_mtls_port = self.replica_ports[
                j
            ]
            self.control_plane = self.replica_procs[j]

    def proxies_on(self, i: int) -> set[str]:
        """The proxies connected to replica ``i``."""
        port = self.replica_ports[i][1]
        return set(json.loads(self._get(f"http://127.0.0.1:{port}/debug/syncz"))["proxies"])

    def connected_proxies(self) -> set[str]:
        """The proxies connected to any living replica."""
        return set().union(*(self.proxies_on(i) for i in self.replica_procs))

    def ca_root(self) -> str:
        """The CA's root certificate (PEM), which agents verify the CA server with."""
        return (self.ca_state / "root-cert.pem").read_text()

    def stop_control_plane(self) -> None:
        self.control_plane = None
        procs, self.replica_procs = self.replica_procs, {}
        for cp in procs.values():
            cp.terminate()
        for cp in procs.values():
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

    @property
    def entry(self) -> str:
        """Where requests enter: the ingress gateway's listener, else the frontend app."""
        if self.ingress is not None and self.ingress_port is not None:
            return f"{INGRESS_ADDRESS}:{self.ingress_port}"
        fe = self.frontend()
        return f"{fe.app_address}:{fe.port}"

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
        """``n`` requests to the frontend (through the ingress gateway when there is one),
        ``concurrency`` at a time (kept-alive)."""
        host, _, port = self.entry.rpartition(":")
        result = Traffic()

        def worker(count: int) -> list[tuple[int, dict[str, Any], float]]:
            out = []
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
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

    def set_canary(self, route: CanaryRoute, weights: dict[str, int]) -> None:
        """Rewrites the weights of ``route`` (subset -> weight) in the demo's copy of the
        config; the control plane picks the change up as any file change."""
        path = self.config / Path(route.file).resolve().relative_to(self.source.resolve())
        docs = list(yaml.safe_load_all(path.read_text()))
        for doc in docs:
            meta = (doc or {}).get("metadata", {})
            if (doc or {}).get("kind") == "VirtualService" and (
                meta.get("name"), meta.get("namespace", "default")) == (route.name, route.namespace):  # fmt: skip
                for d in doc["spec"]["http"][route.index]["route"]:
                    d["weight"] = weights[d["destination"].get("subset", "")]
                break
        else:
            raise ValueError(f"{path}: VirtualService {route.namespace}/{route.name} not found")
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        if self.store:  # the config lives in etcd: apply the changed file there
            self._apply([str(path)])

    def config_updates(self) -> dict[str, int]:
        """Per sidecar: config updates it has applied so far (its own count)."""
        return {name: sc.config_updates() for name, sc in self.sidecars.items()}

    def total(self, names: list[str], what: str, *args: str) -> int:
        """The sum of one observation (a Sidecar method) over some sidecars."""
        return sum(int(getattr(self.sidecars[n], what)(*args)) for n in names)
