"""Incremental updates equal a build from scratch.

Random sequences of config edits are written to a watched directory; after each one the
control plane (dependency index, only changed files read again, only touched proxies and shared
layers translated again, differences applied to the fleet) must hold, for every proxy, exactly
the snapshot a cold translation of the files gives. Plus checks that the work done follows the
change.
"""

from __future__ import annotations

import copy
import itertools
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcore._core.xds import ResourceStore, Snapshot
from meshcore.config import load
from meshcore.xds import types
from meshcore.xds.cache import NodeInfo, SnapshotCache
from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.deps import DependencyIndex
from meshcore.xds.translator import Translator

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from meshgen import generate_mesh

Files = dict[str, list[dict[str, Any]]]
ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.9", "10.0.0.7"]
_stamp = itertools.count(1_700_000_000_000_000_000, 1_000_000_000)


def base_files() -> Files:
    files = generate_mesh(services=6, workloads_per_service=2, policies=4, namespaces=3)
    files["peer.yaml"] = [
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "default", "namespace": "ns1"}, "spec": {"mtls": {"mode": "STRICT"}}}
    ]  # fmt: skip
    # One workload per file as well, so that some edits touch a small file.
    files["extra-workload.yaml"] = [
        {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
         "metadata": {"name": "svc0-extra", "namespace": "ns0"},
         "spec": {"address": "10.0.0.7", "labels": {"app": "svc0", "version": "v2"},
                  "ports": {"http": 8080}, "serviceAccount": "svc0"}}
    ]  # fmt: skip
    return files


def write(config: Path, files: Files, only: set[str] | None = None) -> None:
    for name, docs in files.items():
        if only is not None and name not in only:
            continue
        path = config / name
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        n = next(_stamp)  # distinct modification times, however fast the writes
        os.utime(path, ns=(n, n))
    for path in config.iterdir():
        if path.name not in files:
            path.unlink()


def nodes(files: Files) -> list[NodeInfo]:
    out = []
    for w in files["workloads.yaml"][:5]:
        ns, name, ip = w["metadata"]["namespace"], w["metadata"]["name"], w["spec"]["address"]
        out.append(NodeInfo(f"sidecar~{ip}~{name}.{ns}~{ns}.svc.cluster.local"))
    # Bound by address only (the pod name matches no WorkloadEntry), to an address that
    # edits move workloads to and from.
    out.append(NodeInfo("sidecar~10.0.0.9~pod-x.ns0~ns0.svc.cluster.local"))
    # Named after a WorkloadEntry that edits remove and add again (its address is elsewhere).
    out.append(NodeInfo("sidecar~10.9.0.1~svc0-extra.ns0~ns0.svc.cluster.local"))
    # No workload at all, labels from metadata; another outbound address.
    out.append(
        NodeInfo(
            "sidecar~10.9.9.9~client.ns2~ns2.svc.cluster.local",
            metadata={"LABELS": {"app": "client"}, "MESHCORE_OUTBOUND_ADDRESS": "127.0.0.2"},
        )
    )
    out.append(NodeInfo("sidecar~10.0.0.1~grpc-client.ns1~ns1.svc.cluster.local",
                        metadata={"GENERATOR": "grpc"}))  # fmt: skip
    return out


# --- edits ------------------------------------------------------------------------------------


def _pick(files: Files, kind: str, i: int) -> dict[str, Any] | None:
    docs = [d for name in sorted(files) for d in files[name] if d["kind"] == kind]
    return docs[i % len(docs)] if docs else None


def _file_of(files: Files, doc: dict[str, Any]) -> str:
    return next(name for name, docs in files.items() if any(d is doc for d in docs))


