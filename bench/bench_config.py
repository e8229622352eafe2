"""Load and validate a 1,000-service mesh (1,000 Services, 5,000 WorkloadEntries,
1,000 VirtualServices, 1,000 DestinationRules, 500 AuthorizationPolicies; 8,500 documents).

Peers in the same run: parsing the same files with PyYAML alone (libyaml's C parser and the
pure-Python one). They only parse: no validation, no model, no line numbers; a Python tool
that validates pays at least that much first.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcore.config import MeshModel, validate
from meshcore.config.changes import EVERYTHING
from meshcore.xds.cache import NodeInfo
from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.deps import DependencyIndex
from meshcore.xds.translator import Translator
from meshgen import generate_mesh

GOAL_S = 1.0


def _texts(mesh_dir: Path) -> list[str]:
    return [f.read_text() for f in sorted(mesh_dir.glob("*.yaml"))]


def test_meshcore_load_and_validate(benchmark: Any, mesh_dir: Path) -> None:
    report = benchmark.pedantic(validate, args=([mesh_dir],), rounds=5, iterations=1)
    assert report.ok, report.errors[:3]
    assert report.model is not None
    assert len(report.model) == 8500
    if not benchmark.disabled:  # make test runs each body once, unmeasured
        assert benchmark.stats.stats.median < GOAL_S


def test_peer_pyyaml_c_parse_only(benchmark: Any, mesh_dir: Path) -> None:
    texts = _texts(mesh_dir)

    def parse() -> int:
        return sum(len(list(yaml.load_all(t, Loader=yaml.CSafeLoader))) for t in texts)

    assert benchmark.pedantic(parse, rounds=3, iterations=1) == 8500


def test_peer_pyyaml_pure_python_parse_only(benchmark: Any, mesh_dir: Path) -> None:
    texts = _texts(mesh_dir)

    def parse() -> int:
        return sum(len(list(yaml.load_all(t, Loader=yaml.SafeLoader))) for t in texts)

    assert benchmark.pedantic(parse, rounds=1, iterations=1) == 8500


# --- one config change, end to end (issue 12) ---------------------------------------------------
#
# The config-change CPU of a running control plane (ControlPlane with the translator and the
# dependency index, 200 proxies holding snapshots): one WorkloadEntry's address (a workload
# none of them is bound to) edited in the
# 5,000-document (50,000 at 10,000 services) workloads file, then ``load()`` (one stat pass,
# the changed file read, the changed document parsed and validated, the model, the translation
# problems) and ``update()`` (keys -> affected proxies and shared layers -> builders -> snapshot
# diff -> the fleet's snapshots: what is pushed). "before": the translator is not told what
# changed (``MeshModel.changes_since`` says everything, as before issue 12's pipeline): it
# rebuilds the index and compares the whole mesh with the previous one; "after": it is told.

CHANGE_PROXIES = 200


def _write_mesh_fast(directory: Path, services: int) -> None:
    """bench/meshgen.py's mesh, written with libyaml (the pure-Python dumper takes minutes
    at 10,000 services)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, docs in generate_mesh(services=services, policies=services // 2).items():
        text = yaml.dump_all(docs, Dumper=yaml.CSafeDumper, sort_keys=False)
        (directory / name).write_text(text)


@pytest.mark.parametrize("path", ["before", "after"])
@pytest.mark.parametrize("services", [1000, 10000])
def test_config_change_cpu(
    benchmark: Any, tmp_path_factory: pytest.TempPathFactory, services: int, path: str
) -> None:
    if benchmark.disabled and services > 1000:
        services = 1500  # make test's quick form: the same code on a smaller mesh
    config = tmp_path_factory.mktemp(f"change{services}")
    _write_mesh_fast(config, services)
    translator = Translator()
    plane = ControlPlane(
        [config],
        translator.resources_for,
        dependencies=DependencyIndex(),
        check=translator.load_problems,
    )
    assert plane.load()
    mesh = plane.mesh
    assert mesh is not None
    for w in mesh.workload_entries[:CHANGE_PROXIES]:
        node = f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
        assert plane.cache.get(NodeInfo(node)) is not None
    workloads = config / "workloads.yaml"
    text = workloads.read_text()
    # svc199-4: no proxy is bound to it (the proxies are the first 200 workloads)
    a, b = "address: 10.0.3.231\n", "address: 10.255.255.1\n"
    assert text.count(a) == 1
    flips = itertools.count()

    def edit() -> None:
        nonlocal text
        text = text.replace(a, b, 1) if next(flips) % 2 == 0 else text.replace(b, a, 1)
        workloads.write_text(text)

    def change() -> dict[str, Any]:
        assert plane.load()
        plane.update()
        return plane.last_update

    original = MeshModel.changes_since
    if path == "before":
        MeshModel.changes_since = lambda self, other: EVERYTHING  # type: ignore[method-assign]
    try:
        cpu = time.process_time()
        done = benchmark.pedantic(change, setup=edit, rounds=6, iterations=1)
        cpu = (time.process_time() - cpu) / 6
    finally:
        MeshModel.changes_since = original  # type: ignore[method-assign]
    assert done["objects_changed"] == 1
    assert done["proxies_translated"] == 0
    benchmark.extra_info.update(
        services=services, proxies=CHANGE_PROXIES, cpu_ms_per_change=round(cpu * 1e3, 1),
        update_ms=round(done["seconds"] * 1e3, 1), load_ms=round(plane.last_load * 1e3, 1),
    )  # fmt: skip
