"""A Sidecar's ``outboundTrafficPolicy`` on the proxies it selects: capture-mode proxies apply
it (virtualOutbound's catch-all, the ``allow_any``/``block_all`` virtual host), per proxy and
over MeshConfig's; loopback proxies it selects are told they cannot apply REGISTRY_ONLY."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.capture.test_capture_layout import BASE, CLIENT, NODE, generate
from tests.envoy._sidecar import spiffe_of, validate, workload_secrets

from meshcore.ca import CertificateAuthority
from meshcore.config import load_objects, validate_object
from meshcore.config.meshconfig import MeshConfig
from meshcore.xds import types
from meshcore.xds.translate import Translator, proxy_for_node, render_static_bootstrap


def sidecar(mode: str | None, app: str | None = "reviews", **spec: Any) -> dict[str, Any]:
    if mode is not None:
        spec["outboundTrafficPolicy"] = {"mode": mode} if mode else {}
    if app:
        spec["workloadSelector"] = {"labels": {"app": app}}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": f"sc-{app or 'ns'}", "namespace": "default"},
        "spec": spec,
    }


def catchall(got: Any) -> str:
    vo = got.resources[types.LISTENER]["virtualOutbound"]
    tcp = vo.filter_chains[1].filters[0].typed_config.value
    return "BlackHoleCluster" if b"BlackHoleCluster" in tcp else "PassthroughCluster"


def fallback(got: Any) -> str:
    return str(got.resources[types.ROUTE]["9080"].virtual_hosts[-1].name)


def test_sidecar_registry_only_applies_to_the_capture_proxies_it_selects() -> None:
    objects = [*BASE, sidecar("REGISTRY_ONLY")]
    t = Translator()
    selected = generate(objects, NODE, translator=t)
    other = generate(objects, CLIENT, translator=t)
    assert (catchall(selected), fallback(selected)) == ("BlackHoleCluster", "block_all")
    assert (catchall(other), fallback(other)) == ("PassthroughCluster", "allow_any")
    # No egress: every service stays reachable (Istio's default egress, */*).
    assert "9080" in selected.resources[types.ROUTE]
    assert "outbound|9080||reviews.default.svc.cluster.local" in selected.resources[types.CLUSTER]
    assert not selected.problems
    assert not other.problems


def test_mode_defaults_to_registry_only_and_allow_any_overrides_mesh_config() -> None:
    assert catchall(generate([*BASE, sidecar("")])) == "BlackHoleCluster"
    mc = MeshConfig.from_dict({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})
    got = generate([*BASE, sidecar("ALLOW_ANY")], mc=mc)
    assert (catchall(got), fallback(got)) == ("PassthroughCluster", "allow_any")
    other = generate([*BASE, sidecar("ALLOW_ANY")], CLIENT, mc=mc)
    assert (catchall(other), fallback(other)) == ("BlackHoleCluster", "block_all")


def test_loopback_proxies_it_selects_are_told_and_validation_accepts_it() -> None:
    objects = [*BASE, sidecar("REGISTRY_ONLY")]
    assert not [p for p in validate_object(objects[-1]) if p.severity == "error"]
    t = Translator()
    got = generate(objects, NODE, meta=None, translator=t)
    found = [p for p in got.problems if p.path == "spec.outboundTrafficPolicy.mode"]
    assert len(found) == 1
    assert "REGISTRY_ONLY" in found[0].message
    assert "capture-mode" in found[0].message
    assert found[0].severity == "warning"
    # Not a proxy it does not select, nor a capture-mode one (which applies it).
    assert not generate(objects, CLIENT, meta=None, translator=t).problems
    assert not generate(objects, NODE, translator=t).problems
    # Said before any proxy connects (meshcore validate, serve's start-up).
    said = Translator().load_problems(load_objects(objects))
    assert [p.path for p in said] == ["spec.outboundTrafficPolicy.mode"]


@pytest.mark.envoy
def test_registry_only_sidecar_validates_with_envoy(tmp_path: Path) -> None:
    objects = [*BASE, sidecar("REGISTRY_ONLY", egress=[{"hosts": ["./*"]}])]
    mesh = load_objects(objects)
    proxy = proxy_for_node(mesh, NODE, {"INTERCEPTION_MODE": "REDIRECT"})
    result = Translator().generate(mesh, proxy)
    assert catchall(result) == "BlackHoleCluster"
    ca = CertificateAuthority.generate()
    boot = render_static_bootstrap(
        result, NODE, 15000, secrets=workload_secrets(ca, spiffe_of(proxy))
    )
    checked = validate(boot, tmp_path)
    assert checked.returncode == 0, (checked.stdout + checked.stderr)[-4000:]
