"""Property: the etcd source reports the keys of the resources that changed (as the directory
loader does), not everything, and derives each model from the last one it gave: over random
puts, deletes and invalid writes against a real etcd, each model equals a fresh build of the
store's content, its changes cover what differs from the last model given, and it carries them
(``MeshModel.changes_since``) so that the control plane translates only what they touch."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcore.config import MeshModel
from meshcore.config.changes import changed_keys
from meshcore.store import parse_store_url
from meshcore.store.etcd import EtcdClient
from meshcore.store.source import EtcdSource
from tests.property.test_incremental_config import model_view
from tests.store._etcd import EtcdCluster

NAMES = ("a", "b", "c")
_runs = itertools.count()


def workload(name: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"address": address, "labels": {"app": "a"}},
    }


def service(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]},
    }


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("workload"), st.sampled_from(NAMES), st.sampled_from(["10.0.0.1", "10.0.0.2"])),
        st.tuples(st.just("service"), st.sampled_from(NAMES), st.sampled_from([80, 81])),
        st.tuples(st.just("invalid"), st.sampled_from(NAMES), st.just(0)),
        st.tuples(st.just("delete"), st.sampled_from(NAMES), st.sampled_from(["WorkloadEntry", "Service"])),
        st.tuples(st.just("same"), st.sampled_from(NAMES), st.just(0)),
    ),
    min_size=1,
    max_size=15,
)  # fmt: skip


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
def test_the_store_reports_the_keys_that_changed(etcd: EtcdCluster, ops: list[Any]) -> None:
    url = parse_store_url(etcd.url(f"/changes-{next(_runs)}"))
    client = EtcdClient(etcd.endpoints)
    source = EtcdSource(url, client=EtcdClient(etcd.endpoints))
    try:
        for name in NAMES:
            client.put(
                url.key("", "Service", "default", name), json.dumps(service(name, 80)).encode()
            )
        source.catch_up()
        last = source.validate().model
        assert last is not None
        assert source.changes.everything  # the first model: everything

        def key(kind: str, name: str) -> str:
            group = "" if kind == "Service" else "networking.istio.io"
            return url.key(group, kind, "default", name)

        written: dict[str, bytes] = {}
        for op, name, value in ops:
            if op == "workload":
                body = json.dumps(workload(name, value)).encode()
                client.put(key("WorkloadEntry", name), body)
                written[name] = body
            elif op == "service":
                client.put(key("Service", name), json.dumps(service(name, value)).encode())
            elif op == "invalid":  # a port out of range: refused, its last valid version served
                client.put(key("Service", name), json.dumps(service(name, 70000)).encode())
            elif op == "delete":
                client.delete(key(value, name))
            elif name in written:  # the same value again: a new revision, no change
                client.put(key("WorkloadEntry", name), written[name])
            source.catch_up()
            model = source.validate().model
            assert model is not None
            assert model_view(model) == model_view(_fresh(source))
            assert not source.changes.everything
            assert changed_keys(last.resources, model.resources) <= source.changes.keys
            assert model.changes_since(last) == source.changes
            last = model
    finally:
        source.stop()
        client.close()


def _fresh(source: EtcdSource) -> MeshModel:
    """What a replica starting now would build from the same view (last valid versions of
    rejected keys included: a fresh source cannot know them, so compared only without any)."""
    fresh = EtcdSource(source.url, client=source.client)
    model = fresh._validate(source.items(), source.revision).model
    assert model is not None
    if not source.rejected:
        return model
    # With a rejected key the replica serves that key's last valid version: built from the
    # documents it serves.
    served = source._served
    return MeshModel(
        [e.checked[0] for k, e in sorted(served.items()) if e.doc is not None and e.checked[0]],
        domain=source.domain,
        root_namespace=source.root_namespace,
    )
