"""MeshConfig's telemetry providers (``extensionProviders`` of tracing, metrics and access-log
kinds, ``defaultProviders``): validated with file, line and path, and applied to the config
sidecars get (no Envoy here; the Envoy tests are beside this file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshcore.config import load
from meshcore.config.meshconfig import MeshConfig
from meshcore.errors import ConfigError
from meshcore.xds import types
from meshcore.xds.telemetry import OTEL_LOGGER_NAME, TELEMETRY_KEY
from meshcore.xds.translate import generate, proxy_for_node

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NODE = "sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local"
OTEL = [{"name": "otel", "opentelemetry": {"service": "127.0.0.1", "port": 4317}}]


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


def test_provider_errors_name_file_line_and_path(tmp_path: Path) -> None:
    f = tmp_path / "mesh.yaml"
    f.write_text(
        "extensionProviders:\n"
        "- name: sky\n  skywalking: {service: sw, port: 11800}\n"
        "- name: otel\n  opentelemetry: {service: collector}\n"
        "- name: prom\n  prometheus: {}\n"
        "- name: both\n  zipkin: {service: z, port: 9411}\n  prometheus: {}\n"
        "defaultProviders:\n  tracing: [prom]\n  metrics: [nope]\n"
    )
    with pytest.raises(ConfigError) as info:
        MeshConfig.load(f)
    errors = {(p.path, p.line): p.message for p in info.value.errors()}
    assert all(p.file == str(f) and p.kind == "MeshConfig" for p in info.value.errors())
    assert "not supported by meshcore" in errors[("extensionProviders[0].skywalking", 3)]
    assert "port is required" in errors[("extensionProviders[1].opentelemetry.port", 5)]
    assert "exactly one kind" in errors[("extensionProviders[3]", 8)]
    assert "not a tracing one" in errors[("defaultProviders.tracing[0]", 12)]
    assert "no extension provider named 'nope'" in errors[("defaultProviders.metrics[0]", 13)]


def test_opentelemetry_default_provider_traces_to_its_collector() -> None:
    mesh = load(EXAMPLES)
    proxy = proxy_for_node(mesh, NODE)
    mc = MeshConfig.from_dict({
        "extensionProviders": [*OTEL, {"name": "z", "zipkin": {"service": "z", "port": 9411}}],
        "defaultProviders": {"tracing": ["otel"]},
        "defaultConfig": {"tracing": {"sampling": 25}},
        "enableTracing": True,  # the legacy Zipkin setting gives way to the provider
    })  # fmt: skip
    out = generate(mesh, proxy, mesh_config=mc).resources
    for hcm in _hcms(out):
        assert hcm.tracing.provider.name == "envoy.tracers.opentelemetry"
        otel = opentelemetry_pb2.OpenTelemetryConfig()
        hcm.tracing.provider.typed_config.Unpack(otel)
        assert otel.grpc_service.envoy_grpc.cluster_name == "opentelemetry|otel"
        assert hcm.tracing.random_sampling.value == 25
    cluster = out[types.CLUSTER]["opentelemetry|otel"]
    assert cluster.typed_extension_protocol_options  # type: ignore[attr-defined]  # HTTP/2 (gRPC)
    assert "zipkin" not in out[types.CLUSTER]


def test_metrics_and_access_log_providers_apply() -> None:
    mesh = load(EXAMPLES)
    agent = proxy_for_node(mesh, NODE, {TELEMETRY_KEY: "otlp"})

    def loggers(mc: MeshConfig | None) -> set[str]:
        return {log.name for h in _hcms(generate(mesh, agent, mesh_config=mc).resources)
                for log in h.access_log}  # fmt: skip

    # Istio's default: Prometheus metrics (the agent's access-log stream) on every sidecar.
    assert loggers(None) == {OTEL_LOGGER_NAME}
    assert loggers(MeshConfig.from_dict({"extensionProviders": [{"name": "p", "prometheus": {}}],
                                         "defaultProviders": {"metrics": ["p"]}})) == {
        OTEL_LOGGER_NAME}  # fmt: skip
    # No metrics provider: no stream; a file access-log provider: its file and format.
    mc = MeshConfig.from_dict({
        "extensionProviders": [{"name": "f", "envoyFileAccessLog": {
            "path": "/tmp/x.log", "logFormat": {"text": "%RESPONSE_CODE%\n"}}}],
        "defaultProviders": {"metrics": [], "accessLogging": ["f"]},
    })  # fmt: skip
    assert loggers(mc) == {"envoy.access_loggers.file"}
    hcm = _hcms(generate(mesh, agent, mesh_config=mc).resources)[0]
    flog = file_pb2.FileAccessLog()
    hcm.access_log[0].typed_config.Unpack(flog)
    assert (flog.path, flog.log_format.text_format_source.inline_string) == (
        "/tmp/x.log", "%RESPONSE_CODE%\n")  # fmt: skip
    # A proxy whose agent does not collect (no cluster for the stream): never given one.
    plain = proxy_for_node(mesh, NODE)
    assert not any(h.access_log for h in _hcms(generate(mesh, plain).resources))
