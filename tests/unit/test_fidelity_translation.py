"""Istio-valid fields meshcore refused or only warned about, now translated as Istio does
(issue 13): a set ``:authority``/``Host`` request header is the route's host rewrite (route,
destination and weighted destination), cookie attributes on the hash policy, and
``connectionPool.tcp.idleTimeout`` on the cluster's HTTP connections and the TCP proxy."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshcore.config import load_objects, validate_object
from meshcore.names import HTTP_OPTIONS_KEY
from meshcore.xds import types
from meshcore.xds.translate import Generated, Translator, proxy_for_node

NODE = "sidecar~127.0.30.1~client.default~default.svc.cluster.local"


def m(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    api = "v1" if kind == "Service" else "networking.istio.io/v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def svc(name: str, port: int, proto: str = "http") -> dict[str, Any]:
    return m("Service", name, {"selector": {"app": name}, "ports": [{"name": proto, "port": port}]})


BASE = [svc("reviews", 9080), svc("ratings", 9080), svc("db", 5432, "tcp")]


def gen(*objects: dict[str, Any]) -> Generated:
    mesh = load_objects([*BASE, *objects])
    result = Translator().generate(mesh, proxy_for_node(mesh, NODE, {}))
    assert not [p for p in result.problems if p.severity == "error"], result.problems
    return result


def route(result: Generated, host: str = "reviews.default.svc.cluster.local:9080") -> Any:
    [vh] = [v for v in result.resources[types.ROUTE]["9080"].virtual_hosts if v.name == host]
    return vh.routes[0]


def vs(http: dict[str, Any]) -> dict[str, Any]:
    return m("VirtualService", "reviews", {"hosts": ["reviews"], "http": [http]})


def test_route_level_authority_is_host_rewrite() -> None:
    r = route(gen(vs({"headers": {"request": {"set": {":authority": "foo.example"}}},
                      "route": [{"destination": {"host": "ratings"}}]})))  # fmt: skip
    assert r.route.host_rewrite_literal == "foo.example"
    assert all(h.header.key.lower() not in (":authority", "host") for h in r.request_headers_to_add)


def test_add_host_header_and_set_wins() -> None:
    r = route(gen(vs({"headers": {"request": {"add": {"Host": "added"}, "set": {"x-a": "1"}}},
                      "route": [{"destination": {"host": "ratings"}}]})))  # fmt: skip
    assert r.route.host_rewrite_literal == "added"
    assert [h.header.key for h in r.request_headers_to_add] == ["x-a"]


def test_destination_authority_and_route_precedence() -> None:
    dest = {
        "destination": {"host": "ratings"},
        "headers": {"request": {"set": {":authority": "dst"}}},
    }
    assert route(gen(vs({"route": [dest]}))).route.host_rewrite_literal == "dst"
    both = {"headers": {"request": {"set": {":authority": "route"}}}, "route": [dest]}
    assert route(gen(vs(both))).route.host_rewrite_literal == "route"


def test_weighted_destination_authority() -> None:
    dests = [
        {
            "destination": {"host": "ratings"},
            "weight": 50,
            "headers": {"request": {"set": {":authority": "a"}}},
        },
        {"destination": {"host": "reviews"}, "weight": 50},
    ]
    clusters = route(gen(vs({"route": dests}))).route.weighted_clusters.clusters
    assert [c.host_rewrite_literal for c in clusters] == ["a", ""]


def test_authority_twice_refused() -> None:
    spec = {"hosts": ["reviews"], "http": [{"headers": {"request": {"set": {":authority": "a"}}},
             "rewrite": {"authority": "b"}, "route": [{"destination": {"host": "ratings"}}]}]}  # fmt: skip
    errors = [p for p in validate_object(m("VirtualService", "r", spec)) if p.severity == "error"]
    assert any("authority header cannot be set multiple times" in p.message for p in errors)
    # other pseudo-headers and response Host stay refused
    for headers in ({"request": {"set": {":path": "/x"}}}, {"response": {"set": {"Host": "x"}}}):
        spec = {
            "hosts": ["reviews"],
            "http": [{"headers": headers, "route": [{"destination": {"host": "ratings"}}]}],
        }
        assert [p for p in validate_object(m("VirtualService", "r", spec)) if p.severity == "error"]


def test_cookie_attributes_on_hash_policy() -> None:
    dr = m("DestinationRule", "ratings", {"host": "ratings", "trafficPolicy": {"loadBalancer": {"consistentHash": {
        "httpCookie": {"name": "sticky", "ttl": "60s",
                       "attributes": [{"name": "SameSite", "value": "Strict"}, {"name": "Secure"}]}}}}})  # fmt: skip
    [hp] = route(gen(dr), "ratings.default.svc.cluster.local:9080").route.hash_policy
    assert hp.cookie.name == "sticky"
    assert [(a.name, a.value) for a in hp.cookie.attributes] == [
        ("SameSite", "Strict"),
        ("Secure", ""),
    ]


def test_tcp_idle_timeout_on_cluster_and_tcp_proxy() -> None:
    pool = {"tcp": {"idleTimeout": "30s", "maxConnectionDuration": "1h"}}
    result = gen(
        m("DestinationRule", "db", {"host": "db", "trafficPolicy": {"connectionPool": pool}}),
        m(
            "DestinationRule",
            "ratings",
            {"host": "ratings", "trafficPolicy": {"connectionPool": pool}},
        ),
    )
    # the TCP service's outbound listener: its TCP proxy
    listener = result.resources[types.LISTENER]["127.0.0.1_5432"]
    proxy = tcp_proxy_pb2.TcpProxy()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(proxy)
    assert proxy.idle_timeout.seconds == 30
    assert proxy.max_downstream_connection_duration.seconds == 3600
    # the HTTP service's cluster: its connections' idle timeout (http.idleTimeout unset)
    c = result.resources[types.CLUSTER]["outbound|9080||ratings.default.svc.cluster.local"]
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert c.typed_extension_protocol_options[HTTP_OPTIONS_KEY].Unpack(options)
    assert options.common_http_protocol_options.idle_timeout.seconds == 30
    assert not result.problems


def test_http_idle_timeout_wins_on_cluster() -> None:
    pool = {"tcp": {"idleTimeout": "30s"}, "http": {"idleTimeout": "5s"}}
    result = gen(
        m(
            "DestinationRule",
            "ratings",
            {"host": "ratings", "trafficPolicy": {"connectionPool": pool}},
        )
    )
    c = result.resources[types.CLUSTER]["outbound|9080||ratings.default.svc.cluster.local"]
    options = http_protocol_options_pb2.HttpProtocolOptions()
    assert c.typed_extension_protocol_options[HTTP_OPTIONS_KEY].Unpack(options)
    assert options.common_http_protocol_options.idle_timeout.seconds == 5


def test_zone_aware_setting_is_warned_not_translated() -> None:
    dr = m("DestinationRule", "ratings", {"host": "ratings", "trafficPolicy": {
        "outlierDetection": {"consecutive5xxErrors": 3},
        "loadBalancer": {"zoneAwareLbSetting": {"failover": [{"from": "us-east", "to": "eu-west"}]}}}})  # fmt: skip
    mesh = load_objects([*BASE, dr])
    result = Translator().generate(mesh, proxy_for_node(mesh, NODE, {}))
    assert [(p.severity, p.path) for p in result.problems] == [
        ("warning", "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting")
    ]
