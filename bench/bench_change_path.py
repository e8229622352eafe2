"""The control plane's work for one endpoint change before any push (issues 16 and 17), per
phase: the 1,000-service mesh with 10 WorkloadEntries per service (10,000 workloads, as
``bench_xds_fleet.py`` generates for 10,000 proxies), N proxies holding snapshots (one per
workload, the first N), one WorkloadEntry of svc0 moved (the fleet benchmark's change; its
proxy is one of the N). Measured: ``load()`` (stat, read the changed file, parse and validate
what changed, the model, with ``check`` the load-time translation problems as ``meshcore serve``
runs them) and ``update()`` (the plan, the shared layers translated again, the fleet's
snapshots updated: what the pushes then send), in thread CPU time, six changes each.

Run: ``MESHCORE_CHANGE_PROXIES=10000 pytest bench/bench_change_path.py -o python_files='bench_*.py'
-s`` (``make test``'s quick form: 200 proxies). Prints one line per configuration."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from meshcore.xds.cache import NodeInfo
from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.deps import DependencyIndex
from meshcore.xds.translator import Translator

PROXIES = int(os.environ.get("MESHCORE_CHANGE_PROXIES", "200"))
ROUNDS = 6


@pytest.fixture(scope="module")
def mesh10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from meshgen import write_mesh

    d = tmp_path_factory.mktemp("mesh10")
    write_mesh(d, services=1000, workloads_per_service=10)
    return d


@pytest.mark.parametrize("check", [False, True], ids=["fleet", "serve"])
def test_one_endpoint_change_before_the_pushes(
    mesh10: Path, tmp_path: Path, check: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="meshcore")  # the mesh's DENY-rule warnings
    config = tmp_path / "config"
    shutil.copytree(mesh10, config)
    translator = Translator()
    plane = ControlPlane(
        [config],
        translator.resources_for,
        dependencies=DependencyIndex(),
        check=translator.load_problems if check else None,
        settle_gc=True,
    )
    assert plane.load()
    assert plane.mesh is not None
    for w in plane.mesh.workload_entries[:PROXIES]:
        node = f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
        assert plane.cache.get(NodeInfo(node)) is not None
    gc.collect()
    gc.freeze()  # as meshcore serve settles what exists (ControlPlane._settle)
    workloads = config / "workloads.yaml"
    text = workloads.read_text()
    a, b = "address: 10.0.0.0\n", "address: 10.255.255.1\n"  # svc0-0: a proxy of the fleet
    assert text.count(a) == 1
    loads, updates = [], []
    for i in range(ROUNDS):
        text = text.replace(a, b, 1) if i % 2 == 0 else text.replace(b, a, 1)
        workloads.write_text(text)
        assert plane.loader.poll()
        c0 = time.thread_time()
        assert plane.load()
        c1 = time.thread_time()
        plane.update()
        c2 = time.thread_time()
        loads.append(c1 - c0)
        updates.append(c2 - c1)
        assert plane.last_update["objects_changed"] == 1
    total = sorted(x + y for x, y in zip(loads, updates, strict=True))
    loads.sort()
    updates.sort()
    print(
        f"\none endpoint change, {PROXIES} proxies, {'with' if check else 'without'} the "
        f"load-time check: load {loads[0] * 1e3:.1f} / {loads[ROUNDS // 2] * 1e3:.1f} ms, "
        f"update {updates[0] * 1e3:.1f} / {updates[ROUNDS // 2] * 1e3:.1f} ms, "
        f"both {total[0] * 1e3:.1f} / {total[ROUNDS // 2] * 1e3:.1f} ms CPU (min / median of "
        f"{ROUNDS}); {plane.last_update['proxies_translated']} proxy and "
        f"{plane.last_update['shared_layers_translated']} shared-layer holder translated "
        f"again; load average {os.getloadavg()[0]:.1f} [goal: both <= 50 ms]"
    )
