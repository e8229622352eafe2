"""2,000 connected proxies (a simulated fleet in another process) on the 1,000-service mesh:
cold snapshots, memory per connected proxy, and the convergence of an endpoint change from the
config write to each proxy receiving it (p50/p99). One process each for the control plane
(this one) and the fleet; both share the machine's 2 cores."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from meshcore.cli.serve import generate
from meshcore.config import load
from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.server import start_ads_server

PROXIES = int(os.environ.get("MESHCORE_FLEET", "2000"))


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_fleet_convergence(mesh_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(mesh_dir, config)
    mesh = load(config)
    workloads = mesh.workload_entries[:PROXIES]
    target = mesh.service("svc0", "ns0")
    assert target is not None
    watched = f"outbound|8080||{target.hostname}"
    nodes = tmp_path / "nodes.txt"
    with nodes.open("w") as f:
        for i, w in enumerate(workloads):
            others = [
                f"outbound|8080||svc{(i * 7 + k) % 1000}.ns{((i * 7 + k) % 1000) % 10}.svc.cluster.local"
                for k in range(1, 10)
            ]
            node = f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
            f.write(" ".join([node, watched, *others]) + "\n")

    async def main() -> dict[str, Any]:
        plane = ControlPlane([config], generate)
        assert plane.load()
        server, ads, port = await start_ads_server(plane.cache)
        stop = asyncio.Event()
        watcher = asyncio.create_task(
            plane.run(lambda: [s.node for s in ads.proxies.values()], stop)
        )
        before = rss_bytes()
        cpu0, t0 = time.process_time(), time.monotonic()
        fleet = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).parent / "xds_fleet_client.py"), f"127.0.0.1:{port}", str(nodes),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert fleet.stdout is not None
        assert fleet.stdin is not None
        try:
            line = await asyncio.wait_for(fleet.stdout.readline(), 900)
            assert line.strip() == b"ready", line
            cold_wall, cold_cpu = time.monotonic() - t0, time.process_time() - cpu0
            per_proxy = (rss_bytes() - before) / PROXIES
            # An endpoint change: svc0's first workload moves.
            workloads_file = config / "workloads.yaml"
            docs = list(yaml.safe_load_all(workloads_file.read_text()))
            docs[0]["spec"]["address"] = "10.255.255.1"
            changed_at = time.time()
            workloads_file.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            seen: dict[int, float] = {}
            while len(seen) < PROXIES:
                raw = await asyncio.wait_for(fleet.stdout.readline(), 120)
                _, index, at = raw.split()
                seen.setdefault(int(index), float(at))
            delays = sorted(at - changed_at for at in seen.values())
            return {
                "cold_wall": cold_wall, "cold_cpu": cold_cpu, "kb_per_proxy": per_proxy / 1e3,
                "p50": delays[len(delays) // 2], "p99": delays[int(len(delays) * 0.99)], "max": delays[-1],
                "rebuilds": plane.rebuilds,
            }  # fmt: skip
        finally:
            fleet.stdin.close()
            try:
                await asyncio.wait_for(fleet.wait(), 30)
            except TimeoutError:
                fleet.kill()
                await fleet.wait()
            stop.set()
            await watcher
            await server.stop(None)

    r = asyncio.run(main())
    print(
        f"\nxDS fleet of {PROXIES}: cold connect {r['cold_wall']:.2f}s wall, {r['cold_cpu']:.2f}s control-plane CPU; "
        f"{r['kb_per_proxy']:.1f} KB RSS per connected proxy; endpoint change to all proxies: "
        f"p50 {r['p50'] * 1e3:.0f} ms, p99 {r['p99'] * 1e3:.0f} ms, max {r['max'] * 1e3:.0f} ms "
        f"(includes the 100 ms debounce; {r['rebuilds']} rebuild)"
    )
