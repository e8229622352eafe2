"""The demo's sidecars: real Envoy through meshcore's agent, or meshcore's reference proxy;
both answer the same questions (retries, ejections, mTLS, denials) from their own records."""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
import urllib.request
from typing import Any

from meshcore.demo.apps import CALLED_PORT
from meshcore.demo.mesh import RBAC_DENIED, DemoMesh, Workload
from meshcore.xds.node import LABELS_KEY

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
            xds_address=mesh.addresses(0),  # every control-plane replica
            ca_address=mesh.addresses(2),
            ca_mtls_address=mesh.addresses(3),
            ca_root=mesh.ca_root(),
            token=mesh.tokens[workload.name],
            workdir=self.dir,
            # Istio's agent sends the pod's labels (LABELS); its metrics name the workload.
            metadata={
                **workload.metadata,
                LABELS_KEY: {"app": workload.kind, "version": workload.version},
            },
            status_port=0,
        )

    @property
    def admin_port(self) -> int:
        return self.agent.admin_port

    @property
    def stats_url(self) -> str | None:
        """Istio's merged Prometheus endpoint (Envoy's stats and Istio's standard metrics)."""
        return self.agent.stats_url

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


class IngressGateway(Sidecar):
    """The demo's ingress gateway: real Envoy as a router proxy (what ``meshcore agent
    --router --label istio=ingressgateway`` runs), listening on the loopback address of the
    demo's layout."""

    def __init__(self, mesh: DemoMesh) -> None:  # not a workload's sidecar
        from meshcore.dataplane.agent import Agent
        from meshcore.demo.mesh import (
            INGRESS_ADDRESS,
            INGRESS_IDENTITY,
            INGRESS_LABELS,
            INGRESS_NODE,
        )
        from meshcore.xds.gateway import GATEWAY_ADDRESS_KEY
        from meshcore.xds.node import LABELS_KEY

        self.dir = mesh.workdir / "gateways" / "istio-ingressgateway"
        self.agent = Agent(
            node_id=INGRESS_NODE,
            identity=INGRESS_IDENTITY,
            xds_address=f"127.0.0.1:{mesh.xds_port}",
            ca_address=f"127.0.0.1:{mesh.ca_port}",
            ca_mtls_address=f"127.0.0.1:{mesh.ca_mtls_port}",
            ca_root=mesh.ca_root(),
            token=mesh.tokens["ingress"],
            workdir=self.dir,
            metadata={GATEWAY_ADDRESS_KEY: INGRESS_ADDRESS, LABELS_KEY: dict(INGRESS_LABELS)},
        )

    def gateway_requests(self) -> int:
        """Requests its gateway listeners answered with 2xx."""
        return self._sum(r"^http\.outbound_.*\.downstream_rq_2xx$")


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
            mesh.addresses(0), node_id=w.node_id, bootstrap_token=mesh.tokens[w.name],
            ca_address=mesh.addresses(2), ca_mtls_address=mesh.addresses(3),
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
