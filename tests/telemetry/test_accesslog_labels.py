"""The agent's access-log records → Istio's labels (no Envoy): who the peer is, and when it is
``unknown``; TCP connections counted once open, once closed, their bytes as they grow."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from prometheus_client.parser import text_string_to_metric_families

from meshcore.ca import CertificateAuthority
from meshcore.dataplane.telemetry import AccessLogReceiver, WorkloadInfo
from tests._cli import main

SA = "spiffe://cluster.local/ns/"
OWN = WorkloadInfo.of("ratings-1", "default", {"app": "ratings", "version": "v1"},
                      SA + "default/sa/ratings")  # fmt: skip
INBOUND = {
    "direction": "inbound", "protocol": "HTTP/1.1", "content_type": "application/json",
    "response_code": "200", "response_flags": "-", "grpc_status": "-", "duration_ms": "3",
    "request_bytes": "0", "response_bytes": "42", "upstream_cluster": "inbound|9080||",
    "authority": "ratings:9080", "services": "ratings.default.svc.cluster.local",
    "peer_principal": SA + "default/sa/reviews",
    "peer_workload": "reviews-v1-1;default;reviews;v1;Kubernetes", "log_type": "DownstreamEnd",
}  # fmt: skip


def test_inbound_peer_from_exchange_checked_against_its_spiffe_id() -> None:
    r = AccessLogReceiver(OWN)
    labels = r.labels(INBOUND)
    assert labels["reporter"] == "destination"
    assert (labels["source_workload"], labels["source_app"], labels["source_version"]) == (
        "reviews-v1-1", "reviews", "v1")  # fmt: skip
    assert labels["destination_workload"] == "ratings-1"
    assert labels["destination_service"] == "ratings.default.svc.cluster.local"
    assert labels["connection_security_policy"] == "mutual_tls"
    # A caller claiming a workload of another namespace than its certificate's: not believed.
    forged = r.labels({**INBOUND, "peer_workload": "admin;kube-system;admin;v1;Kubernetes"})
    assert forged["source_workload"] == forged["source_app"] == "unknown"
    assert forged["source_principal"] == SA + "default/sa/reviews"
    # Plaintext (no peer certificate): the source is unknown, as in Istio.
    plain = r.labels({**INBOUND, "peer_principal": "-"})
    assert plain["source_workload"] == plain["source_principal"] == "unknown"
    assert plain["connection_security_policy"] == "none"


def test_outbound_peer_from_endpoint_metadata_and_protocols() -> None:
    r = AccessLogReceiver(OWN)
    out = {**INBOUND, "direction": "outbound", "services": "",
           "upstream_cluster": "outbound|9080|v2|reviews.default.svc.cluster.local",
           "peer_workload": '"reviews-v2-1;default;reviews;v2;Kubernetes"',
           "content_type": "application/grpc", "grpc_status": "14"}  # fmt: skip
    labels = r.labels(out)
    assert labels["reporter"] == "source"
    assert labels["source_workload"] == "ratings-1"
    assert labels["destination_workload"] == "reviews-v2-1"
    assert labels["destination_version"] == "v2"
    assert (labels["destination_service_name"], labels["destination_service_namespace"]) == (
        "reviews", "default")  # fmt: skip
    assert (labels["request_protocol"], labels["grpc_response_status"]) == ("grpc", "14")
    assert labels["connection_security_policy"] == "unknown"
    # No route, no upstream: Envoy's local reply, the peer unknown.
    none = r.labels({**out, "upstream_cluster": "-", "peer_workload": "-", "peer_principal": "-",
                     "response_code": "404", "response_flags": "NR", "authority": "nowhere:80"})  # fmt: skip
    assert none["destination_workload"] == none["destination_principal"] == "unknown"
    assert (none["response_flags"], none["destination_service"]) == ("NR", "nowhere")


def _samples(r: AccessLogReceiver, family: str) -> dict[str, float]:
    text = r.metrics.exposition().decode()
    return {
        s.labels["reporter"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
    }


def test_tcp_connections_open_close_and_bytes_over_the_otlp_service() -> None:
    r = AccessLogReceiver(OWN)
    tcp = {**INBOUND, "protocol": "-", "content_type": "-", "response_code": "0",
           "connection_id": "7", "request_bytes": "0", "response_bytes": "0"}  # fmt: skip
    # Upstream connected before the client's handshake is done: no SPIFFE id yet.
    connected = {**tcp, "log_type": "TcpUpstreamConnected", "peer_principal": "-"}
    periodic = {**tcp, "log_type": "TcpPeriodic", "request_bytes": "10", "response_bytes": "4"}
    end = {**tcp, "log_type": "TcpConnectionEnd", "request_bytes": "25", "response_bytes": "9"}
    request = logs_service_pb2.ExportLogsServiceRequest()
    for attrs in (connected, periodic, end):
        record = request.resource_logs.add().scope_logs.add().log_records.add()
        for k, v in attrs.items():
            record.attributes.add(key=k).value.string_value = v
    asyncio.run(r.Export(request, None))
    assert r.records == 3
    assert _samples(r, "istio_tcp_connections_opened") == {"destination": 1}
    assert _samples(r, "istio_tcp_connections_closed") == {"destination": 1}
    assert _samples(r, "istio_tcp_received_bytes") == {"destination": 25}
    assert _samples(r, "istio_tcp_sent_bytes") == {"destination": 9}
    text = r.metrics.exposition().decode()
    opened = next(f for f in text_string_to_metric_families(text)
                  if f.name == "istio_tcp_connections_opened")  # fmt: skip
    assert opened.samples[0].labels["source_principal"] == SA + "default/sa/reviews"
    assert opened.samples[0].labels["request_protocol"] == "tcp"


def test_agent_cli_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``meshcore agent --label app=reviews``: the labels Istio's metrics name the workload by
    (node metadata LABELS); a malformed one is refused, and nothing is left behind when the
    agent cannot start (its access-log socket included)."""
    root = tmp_path / "root.pem"
    root.write_text(CertificateAuthority.generate().trust_bundle_pem())
    token = tmp_path / "token"
    token.write_text("t" * 20)
    args = ["agent", "--node-id", "sidecar~127.0.20.1~reviews-v1-1.default~default.svc.cluster.local",
            "--identity", SA + "default/sa/reviews", "--xds-address", "127.0.0.1:1",
            "--ca-address", "127.0.0.1:2", "--ca-root", str(root), "--workdir", str(tmp_path),
            "--token-file", str(token)]  # fmt: skip
    assert main([*args, "--label", "app"]) == 2
    assert "--label: expected KEY=VALUE" in capsys.readouterr().err
    assert main([*args, "--label", "app=reviews", "--label", "version=v1"]) == 1
    assert "cannot start" in capsys.readouterr().err
    assert not (tmp_path / "telemetry.sock").exists()


def test_open_connections_tracked_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshcore.dataplane import telemetry

    monkeypatch.setattr(telemetry, "MAX_OPEN_CONNECTIONS", 3)
    r = AccessLogReceiver(OWN)
    for i in range(5):  # connections whose end never comes
        r.record({**INBOUND, "log_type": "TcpPeriodic", "connection_id": str(i)})
    assert len(r._connections) == 3
    assert {c for _, c in r._connections} == {"2", "3", "4"}
    assert _samples(r, "istio_tcp_connections_opened") == {"destination": 5}
