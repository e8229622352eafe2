"""The data-plane wrapper does not verify JWTs: when a RequestAuthentication gives its workload
a jwt_authn filter, the listener update is refused (NACKed, with the reason, over real ADS),
never served without the check; the last good config keeps deciding, as Envoy keeps its
listeners after a NACK."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from meshcore.xds import types
from tests.dataplane.conftest import RATINGS_1, Mesh, eventually, running_mesh, spiffe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "envoy"))
from _jwt import SigningKey, jwks

RA = """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ratings-jwt, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwks: '%s'
"""


def test_listener_with_jwt_filter_is_nacked(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        dp = await mesh.dataplane(RATINGS_1, "ratings")
        try:
            good = dp.config
            (mesh.config_dir / "ratings-jwt.yaml").write_text(RA % jwks(SigningKey("k")))
            mesh.rebuild()
            await eventually(lambda: dp.ads.nacks, what="a NACK")
            type_url, message = dp.ads.nacks[-1]
            assert type_url == types.LISTENER
            assert "JWT authentication" in message, message
            await eventually(lambda: mesh.ads.sync_status()[RATINGS_1]["LDS"] == "NACKED",
                             what="NACKED on the server")  # fmt: skip
            assert dp.config is good
            ok = dp.decide(direction="inbound", method="GET", authority="ratings:9080",
                           path="/ratings/1", principal=spiffe("reviews"))  # fmt: skip
            assert ok.allowed  # type: ignore[attr-defined]
        finally:
            await dp.aclose()

    async def main() -> None:
        async with running_mesh(tmp_path) as mesh:
            await asyncio.wait_for(body(mesh), 60)

    asyncio.run(main())
