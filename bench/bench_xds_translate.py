"""Translate the 1,000-service mesh (bench/meshgen.py) to Envoy xDS resources.

- one proxy, cold: everything shared by the mesh's proxies is built (3,000 clusters, 3,000
  ClusterLoadAssignments, the "8080" RouteConfiguration with 1,000 virtual hosts), then the
  proxy's own inbound listener and authorization filters;
- one proxy, warm: what one more proxy of an already translated mesh costs;
- many proxies, cold: the sidecars of the first 2,000 WorkloadEntries (the fleet size issue 4
  names), and of all 5,000;
- after one endpoint change (a WorkloadEntry's weight), a new MeshModel, the same proxies having
  been translated for the mesh before: the first proxy (which carries over everything the
  change does not touch) and all 5,000 proxies.

No peer runs here: istiod's translation is Go inside istiod, with no standalone entry point to
time in the same run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from meshcore.config import ChangeSet, MeshModel, load, load_objects
from meshcore.config.values import freeze, thaw
from meshcore.xds import types
from meshcore.xds.translate import Generated, Translator, proxy_for_node
from meshgen import generate_mesh


@pytest.fixture(scope="module")
def mesh(mesh_dir: Path) -> MeshModel:
    return load(mesh_dir)


def _nodes(mesh: MeshModel) -> list[str]:
    return [
        f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
        for w in mesh.workload_entries
    ]


def _one(translator: Translator, mesh: MeshModel, node: str) -> Generated:
    return translator.generate(mesh, proxy_for_node(mesh, node))


def _cold(*args: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """pytest-benchmark setup: a new translator (nothing translated before) and ``args``."""
    return (Translator(), *args), {}


def test_translate_one_proxy_cold(benchmark: Any, mesh: MeshModel) -> None:
    node = _nodes(mesh)[0]
    result = benchmark.pedantic(_one, setup=lambda: _cold(mesh, node), rounds=5, iterations=1)
    assert len(result.resources[types.CLUSTER]) == 3001
    assert len(result.resources[types.ENDPOINT]) == 3000
    assert len(result.resources[types.ROUTE]["8080"].virtual_hosts) == 1000


def test_translate_one_proxy_warm(benchmark: Any, mesh: MeshModel) -> None:
    nodes = _nodes(mesh)
    translator = Translator()
    for n in nodes[0:50:5]:  # one proxy per namespace: every namespace's routes are built
        _one(translator, mesh, n)
    fresh = iter(nodes[1000:])  # a proxy not translated before, each round

    def another() -> Generated:
        return _one(translator, mesh, next(fresh))

    result = benchmark.pedantic(another, rounds=50, iterations=1)
    assert len(result.resources[types.LISTENER]) == 2


@pytest.mark.parametrize("proxies", [2000, 5000])
def test_translate_every_proxy_cold(benchmark: Any, mesh: MeshModel, proxies: int) -> None:
    nodes = _nodes(mesh)[:proxies]

    def every(translator: Translator) -> int:
        return sum(len(_one(translator, mesh, n).resources[types.CLUSTER]) for n in nodes)

    total = benchmark.pedantic(every, setup=_cold, rounds=3, iterations=1)
    assert total == proxies * 3001


def _one_endpoint_changed(mesh: MeshModel, told: bool = False) -> MeshModel:
    """The mesh with one WorkloadEntry's weight changed; ``told``: derived from ``mesh`` with
    the changed key, as the loader gives it (``MeshModel.changes_since``), else a model that
    says nothing of where it came from (the translator compares it with the previous one)."""
    resources = list(mesh.resources)
    i = next(k for k, r in enumerate(resources) if r.key[0] == "WorkloadEntry")
    spec = thaw(resources[i].spec)
    spec["weight"] = 9
    resources[i] = dataclasses.replace(resources[i], spec=freeze(spec))
    derived = (mesh, ChangeSet(frozenset({resources[i].key}))) if told else None
    return MeshModel(
        resources, domain=mesh.domain, root_namespace=mesh.root_namespace, derived_from=derived
    )


def _after_one_endpoint_change(
    benchmark: Any, mesh: MeshModel, proxies: int, told: bool, clusters: int
) -> None:
    nodes = _nodes(mesh)[:proxies]
    changed = _one_endpoint_changed(mesh, told)

    held: list[Translator] = []

    def prime() -> None:
        # as in a running control plane: every proxy of the mesh before the change translated;
        # the previous round's translator dropped first, so that it does not change when the
        # garbage collector's full collections fall (one costs about 100 ms here)
        held.clear()
        held.append(Translator())
        for n in nodes:
            _one(held[0], mesh, n)

    def again() -> int:
        return sum(len(_one(held[0], changed, n).resources[types.ENDPOINT]) for n in nodes)

    assert benchmark.pedantic(again, setup=prime, rounds=5, iterations=1) == proxies * clusters


@pytest.mark.parametrize("told", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("proxies", [1, 5000])
def test_translate_after_one_endpoint_change(
    benchmark: Any, mesh: MeshModel, proxies: int, told: bool
) -> None:
    """ "before": the translator finds what changed by comparing the meshes (issue 12's
    starting point); "after": the new mesh says which keys changed (what the loader gives)."""
    _after_one_endpoint_change(benchmark, mesh, proxies, told, 3000)


@pytest.fixture(scope="module")
def mesh10k(request: pytest.FixtureRequest) -> MeshModel:
    """The generated mesh at 10,000 services (85,000 resources; 1,500 services in make test's
    quick form, which runs each body once, unmeasured)."""
    services = 1500 if request.config.getoption("benchmark_disable") else 10000
    files = generate_mesh(services=services, policies=services // 2)
    return load_objects([d for docs in files.values() for d in docs])


@pytest.mark.parametrize("told", [False, True], ids=["before", "after"])
def test_translate_after_one_endpoint_change_10k(
    benchmark: Any, mesh10k: MeshModel, told: bool
) -> None:
    _after_one_endpoint_change(benchmark, mesh10k, 1, told, 3 * len(mesh10k.services))
