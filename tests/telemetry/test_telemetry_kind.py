"""Istio's ``telemetry.istio.io/v1`` Telemetry kind: validated (what meshcore does not implement
is an error at its path, with file and line), merged as Istio does (root namespace, namespace,
workload selector) and applied to the sidecars' config: tracing provider and sampling, metrics
turned off per side or per metric, access logs off per side."""

from __future__ import annotations

import shutil
from pathlib import Path

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2 as otel_log_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshcore.config import load, validate
from meshcore.config.meshconfig import MeshConfig
from meshcore.dataplane.telemetry import AccessLogReceiver, WorkloadInfo
from meshcore.xds import types
from meshcore.xds.telemetry import OTEL_LOGGER_NAME, TELEMETRY_KEY
from meshcore.xds.translate import generate, proxy_for_node

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RATINGS = "sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local"
REVIEWS = "sidecar~127.0.20.1~reviews-v1-1.default~default.svc.cluster.local"
MC = MeshConfig.from_dict({
    "accessLogFile": "/dev/stdout",
    "extensionProviders": [
        {"name": "otel", "opentelemetry": {"service": "127.0.0.1", "port": 4317}},
        {"name": "z", "zipkin": {"service": "127.0.0.1", "port": 9411}},
        {"name": "prom", "prometheus": {}},
    ],
    "defaultProviders": {"tracing": ["z"]},
})  # fmt: skip
MESH_WIDE = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 10
"""
RATINGS_ONLY = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ratings, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  tracing:
  - randomSamplingPercentage: 50
  metrics:
  - providers: [{name: prom}]
    overrides:
    - match: {mode: CLIENT}
      disabled: true
    - match: {metric: REQUEST_SIZE, mode: SERVER}
      disabled: true
  accessLogging:
  - match: {mode: SERVER}
    disabled: true
"""
UNSUPPORTED = """
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bad, namespace: default}
spec:
  targetRef: {kind: Service, name: reviews}
  tracing:
  - randomSamplingPercentage: 150
    customTags: {team: {literal: {value: a}}}
  metrics:
  - overrides:
    - match: {metric: GRPC_REQUEST_MESSAGES}
      disabled: true
    - tagOverrides: {request_protocol: {operation: REMOVE}}
  accessLogging:
  - filter: {expression: "response.code >= 400"}
"""


def _mesh(tmp_path: Path, *docs: str) -> Path:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLES, config)
    for i, doc in enumerate(docs):
        (config / f"telemetry-{i}.yaml").write_text(doc)
    return config


def _hcms(resources: dict[str, dict[str, object]]) -> dict[str, hcm_pb2.HttpConnectionManager]:
    out = {}
    for name, listener in resources[types.LISTENER].items():
        assert isinstance(listener, listener_pb2.Listener)
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                    hcm = hcm_pb2.HttpConnectionManager()
                    f.typed_config.Unpack(hcm)
                    out[f"{listener.traffic_direction}:{name}"] = hcm
    return out


def test_unsupported_fields_are_errors_at_their_path(tmp_path: Path) -> None:
    report = validate([_mesh(tmp_path, UNSUPPORTED)])
    errors = {(p.path, p.line): p.message for p in report.errors if p.kind == "Telemetry"}
    assert all(p.file.endswith("telemetry-0.yaml") for p in report.errors)
    assert "targetRef is not supported" in errors[("spec.targetRef", 6)]
    assert "[0, 100]" in errors[("spec.tracing[0].randomSamplingPercentage", 8)]
    assert "customTags is not supported" in errors[("spec.tracing[0].customTags", 9)]
    assert "GRPC_REQUEST_MESSAGES" in errors[("spec.metrics[0].overrides[0].match.metric", 12)]
    assert "tagOverrides" in errors[("spec.metrics[0].overrides[1].tagOverrides", 14)]
    assert "filter is not supported" in errors[("spec.accessLogging[0].filter", 16)]
    assert report.model is None


def test_telemetries_merge_and_apply(tmp_path: Path) -> None:
    mesh = load(_mesh(tmp_path, MESH_WIDE, RATINGS_ONLY))
    meta = {TELEMETRY_KEY: "otlp"}
    ratings = _hcms(generate(mesh, proxy_for_node(mesh, RATINGS, meta), mesh_config=MC).resources)
    reviews = _hcms(generate(mesh, proxy_for_node(mesh, REVIEWS, meta), mesh_config=MC).resources)
    # Mesh-wide: the OpenTelemetry provider instead of MeshConfig's default, sampling 10%.
    for hcm in reviews.values():
        assert hcm.tracing.provider.name == "envoy.tracers.opentelemetry"
        assert hcm.tracing.random_sampling.value == 10
        assert {log.name for log in hcm.access_log} >= {OTEL_LOGGER_NAME}
    # ratings: its own sampling over the mesh-wide provider; no client-side metrics; its
    # server side reports every metric but request sizes; no server-side access log.
    for where, hcm in ratings.items():
        assert hcm.tracing.provider.name == "envoy.tracers.opentelemetry"
        assert hcm.tracing.random_sampling.value == 50
        names = [log.name for log in hcm.access_log]
        if where.startswith(f"{base_pb2.OUTBOUND}:"):
            assert names == ["envoy.access_loggers.file"], names
        else:
            assert names == [OTEL_LOGGER_NAME], names
            otel = otel_log_pb2.OpenTelemetryAccessLogConfig()
            hcm.access_log[0].typed_config.Unpack(otel)
            attrs = {kv.key: kv.value.string_value for kv in otel.attributes.values}
            assert attrs["disabled_metrics"] == "REQUEST_SIZE"


def test_unknown_provider_is_the_proxys_problem(tmp_path: Path) -> None:
    doc = MESH_WIDE.replace("name: otel", "name: jaeger")
    mesh = load(_mesh(tmp_path, doc))
    result = generate(mesh, proxy_for_node(mesh, REVIEWS), mesh_config=MC)
    problems = [p for p in result.problems if p.kind == "Telemetry"]
    assert problems
    assert problems[0].path == "spec.tracing"
    assert "'jaeger'" in problems[0].message
    assert problems[0].line == 2
    # Left out: no tracing rather than a config Envoy would reject.
    assert all(not h.HasField("tracing") for h in _hcms(result.resources).values())


def test_agent_skips_disabled_metrics() -> None:
    r = AccessLogReceiver(WorkloadInfo.of("ratings-1", "default", {"app": "ratings"}, "x"))
    r.record({"direction": "inbound", "response_code": "200", "duration_ms": "4",
              "request_bytes": "10", "response_bytes": "20", "log_type": "DownstreamEnd",
              "disabled_metrics": "REQUEST_SIZE,REQUEST_DURATION"})  # fmt: skip
    assert sum(r.metrics.requests.values()) == 1
    assert not r.metrics.request_sizes
    assert not r.metrics.durations
    assert len(r.metrics.response_sizes) == 1
