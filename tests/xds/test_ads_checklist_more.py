"""Checklist items not covered elsewhere: no name twice in one response (item 12), explicit and
unsubscribed wildcards in delta (item 25), and snapshot consistency of what the translator hands
every proxy (item 31: names clusters ask EDS for are the ClusterLoadAssignments sent, names
listeners ask RDS for are the RouteConfigurations sent)."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.config import load_objects
from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer
from meshcore.xds.translate import Translator, proxy_for_node
from tests.xds.conftest import NODE, Stream, cla, cluster, resources, run_ads

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from meshgen import generate_mesh


def test_no_name_twice_in_one_response() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(eds={"a": cla("a"), "b": cla("b")})))
        s = Stream(channel)
        r = discovery_pb2.DiscoveryRequest(type_url=types.ENDPOINT, resource_names=["a", "b", "a"])
        r.node.id = NODE
        s.send(r)
        resp = await s.recv()  # item 12: a client NACKs a response naming a resource twice
        assert len(resp.resources) == 2
        s.close()
        d = Stream(channel, delta=True)
        dr = discovery_pb2.DeltaDiscoveryRequest(
            type_url=types.ENDPOINT, resource_names_subscribe=["a", "a", "b"]
        )
        dr.node.id = NODE
        d.send(dr)
        dresp = await d.recv()
        assert sorted(x.name for x in dresp.resources) == ["a", "b"]
        d.close()

    run_ads(body)


def test_delta_explicit_wildcard_and_its_unsubscription() -> None:
    async def body(cache: SnapshotCache, ads: AdsServer, channel: grpc.aio.Channel) -> None:
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a"), "b": cluster("b")})))
        s = Stream(channel, delta=True)
        # item 25: a first request naming something is not the legacy wildcard...
        first = discovery_pb2.DeltaDiscoveryRequest(
            type_url=types.CLUSTER, resource_names_subscribe=["a"]
        )
        first.node.id = NODE
        s.send(first)
        r1 = await s.recv()
        assert [x.name for x in r1.resources] == ["a"]
        s.send(discovery_pb2.DeltaDiscoveryRequest(type_url=types.CLUSTER, response_nonce=r1.nonce))
        # ... an explicit "*" is ...
        s.send(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=types.CLUSTER, resource_names_subscribe=["*"]
            )
        )
        r2 = await s.recv()
        assert [x.name for x in r2.resources] == ["b"]
        s.send(discovery_pb2.DeltaDiscoveryRequest(type_url=types.CLUSTER, response_nonce=r2.nonce))
        # ... and unsubscribing "*" leaves the named subscription: a change to "b" is no longer
        # sent, a change to "a" still is.
        s.send(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=types.CLUSTER, resource_names_unsubscribe=["*"]
            )
        )
        await s.nothing(0.3)  # no answer needed; and the server has read it
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a"), "b": cluster("b", 4)})))
        await s.nothing(0.3)
        cache.set(NODE, cache.snapshot(resources(cds={"a": cluster("a", 5), "b": cluster("b", 4)})))
        r3 = await s.recv()
        assert [x.name for x in r3.resources] == ["a"]
        s.close()

    run_ads(body)


def test_translated_snapshots_are_consistent() -> None:
    files = generate_mesh(services=8, workloads_per_service=2, policies=4, namespaces=3)
    mesh = load_objects([d for name in sorted(files) for d in files[name]])
    translator = Translator()
    checked = 0
    for w in mesh.workload_entries:
        node = f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
        for meta in ({}, {"GENERATOR": "grpc"}):
            res = translator.generate(mesh, proxy_for_node(mesh, node, meta)).resources
            eds_names = set()
            for c in res[types.CLUSTER].values():
                assert isinstance(c, cluster_pb2.Cluster)
                if c.type == cluster_pb2.Cluster.EDS:
                    eds_names.add(c.eds_cluster_config.service_name or c.name)
            assert eds_names == set(res[types.ENDPOINT])  # item 31
            rds_names = set()
            for lst in res[types.LISTENER].values():
                hcms = []
                if lst.HasField("api_listener"):
                    hcms.append(lst.api_listener.api_listener)
                hcms += [f.typed_config for fc in lst.filter_chains for f in fc.filters]
                for any_ in hcms:
                    hcm = hcm_pb2.HttpConnectionManager()
                    if any_.Unpack(hcm) and hcm.HasField("rds"):
                        rds_names.add(hcm.rds.route_config_name)
            assert rds_names == set(res[types.ROUTE])
            checked += 1
    assert checked == 2 * len(mesh.workload_entries)


def test_duplicate_names_across_generators_are_reported() -> None:
    # item 40: a workload whose address is its sidecar's outbound address: its inbound
    # listener and an outbound listener would share a name.
    mesh = load_objects([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8080}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": "web-1"},
         "spec": {"address": "127.0.0.1", "labels": {"app": "web"}}},
    ])  # fmt: skip
    translator = Translator()
    node = "sidecar~127.0.0.1~web-1.default~default.svc.cluster.local"
    clash = translator.generate(mesh, proxy_for_node(mesh, node))
    found = [p for p in clash.problems if "produced twice" in p.message]
    assert [(p.kind, p.name, p.path) for p in found] == [("WorkloadEntry", "web-1", "spec.address")]
    assert "'127.0.0.1_8080'" in found[0].message
    meta = {"MESHCORE_OUTBOUND_ADDRESS": "127.0.0.2"}
    apart = translator.generate(mesh, proxy_for_node(mesh, node, meta))
    assert not [p for p in apart.problems if "produced twice" in p.message]
