"""The etcd config store with a real etcd: the control plane lists, watches, survives
compaction and etcd's absence, and keeps the last valid version of a key written invalid."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshcore.store import parse_store_url
from meshcore.store.etcd import EtcdClient
from meshcore.store.source import EtcdSource
from tests.envoy._sidecar import control_plane_in_thread, free_ports, wait_for
from tests.store._etcd import EtcdCluster

EXAMPLES = Path(__file__).parents[2] / "examples"


def vs(
    name: str, host: str = "reviews", weight: int = 100, namespace: str = "default"
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "hosts": [host],
            "http": [{"route": [{"destination": {"host": host}, "weight": weight}]}],
        },
    }


def key_of(prefix: str, obj: dict[str, Any]) -> str:
    group = obj["apiVersion"].rpartition("/")[0] or "core"
    meta = obj["metadata"]
    return f"{prefix}/{group}/{obj['kind']}/{meta.get('namespace', 'default')}/{meta['name']}"


@pytest.fixture
def client(etcd: EtcdCluster) -> Iterator[EtcdClient]:
    c = EtcdClient(etcd.endpoints)
    yield c
    c.close()


def put(client: EtcdClient, prefix: str, obj: dict[str, Any]) -> int:
    return client.put(key_of(prefix, obj), json.dumps(obj).encode())


def test_serve_from_etcd_follows_writes_and_keeps_last_valid_version(
    etcd: EtcdCluster, client: EtcdClient, prefix: str
) -> None:
    put(client, prefix, vs("a"))
    put(client, prefix, vs("b", host="ratings"))
    url = parse_store_url(etcd.url(prefix))
    xds, mon = free_ports(2)
    with control_plane_in_thread([], store=url, xds_port=xds, metrics_port=mon) as (_, server):
        plane = server.plane
        assert {r.name for r in plane.mesh.virtual_services} == {"a", "b"}
        # Another client writes an invalid version of a: reported with its key; the last
        # valid a keeps being served, and b's change (a later write) is taken.
        bad_key = key_of(prefix, vs("a"))
        client.put(bad_key, json.dumps(vs("a", weight=-5)).encode())
        put(client, prefix, vs("b", host="frontend"))
        wait_for(
            lambda: plane.mesh.get("VirtualService", "default", "b").spec["hosts"] == ("frontend",),
            "b's change served",
        )
        a = plane.mesh.get("VirtualService", "default", "a")
        assert a is not None
        assert a.spec["http"][0]["route"][0]["weight"] == 100
        with urllib.request.urlopen(f"http://127.0.0.1:{mon}/debug/syncz", timeout=5) as r:
            status = json.loads(r.read())["config_store"]
        assert status["connected"] is True
        assert list(status["rejected"]) == [bad_key]
        assert "weight" in status["rejected"][bad_key][0]["path"]
        # A value that is not YAML at all, under another key: reported, nothing lost.
        junk = f"{prefix}/networking.istio.io/VirtualService/default/junk"
        client.put(junk, b"{not: [yaml")
        wait_for(lambda: junk in server.store.rejected, "junk reported")
        assert {r.name for r in plane.mesh.virtual_services} == {"a", "b"}
        # The key fixed: served; deleted: gone.
        put(client, prefix, vs("a", weight=50))
        client.delete(junk)
        wait_for(
            lambda: (
                plane.mesh.get("VirtualService", "default", "a").spec["http"][0]["route"][0][
                    "weight"
                ]
                == 50
            ),
            "a's valid version served",
        )
        wait_for(lambda: not server.store.rejected, "nothing rejected")
        client.delete(key_of(prefix, vs("b")))
        wait_for(lambda: plane.mesh.get("VirtualService", "default", "b") is None, "b deleted")


def test_a_key_holding_another_resource_is_refused(
    etcd: EtcdCluster, client: EtcdClient, prefix: str
) -> None:
    # b's value under a's key would shadow a: refused, with the key.
    client.put(key_of(prefix, vs("a")), json.dumps(vs("b")).encode())
    source = EtcdSource(parse_store_url(etcd.url(prefix)))
    source.list()
    report = source.validate()
    assert report.model is not None
    assert not report.model.virtual_services
    (problems,) = source.rejected.values()
    assert "the key names networking.istio.io/VirtualService/default/a" in problems[0].message
    source.stop()


def test_compaction_while_away_is_caught_up_by_a_new_list(
    etcd: EtcdCluster, client: EtcdClient, prefix: str
) -> None:
    put(client, prefix, vs("a"))
    put(client, prefix, vs("b"))
    source = EtcdSource(parse_store_url(etcd.url(prefix)))
    source.list()
    assert source.validate().model is not None
    # While it is not watching: a deleted, c added, b changed, then history compacted away.
    client.delete(key_of(prefix, vs("a")))
    put(client, prefix, vs("c"))
    rev = put(client, prefix, vs("b", host="ratings"))
    client.compact(rev)
    source.follow()
    try:
        wait_for(lambda: source.relists == 1 and source.revision >= rev, "a new list")
        model = source.validate().model
        assert model is not None
        assert {r.name for r in model.virtual_services} == {"b", "c"}
        assert set(source.reread) == {key_of(prefix, vs(n)) for n in "abc"}
    finally:
        source.stop()


def test_etcd_away_serving_goes_on_and_catches_up(tmp_path: Path, prefix: str) -> None:
    # Its own etcd: this test stops it.
    from tests.store._etcd import etcd_cluster

    with etcd_cluster(tmp_path, 1) as etcd:
        client = EtcdClient(etcd.endpoints)
        put(client, prefix, vs("a"))
        xds, mon = free_ports(2)
        url = parse_store_url(etcd.url(prefix))
        with control_plane_in_thread([], store=url, xds_port=xds, metrics_port=mon) as (
            _,
            server,
        ):
            (member,) = etcd.members
            etcd.stop(member)
            wait_for(lambda: not server.store.connected, "the store seen gone")

            def get(path: str) -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{mon}{path}", timeout=5) as r:
                    return str(r.read().decode())

            ready = get("/ready")
            assert ready.startswith("ok: config store")
            assert "serving the last config" in ready
            assert 'meshcore_config_store_connected{store="' in get("/metrics")
            assert '"} 0.0' in get("/metrics").split("meshcore_config_store_connected{")[1]
            assert server.plane.mesh.get("VirtualService", "default", "a") is not None
            etcd.start(member, state="existing")
            etcd.wait_healthy()
            put(client, prefix, vs("b"))
            wait_for(
                lambda: server.plane.mesh.get("VirtualService", "default", "b") is not None,
                "a write after etcd's return served",
                20,
            )
            assert server.store.connected
            assert get("/ready") == "ok\n"
        client.close()
