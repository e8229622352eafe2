"""Real Envoy accepts the capture layout (``envoy --mode validate``): every workload of a mesh
using every translated feature, under ALLOW_ANY and REGISTRY_ONLY."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.capture.test_capture_layout import BASE, EXT_VS, EXTERNAL
from tests.envoy._sidecar import spiffe_of, validate, workload_secrets
from tests.envoy.test_xds_translate_envoy import FULL, PROVIDERS, node

from meshcore.ca import CertificateAuthority
from meshcore.config import load_objects
from meshcore.config.meshconfig import MeshConfig
from meshcore.xds import types
from meshcore.xds.translate import Translator, proxy_for_node, render_static_bootstrap

pytestmark = pytest.mark.envoy


@pytest.mark.parametrize(
    ("mode", "objects"),
    [("ALLOW_ANY", FULL), ("REGISTRY_ONLY", FULL), ("ALLOW_ANY", [*BASE, *EXTERNAL, EXT_VS])],
    ids=["full-allow-any", "full-registry-only", "passthrough"],
)
def test_every_feature_validates_in_capture_mode(
    mode: str, objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    ca = CertificateAuthority.generate()
    mesh = load_objects(objects)
    mc = MeshConfig.from_dict({"outboundTrafficPolicy": {"mode": mode}})
    translator = Translator(mesh_config=mc, extension_providers=PROVIDERS)
    for w in mesh.workload_entries:
        node_id = node(w.name, w.address)
        proxy = proxy_for_node(mesh, node_id, {"INTERCEPTION_MODE": "REDIRECT"})
        result = translator.generate(mesh, proxy)
        assert "virtualInbound" in result.resources[types.LISTENER]
        boot = render_static_bootstrap(
            result, node_id, 15000, secrets=workload_secrets(ca, spiffe_of(proxy))
        )
        checked = validate(boot, tmp_path)
        assert checked.returncode == 0, (checked.stdout + checked.stderr)[-4000:]
