"""MeshConfig: reading, validation errors with file and line, and what translation does with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshcore.config import load
from meshcore.config.meshconfig import MeshConfig
from meshcore.errors import ConfigError
from meshcore.xds import types
from meshcore.xds.translate import generate, proxy_for_node

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NODE = "sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local"


def test_defaults_are_istios(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text("")
    mc = MeshConfig.load(tmp_path / "mesh.yaml")
    assert mc == MeshConfig()
    assert not mc.tracing
    assert mc.tracing_sampling == 1.0
    assert mc.access_log_file == ""


def test_reads_every_field(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\nenableTracing: true\n"
        "defaultConfig:\n  tracing:\n    sampling: 100\n    zipkin: {address: 127.0.0.1:9411}\n"
        "trustDomain: example.org\nrootNamespace: mesh-root\n"
    )
    mc = MeshConfig.load(tmp_path / "mesh.yaml")
    assert mc.access_log_encoding == "JSON"
    assert mc.tracing
    assert mc.zipkin_endpoint() == ("127.0.0.1", 9411)
    assert mc.tracing_sampling == 100.0
    assert (mc.trust_domain, mc.root_namespace) == ("example.org", "mesh-root")


def test_errors_name_the_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text(
        "accessLogFile: /dev/stdout\naccesLogEncoding: JSON\ndefaultConfig:\n  tracing:\n"
        "    sampling: 250\n    zipkin: {address: collector}\n"
    )
    with pytest.raises(ConfigError) as info:
        MeshConfig.load(f)
    errors = {(p.path, p.line): p.message for p in info.value.errors()}
    assert all(p.file == str(f) for p in info.value.errors())
    assert "did you mean 'accessLogEncoding'" in errors[("accesLogEncoding", 2)]
    assert "[0, 100]" in errors[("defaultConfig.tracing.sampling", 5)]
    assert "HOST:PORT" in errors[("defaultConfig.tracing.zipkin.address", 6)]


def test_bad_enum_and_warning(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text("accessLogEncoding: XML\n")
    with pytest.raises(ConfigError, match="XML"):
        MeshConfig.load(f)
    f.write_text("enableTracing: true\n")
    mc = MeshConfig.load(f)
    assert not mc.tracing
    assert [w.path for w in mc.warnings] == ["enableTracing"]


def _hcms(resources: dict[str, dict[str, object]]) -> list[hcm_pb2.HttpConnectionManager]:
    out = []
    for listener in resources[types.LISTENER].values():
        for chain in listener.filter_chains:  # type: ignore[attr-defined]
            for f in chain.filters:
                if f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                    hcm = hcm_pb2.HttpConnectionManager()
                    f.typed_config.Unpack(hcm)
                    out.append(hcm)
    return out


def test_translation_adds_access_logs_and_tracing() -> None:
    mesh = load(EXAMPLES)
    proxy = proxy_for_node(mesh, NODE)
    plain = generate(mesh, proxy).resources
    assert all(not h.access_log and not h.HasField("tracing") for h in _hcms(plain))
    assert "zipkin" not in plain[types.CLUSTER]
    mc = MeshConfig.from_dict(
        {"accessLogFile": "/dev/stdout", "accessLogEncoding": "JSON", "enableTracing": True,
         "defaultConfig": {"tracing": {"sampling": 50, "zipkin": {"address": "127.0.0.1:9411"}}}}
    )  # fmt: skip
    observed = generate(mesh, proxy, mesh_config=mc).resources
    hcms = _hcms(observed)
    assert len(hcms) == 3  # outbound listeners on 8080 and 9080, and the inbound one
    for hcm in hcms:
        (log,) = hcm.access_log
        flog = file_pb2.FileAccessLog()
        log.typed_config.Unpack(flog)
        assert flog.path == "/dev/stdout"
        assert flog.log_format.json_format.fields["response_code_details"].string_value == (
            "%RESPONSE_CODE_DETAILS%"
        )
        assert hcm.tracing.provider.name == "envoy.tracers.zipkin"
        assert hcm.tracing.random_sampling.value == 50
    assert observed[types.CLUSTER]["zipkin"].load_assignment.endpoints[0].lb_endpoints[0]  # type: ignore[attr-defined]
    # Back to no MeshConfig: the cached translation does not leak the logging into it.
    again = generate(mesh, proxy).resources
    assert all(not h.access_log for h in _hcms(again))
