"""A real control plane for data-plane tests: the examples/ mesh in a temp dir, meshcore's
ADS server (real gRPC) and CA (real TLS), all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from meshcore.ca import CertificateAuthority
from meshcore.ca.service import BootstrapTokens, CAServer, start_ca_server
from meshcore.dataplane import DataPlane
from meshcore.xds.cache import NodeInfo
from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.server import AdsServer, start_ads_server
from meshcore.xds.translator import Translator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DOMAIN = "cluster.local"


def node_id(name: str, ip: str, namespace: str = "default") -> str:
    return f"sidecar~{ip}~{name}.{namespace}~{namespace}.svc.{DOMAIN}"


FRONTEND = node_id("frontend-1", "127.0.10.1")
REVIEWS_V1 = node_id("reviews-v1-1", "127.0.20.1")
RATINGS_1 = node_id("ratings-1", "127.0.30.1")


def spiffe(sa: str, namespace: str = "default") -> str:
    return f"spiffe://{DOMAIN}/ns/{namespace}/sa/{sa}"


@dataclass
class Mesh:
    """A running control plane; ``xds`` and ``ca`` are the addresses proxies connect to."""

    config_dir: Path
    plane: ControlPlane
    ads: AdsServer
    server: grpc.aio.Server
    xds_port: int
    ca: CertificateAuthority
    tokens: BootstrapTokens
    ca_server: CAServer

    @property
    def xds(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    def rebuild(self) -> None:
        """Reload the config dir and push to every connected proxy (what `serve` does)."""
        assert self.plane.load(), self.plane.problems
        self.plane.rebuild([s.node for s in self.ads.proxies.values()])

    async def stop_ads(self) -> None:
        await self.server.stop(None)

    async def start_ads(self) -> None:
        self.server, self.ads, port = await start_ads_server(self.plane.cache, port=self.xds_port)
        assert port == self.xds_port

    async def dataplane(self, node: str, sa: str, **kw: Any) -> DataPlane:
        return await DataPlane.aconnect(
            self.xds,
            node_id=node,
            bootstrap_token=self.tokens.issue(spiffe(sa)),
            ca_address=f"127.0.0.1:{self.ca_server.port}",
            ca_mtls_address=f"127.0.0.1:{self.ca_server.mtls_port}",
            trust_bundle=self.ca.trust_bundle_pem(),
            service_account=sa,
            **kw,
        )


@asynccontextmanager
async def running_mesh(tmp: Path, config: Path = EXAMPLES) -> AsyncIterator[Mesh]:
    config_dir = tmp / "mesh"
    shutil.copytree(config, config_dir)
    plane = ControlPlane([config_dir], Translator().resources_for)
    assert plane.load(), plane.problems
    server, ads, port = await start_ads_server(plane.cache)
    ca = CertificateAuthority.generate()
    tokens = BootstrapTokens()
    ca_server = await start_ca_server(ca, tokens)
    mesh = Mesh(config_dir, plane, ads, server, port, ca, tokens, ca_server)
    try:
        yield mesh
    finally:
        await mesh.server.stop(None)
        await ca_server.stop()


async def eventually(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def node_info(node: str) -> NodeInfo:
    return NodeInfo(id=node)
