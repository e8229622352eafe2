"""meshcore proxy-config: istioctl's columns from translated resources and from an Envoy
config_dump document (the real-Envoy comparison is in tests/envoy/test_explain_envoy.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from meshcore.ca import CertificateAuthority
from meshcore.config import validate
from meshcore.tools import proxyconfig
from tests._cli import main

from .conftest import EXAMPLES

NODE = "sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local"


def translated() -> proxyconfig.ProxyConfig:
    mesh = validate([str(EXAMPLES)]).model
    assert mesh is not None
    return proxyconfig.from_mesh(mesh, NODE)


def test_columns_from_translated_resources() -> None:
    pc = translated()
    clusters = pc.table("cluster")
    assert ("reviews.default.svc.cluster.local", "9080", "v2", "outbound", "EDS", "-") in clusters
    assert ("", "9080", "-", "inbound", "STATIC", "-") in clusters
    assert ("127.0.0.1", "9080", "ALL", "Route: 9080") in pc.table("listener")
    assert ("127.0.20.2:9080", "HEALTHY", "OK",
            "outbound|9080|v2|reviews.default.svc.cluster.local") in pc.table("endpoint")  # fmt: skip
    routes = pc.table("route")
    assert ("9080", "reviews.default.svc.cluster.local:9080",
            "reviews.default.svc.cluster.local +7 more", "/*", "-") in routes  # fmt: skip
    text = proxyconfig.render(pc, "cluster")
    assert text.splitlines()[0].split() == ["SERVICE", "FQDN", "PORT", "SUBSET", "DIRECTION",
                                            "TYPE", "DESTINATION", "RULE"]  # fmt: skip


def dump_of(pc: proxyconfig.ProxyConfig, cert_pem: bytes) -> dict[str, object]:
    """A config_dump document as Envoy's admin writes it, around ``pc``'s resources."""
    t = "type.googleapis.com/envoy.admin.v3."
    return {"configs": [
        {"@type": t + "BootstrapConfigDump", "bootstrap": {}},
        {"@type": t + "ClustersConfigDump", "dynamic_active_clusters": [
            {"version_info": "1", "cluster": {"@type": "x", **c}} for c in pc.resources["cluster"]]},
        {"@type": t + "ListenersConfigDump", "dynamic_listeners": [
            {"name": lst["name"], "active_state": {"listener": lst}}
            for lst in pc.resources["listener"]]},
        {"@type": t + "RoutesConfigDump", "dynamic_route_configs": [
            {"route_config": r} for r in pc.resources["route"]]},
        {"@type": t + "EndpointsConfigDump", "dynamic_endpoint_configs": [
            {"endpoint_config": e} for e in pc.resources["endpoint"]]},
        {"@type": t + "SecretsConfigDump", "dynamic_active_secrets": [
            {"name": "default", "secret": {"name": "default", "tls_certificate": {
                "certificate_chain": {"inline_bytes": base64.b64encode(cert_pem).decode()}}}},
            {"name": "ROOTCA", "secret": {"name": "ROOTCA", "validation_context": {
                "trusted_ca": {"inline_string": cert_pem.decode()}}}}]},
    ]}  # fmt: skip


def test_config_dump_gives_the_same_rows(tmp_path: Path) -> None:
    pc = translated()
    ca = CertificateAuthority.generate()
    pem = ca.trust_bundle_pem().encode()
    path = tmp_path / "dump.json"
    path.write_text(json.dumps(dump_of(pc, pem)))
    dumped = proxyconfig.from_config_dump(path)
    for kind in ("cluster", "listener", "route", "endpoint"):
        assert dumped.table(kind) == pc.table(kind)
    secrets = dumped.table("secret")
    assert [(r[0], r[1], r[3]) for r in secrets] == [("ROOTCA", "CA", "true"),
                                                      ("default", "Cert Chain", "true")]  # fmt: skip
    with pytest.raises(ValueError, match="not an Envoy config_dump"):
        proxyconfig.from_config_dump({"nope": 1})


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy-config", "endpoint", "ratings-1", "--config", str(EXAMPLES)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["ENDPOINT", "STATUS"]
    assert "127.0.30.2:9080" in out
    assert main(["proxy-config", "cluster", "ratings-1", "--config", str(EXAMPLES),
                 "-o", "json"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert {c["name"] for c in data} >= {"outbound|9080||ratings.default.svc.cluster.local"}
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["proxy-config", "cluster", "--file", str(bad)]) == 2
    assert main(["proxy-config", "cluster", "--config", str(EXAMPLES)]) == 2  # no node
    assert main(["proxy-config", "cluster", "nosuch", "--config", str(EXAMPLES)]) == 2