def edit(files: Files, op: str, i: int, j: int) -> set[str]:
    """Applies one edit in place; returns the files it touched."""
    if op == "workload address":
        w = _pick(files, "WorkloadEntry", i)
        assert w is not None
        w["spec"]["address"] = ADDRESSES[j % len(ADDRESSES)]
        return {_file_of(files, w)}
    if op == "workload version":
        w = _pick(files, "WorkloadEntry", i)
        assert w is not None
        w["spec"]["labels"]["version"] = f"v{j % 3 + 1}"
        return {_file_of(files, w)}
    if op == "workload weight":
        w = _pick(files, "WorkloadEntry", i)
        assert w is not None
        w["spec"]["weight"] = j % 5 + 1
        return {_file_of(files, w)}
    if op == "workload toggle":
        name = "extra-workload.yaml"
        if name in files:
            del files[name]
        else:
            files[name] = base_files()[name]
            files[name][0]["spec"]["address"] = ADDRESSES[j % len(ADDRESSES)]
        return {name}
    if op == "route weight":
        vs = _pick(files, "VirtualService", i)
        assert vs is not None
        w = j % 101
        vs["spec"]["http"][1]["route"][0]["weight"] = w
        vs["spec"]["http"][1]["route"][1]["weight"] = 100 - w
        return {_file_of(files, vs)}
    if op == "route source labels":
        vs = _pick(files, "VirtualService", i)
        assert vs is not None
        match = vs["spec"]["http"][0]["match"][0]
        if "sourceLabels" in match:
            del match["sourceLabels"]
        else:
            match["sourceLabels"] = {"version": f"v{j % 2 + 1}"}
        return {_file_of(files, vs)}
    if op == "route timeout":
        vs = _pick(files, "VirtualService", i)
        assert vs is not None
        vs["spec"]["http"][1]["timeout"] = f"{j % 9 + 1}s"
        return {_file_of(files, vs)}
    if op == "destination lb":
        dr = _pick(files, "DestinationRule", i)
        assert dr is not None
        simple = ["LEAST_REQUEST", "ROUND_ROBIN", "RANDOM"][j % 3]
        dr["spec"]["trafficPolicy"]["loadBalancer"] = {"simple": simple}
        return {_file_of(files, dr)}
    if op == "destination subsets":
        dr = _pick(files, "DestinationRule", i)
        assert dr is not None
        subsets = dr["spec"].setdefault("subsets", [])
        if any(s["name"] == "v3" for s in subsets):
            dr["spec"]["subsets"] = [s for s in subsets if s["name"] != "v3"]
        else:
            subsets.append({"name": "v3", "labels": {"version": "v3"}})
        return {_file_of(files, dr)}
    if op == "destination selector":
        # A DestinationRule with a workloadSelector: it changes the clusters of the selected
        # proxies of ns0 only (and which shared layer they hold).
        name = "selector-dr.yaml"
        if name in files and j % 2:
            del files[name]
            return {name}
        svc = _pick(files, "Service", i)
        assert svc is not None
        host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
        files[name] = [
            {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
             "metadata": {"name": "selected", "namespace": "ns0"},
             "spec": {"host": host, "workloadSelector": {"matchLabels": {"version": f"v{j % 3 + 1}"}},
                      "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
                      "subsets": [{"name": "canary", "labels": {"version": "v2"}}]}}
        ]  # fmt: skip
        return {name}
    if op == "peer authentication":
        pa = files["peer.yaml"][0]
        pa["spec"]["mtls"]["mode"] = ["STRICT", "PERMISSIVE", "DISABLE"][j % 3]
        pa["metadata"]["namespace"] = ["ns1", "ns0", "istio-system"][i % 3]
        return {"peer.yaml"}
    if op == "authorization policy":
        ap = _pick(files, "AuthorizationPolicy", i)
        assert ap is not None
        ap["spec"]["action"] = "DENY" if ap["spec"].get("action", "ALLOW") == "ALLOW" else "ALLOW"
        return {_file_of(files, ap)}
    if op == "service port":
        svc = _pick(files, "Service", i)
        assert svc is not None
        ports = svc["spec"]["ports"]
        if len(ports) > 1:
            del ports[1:]
        else:
            ports.append({"name": "http-admin", "port": 9000 + j % 3, "targetPort": 8080})
        return {_file_of(files, svc)}
    raise AssertionError(op)


OPS = [
    "workload address", "workload version", "workload weight", "workload toggle",
    "route weight", "route source labels", "route timeout", "destination lb",
    "destination subsets", "peer authentication", "authorization policy", "service port",
    "destination selector",
]  # fmt: skip


# --- the property -----------------------------------------------------------------------------


def view(snap: Snapshot | None) -> dict[str, tuple[str, list[str]]]:
    if snap is None:
        return {}
    return {t: (snap.version(t), sorted(snap.names(t))) for t in types.PUSH_ORDER}


def cold_views(config: Path, proxies: list[NodeInfo]) -> dict[str, dict[str, Any]]:
    """What a fresh control plane builds from the files, not disturbing the warm one."""
    generate = Translator().resources_for
    mesh = load(config)
    cache = SnapshotCache()
    out = {}
    for node in proxies:
        resources = generate(mesh, node)
        out[node.id] = view(cache.snapshot(resources) if resources is not None else None)
    return out


@pytest.fixture
def plane(tmp_path: Path) -> tuple[ControlPlane, Path, Files, list[NodeInfo]]:
    files = base_files()
    write(tmp_path, files)
    cp = ControlPlane([tmp_path], Translator().resources_for, dependencies=DependencyIndex())
    assert cp.load()
    proxies = nodes(files)
    for node in proxies:
        assert cp.cache.get(node) is not None
    return cp, tmp_path, files, proxies


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(OPS), st.integers(0, 50), st.integers(0, 50)),
            min_size=1, max_size=3,
        ),
        min_size=1, max_size=6,
    )
)  # fmt: skip
def test_incremental_equals_from_scratch(
    plane: tuple[ControlPlane, Path, Files, list[NodeInfo]],
    steps: list[list[tuple[str, int, int]]],
) -> None:
    cp, config, start, proxies = plane
    files = copy.deepcopy(start)
    try:
        for batch in steps:
            touched: set[str] = set()
            for op, i, j in batch:
                touched |= edit(files, op, i, j)
            write(config, files, only=touched)
            assert cp.load(), [str(p) for p in cp.problems if p.severity == "error"]
            cp.update()
            warm = {node.id: view(cp.cache.get(node)) for node in proxies}
            assert warm == cold_views(config, proxies), batch
        # Back to the start, in one step: checked too.
        write(config, start)
        assert cp.load()
        cp.update()
        warm = {node.id: view(cp.cache.get(node)) for node in proxies}
        assert warm == cold_views(config, proxies), "back to the start"
    finally:
        # Back to the start for the next example (hypothesis reuses the fixture).
        write(config, start)
        assert cp.load()
        cp.update()


