"""The control plane server, composed: what ``meshcore serve`` runs, as a library object.

:class:`ControlPlaneServer` owns the parts and starts and stops them in order: the config
loader and the change loop (:class:`~meshcore.xds.controlplane.ControlPlane`, which holds the
dependency index and the snapshot cache), the translator, the CA (Istio's istiod also signs
workload certificates), the ADS server and the HTTP side (``/metrics``, ``/debug/syncz``,
``/healthz``, :mod:`meshcore.xds.debughttp`). The CLI only parses arguments and prints.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from meshcore.ca import CAError, CertificateAuthority
from meshcore.ca.authority import ROOT_GRACE
from meshcore.ca.service import BootstrapTokens, CAServer, start_ca_server
from meshcore.ca.tokens import load_tokens
from meshcore.config.loader import MAX_FILE_BYTES
from meshcore.config.meshconfig import MeshConfig
from meshcore.xds.autoregistration import DEFAULT_GRACE_PERIOD, SOURCE, AutoRegistry
from meshcore.xds.cache import NodeInfo
from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.debughttp import DebugServer
from meshcore.xds.deps import DependencyIndex
from meshcore.xds.jwt import JwksFetcher
from meshcore.xds.server import AdsServer, start_ads_server
from meshcore.xds.translator import Translator

log = logging.getLogger("meshcore.ca")

if TYPE_CHECKING:
    from meshcore.store import StoreURL
    from meshcore.store.replicas import ReplicaDuties
    from meshcore.store.source import EtcdSource
    from meshcore.xds.transport import CoreAdsServer

__all__ = ["CAOptions", "ControlPlaneServer", "StartError", "load_ca", "load_tokens"]


@dataclass(frozen=True, slots=True)
class CAOptions:
    """``meshcore serve --ca-port ...``: the CA next to ADS (Istio's istiod does both)."""

    port: int
    mtls_port: int = 0
    cacerts: str | None = None  # Istio's plug-in layout
    state_dir: str | None = None  # where a generated root is kept
    tokens: str | None = None  # 'TOKEN SPIFFE-ID [expires=TIME]' per line (meshcore.ca.tokens)
    # The replicas' shared self-signed root (serve --config etcd://...): rotated by the leader
    # when less than root_grace of its lifetime is left; root_ttl is a new root's lifetime
    # (None: 10 years for the first, the old one's lifetime for a rotated one).
    root_grace: float = ROOT_GRACE
    root_ttl: datetime.timedelta | None = None


def load_ca(options: CAOptions) -> CertificateAuthority:
    """The plug-in CA from ``cacerts``; else the root kept in ``state_dir`` (generated and
    saved there, key 0600, on first use); else a root that lives as long as the process."""
    if options.cacerts:
        return CertificateAuthority.load(options.cacerts)
    if options.state_dir:
        state = Path(options.state_dir)
        if (state / "ca-key.pem").is_file():
            return CertificateAuthority.load(state)
        ca = CertificateAuthority.generate()
        ca.save(state)
        return ca
    return CertificateAuthority.generate()


class StartError(Exception):
    """A part of the server could not start; the message says which and why."""


class ControlPlaneServer:
    """The control plane's parts, started by :meth:`start` (after a successful :meth:`load`),
    run by :meth:`run` until its stop event, and stopped by :meth:`close`."""

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        host: str = "127.0.0.1",
        xds_port: int = 0,
        metrics_port: int | None = None,
        mesh_config: MeshConfig | None = None,
        ca: CAOptions | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        store: StoreURL | None = None,
        replica_id: str | None = None,
        workload_entry_grace_period: float = DEFAULT_GRACE_PERIOD,
        ads_transport: str | None = None,
    ) -> None:
        self.host = host
        self.store_url = store
        self.replica_id = replica_id
        self.duties: ReplicaDuties | None = None
        # The config from etcd instead of directories (``paths`` then unused).
        self.store: EtcdSource | None = None
        if store is not None:
            from meshcore.store.etcd import StoreUnavailable
            from meshcore.store.source import EtcdSource

            try:
                self.store = EtcdSource(store)
            except StoreUnavailable as exc:  # TLS files that cannot be used
                raise StartError(f"cannot read the config store: {exc}") from None
        # WorkloadEntries of proxies that register with a WorkloadGroup, served on top of
        # the loaded config (meshcore.xds.autoregistration).
        self.registry = AutoRegistry(workload_entry_grace_period)
        self.xds_port = xds_port
        # meshcore's own ("core") or grpc.aio ("grpc"); None: start_ads_server's default.
        self.ads_transport = ads_transport
        self.metrics_port = metrics_port
        self.ca_options = ca
        # JWKS are fetched in the control plane's refresh thread, never by a translation in
        # the event loop: a jwksUri not fetched yet fails closed until its keys arrive (istiod).
        self.translator = Translator(mesh_config=mesh_config, jwks=JwksFetcher(fetch_on_miss=False))
        self.plane = ControlPlane(
            paths,
            self.translator.resources_for,
            dependencies=DependencyIndex(),
            settle_gc=True,
            max_file_bytes=max_file_bytes,
            check=self.translator.load_problems,  # what proxies will not get, at every load
            refresh=self.translator.refresh_jwks,  # RequestAuthentication jwksUri keys
            source=self.store,
            overlay=self.registry.overlay,
        )
        self.authority: CertificateAuthority | None = None
        self.token_count = 0
        self.ca_server: CAServer | None = None
        self.ca_shared = False  # the CA is the replicas' one in the store (rotated there)
        self.ads: AdsServer | None = None
        self.ads_port = 0
        self.debug: DebugServer | None = None
        self._grpc: grpc.aio.Server | CoreAdsServer | None = None

    def load(self) -> bool:
        """Loads the configuration; False when it is invalid (see ``plane.problems``). With a
        store, lists it first and starts its watch (StartError when it cannot be reached)."""
        if self.store is not None and self.store.revision == 0:
            from meshcore.store.etcd import StoreUnavailable

            try:
                self.store.start()
            except StoreUnavailable as exc:
                raise StartError(f"cannot read the config store: {exc}") from None
        return self.plane.load()

    async def start(self) -> None:
        """Starts the CA (when asked for), the ADS server and the HTTP side; StartError when
        the CA or the monitoring port cannot start (what was started is stopped again)."""
        if self.ca_options is not None:
            try:
                await self._start_ca(self.ca_options)
            except (CAError, ValueError, OSError, RuntimeError) as exc:
                raise StartError(f"cannot start the CA: {exc}") from None
        plane = self.plane
        self._grpc, self.ads, self.ads_port = await start_ads_server(
            plane.cache,
            port=self.xds_port,
            host=self.host,
            transport=self.ads_transport,
            ready=lambda: plane.mesh is not None,
        )
        self.ads.lifecycle = self._proxy_lifecycle
        if self.metrics_port is not None:
            try:
                ca_server = self.ca_server
                self.debug = DebugServer(
                    (self.host, self.metrics_port),
                    plane,
                    self.ads,
                    asyncio.get_running_loop(),
                    certificates=ca_server.issued.list if ca_server is not None else None,
                )
            except OSError as exc:
                await self.close()
                raise StartError(
                    f"cannot open the monitoring port {self.host}:{self.metrics_port}: "
                    f"{exc.strerror} (choose another with --monitoring-port, 0 for none)"
                ) from None
            threading.Thread(
                target=self.debug.serve_forever, name="meshcore-debug", daemon=True
            ).start()
        if self.store is not None and self.store_url is not None:
            self._start_duties(self.store, self.store_url, asyncio.get_running_loop())

    def _start_duties(
        self, source: EtcdSource, url: StoreURL, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Leadership and the proxy registry of this replica (``meshcore proxy-status
        --store``), in a thread of their own."""
        from meshcore.store.replicas import ReplicaDuties

        ads = self.ads
        assert ads is not None

        async def status() -> dict[str, dict[str, str]]:
            return ads.sync_status()

        replica = self.replica_id or f"{self.host}:{self.ads_port}"
        options = self.ca_options or CAOptions(port=0)
        duties = ReplicaDuties(
            source.client.clone(),
            url,
            replica,
            lambda: asyncio.run_coroutine_threadsafe(status(), loop).result(timeout=5),
            analysis=lambda: {
                "revision": source.served_revision,
                "problems": [p.to_dict() for p in self.plane.problems],
                "rejected": sorted(source.rejected),
            },
            # The shared CA's root rotation (leader) and reload (every replica); a CA plugged
            # in from files (--cacerts) is the operator's to rotate.
            on_ca=self._use_ca if self.ca_server is not None and self.ca_shared else None,
            root_grace=options.root_grace,
            root_ttl=options.root_ttl,
        )
        source.replica_status = lambda: {"id": replica, "leader": duties.election.leader}
        self.duties = duties
        duties.start()

    async def _start_ca(self, options: CAOptions) -> None:
        if self.store is not None and not options.cacerts:
            # Replicas share one self-signed root, created once in the store (never logged).
            from meshcore.store.replicas import shared_authority

            # In a thread: another replica may hold the creation lock for a while.
            authority, _ = await asyncio.to_thread(
                shared_authority, self.store.client, self.store.url, root_ttl=options.root_ttl
            )
            self.ca_shared = True
            self._write_roots(authority)
        else:
            authority = load_ca(options)
        self.authority = authority
        tokens = BootstrapTokens()
        self.token_count = load_tokens(options.tokens, tokens) if options.tokens else 0
        self.ca_server = await start_ca_server(
            authority, tokens, port=options.port, mtls_port=options.mtls_port, host=self.host
        )

    def _write_roots(self, ca: CertificateAuthority) -> None:
        """The trust bundle for agents (not the key) in the state directory, replaced whole."""
        options = self.ca_options
        if options is not None and options.state_dir:
            state = Path(options.state_dir)
            state.mkdir(parents=True, exist_ok=True)
            tmp = state / "root-cert.pem.tmp"
            tmp.write_text(ca.trust_bundle_pem())
            tmp.replace(state / "root-cert.pem")

    def _use_ca(self, ca: CertificateAuthority) -> None:
        """The shared CA changed in the store (a root rotation): sign with it, serve the CA
        ports with it, and give agents its bundle."""
        if self.ca_server is None or (
            self.authority is not None
            and ca.cert == self.authority.cert
            and ca.roots() == self.authority.roots()
        ):
            return
        self.ca_server.use(ca)
        self.authority = ca
        self._write_roots(ca)
        log.info("the shared CA changed in the store: signing and trust bundle reloaded")

    async def run(self, stop: asyncio.Event) -> None:
        """Watches the configuration and keeps the proxies up to date until ``stop``."""
        ads = self.ads
        assert ads is not None, "start() first"
        await asyncio.gather(
            self.plane.run(lambda: [s.node for s in ads.proxies.values()], stop),
            self.registry.run(lambda: self.plane.reoverlay(SOURCE), stop),
        )

    def _proxy_lifecycle(self, node: NodeInfo, connected: bool) -> None:
        """A proxy's first stream arrived (it may register with its WorkloadGroup) or its
        last one closed (its registration's grace period starts)."""
        if not connected:
            self.registry.disconnected(node)
        elif self.registry.connected(self.plane.base, node):
            self.plane.reoverlay(SOURCE)

    async def close(self) -> None:
        """Stops what :meth:`start` started."""
        if self.debug is not None:
            await asyncio.to_thread(self.debug.close)
        if self._grpc is not None:
            await self._grpc.stop(1.0)
        if self.ca_server is not None:
            await self.ca_server.stop(1.0)
        if self.duties is not None:
            await asyncio.to_thread(self.duties.stop)
        if self.store is not None:
            await asyncio.to_thread(self.store.stop)
