"""The data behind ``meshcore serve``'s status page without Envoy: Istio's metrics survive the
trip through the Prometheus text format (what the control plane scrapes from agents), an
unreachable endpoint is skipped, and the CA's record of issued certificates is bounded and
keeps the newest per identity; an agent's access-log socket fits a Unix socket path."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.ca.service import IssuedCertificate, IssuedCertificates
from meshcore.dataplane.telemetry import AccessLogReceiver, WorkloadInfo, start_receiver
from meshcore.observability.istio import IstioMetrics
from meshcore.observability.scrape import MeshScraper, parse_istio
from meshcore.observability.status import EdgeSampler

EDGE = {"reporter": "source", "source_workload": "client", "destination_service": "echo.default.svc.cluster.local"}  # fmt: skip


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["200", "503", "404"]),
                          st.floats(0, 5000, allow_nan=False)), max_size=40))  # fmt: skip
def test_parse_istio_round_trips_counts_and_buckets(requests: list[tuple[str, float]]) -> None:
    metrics = IstioMetrics()
    for code, millis in requests:
        metrics.record({**EDGE, "response_code": code}, millis)
    parsed = parse_istio(metrics.exposition().decode())
    assert dict(parsed.requests) == dict(metrics.requests)
    assert {k: h.counts for k, h in parsed.durations.items()} == {
        k: h.counts for k, h in metrics.durations.items()
    }


def test_edge_totals_from_parsed_metrics() -> None:
    metrics = IstioMetrics()
    for code in ("200", "200", "503"):
        metrics.record({**EDGE, "response_code": code}, 3.0)
    metrics.record({**EDGE, "reporter": "destination", "response_code": "200"}, 3.0)
    text = metrics.exposition().decode()
    sampler = EdgeSampler(lambda: [parse_istio(text)], interval=60)
    try:
        sampler.sample()
        assert sampler.totals() == {
            "client → echo.default.svc.cluster.local": {"requests": 3, "errors": 1}
        }
    finally:
        sampler.stop()


def test_unreachable_or_odd_urls_are_skipped() -> None:
    scraper = MeshScraper(lambda: {"a": "http://127.0.0.1:1/stats/prometheus", "b": "file:///etc/passwd"},
                          timeout=0.5)  # fmt: skip
    assert list(scraper()) == []


def test_issued_certificates_newest_per_identity_and_bounded() -> None:
    issued = IssuedCertificates(limit=2)
    at = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    issued.add(IssuedCertificate("spiffe://t/ns/a/sa/x", 1, at))
    issued.add(IssuedCertificate("spiffe://t/ns/a/sa/y", 2, at))
    issued.add(IssuedCertificate("spiffe://t/ns/a/sa/x", 3, at))  # renewal: newest kept
    issued.add(IssuedCertificate("spiffe://t/ns/a/sa/z", 4, at))  # y (oldest) goes
    assert [(c.identity[-1], c.serial) for c in issued.list()] == [("x", 3), ("z", 4)]


def test_the_receiver_socket_of_a_deep_workdir_gets_a_short_path(tmp_path: Path) -> None:
    """A gateway's workdir under a deep directory (the demo's ``mesh/gateways/NAME``) once
    made the agent refuse to start: the socket goes to a short path instead, as SDS's does."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)

    async def run() -> str:
        server, address = await start_receiver(
            AccessLogReceiver(WorkloadInfo.of("w", "ns", {}, "")), deep
        )
        await server.stop(None)
        return address

    address = asyncio.run(run())
    assert address.startswith("unix:")
    assert len(address) - len("unix:") <= 107
    assert "meshcore-telemetry-" in address