def test_endpoint_change_translates_only_what_it_touches(
    plane: tuple[ControlPlane, Path, Files, list[NodeInfo]],
) -> None:
    cp, config, files, proxies = plane
    w = files["workloads.yaml"][7]  # a workload no proxy is bound to
    w["spec"]["address"] = "10.0.0.88"
    write(config, files, only={"workloads.yaml"})
    before = {n.id: cp.cache.get(n) for n in proxies}
    assert cp.load()
    cp.update()
    assert cp.last_update["objects_changed"] == 1
    assert cp.last_update["proxies_translated"] == 0
    assert cp.loader.reread == [str(config / "workloads.yaml")]
    svc = w["metadata"]["name"].rsplit("-", 1)[0]
    ns = w["metadata"]["namespace"]
    for node in proxies:
        old, new = before[node.id], cp.cache.get(node)
        assert old is not None
        assert new is not None
        changed, removed = new.changed_since(old, types.ENDPOINT)
        # Only the service's assignments (and its subsets'), nothing else, for every proxy.
        assert changed
        assert not removed
        assert all(n.endswith(f"|{svc}.{ns}.svc.cluster.local") for n in changed), changed
        for t in (types.CLUSTER, types.LISTENER, types.ROUTE):
            assert new.changed_since(old, t) == ([], []), t
    assert cold_views(config, proxies) == {n.id: view(cp.cache.get(n)) for n in proxies}


def test_proxy_bound_to_a_changed_workload_is_translated_again(
    plane: tuple[ControlPlane, Path, Files, list[NodeInfo]],
) -> None:
    cp, config, files, proxies = plane
    files["workloads.yaml"][0]["spec"]["ports"] = {"http": 8081}  # its inbound port moves
    write(config, files, only={"workloads.yaml"})
    assert cp.load()
    cp.update()
    assert cp.last_update["proxies_translated"] == 1
    bound = cp.cache.get(proxies[0])
    assert bound is not None
    assert any(n.endswith("_8081") for n in bound.names(types.LISTENER))
    assert cold_views(config, proxies) == {n.id: view(cp.cache.get(n)) for n in proxies}


def test_a_dropped_proxy_leaves_the_index(
    plane: tuple[ControlPlane, Path, Files, list[NodeInfo]],
) -> None:
    cp, _, _, proxies = plane
    assert cp.index is not None
    assert len(cp.index) == len(proxies)
    cp.cache.clear(proxies[0].id)
    assert proxies[0].id not in cp.index
    assert all(proxies[0].id not in g.members for g in cp.index.groups.values())


def test_store_versions_do_not_depend_on_the_store() -> None:
    # The property compares versions across stores: they must be content hashes.
    a = ResourceStore().snapshot({types.CLUSTER: {"x": b"1"}})
    b = ResourceStore().snapshot({types.CLUSTER: {"x": b"1"}})
    assert a.version(types.CLUSTER) == b.version(types.CLUSTER)


def test_changes_made_across_an_invalid_config_are_not_lost(
    plane: tuple[ControlPlane, Path, Files, list[NodeInfo]],
) -> None:
    cp, config, files, proxies = plane
    # One file broken, another changed meanwhile, then the first fixed: the update must see
    # the second file's change too, though only the first was read in the last load.
    good_vs = copy.deepcopy(files["virtualservices.yaml"])
    files["virtualservices.yaml"][0]["spec"]["http"][1]["route"][0]["weight"] = -5
    write(config, files, only={"virtualservices.yaml"})
    assert not cp.load()
    files["workloads.yaml"][7]["spec"]["address"] = "10.0.0.77"
    write(config, files, only={"workloads.yaml"})
    assert not cp.load()
    files["virtualservices.yaml"] = good_vs
    write(config, files, only={"virtualservices.yaml"})
    assert cp.load()
    assert cp.loader.reread == [str(config / "virtualservices.yaml")]
    cp.update()
    assert cp.last_update["objects_changed"] == 1  # the workload (the VirtualService is back)
    assert cold_views(config, proxies) == {n.id: view(cp.cache.get(n)) for n in proxies}
