"""Sidecar scoping on the 1,000-service mesh (bench/meshgen.py: 10 namespaces of 100 services):
one proxy's configuration size (serialized bytes and resources per xDS type) and translation
time, without a Sidecar and with the mesh default Sidecar of the root namespace limiting egress
to ``./*`` and ``istio-system/*`` (Istio's recommended default).

- cold: a new translator, one proxy (everything the proxy's scope shares is built);
- warm: one more proxy of an already translated mesh (another namespace's proxies translated).

The sizes are recorded in each benchmark's ``extra_info`` and printed (``-s``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshcore.config import MeshModel, load, load_objects
from meshcore.xds import types
from meshcore.xds.translate import Generated, Translator, proxy_for_node

MESH_DEFAULT = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "Sidecar",
    "metadata": {"name": "default", "namespace": "istio-system"},
    "spec": {"egress": [{"hosts": ["./*", "istio-system/*"]}]},
}


@pytest.fixture(scope="module")
def meshes(mesh_dir: Path) -> dict[bool, MeshModel]:
    plain = load(mesh_dir)
    scoped = MeshModel(
        (*plain.resources, *load_objects([MESH_DEFAULT]).resources),
        domain=plain.domain,
        root_namespace=plain.root_namespace,
    )
    return {False: plain, True: scoped}


def _nodes(mesh: MeshModel) -> list[str]:
    return [
        f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
        for w in mesh.workload_entries
    ]


def _one(translator: Translator, mesh: MeshModel, node: str) -> Generated:
    return translator.generate(mesh, proxy_for_node(mesh, node))


def size(result: Generated) -> dict[str, int]:
    """Resources per type and serialized bytes in all (what the proxy is sent)."""
    out: dict[str, int] = {}
    total = 0
    for type_url, by_name in result.resources.items():
        out[types.SHORT_NAMES[type_url]] = len(by_name)
        total += sum(len(m.SerializeToString()) for m in by_name.values())
    out["bytes"] = total
    return out


@pytest.mark.parametrize("scoped", [False, True], ids=["no-sidecar", "sidecar"])
def test_scope_one_proxy_cold(benchmark: Any, meshes: dict[bool, MeshModel], scoped: bool) -> None:
    mesh = meshes[scoped]
    node = _nodes(mesh)[0]
    result = benchmark.pedantic(
        _one, setup=lambda: ((Translator(), mesh, node), {}), rounds=5, iterations=1
    )
    found = size(result)
    benchmark.extra_info.update(found)
    print(f"\n{'sidecar' if scoped else 'no sidecar'}: {found}")
    # meshgen: 100 services per namespace, 3 clusters each (the default and subsets v1, v2).
    assert found["CDS"] == (301 if scoped else 3001)
    assert found["EDS"] == (300 if scoped else 3000)


@pytest.mark.parametrize("scoped", [False, True], ids=["no-sidecar", "sidecar"])
def test_scope_one_proxy_warm(benchmark: Any, meshes: dict[bool, MeshModel], scoped: bool) -> None:
    mesh = meshes[scoped]
    nodes = _nodes(mesh)
    translator = Translator()
    for n in nodes[0:50:5]:  # one proxy per namespace: every namespace's layers are built
        _one(translator, mesh, n)
    fresh = iter(nodes[1000:])

    def another() -> Generated:
        return _one(translator, mesh, next(fresh))

    result = benchmark.pedantic(another, rounds=50, iterations=1)
    assert len(result.resources[types.LISTENER]) == 2
