"""Istio's standard metrics from the demo mesh's Envoy sidecars, scraped from each agent's merged
endpoint (``/stats/prometheus``) and parsed with prometheus_client's parser: known traffic
(successes, 503s from the flaky ratings instance, 403s from two policies, TCP connections)
gives exact counts per label set on both reporters, and every histogram counts each request.

The ground truth comes from outside the sidecars: what the client got back (which reviews
instance answered, what reviews got from ratings), what each ratings app answered (its own
counters of requests and injected 503s), and the bytes the TCP client sent and received.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshcore.demo import DemoMesh
from meshcore.demo.mesh import EXAMPLES
from meshcore.observability.istio import LABELS, TCP_LABELS

pytestmark = pytest.mark.envoy

SA = "spiffe://cluster.local/ns/default/sa/"
TCP_PORT = 9091
# A TCP Service on the reviews workloads (no AuthorizationPolicy selects them).
TCP_SERVICE = f"""
apiVersion: v1
kind: Service
metadata:
  name: reviews-tcp
  namespace: default
spec:
  selector: {{app: reviews}}
  ports:
  - name: tcp-echo
    port: {TCP_PORT}
    targetPort: {TCP_PORT}
"""
PRODUCTPAGE, ADMIN_PROBES, RATINGS_PROBES, TCP_CONNECTIONS = 60, 8, 6, 4
TCP_PAYLOAD = b"x" * 1000


class Echo:
    """A TCP echo server on a workload's app address (the reviews apps' TCP port)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_server((address, TCP_PORT))
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                while data := conn.recv(65536):
                    conn.sendall(data)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


def scrape(url: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return out


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **match: str) -> int:
    return int(
        sum(
            v
            for n, labels, v in samples
            if n == name and all(labels.get(k) == want for k, want in match.items())
        )
    )


def test_istio_metrics_on_both_reporters(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLES, config)
    (config / "tcp.yaml").write_text(TCP_SERVICE)
    asyncio.run(_scenario(config, tmp_path / "mesh"))


