"""The demo mesh end to end (what ``make demo`` runs), with assertions on its results, and the
failure injections of the data-plane issue on the same running mesh: the control plane stopped
mid-traffic, a service instance killed, a sidecar's Envoy restarted.

Everything is real: ``meshcore serve`` with its CA (a subprocess), five Envoy sidecars run by
meshcore's agent (certificates over SDS), HTTP apps on 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from meshcore.demo import DemoMesh, DemoReport, Traffic, tour

pytestmark = pytest.mark.envoy

DENY_ADMIN = "ns[default]-policy[ratings-deny-admin]-rule[0]"


def test_demo_mesh_and_failure_injection(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))


async def _scenario(tmp_path: Path) -> None:
    dm = DemoMesh(workdir=tmp_path)
    await dm.start()
    try:
        report = DemoReport()
        await tour(dm, report, requests=300)
        failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.passed]
        assert not failed, failed
        assert {c.name for c in report.checks} >= {
            "canary 90/10",
            "header route x-user: tester → v2",
            "retries hide the flaky ratings instance",
            "AuthorizationPolicy denies /admin",
            "only reviews may call ratings",
            "mTLS between sidecars",
            "live change converges",
            "canary 50/50 after the change",
            "traces reach the Zipkin collector",
            "ingress gateway in front of frontend",
        }
        # The denial's policy id comes from Envoy's own access log (response code details).
        assert report.facts["denials"].get(DENY_ADMIN, 0) >= 5, report.facts["denials"]
        assert report.facts["denials"].get("none", 0) >= 5, report.facts["denials"]
        assert report.facts["latency_ms"]["p99"] > 0

        # 1. The control plane goes away mid-traffic: the sidecars keep their config.
        during = await _while(dm, 200, dm.stop_control_plane)
        assert during.ok == during.total == 200, during.statuses
        dm.start_control_plane()  # same ports and CA state: the sidecars reconnect
        assert await asyncio.to_thread(_all_synced, dm), dm.sync_status()

        # 2. A ratings instance dies: retries and outlier detection route around it.
        dm.kill_app("ratings-2")
        after_kill = await asyncio.to_thread(dm.send, 100)
        assert after_kill.ok == after_kill.total == 100, after_kill.bodies[:3]

        # 3. A sidecar's Envoy restarts: it gets its config (ADS) and certificate (SDS) back.
        sidecar = dm.sidecars["reviews-v1-1"]
        await sidecar.restart_envoy()
        await sidecar.wait_ready(20)
        again = await asyncio.to_thread(dm.send, 100)
        assert again.ok == again.total == 100, again.bodies[:3]
        assert again.versions["v1"] > 0, again.versions  # traffic reaches the restarted one
    finally:
        await dm.stop()


async def _while(dm: DemoMesh, n: int, action: object) -> Traffic:
    """Sends ``n`` requests while ``action`` runs once, a little after the start."""
    result: list[Traffic] = []
    thread = threading.Thread(target=lambda: result.append(dm.send(n, concurrency=2)))
    thread.start()
    await asyncio.sleep(0.3)
    assert callable(action)
    action()
    await asyncio.to_thread(thread.join, 60)
    return result[0]


def _all_synced(dm: DemoMesh, timeout: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = dm.sync_status()
        except OSError:
            status = {}
        proxies = len(dm.sidecars) + (dm.ingress is not None)  # and the ingress gateway
        if len(status) == proxies and all(
            row.get(t) == "SYNCED" for row in status.values() for t in ("CDS", "LDS", "RDS")
        ):
            return True
        time.sleep(0.1)
    return False


def test_demo_mesh_on_the_reference_proxy(tmp_path: Path) -> None:
    """``meshcore demo --proxy reference``: the same tour with meshcore's own proxy as the
    sidecars (DataPlane decisions from the Rust core), checked the same way."""

    async def scenario() -> None:
        dm = DemoMesh(workdir=tmp_path, proxy="reference")
        await dm.start()
        try:
            report = DemoReport()
            await tour(dm, report, requests=300)
            failed = [f"{c.name}: {c.detail}" for c in report.checks if not c.passed]
            assert not failed, failed
            assert report.facts["denials"] == {DENY_ADMIN: 5, "none": 5}
        finally:
            await dm.stop()

    asyncio.run(scenario())
