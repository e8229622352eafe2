"""DestinationRule localityLbSetting as Istio's ApplyLocalityLoadBalancer translates it:
endpoint priorities (failover) and locality weights (distribute) relative to the proxy's
locality, failover only with outlier detection."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")

from dataclasses import replace

from meshcore.config import MeshModel, load_objects
from meshcore.config.values import freeze
from meshcore.errors import ConfigError
from meshcore.xds import types
from meshcore.xds.translate import Translator, proxy_for_node

HOST = "reviews.default.svc.cluster.local"
CLUSTER = f"outbound|9080||{HOST}"
OUTLIER = {"consecutive5xxErrors": 1, "interval": "1s", "baseEjectionTime": "30s"}


def _we(name: str, address: str, locality: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"address": address, "labels": {"app": name.partition("-")[0], **labels},
                 "locality": locality},
    }  # fmt: skip


def _mesh(lb: dict[str, Any], outlier: bool = True) -> list[dict[str, Any]]:
    policy: dict[str, Any] = {"loadBalancer": {"localityLbSetting": lb}}
    if outlier:
        policy["outlierDetection"] = OUTLIER
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]}},
        _we("reviews-a1", "127.0.20.1", "r1/z1/s1", net="n1"),
        _we("reviews-a2", "127.0.20.2", "r1/z1/s2", net="n2"),
        _we("reviews-a3", "127.0.20.3", "r1/z2/s1", net="n1"),
        _we("reviews-b1", "127.0.20.4", "r2/z1/s1", net="n1"),
        _we("reviews-c1", "127.0.20.5", "r3/z1/s1", net="n1"),
        _we("client-a", "127.0.10.1", "r1/z1/s1", net="n1"),
        _we("client-a2", "127.0.10.2", "r1/z1/s1", net="n1"),
        _we("client-b", "127.0.10.3", "r2/z1/s1", net="n2"),
        {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
         "metadata": {"name": "reviews", "namespace": "default"},
         "spec": {"host": "reviews", "trafficPolicy": policy}},
    ]  # fmt: skip


def _gen(objects: list[dict[str, Any]], client: str, translator: Translator | None = None) -> Any:
    mesh = load_objects(objects)
    node = f"sidecar~0.0.0.0~{client}.default~default.svc.cluster.local"
    return (translator or Translator()).generate(mesh, proxy_for_node(mesh, node, {}))


def _priorities(result: Any) -> dict[str, int]:
    cla = result.resources[types.ENDPOINT][CLUSTER]
    return {
        ep.endpoint.address.socket_address.address: g.priority
        for g in cla.endpoints
        for ep in g.lb_endpoints
    }


def _cluster(result: Any) -> Any:
    return result.resources[types.CLUSTER][CLUSTER]


def test_failover_priorities_follow_the_proxy_locality() -> None:
    objects = _mesh({"enabled": True})
    a = _gen(objects, "client-a")
    # subzone, zone, region match, then other regions: 0, 1, 2, 3
    assert _priorities(a) == {
        "127.0.20.1": 0, "127.0.20.2": 1, "127.0.20.3": 2, "127.0.20.4": 3, "127.0.20.5": 3,
    }  # fmt: skip
    assert _cluster(a).common_lb_config.HasField("locality_weighted_lb_config")
    b = _gen(objects, "client-b")
    # the proxy in r2: its own region first; r1's localities all differ in region
    assert _priorities(b) == {
        "127.0.20.4": 0, "127.0.20.1": 1, "127.0.20.2": 1, "127.0.20.3": 1, "127.0.20.5": 1,
    }  # fmt: skip
    assert a.problems == []
    assert b.problems == []


def test_failover_to_a_named_region_ranks_the_others_below() -> None:
    a = _gen(_mesh({"failover": [{"from": "r1", "to": "r3"}]}), "client-a")
    assert _priorities(a) == {
        "127.0.20.1": 0, "127.0.20.2": 1, "127.0.20.3": 2, "127.0.20.5": 3, "127.0.20.4": 4,
    }  # fmt: skip


def test_failover_needs_outlier_detection() -> None:
    a = _gen(_mesh({"failover": [{"from": "r1", "to": "r3"}]}, outlier=False), "client-a")
    assert set(_priorities(a).values()) == {0}
    assert not _cluster(a).common_lb_config.HasField("locality_weighted_lb_config")
    assert [(p.path, p.severity, p.message) for p in a.problems] == [
        (
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
            "warning",
            "outlier detection policy must be provided for failover",
        )
    ]


def test_disabled_locality_lb_keeps_one_priority() -> None:
    a = _gen(_mesh({"enabled": False}), "client-a")
    assert set(_priorities(a).values()) == {0}
    assert not _cluster(a).common_lb_config.HasField("locality_weighted_lb_config")


def test_distribute_sets_locality_weights_for_matching_proxies() -> None:
    lb = {"distribute": [{"from": "r1/z1/*", "to": {"r1/z1/*": 80, "r2/*": 20}}]}
    a = _gen(_mesh(lb, outlier=False), "client-a")
    cla = a.resources[types.ENDPOINT][CLUSTER]
    weights = {f"{g.locality.region}/{g.locality.zone}/{g.locality.sub_zone}":
               (g.load_balancing_weight.value, len(g.lb_endpoints)) for g in cla.endpoints}  # fmt: skip
    # r1/z1 splits 80 between its two subzones (ceil); unnamed localities get no endpoints
    assert weights == {
        "r1/z1/s1": (40, 1), "r1/z1/s2": (40, 1), "r2/z1/s1": (20, 1),
        "r1/z2/s1": (1, 0), "r3/z1/s1": (1, 0),
    }  # fmt: skip
    assert set(_priorities(a).values()) == {0}
    assert _cluster(a).common_lb_config.HasField("locality_weighted_lb_config")
    # a proxy no rule's ``from`` matches keeps the plain weights
    b = _gen(_mesh(lb, outlier=False), "client-b")
    assert {
        g.load_balancing_weight.value for g in b.resources[types.ENDPOINT][CLUSTER].endpoints
    } == {1}


def test_failover_priority_labels() -> None:
    a = _gen(_mesh({"failoverPriority": ["net"]}), "client-a")
    assert _priorities(a) == {
        "127.0.20.1": 0, "127.0.20.3": 0, "127.0.20.4": 0, "127.0.20.5": 0, "127.0.20.2": 1,
    }  # fmt: skip
    b = _gen(_mesh({"failoverPriority": ["net=n1", "topology.kubernetes.io/region"]}), "client-b")
    # net must be n1 (not the proxy's n2), then the region the proxy's (r2)
    assert _priorities(b) == {
        "127.0.20.4": 0, "127.0.20.1": 1, "127.0.20.3": 1, "127.0.20.5": 1, "127.0.20.2": 2,
    }  # fmt: skip


def test_endpoints_are_shared_per_locality() -> None:
    objects = _mesh({"enabled": True})
    mesh = load_objects(objects)
    translator = Translator()

    def eds(client: str) -> Any:
        node = f"sidecar~0.0.0.0~{client}.default~default.svc.cluster.local"
        return translator.generate(mesh, proxy_for_node(mesh, node, {})).resources[types.ENDPOINT]

    a, a2, b = eds("client-a"), eds("client-a2"), eds("client-b")
    assert a.shared is a2.shared  # one translation per locality
    assert a.shared is not b.shared
    assert a.shared[CLUSTER] != b.shared[CLUSTER]


def test_locality_from_the_istio_locality_label() -> None:
    mesh = load_objects(_mesh({"enabled": True}))
    node = "sidecar~10.9.9.9~other.default~default.svc.cluster.local"
    proxy = proxy_for_node(mesh, node, {"LABELS": {"istio-locality": "r2.z1.s1"}})
    assert proxy.locality == "r2/z1/s1"
    result = Translator().generate(mesh, proxy)
    assert _priorities(result)["127.0.20.4"] == 0


def test_malformed_setting_is_refused_by_the_loader() -> None:
    # Validated once, where the webhook validates (Istio's ValidateLocalityLbSetting): the
    # translator never meets it.
    with pytest.raises(ConfigError) as err:
        load_objects(_mesh({"distribute": [{"from": "r1", "to": {"r2": "lots"}}]}))
    assert [p.path for p in err.value.errors()] == [
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to.r2"
    ]
    with pytest.raises(ConfigError, match=r"total locality weight 90 != 100"):
        load_objects(_mesh({"distribute": [{"from": "r1", "to": {"r2": 90}}]}))


def test_a_hand_built_malformed_setting_drops_the_policy_with_a_problem() -> None:
    loaded = list(load_objects(_mesh({"enabled": True})).resources)
    setting = {"distribute": [{"from": "r1", "to": {"r2": "lots"}}]}
    spec = {"host": "reviews", "trafficPolicy": {"outlierDetection": OUTLIER,
            "loadBalancer": {"localityLbSetting": setting}}}  # fmt: skip
    mesh = MeshModel([
        replace(r, spec=freeze(spec), checked=None) if r.kind == "DestinationRule" else r  # type: ignore[call-arg]
        for r in loaded
    ])  # fmt: skip
    node = "sidecar~0.0.0.0~client-a.default~default.svc.cluster.local"
    a = Translator().generate(mesh, proxy_for_node(mesh, node, {}))
    assert [p.path for p in a.problems] == [
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to.r2"
    ]
    assert set(_priorities(a).values()) == {0}


def test_outlier_detection_alone_gets_istios_default_failover() -> None:
    # Istio's mesh-wide default enables locality load balancing: with outlier detection, a
    # DestinationRule without localityLbSetting fails over by locality too
    objects = _mesh({})
    rule = objects[-1]["spec"]["trafficPolicy"]
    del rule["loadBalancer"]
    a = _gen(objects, "client-a")
    assert _priorities(a) == {
        "127.0.20.1": 0, "127.0.20.2": 1, "127.0.20.3": 2, "127.0.20.4": 3, "127.0.20.5": 3,
    }  # fmt: skip
    assert _cluster(a).common_lb_config.HasField("locality_weighted_lb_config")
    assert a.problems == []
