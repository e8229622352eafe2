"""MeshConfig ``extensionProviders`` of type ``opentelemetry`` (OTLP over gRPC) as the default
tracing provider: the demo mesh's Envoy sidecars send real OTLP spans to a collector this test
runs (the ``opentelemetry-proto`` package's TraceService), one trace per request, with the
parent/child links frontend → reviews → ratings and each sidecar's service name."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from meshcore.demo import DemoMesh

pytestmark = pytest.mark.envoy


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector keeping (service.name, span) pairs."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self.lock:
            for rs in request.resource_spans:
                service = next(
                    (a.value.string_value for a in rs.resource.attributes
                     if a.key == "service.name"), "")  # fmt: skip
                for ss in rs.scope_spans:
                    self.spans.extend((service, span) for span in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def stop(self) -> None:
        self.server.stop(None).wait(5)


def test_opentelemetry_provider_spans_link_three_services(tmp_path: Path) -> None:
    collector = Collector()
    try:
        asyncio.run(_scenario(tmp_path, collector))
    finally:
        collector.stop()


async def _scenario(tmp_path: Path, collector: Collector) -> None:
    dm = DemoMesh(workdir=tmp_path)
    dm.mesh_config.write_text(
        "extensionProviders:\n"
        f"- name: otel\n  opentelemetry: {{service: 127.0.0.1, port: {collector.port}}}\n"
        "defaultProviders: {tracing: [otel]}\n"
        "defaultConfig: {tracing: {sampling: 100}}\n"
    )
    await dm.start()
    try:
        sent = await asyncio.to_thread(dm.send, 10, concurrency=2)
        assert sent.ok == 10, sent.statuses
        deadline = time.monotonic() + 20
        while True:
            with collector.lock:
                spans = list(collector.spans)
            traces: dict[bytes, list[tuple[str, object]]] = {}
            for service, span in spans:
                traces.setdefault(span.trace_id, []).append((service, span))  # type: ignore[attr-defined]
            # A whole request: frontend's call, reviews' inbound and outbound, ratings' inbound
            # (and first, through the demo's ingress gateway, its span and frontend's inbound
            # one): ratings' span arrived, and every span's parent.
            whole = [t for t in traces.values() if len(t) >= 4 and _complete(t)]
            if len(whole) >= 10 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert len(whole) >= 10, {k.hex(): [s for s, _ in v] for k, v in traces.items()}
        for trace in whole:
            by_id = {span.span_id: (service, span) for service, span in trace}  # type: ignore[attr-defined]
            # Follow each span up to the root: the chain crosses the three services in order.
            leaf = next(
                (svc, sp) for svc, sp in trace
                if svc.startswith("ratings.") and sp.kind == sp.SPAN_KIND_SERVER  # type: ignore[attr-defined]
            )  # fmt: skip
            chain = [leaf[0]]
            span = leaf[1]
            while span.parent_span_id:  # type: ignore[attr-defined]
                service, span = by_id[span.parent_span_id]  # type: ignore[attr-defined]
                chain.append(service)
            services = [s.split(".")[0] for s in reversed(chain)]
            # Through the demo's ingress gateway, its span and frontend's inbound one come first.
            via_gateway = ["istio-ingressgateway", "frontend"]
            assert services in (
                ["frontend", "reviews", "reviews", "ratings"],
                [*via_gateway, "frontend", "reviews", "reviews", "ratings"],
            ), services
            # Istio's span tags, each sidecar's own.
            tags = {a.key: a.value.string_value for a in leaf[1].attributes}  # type: ignore[attr-defined]
            assert tags["istio.canonical_service"] == "ratings"
            assert tags["istio.namespace"] == "default"
            assert tags["istio.mesh_id"] == "cluster.local"
            assert tags["istio.workload"].startswith("ratings-")
            assert {s for s, _ in trace} <= {
                "istio-ingressgateway.istio-system",
                "frontend.default",
                "reviews.default",
                "ratings.default",
            }
    finally:
        await dm.stop()


def _complete(trace: list[tuple[str, Any]]) -> bool:
    """ratings' inbound span arrived, and every span's parent with it."""
    ids = {span.span_id for _, span in trace}
    leaf = any(svc.startswith("ratings.") and span.kind == span.SPAN_KIND_SERVER
               for svc, span in trace)  # fmt: skip
    return leaf and all(not span.parent_span_id or span.parent_span_id in ids for _, span in trace)
