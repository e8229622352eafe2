"""The translator's capture layout (INTERCEPTION_MODE REDIRECT): Istio's listener and cluster
names and shapes, VIPs, outboundTrafficPolicy, PeerAuthentication per inbound port; loopback
proxies of the same control plane keep their layout."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from meshcore.config import load_objects
from meshcore.config.meshconfig import MeshConfig
from meshcore.xds import types
from meshcore.xds.translate import Translator, proxy_for_node
from meshcore.xds.vips import SERVICE_CIDR, service_vips

CAPTURE = {"INTERCEPTION_MODE": "REDIRECT"}
REVIEWS = "reviews.default.svc.cluster.local"
NODE = "sidecar~198.18.0.3~reviews-v1.default~default.svc.cluster.local"
CLIENT = "sidecar~198.18.0.2~productpage.default~default.svc.cluster.local"


def svc(name: str, port: int = 9080, pname: str = "http", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": name}, "ports": [{"name": pname, "port": port}], **spec},
    }


def we(name: str, app: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"address": address, "labels": {"app": app}, "serviceAccount": app},
    }


def peer_auth(mode: str, app: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if app:
        spec["selector"] = {"matchLabels": {"app": app}}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": f"pa-{app or 'ns'}", "namespace": "default"},
        "spec": spec,
    }


BASE = [
    svc("reviews"),
    svc("productpage"),
    svc("mongo", 27017, "tcp", clusterIP="198.19.0.50"),
    we("reviews-v1", "reviews", "198.18.0.3"),
    we("productpage", "productpage", "198.18.0.2"),
]


def generate(
    objects: list[dict[str, Any]],
    node: str = NODE,
    meta: dict[str, Any] | None = CAPTURE,
    mc: MeshConfig | None = None,
    translator: Translator | None = None,
) -> Any:
    mesh = load_objects(objects)
    assert mesh is not None
    t = translator or Translator(mesh_config=mc)
    return t.generate(mesh, proxy_for_node(mesh, node, meta))


def test_outbound_layout_names_and_handoff() -> None:
    got = generate(BASE)
    listeners = got.resources[types.LISTENER]
    vips, _ = service_vips(load_objects(BASE).services)
    assert sorted(listeners) == sorted(
        ["virtualOutbound", "virtualInbound", "0.0.0.0_9080", "198.19.0.50_27017"]
    )
    vo = listeners["virtualOutbound"]
    assert vo.address.socket_address.port_value == 15001
    assert vo.use_original_dst.value is True
    assert [c.name for c in vo.filter_chains] == [
        "virtualOutbound-blackhole",
        "virtualOutbound-catchall-tcp",
    ]
    assert vo.filter_chains[0].filter_chain_match.destination_port.value == 15001
    http = listeners["0.0.0.0_9080"]
    assert http.bind_to_port.value is False
    assert listeners["198.19.0.50_27017"].bind_to_port.value is False
    assert listeners["198.19.0.50_27017"].address.socket_address.address == "198.19.0.50"
    clusters = got.resources[types.CLUSTER]
    for name in ("PassthroughCluster", "InboundPassthroughCluster"):
        assert clusters[name].type == cluster_pb2.Cluster.ORIGINAL_DST
        assert clusters[name].lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    assert clusters["InboundPassthroughCluster"].upstream_bind_config.source_address.address == (
        "127.0.0.6"
    )
    assert clusters["BlackHoleCluster"].type == cluster_pb2.Cluster.STATIC
    assert f"outbound|9080||{REVIEWS}" in clusters
    rcfg: route_pb2.RouteConfiguration = got.resources[types.ROUTE]["9080"]
    names = [vh.name for vh in rcfg.virtual_hosts]
    assert names[-1] == "allow_any"
    assert rcfg.virtual_hosts[-1].routes[0].route.cluster == "PassthroughCluster"
    reviews = next(vh for vh in rcfg.virtual_hosts if vh.name == f"{REVIEWS}:9080")
    assert "reviews:9080" in reviews.domains
    assert vips[REVIEWS] in reviews.domains
    assert f"{vips[REVIEWS]}:9080" in reviews.domains
    assert not got.problems


def test_registry_only_blackholes_unknown_destinations() -> None:
    mc = MeshConfig.from_dict({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})
    got = generate(BASE, mc=mc)
    vo = got.resources[types.LISTENER]["virtualOutbound"]
    tcp = vo.filter_chains[1].filters[0].typed_config
    assert b"BlackHoleCluster" in tcp.value
    assert b"Passthrough" not in tcp.value
    last = got.resources[types.ROUTE]["9080"].virtual_hosts[-1]
    assert last.name == "block_all"
    assert last.routes[0].direct_response.status == 502


def test_bad_outbound_traffic_policy_is_refused_with_its_path() -> None:
    from meshcore.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        MeshConfig.from_dict({"outboundTrafficPolicy": {"mode": "ALLOW_SOME"}})
    assert "outboundTrafficPolicy.mode" in str(err.value)


def test_virtual_inbound_chain_per_port_with_mtls_modes() -> None:
    strict = generate([*BASE, peer_auth("STRICT", "reviews")])
    vi: listener_pb2.Listener = strict.resources[types.LISTENER]["virtualInbound"]
    assert vi.address.socket_address.port_value == 15006
    assert [f.name for f in vi.listener_filters] == [
        "envoy.filters.listener.original_dst",
        "envoy.filters.listener.tls_inspector",
    ]
    chains = {c.name: c for c in vi.filter_chains}
    assert sorted(chains) == [
        "0.0.0.0_9080",
        "virtualInbound-blackhole",
        "virtualInbound-catchall-tcp",
    ]
    port = chains["0.0.0.0_9080"]
    assert port.filter_chain_match.destination_port.value == 9080
    assert port.transport_socket.name == "envoy.transport_sockets.tls"
    # STRICT: the passthrough chain for undeclared ports requires mTLS too.
    assert chains["virtualInbound-catchall-tcp"].transport_socket.name
    inbound = strict.resources[types.CLUSTER]["inbound|9080||"]
    assert inbound.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert inbound.upstream_bind_config.source_address.address == "127.0.0.6"

    permissive = generate(BASE).resources[types.LISTENER]["virtualInbound"]
    chains = {c.name: c for c in permissive.filter_chains}
    assert chains["0.0.0.0_9080"].filter_chain_match.transport_protocol == "tls"
    plain = chains["0.0.0.0_9080-plaintext"]
    assert plain.filter_chain_match.transport_protocol == "raw_buffer"
    assert plain.filter_chain_match.destination_port.value == 9080
    assert not plain.HasField("transport_socket")


def test_loopback_and_capture_proxies_share_one_control_plane() -> None:
    t = Translator()
    loopback = generate(BASE, meta={}, translator=t)
    capture = generate(BASE, translator=t)
    none = generate(BASE, meta={"INTERCEPTION_MODE": "NONE"}, translator=t)
    assert "virtualOutbound" not in loopback.resources[types.LISTENER]
    assert "198.18.0.3_9080" in loopback.resources[types.LISTENER]
    assert sorted(none.resources[types.LISTENER]) == sorted(loopback.resources[types.LISTENER])
    assert "virtualOutbound" in capture.resources[types.LISTENER]
    # The loopback route configuration is not touched by the capture one.
    assert "allow_any" not in [
        vh.name for vh in loopback.resources[types.ROUTE]["9080"].virtual_hosts
    ]
    # Outbound clusters and endpoints are the very same objects.
    lc, cc = loopback.resources[types.CLUSTER], capture.resources[types.CLUSTER]
    assert lc[f"outbound|9080||{REVIEWS}"] is cc[f"outbound|9080||{REVIEWS}"]


def test_tproxy_is_refused() -> None:
    mesh = load_objects(BASE)
    assert mesh is not None
    with pytest.raises(ValueError, match="TPROXY is not supported"):
        proxy_for_node(mesh, NODE, {"INTERCEPTION_MODE": "TPROXY"})


def test_vips_are_deterministic_and_stable() -> None:
    objects = [svc(f"s{i}") for i in range(40)]
    mesh = load_objects(objects)
    assert mesh is not None
    first, errors = service_vips(mesh.services)
    assert not errors
    assert len(set(first.values())) == 40
    assert all(ipaddress.ip_address(v) in SERVICE_CIDR for v in first.values())
    more = load_objects([*objects, svc("extra"), svc("pinned", clusterIP="198.19.7.7")])
    assert more is not None
    second, _ = service_vips(more.services)
    assert {h: second[h] for h in first} == first  # others keep theirs
    assert second["pinned.default.svc.cluster.local"] == "198.19.7.7"
    headless = load_objects([svc("h", clusterIP="None")])
    assert headless is not None
    assert service_vips(headless.services)[0] == {}


def test_bad_cluster_ip_is_a_problem_with_its_path() -> None:
    got = generate([*BASE, svc("odd", 9090, clusterIP="not-an-ip")])
    (problem,) = [p for p in got.problems if p.path == "spec.clusterIP"]
    assert problem.name == "odd"
    assert "not an IPv4 address" in problem.message


EXTERNAL = [
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {
            "hosts": ["ext.example.com"],
            "addresses": ["198.51.100.7"],
            "resolution": "NONE",
            "location": "MESH_EXTERNAL",
            "ports": [
                {"number": 80, "name": "http", "protocol": "HTTP"},
                {"number": 5432, "name": "tcp-pg", "protocol": "TCP"},
            ],
        },
    },
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "host": "reviews",
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {
                    "name": "v2",
                    "labels": {"version": "v2"},
                    "trafficPolicy": {
                        "loadBalancer": {"simple": "PASSTHROUGH"},
                        "tls": {"mode": "SIMPLE", "sni": "reviews.example"},
                    },
                },
            ],
        },
    },
]


def test_resolution_none_and_passthrough_are_original_destination_in_capture_mode() -> None:
    got = generate([*BASE, *EXTERNAL])
    clusters = got.resources[types.CLUSTER]
    ext = clusters["outbound|80||ext.example.com"]
    assert ext.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert ext.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    assert clusters["outbound|5432||ext.example.com"].type == cluster_pb2.Cluster.ORIGINAL_DST
    v2 = clusters[f"outbound|9080|v2|{REVIEWS}"]
    assert v2.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert v2.transport_socket.name == "envoy.transport_sockets.tls"  # SIMPLE still applies
    assert not v2.HasField("eds_cluster_config")
    assert clusters[f"outbound|9080|v1|{REVIEWS}"].type == cluster_pb2.Cluster.EDS
    listeners = got.resources[types.LISTENER]
    assert "0.0.0.0_80" in listeners
    assert listeners["198.51.100.7_5432"].bind_to_port.value is False
    hosts = [vh.name for vh in got.resources[types.ROUTE]["80"].virtual_hosts]
    assert hosts == ["ext.example.com:80", "allow_any"]
    ext_host = got.resources[types.ROUTE]["80"].virtual_hosts[0]
    assert list(ext_host.domains) == [
        "ext.example.com",
        "ext.example.com:80",
        "198.51.100.7",
        "198.51.100.7:80",
    ]
    assert not [p for p in got.problems if "original-destination" in p.message], got.problems


def test_loopback_proxies_are_told_passthrough_needs_capture() -> None:
    t = Translator()
    got = generate([*BASE, *EXTERNAL], meta={}, translator=t)
    assert "outbound|80||ext.example.com" not in got.resources[types.CLUSTER]
    said = sorted(p.path for p in got.problems if "only capture-mode sidecars" in p.message)
    assert said == ["spec.resolution", "spec.subsets[v2].trafficPolicy.loadBalancer.simple"]


def test_bad_cluster_ip_is_reported_at_load_time() -> None:
    mesh = load_objects([*BASE, svc("odd", 9090, clusterIP="not-an-ip")])
    found = [p for p in Translator().load_problems(mesh) if p.path == "spec.clusterIP"]
    assert [p.name for p in found] == ["odd"]


EXT_VS = {
    "apiVersion": "networking.istio.io/v1",
    "kind": "VirtualService",
    "metadata": {"name": "ext", "namespace": "default"},
    "spec": {
        "hosts": ["ext.example.com"],
        "http": [
            {
                "name": "slow",
                "match": [{"headers": {"x-slow": {"exact": "1"}}}],
                "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
                "route": [{"destination": {"host": "ext.example.com"}}],
            },
            {
                "name": "rest",
                "timeout": "3s",
                "route": [{"destination": {"host": "ext.example.com"}}],
            },
        ],
    },
}


def test_virtual_service_of_a_resolution_none_host_takes_effect_in_capture_mode() -> None:
    """Istio builds the NONE host's virtual host in the port's route configuration from its
    VirtualService, routing to its ORIGINAL_DST cluster (the old code gave it only the default
    route, silently)."""
    got = generate([*BASE, *EXTERNAL, EXT_VS])
    rcfg = got.resources[types.ROUTE]["80"]
    assert [vh.name for vh in rcfg.virtual_hosts] == ["ext.example.com:80", "allow_any"]
    ext = rcfg.virtual_hosts[0]
    assert "198.51.100.7:80" in ext.domains
    assert [r.name for r in ext.routes] == ["slow", "rest"]
    assert ext.routes[0].match.headers[0].name == "x-slow"
    assert "envoy.filters.http.fault" in ext.routes[0].typed_per_filter_config
    assert ext.routes[1].route.timeout.seconds == 3
    for r in ext.routes:
        assert r.route.cluster == "outbound|80||ext.example.com"
    clusters = got.resources[types.CLUSTER]
    assert clusters["outbound|80||ext.example.com"].type == cluster_pb2.Cluster.ORIGINAL_DST
    assert not got.problems, got.problems


def test_virtual_service_problems_of_a_resolution_none_host_are_told_in_capture_mode() -> None:
    second = {**EXT_VS, "metadata": {"name": "ext2", "namespace": "default"}}
    objects = [*BASE, *EXTERNAL, EXT_VS, second]
    got = generate(objects)
    (problem,) = [p for p in got.problems if p.kind == "VirtualService"]
    assert (problem.name, problem.path) == ("ext2", "spec.hosts")
    assert "also claimed by VirtualService default/ext" in problem.message
    # Each proxy is told, also one given the cached route configurations.
    t = Translator()
    generate(objects, translator=t)
    again = generate(objects, node=CLIENT, translator=t)
    assert [p.name for p in again.problems if p.kind == "VirtualService"] == ["ext2"]


def _selector_dr(name: str, host: str, app: str, subsets: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "host": host,
            "workloadSelector": {"matchLabels": {"app": app}},
            "subsets": subsets,
        },
    }


def test_passthrough_clusters_follow_destination_rules_with_a_workload_selector() -> None:
    """A DestinationRule selecting the proxy takes its host's place for the ORIGINAL_DST
    clusters as for the shared ones (the old code looked only at the mesh-wide rules)."""
    for_productpage = [
        # reviews' v2 is an ordinary subset for productpage; v3 is PASSTHROUGH.
        _selector_dr("reviews-pp", "reviews", "productpage", [
            {"name": "v2", "labels": {"version": "v2"}},
            {"name": "v3", "labels": {"version": "v3"},
             "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}},
        ]),
        # The NONE host gets a subset for productpage only.
        _selector_dr("ext-pp", "ext.example.com", "productpage", [
            {"name": "eu", "labels": {"zone": "eu"},
             "trafficPolicy": {"tls": {"mode": "SIMPLE"}}},
        ]),
    ]  # fmt: skip
    objects = [*BASE, *EXTERNAL, *for_productpage]
    t = Translator()
    client = generate(objects, node=CLIENT, translator=t).resources[types.CLUSTER]
    v2, v3 = (client[f"outbound|9080|{s}|{REVIEWS}"] for s in ("v2", "v3"))
    assert v2.type == cluster_pb2.Cluster.EDS
    assert not v2.HasField("transport_socket")  # not the mesh-wide rule's SIMPLE TLS
    assert v3.type == cluster_pb2.Cluster.ORIGINAL_DST
    eu = client["outbound|80|eu|ext.example.com"]
    assert eu.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert eu.transport_socket.name == "envoy.transport_sockets.tls"
    # Proxies the rules do not select keep the mesh-wide rule's clusters.
    other = generate(objects, translator=t).resources[types.CLUSTER]
    assert other[f"outbound|9080|v2|{REVIEWS}"].type == cluster_pb2.Cluster.ORIGINAL_DST
    assert f"outbound|9080|v3|{REVIEWS}" not in other
    assert "outbound|80|eu|ext.example.com" not in other
