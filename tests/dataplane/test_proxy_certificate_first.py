"""A proxy that cannot get its certificate never shows up as SYNCED: like Istio's agent, the
data plane gets its certificate before it connects to ADS, and says why it could not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshcore.dataplane import DataPlane
from meshcore.dataplane.plane import DataPlaneError
from tests.dataplane.conftest import FRONTEND, running_mesh, spiffe


def test_no_certificate_no_sync(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            # A token for sa/frontend, a request for sa/default (the README's old example).
            attempt = asyncio.ensure_future(DataPlane.aconnect(
                mesh.xds, node_id=FRONTEND,
                bootstrap_token=mesh.tokens.issue(spiffe("frontend")),
                ca_address=f"127.0.0.1:{mesh.ca_server.port}",
                trust_bundle=mesh.ca.trust_bundle_pem(), timeout=1.5,
            ))  # fmt: skip
            seen = set()
            while not attempt.done():  # bounded by the attempt's timeout
                seen.update(mesh.ads.sync_status())
                await asyncio.sleep(0.02)
            with pytest.raises(DataPlaneError, match="no certificate from the CA"):
                await attempt
            assert FRONTEND not in seen
            # With the right service account: the certificate, then the config.
            dp = await mesh.dataplane(FRONTEND, "frontend")
            try:
                assert mesh.ads.sync_status()[FRONTEND]["CDS"] == "SYNCED"
            finally:
                await dp.aclose()

    asyncio.run(main())
