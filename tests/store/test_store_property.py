"""Property: any sequence of applies, deletes, invalid writes and compactions against the
store, with two replicas catching up at random moments (so that some of them find their
history compacted and list again), ends with every replica's mesh and translated resources
equal to a from-scratch build of the store's final content."""

from __future__ import annotations

import itertools
import json
from typing import Any

import grpc
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshcore.config import MeshModel
from meshcore.store import parse_store_url
from meshcore.store.etcd import EtcdClient
from meshcore.store.source import EtcdSource
from meshcore.xds.translate import generate, proxy_for_node
from tests.store._etcd import EtcdCluster

NAMES = ("a", "b", "c")
NODE = "sidecar~10.0.0.1~web-1.default~default.svc.cluster.local"
_runs = itertools.count()


def service(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]},
    }


def route(name: str, weight: int) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {
            "hosts": [name],
            "http": [{"route": [{"destination": {"host": name}, "weight": weight}]}],
        },
    }


OPS = st.one_of(
    st.tuples(st.just("service"), st.sampled_from(NAMES), st.integers(80, 82)),
    st.tuples(st.just("route"), st.sampled_from(NAMES), st.integers(1, 3)),
    st.tuples(st.just("invalid"), st.sampled_from(NAMES), st.just(0)),
    st.tuples(st.just("delete"), st.sampled_from(NAMES), st.sampled_from(("Service", "VS"))),
    st.tuples(st.just("compact"), st.just(""), st.just(0)),
    st.tuples(st.just("catch_up"), st.sampled_from((0, 1)), st.just(0)),
)


def fingerprint(mesh: MeshModel | None) -> tuple[Any, ...]:
    """The mesh's resources and one proxy's translated resources, as bytes."""
    assert mesh is not None
    resources = sorted((r.key, r.api_version, repr(r.spec)) for r in mesh.resources)
    out = generate(mesh, proxy_for_node(mesh, NODE))
    translated = sorted(
        (type_url, name, msg.SerializeToString(deterministic=True))
        for type_url, by_name in out.resources.items()
        for name, msg in by_name.items()
    )
    return tuple(resources), tuple(translated)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, max_size=25))
# A replica away while a key it holds is deleted and the history compacted: its new list
# must drop the key.
@example(
    ops=[("service", "a", 80), ("catch_up", 0, 0), ("delete", "a", "Service"), ("compact", "", 0)]
)
def test_replicas_end_equal_to_a_fresh_build(etcd: EtcdCluster, ops: list[Any]) -> None:
    prefix = f"/prop-{next(_runs)}"
    url = parse_store_url(etcd.url(prefix))
    client = EtcdClient(etcd.endpoints)
    replicas = [EtcdSource(url, client=EtcdClient(etcd.endpoints)) for _ in range(2)]
    try:
        for r in replicas:
            r.list()
            r.validate()

        def key(kind: str, name: str) -> str:
            if kind == "Service":
                return url.key("", "Service", "default", name)
            return url.key("networking.istio.io", "VirtualService", "default", name)

        for op, arg, value in ops:
            if op == "service":
                client.put(key("Service", arg), json.dumps(service(arg, value)).encode())
            elif op == "route":
                client.put(key("VS", arg), json.dumps(route(arg, value)).encode())
            elif op == "invalid":  # a negative weight: Istio refuses it
                client.put(key("VS", arg), json.dumps(route(arg, -1)).encode())
            elif op == "delete":
                client.delete(key(value, arg))
            elif op == "compact":
                revision, _ = client.get(url.config_prefix)
                try:
                    client.compact(revision)
                except grpc.RpcError as exc:  # compacted there already: nothing to do
                    if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                        raise
            else:
                replica = replicas[int(arg)]
                replica.catch_up()
                replica.validate()
        # The keys left invalid are put right (a replica serves their last valid version,
        # which a fresh build cannot know), then every replica catches up.
        for r in replicas:
            r.catch_up()
            r.validate()
        for k in set().union(*(r.rejected for r in replicas)):
            client.delete(k)
        fresh = EtcdSource(url, client=EtcdClient(etcd.endpoints))
        fresh.list()
        expected = fingerprint(fresh.validate().model)
        for r in replicas:
            r.catch_up()
            assert fingerprint(r.validate().model) == expected
            assert not r.rejected
        fresh.stop()
    finally:
        for r in replicas:
            r.stop()
        client.close()