async def _scenario(config: Path, workdir: Path) -> None:
    workdir.mkdir()
    dm = DemoMesh(config=config, workdir=workdir)
    await dm.start()
    echoes: list[Echo] = []
    try:
        # Metrics count from zero here: the start's warm-up traffic is flushed and subtracted.
        await asyncio.sleep(1.5)
        # (scraped from a thread: the agents serve from this event loop)
        before = {
            name: await asyncio.to_thread(scrape, str(sc.stats_url))  # type: ignore[union-attr]
            for name, sc in dm.sidecars.items()
        }
        app_before = {n: (a.stats.requests, a.stats.failures_injected) for n, a in dm.apps.items()}
        traffic = await asyncio.to_thread(dm.send, PRODUCTPAGE)
        admin = await asyncio.to_thread(dm.send, ADMIN_PROBES, "/probe/ratings-admin")
        probes = await asyncio.to_thread(dm.send, RATINGS_PROBES, "/probe/ratings")
        assert traffic.total == PRODUCTPAGE
        assert admin.total == ADMIN_PROBES
        echoes = [Echo(dm.workload(n).app_address) for n in ("reviews-v1-1", "reviews-v2-1")]
        fe = dm.frontend()
        for _ in range(TCP_CONNECTIONS):
            with socket.create_connection((fe.outbound_address, TCP_PORT), timeout=5) as c:
                c.sendall(TCP_PAYLOAD)
                got = b""
                while len(got) < len(TCP_PAYLOAD):
                    got += c.recv(65536)
                assert got == TCP_PAYLOAD

        # What the sidecars should report, from what the apps and the client saw.
        by_reviews = Counter(
            str(b.get("reviews_instance")) for b in (*traffic.bodies, *admin.bodies)
        )
        ratings_final = Counter(
            (str(b.get("reviews_instance")), int(b.get("ratings", 0))) for b in traffic.bodies
        )
        served = {
            n: (dm.apps[n].stats.requests - app_before[n][0],
                dm.apps[n].stats.failures_injected - app_before[n][1])
            for n in ("ratings-1", "ratings-2")
        }  # fmt: skip
        assert served["ratings-2"][1] > 0, "the flaky instance injected no 503"
        assert all(b.get("ratings") == 403 for b in probes.bodies), probes.bodies[:2]

        def delta(name: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
            now = scrape(str(dm.sidecars[name].stats_url))  # type: ignore[union-attr]
            out = {}
            for family, samples in now.items():
                old = Counter()  # type: ignore[var-annotated]
                for n, labels, v in before[name].get(family, []):
                    old[(n, tuple(sorted(labels.items())))] += v
                out[family] = [
                    (n, labels, v - old[(n, tuple(sorted(labels.items())))])
                    for n, labels, v in samples
                ]
            return out

        def expect_counts(deadline: float) -> dict[str, dict[str, list[Any]]]:
            # The access logs reach the agents in batches (about every second).
            while True:
                got = {n: delta(n) for n in dm.sidecars}
                ratings_in = sum(
                    total(got[n].get("istio_requests", []), "istio_requests_total",
                          reporter="destination") for n in ("ratings-1", "ratings-2")
                )  # fmt: skip
                closed = min(
                    total(got["frontend-1"].get("istio_tcp_connections_closed", []),
                          "istio_tcp_connections_closed_total"),
                    sum(total(got[n].get("istio_tcp_connections_closed", []),
                              "istio_tcp_connections_closed_total")
                        for n in ("reviews-v1-1", "reviews-v2-1")),
                )  # fmt: skip
                want = sum(s[0] for s in served.values()) + ADMIN_PROBES + RATINGS_PROBES
                if (
                    ratings_in >= want and closed >= TCP_CONNECTIONS
                ) or time.monotonic() > deadline:
                    return got
                time.sleep(0.3)

        got = await asyncio.to_thread(expect_counts, time.monotonic() + 15)
        rq = {n: got[n].get("istio_requests", []) for n in got}
        name_rq = "istio_requests_total"

        # frontend (source): its calls to reviews, per instance, all 200.
        for inst in ("reviews-v1-1", "reviews-v2-1"):
            assert total(rq["frontend-1"], name_rq, reporter="source", destination_workload=inst,
                         response_code="200", source_workload="frontend-1",
                         destination_service="reviews.default.svc.cluster.local",
                         destination_principal=SA + "reviews", source_principal=SA + "frontend",
                         destination_app="reviews",
                         destination_version=inst.split("-")[1]) == by_reviews[inst], inst  # fmt: skip
            # reviews (destination): the same requests, the caller known over mTLS.
            assert total(rq[inst], name_rq, reporter="destination", source_workload="frontend-1",
                         source_app="frontend", source_principal=SA + "frontend",
                         destination_workload=inst, response_code="200",
                         connection_security_policy="mutual_tls") == by_reviews[inst], inst  # fmt: skip
            # reviews (source): final answers from ratings, after retries.
            for code in (200, 503):
                assert total(rq[inst], name_rq, reporter="source", source_workload=inst,
                             destination_service_name="ratings", response_code=str(code),
                             request_protocol="http") == ratings_final[(inst, code)], (inst, code)  # fmt: skip
        # frontend (source): its probes of ratings, denied (403) by ratings' ALLOW policy.
        assert total(rq["frontend-1"], name_rq, reporter="source", response_code="403",
                     destination_service_name="ratings") == RATINGS_PROBES  # fmt: skip
        # ratings (destination): each instance's 200s and injected 503s exactly as it served them;
        # the 403s of both policies (reviews asking for /admin, frontend calling at all).
        for inst, (requests, failures) in served.items():
            for code, n in (("200", requests - failures), ("503", failures)):
                assert total(rq[inst], name_rq, reporter="destination", destination_workload=inst,
                             source_workload_namespace="default", source_app="reviews",
                             response_code=code) == n, (inst, code)  # fmt: skip
        denied = {
            src: sum(total(rq[i], name_rq, reporter="destination", response_code="403",
                           source_app=src, source_principal=SA + src)
                     for i in ("ratings-1", "ratings-2"))
            for src in ("reviews", "frontend")
        }  # fmt: skip
        assert denied == {"reviews": ADMIN_PROBES, "frontend": RATINGS_PROBES}, denied

        # Every histogram counts each request once, per label set.
        for name, families in got.items():
            counts = {_key(lb): v for n, lb, v in families.get("istio_requests", []) if v}
            for hist in ("istio_request_duration_milliseconds", "istio_request_bytes",
                         "istio_response_bytes"):  # fmt: skip
                seen = {
                    _key(lb): v for n, lb, v in families.get(hist, []) if n == hist + "_count" and v
                }
                assert seen == counts, (name, hist)
            assert set(LABELS) <= {k for s in families.get("istio_requests", []) for k in s[1]}

        # TCP: opened and closed per connection, bytes both ways, on both reporters.
        tcp = got["frontend-1"]
        for fam, want in (("istio_tcp_connections_opened", TCP_CONNECTIONS),
                          ("istio_tcp_connections_closed", TCP_CONNECTIONS),
                          ("istio_tcp_sent_bytes", TCP_CONNECTIONS * len(TCP_PAYLOAD)),
                          ("istio_tcp_received_bytes", TCP_CONNECTIONS * len(TCP_PAYLOAD))):  # fmt: skip
            assert total(tcp.get(fam, []), fam + "_total", reporter="source",
                         request_protocol="tcp", source_workload="frontend-1",
                         destination_service="reviews-tcp.default.svc.cluster.local") == want, fam  # fmt: skip
            dest = sum(total(got[i].get(fam, []), fam + "_total", reporter="destination",
                             source_principal=SA + "frontend",
                             connection_security_policy="mutual_tls")
                       for i in ("reviews-v1-1", "reviews-v2-1"))  # fmt: skip
            assert dest == want, fam
        assert {k for s in tcp["istio_tcp_connections_opened"] for k in s[1]} == set(TCP_LABELS)
    finally:
        for e in echoes:
            e.stop()
        await dm.stop()


def _key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
