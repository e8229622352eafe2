"""MeshModel: immutable, indexed, with Istio's lookup rules."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest

from meshcore.config import MeshModel, load, load_objects, resolve_host
from meshcore.errors import ConfigError

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def mesh() -> MeshModel:
    return load(EXAMPLES)


def test_services_by_fqdn_and_short_name(mesh: MeshModel) -> None:
    svc = mesh.service("reviews", "default")
    assert svc is not None
    assert svc.hostname == "reviews.default.svc.cluster.local"
    assert mesh.service("reviews.default.svc.cluster.local") is svc
    assert mesh.service("reviews", "other") is None
    assert [p.port for p in svc.ports] == [9080]


def test_workloads_by_namespace_and_labels(mesh: MeshModel) -> None:
    reviews = mesh.service("reviews")
    assert reviews is not None
    assert sorted(w.address for w in mesh.endpoints(reviews)) == ["127.0.20.1", "127.0.20.2"]
    assert [w.name for w in mesh.workloads("default", {"app": "reviews", "version": "v2"})] == [
        "reviews-v2-1"
    ]
    assert len(mesh.workloads("default")) == 5
    assert mesh.workloads("nowhere") == ()


def test_subsets_and_virtual_services(mesh: MeshModel) -> None:
    host = "reviews.default.svc.cluster.local"
    assert set(mesh.subsets(host)) == {"v1", "v2"}
    assert dict(mesh.subsets(host)["v2"].labels) == {"version": "v2"}
    [vs] = mesh.virtual_services_for(host)
    assert vs.name == "reviews"
    assert [r["name"] for r in vs.http] == ["testers", "canary"]
    assert mesh.virtual_services_for("nope.default.svc.cluster.local") == ()


def test_policies_by_selector_and_namespace(mesh: MeshModel) -> None:
    names = {p.name for p in mesh.authorization_policies_for("default", {"app": "ratings"})}
    assert names == {"ratings-deny-admin", "ratings-allow-reviews"}
    assert mesh.authorization_policies_for("default", {"app": "reviews"}) == ()
    # The root namespace's PeerAuthentication applies mesh-wide.
    assert mesh.mtls_mode("default", {"app": "reviews"}) == "STRICT"
    assert mesh.mtls_mode("elsewhere", {}) == "STRICT"


def test_peer_authentication_precedence() -> None:
    def pa(
        name: str, ns: str, mode: str, selector: dict[str, str] | None = None, **extra: object
    ) -> dict[str, object]:
        spec: dict[str, object] = {"mtls": {"mode": mode}, **extra}
        if selector:
            spec["selector"] = {"matchLabels": selector}
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }

    mesh = load_objects(
        [
            pa("mesh", "istio-system", "STRICT"),
            pa("ns", "shop", "PERMISSIVE"),
            pa("wl", "shop", "UNSET", {"app": "legacy"}, portLevelMtls={8080: {"mode": "DISABLE"}}),
        ]
    )
    assert mesh.mtls_mode("shop", {"app": "web"}) == "PERMISSIVE"
    assert mesh.mtls_mode("shop", {"app": "legacy"}) == "PERMISSIVE"  # UNSET inherits
    assert mesh.mtls_mode("shop", {"app": "legacy"}, port=8080) == "DISABLE"
    assert mesh.mtls_mode("other", {}) == "STRICT"
    assert load_objects([]).mtls_mode("x", {}) == "PERMISSIVE"


def test_model_is_immutable(mesh: MeshModel) -> None:
    with pytest.raises(AttributeError):
        mesh.services = ()  # type: ignore[misc]
    svc = mesh.services[0]
    with pytest.raises(AttributeError):
        svc.name = "x"  # type: ignore[misc]
    assert isinstance(svc.spec, MappingProxyType)
    with pytest.raises(TypeError):
        svc.spec["ports"] = []  # type: ignore[index]
    assert isinstance(svc.spec["ports"], tuple)


def test_manifest_round_trip(mesh: MeshModel) -> None:
    vs = mesh.virtual_services[0]
    manifest = vs.manifest()
    assert manifest["kind"] == "VirtualService"
    again = load_objects([manifest])
    assert again.virtual_services[0].spec == vs.spec


def test_resolve_host() -> None:
    assert resolve_host("reviews", "shop") == "reviews.shop.svc.cluster.local"
    assert resolve_host("reviews.other", "shop") == "reviews.other"
    assert resolve_host("*.example.com", "shop") == "*.example.com"
    assert resolve_host("r", "ns", "corp.local") == "r.ns.svc.corp.local"


def test_load_raises_with_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\n"
        "spec:\n  hosts: ['foo.*']\n  http:\n  - route: [{destination: {host: a}, weight: -5}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load(bad)
    errors = info.value.errors()
    assert [(e.path, e.line) for e in errors] == [
        ("spec.hosts[0]", 5),
        ("spec.http[0].route[0].weight", 7),
    ]
    assert all(e.file == str(bad) and e.kind == "VirtualService" for e in errors)
    assert "bad.yaml:5: VirtualService default/a: spec.hosts[0]:" in str(info.value)
