"""Carrying over a previous translation gives exactly what a cold translation gives.

For each change to a generated mesh (one resource of each kind added, changed or removed),
every proxy's resources and problems after ``generate`` on the old mesh then on the new one
must equal a cold translation of the new mesh, byte for byte.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")

from meshcore.config import ChangeSet, MeshModel, load_objects
from meshcore.config.changes import changed_keys
from meshcore.xds import types
from meshcore.xds.cache import Layered
from meshcore.xds.translate import Translator, proxy_for_node

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from meshgen import generate_mesh

Docs = list[dict[str, Any]]


def _base() -> Docs:
    files = generate_mesh(services=12, workloads_per_service=2, policies=6, namespaces=3)
    docs = [d for name in sorted(files) for d in files[name]]
    docs.append(
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "default", "namespace": "ns1"}, "spec": {"mtls": {"mode": "STRICT"}}}
    )  # fmt: skip
    return docs


def _find(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _weight(docs: Docs) -> None:
    _find(docs, "WorkloadEntry", "svc3-1")["spec"]["weight"] = 7


def _remove_workload(docs: Docs) -> None:
    docs.remove(_find(docs, "WorkloadEntry", "svc4-0"))


def _timeout(docs: Docs) -> None:
    _find(docs, "VirtualService", "svc5")["spec"]["http"][1]["timeout"] = "9s"


def _bad_route(docs: Docs) -> None:
    _find(docs, "VirtualService", "svc6")["spec"]["http"][0]["delegate"] = {"name": "x"}
    del _find(docs, "VirtualService", "svc6")["spec"]["http"][0]["route"]


def _lb(docs: Docs) -> None:
    _find(docs, "DestinationRule", "svc7")["spec"]["trafficPolicy"]["loadBalancer"] = {
        "simple": "PASSTHROUGH"
    }


def _policy(docs: Docs) -> None:
    _find(docs, "AuthorizationPolicy", "policy1")["spec"]["action"] = "DENY"


def _peer_auth(docs: Docs) -> None:
    _find(docs, "PeerAuthentication", "default")["spec"]["mtls"]["mode"] = "DISABLE"


def _service_port(docs: Docs) -> None:
    _find(docs, "Service", "svc8")["spec"]["ports"].append({"name": "tcp-x", "port": 7000})


def _service_entry(docs: Docs) -> None:
    docs.append(
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
         "metadata": {"name": "ext", "namespace": "ns0"},
         "spec": {"hosts": ["api.example.com"], "resolution": "DNS",
                  "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}]}}
    )  # fmt: skip


CHANGES: dict[str, Callable[[Docs], None]] = {
    "endpoint weight": _weight,
    "workload removed": _remove_workload,
    "route timeout": _timeout,
    "route made invalid": _bad_route,
    "destination rule": _lb,
    "authorization policy": _policy,
    "peer authentication": _peer_auth,
    "service port": _service_port,
    "service entry": _service_entry,
}


def _nodes(mesh: MeshModel) -> list[str]:
    return [
        f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
        for w in mesh.workload_entries
    ]


def _all(mesh: MeshModel, translator: Translator) -> list[tuple[Any, ...]]:
    out = []
    for node in _nodes(mesh):
        for meta in ({}, {"GENERATOR": "grpc"}):
            result = translator.generate(mesh, proxy_for_node(mesh, node, meta))
            resources = {
                t: [(n, m.SerializeToString(deterministic=True)) for n, m in d.items()]
                for t, d in result.resources.items()
            }
            out.append((node, bool(meta), resources, [str(p) for p in result.problems]))
    return out


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_carried_over_equals_cold(change: str) -> None:
    before = _base()
    after = copy.deepcopy(before)
    CHANGES[change](after)
    old_mesh, new_mesh = load_objects(before), load_objects(after)
    translator = Translator()
    _all(old_mesh, translator)
    carried = _all(new_mesh, translator)
    cold = _all(load_objects(after), Translator())
    assert carried == cold


def _told(old: MeshModel, new: MeshModel) -> MeshModel:
    """``new`` as the loader gives it: derived from ``old``, with the keys that changed."""
    keys = changed_keys(old.resources, new.resources)
    return MeshModel(
        new.resources,
        domain=new.domain,
        root_namespace=new.root_namespace,
        derived_from=(old, ChangeSet(frozenset(keys))),
    )


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_told_what_changed_equals_cold(change: str) -> None:
    # The translator told the changed keys (MeshModel.changes_since: workload changes patch
    # the index and rebuild only their hosts' clusters and endpoints) gives what a cold
    # translation gives, for every proxy, byte for byte.
    before = _base()
    after = copy.deepcopy(before)
    CHANGES[change](after)
    old_mesh = load_objects(before)
    new_mesh = _told(old_mesh, load_objects(after))
    translator = Translator()
    _all(old_mesh, translator)
    carried = _all(new_mesh, translator)
    assert carried == _all(load_objects(after), Translator())


def test_an_endpoint_change_rebuilds_only_its_host() -> None:
    before = _base()
    after = copy.deepcopy(before)
    _weight(after)  # svc3-1
    old_mesh = load_objects(before)
    new_mesh = _told(old_mesh, load_objects(after))
    translator = Translator()
    node = _nodes(old_mesh)[0]
    a = translator.generate(old_mesh, proxy_for_node(old_mesh, node)).resources
    b = translator.generate(new_mesh, proxy_for_node(new_mesh, node)).resources
    assert new_mesh.changes_since(old_mesh).keys == {("WorkloadEntry", "ns0", "svc3-1")}
    host = "svc3.ns0.svc.cluster.local"
    changed = {n for n, m in b[types.ENDPOINT].items() if a[types.ENDPOINT][n] is not m}
    assert changed
    assert all(n.endswith(f"|{host}") for n in changed), changed
    # The clusters are equal (a weight is not in them): the same objects, the same map.
    old_clusters, new_clusters = a[types.CLUSTER], b[types.CLUSTER]
    assert isinstance(old_clusters, Layered)
    assert isinstance(new_clusters, Layered)
    assert new_clusters.shared is old_clusters.shared
