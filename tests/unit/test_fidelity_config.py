"""Istio fidelity (issue 13): DestinationRule workloadSelector scoping, Istio-valid config that
was rejected (claim routes on gateway VirtualServices, delegate VirtualServices, redirect
prefixRewrite, http2KeepAlive), and translation problems reported at load time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("envoy.config.cluster.v3.cluster_pb2")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshcore.config import load_objects, validate, validate_object
from meshcore.errors import ConfigError
from meshcore.xds import types
from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.translate import Generated, Translator, proxy_for_node

REVIEWS = "reviews.default.svc.cluster.local"


def m(kind: str, name: str, spec: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    api = {"Service": "v1"}.get(kind, "networking.istio.io/v1")
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def svc(name: str, port: int = 9080, pname: str = "http", ns: str = "default") -> dict[str, Any]:
    return m(
        "Service", name, {"selector": {"app": name}, "ports": [{"name": pname, "port": port}]}, ns
    )


def we(name: str, app: str, address: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return m(
        "WorkloadEntry",
        name,
        {"address": address, "labels": {"app": app, **labels}, "serviceAccount": app},
        ns,
    )


MESH = [
    svc("reviews"),
    we("reviews-v1", "reviews", "127.0.20.1", version="v1"),
    we("reviews-v2", "reviews", "127.0.20.2", version="v2"),
    svc("web", 8080),
    we("web-1", "web", "127.0.10.1", tier="edge"),
    we("web-2", "web", "127.0.10.2", tier="inner"),
    svc("other", 8080, ns="other"),
    we("other-1", "other", "127.0.11.1", ns="other", tier="edge"),
]
DEFAULT_DR = m(
    "DestinationRule",
    "reviews",
    {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}},
)
EDGE_DR = m(
    "DestinationRule",
    "reviews-edge",
    {
        "host": "reviews",
        "workloadSelector": {"matchLabels": {"tier": "edge"}},
        "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
        "subsets": [{"name": "canary", "labels": {"version": "v2"}}],
    },
)


def gen(
    objects: list[dict[str, Any]], node: str, translator: Translator | None = None
) -> Generated:
    mesh = load_objects(objects)
    return (translator or Translator()).generate(mesh, proxy_for_node(mesh, node, {}))


def node(name: str, address: str, ns: str = "default") -> str:
    return f"sidecar~{address}~{name}.{ns}~{ns}.svc.cluster.local"


# --- a) DestinationRule workloadSelector ---------------------------------------------------------


def test_destination_rule_match_labels_is_accepted_and_labels_refused() -> None:
    assert [p for p in validate_object(EDGE_DR) if p.severity == "error"] == []
    wrong = m(
        "DestinationRule", "x", {"host": "reviews", "workloadSelector": {"labels": {"a": "b"}}}
    )
    errors = [p for p in validate_object(wrong) if p.severity == "error"]
    assert [p.path for p in errors] == ["spec.workloadSelector.labels"]


def test_workload_selector_applies_only_to_selected_sidecars_of_its_namespace() -> None:
    objects = [*MESH, DEFAULT_DR, EDGE_DR]
    translator = Translator()
    edge = gen(objects, node("web-1", "127.0.10.1"), translator)
    inner = gen(objects, node("web-2", "127.0.10.2"), translator)
    elsewhere = gen(objects, node("other-1", "127.0.11.1", "other"), translator)
    name = f"outbound|9080||{REVIEWS}"
    canary = f"outbound|9080|canary|{REVIEWS}"
    assert edge.resources[types.CLUSTER][name].lb_policy == cluster_pb2.Cluster.RANDOM
    assert canary in edge.resources[types.CLUSTER]
    cla = edge.resources[types.ENDPOINT][canary]
    assert [
        e.endpoint.address.socket_address.address for g in cla.endpoints for e in g.lb_endpoints
    ] == ["127.0.20.2"]
    # not selected (other labels), or another namespace (selectors never cross namespaces)
    for result in (inner, elsewhere):
        assert result.resources[types.CLUSTER][name].lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
        assert canary not in result.resources[types.CLUSTER]
        assert canary not in result.resources[types.ENDPOINT]


def test_workload_selector_rule_alone_leaves_other_proxies_with_defaults() -> None:
    translator = Translator()
    name = f"outbound|9080||{REVIEWS}"
    edge = gen([*MESH, EDGE_DR], node("web-1", "127.0.10.1"), translator)
    inner = gen([*MESH, EDGE_DR], node("web-2", "127.0.10.2"), translator)
    assert edge.resources[types.CLUSTER][name].lb_policy == cluster_pb2.Cluster.RANDOM
    assert inner.resources[types.CLUSTER][name].lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert not [p for p in inner.problems if p.severity == "error"]


def test_subset_of_a_selector_rule_is_a_known_subset(tmp_path: Path) -> None:
    route = m(
        "VirtualService",
        "reviews",
        {
            "hosts": ["reviews"],
            "http": [{"route": [{"destination": {"host": "reviews", "subset": "canary"}}]}],
        },
    )
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all([*MESH, EDGE_DR, route]))
    assert not [p for p in validate([tmp_path]).problems if p.path.endswith("subset")]
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all([*MESH, DEFAULT_DR, route]))
    assert [p.path for p in validate([tmp_path]).problems] == [
        "spec.http[0].route[0].destination.subset"
    ]


# --- f) Istio-valid config no longer rejected ------------------------------------------------------


def vs(spec: dict[str, Any]) -> dict[str, Any]:
    return m("VirtualService", "vs", spec)


CLAIM_ROUTE = [
    {
        "match": [{"headers": {"@request.auth.claims.groups": {"exact": "admin"}}}],
        "route": [{"destination": {"host": "reviews"}}],
    }
]


def test_claim_routes_on_gateway_virtual_services_are_accepted() -> None:
    # translated on gateways (matched on the verified JWT: tests/unit/test_gateway.py)
    problems = validate_object(
        vs(
            {
                "hosts": ["bookinfo.example.com"],
                "gateways": ["bookinfo-gateway"],
                "http": CLAIM_ROUTE,
            }
        )
    )
    assert problems == []
    bracket = [
        {
            **CLAIM_ROUTE[0],
            "match": [{"headers": {"@request.auth.claims[nested][key]": {"exact": "x"}}}],
        }
    ]
    assert (
        validate_object(vs({"hosts": ["a.example.com"], "gateways": ["gw"], "http": bracket})) == []
    )
    # on sidecars there is no JWT filter: refused, with the reason
    mesh_bound = validate_object(vs({"hosts": ["reviews"], "http": CLAIM_ROUTE}))
    assert [p.severity for p in mesh_bound] == ["error"]
    assert "@request.auth.claims" in mesh_bound[0].message


def test_host_less_delegate_virtual_service_is_accepted_with_a_warning() -> None:
    problems = validate_object(vs({"http": [{"route": [{"destination": {"host": "reviews"}}]}]}))
    assert [p.severity for p in problems] == ["warning"]
    bad = validate_object(
        vs({"gateways": ["gw"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]})
    )
    assert [p.path for p in bad if p.severity == "error"] == ["spec.gateways"]


def test_redirect_prefix_rewrite() -> None:
    http = [
        {
            "match": [{"uri": {"prefix": "/old"}}],
            "redirect": {"prefixRewrite": "/new", "redirectCode": 302},
        }
    ]
    objects = [*MESH, m("VirtualService", "r", {"hosts": ["reviews"], "http": http})]
    result = gen(objects, node("web-2", "127.0.10.2"))
    vh = next(
        v
        for v in result.resources[types.ROUTE]["9080"].virtual_hosts
        if v.name == f"{REVIEWS}:9080"
    )
    assert vh.routes[0].redirect.prefix_rewrite == "/new"
    assert not vh.routes[0].redirect.path_redirect
    both = validate_object(
        vs({"hosts": ["reviews"], "http": [{"redirect": {"uri": "/a", "prefixRewrite": "/b"}}]})
    )
    assert [p.path for p in both if p.severity == "error"] == ["spec.http[0].redirect"]


def test_http2_keepalive_on_http2_upstreams() -> None:
    pool = {"connectionPool": {"http": {"http2KeepAlive": {"interval": "30s", "timeout": "5s"}}}}
    objects = [
        *MESH,
        svc("grpc", 9090, "grpc"),
        we("grpc-1", "grpc", "127.0.30.1"),
        m("DestinationRule", "g", {"host": "grpc", "trafficPolicy": pool}),
    ]
    result = gen(objects, node("web-2", "127.0.10.2"))
    c = result.resources[types.CLUSTER]["outbound|9090||grpc.default.svc.cluster.local"]
    options = http_protocol_options_pb2.HttpProtocolOptions()
    c.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Unpack(options)
    ka = options.explicit_http_config.http2_protocol_options.connection_keepalive
    assert (ka.interval.seconds, ka.timeout.seconds) == (30, 5)
    missing = m(
        "DestinationRule",
        "g",
        {
            "host": "grpc",
            "trafficPolicy": {"connectionPool": {"http": {"http2KeepAlive": {"interval": "30s"}}}},
        },
    )
    assert [p.path for p in validate_object(missing)] == [
        "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout"
    ]
    with pytest.raises(ConfigError):
        load_objects([missing])


# --- g) what a proxy will not get, reported at load time ------------------------------------------

NOT_TRANSLATED = [
    *MESH,
    m(
        "VirtualService",
        "tcp",
        {"hosts": ["reviews"], "tcp": [{"route": [{"destination": {"host": "reviews"}}]}]},
    ),
    m(
        "ServiceEntry",
        "passthrough",
        {
            "hosts": ["api.example.com"],
            "resolution": "NONE",
            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
        },
    ),
    m(
        "DestinationRule",
        "loc",
        {
            "host": "reviews",
            "trafficPolicy": {"loadBalancer": {"zoneAwareLbSetting": {"enabled": True}}},
        },
    ),
]


def test_translator_load_problems_are_the_proxies_problems() -> None:
    mesh = load_objects(NOT_TRANSLATED)
    translator = Translator()
    found = translator.load_problems(mesh)
    paths = {(p.kind, p.path) for p in found}
    assert ("VirtualService", "spec.tcp") in paths
    assert ("ServiceEntry", "spec.resolution") in paths
    assert ("DestinationRule", "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting") in paths
    # the same rule as a connecting proxy's: every load-time problem is one a proxy is told
    told = translator.generate(mesh, proxy_for_node(mesh, node("web-2", "127.0.10.2"), {})).problems
    assert set(found) <= set(told)


def test_validate_cli_reports_translation_warnings(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(NOT_TRANSLATED))
    r = subprocess.run(
        [sys.executable, "-m", "meshcore", "validate", "-o", "json", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["valid"] is True
    warned = {(w["kind"], w["path"]) for w in out["warnings"]}
    assert ("VirtualService", "spec.tcp") in warned
    assert ("ServiceEntry", "spec.resolution") in warned


def test_control_plane_checks_each_mesh_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(NOT_TRANSLATED))
    translator = Translator()
    plane = ControlPlane([tmp_path], translator.resources_for, check=translator.load_problems)
    assert plane.load()
    assert ("VirtualService", "spec.tcp") in {(p.kind, p.path) for p in plane.problems}


def test_describe_cli_reports_translation_warnings(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(NOT_TRANSLATED))
    r = subprocess.run(
        [sys.executable, "-m", "meshcore", "describe", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "warning: " in r.stderr
    assert "spec.tcp: tcp routes are not translated" in r.stderr


def test_selector_rule_hash_key_is_said_not_to_reach_routes() -> None:
    rule = {
        **EDGE_DR,
        "spec": {
            **EDGE_DR["spec"],
            "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}},
        },
    }
    found = Translator().load_problems(load_objects([*MESH, rule]))
    assert [(p.severity, p.path) for p in found if p.name == "reviews-edge"] == [
        ("warning", "spec.trafficPolicy.loadBalancer.consistentHash")
    ]


def test_tcp_idle_timeout_is_applied_without_warning() -> None:
    # Istio applies it (the cluster's HTTP connections, the TCP proxies of the host's
    # listeners; see tests/unit/test_fidelity_translation.py): no warning any more.
    rule = m(
        "DestinationRule",
        "reviews",
        {"host": "reviews", "trafficPolicy": {"connectionPool": {"tcp": {"idleTimeout": "30s"}}}},
    )
    found = Translator().load_problems(load_objects([*MESH, rule]))
    assert [(p.severity, p.path) for p in found if p.name == "reviews"] == []
