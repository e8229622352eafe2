"""The clients a sidecar runs know every control-plane replica (``a:p,b:p``): the
DataPlane's ADS client and the certificate client move on from one that is not there."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meshcore.ca import CertificateAuthority
from meshcore.ca.service import BootstrapTokens, start_ca_server
from meshcore.dataplane import CertificateClient, DataPlane
from meshcore.dataplane.bootstrap import XDS_CLUSTER, ads_bootstrap
from tests.envoy._sidecar import control_plane_in_thread, free_ports

EXAMPLES = Path(__file__).parents[2] / "src" / "meshcore" / "demo" / "examples"
NODE = "sidecar~127.0.20.1~reviews-v1-1.default~default.svc.cluster.local"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"


def test_dataplane_ads_client_skips_a_replica_that_is_gone() -> None:
    dead, xds = free_ports(2)
    with control_plane_in_thread([str(EXAMPLES)], xds_port=xds) as (_, server):
        dp = DataPlane.connect(f"127.0.0.1:{dead},127.0.0.1:{xds}", node_id=NODE, timeout=15)
        try:
            assert NODE in server.ads.proxies
        finally:
            dp.close()


def test_certificate_client_skips_a_replica_that_is_gone() -> None:
    async def main() -> None:
        ca = CertificateAuthority.generate()
        tokens = BootstrapTokens()
        srv = await start_ca_server(ca, tokens)
        (dead,) = free_ports(1)
        try:
            client = CertificateClient(
                f"127.0.0.1:{dead},127.0.0.1:{srv.port}",
                REVIEWS,
                mtls_address=f"127.0.0.1:{dead},127.0.0.1:{srv.mtls_port}",
                trust_bundle_pem=ca.trust_bundle_pem(),
                bootstrap_token=tokens.issue(REVIEWS),
            )
            first = await client.fetch()
            second = await client.fetch()  # a renewal over mTLS, on the live replica
            assert second.serial != first.serial
            assert client.renewals == 1
        finally:
            await srv.stop()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_bootstrap_puts_every_replica_in_the_xds_cluster() -> None:
    boot = ads_bootstrap(NODE, "127.0.0.1", 1, xds_addresses="127.0.0.1:1,127.0.0.2:2,[::1]:3")
    (cluster,) = [c for c in boot["static_resources"]["clusters"] if c["name"] == XDS_CLUSTER]
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in endpoints] == [
        {"address": "127.0.0.1", "port_value": 1},
        {"address": "127.0.0.2", "port_value": 2},
        {"address": "::1", "port_value": 3},
    ]
