"""meshcore.xds.translate: names, matches, weights, policies, isolation, determinism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshcore.config import MeshModel, VirtualService, load, load_objects
from meshcore.config.values import freeze
from meshcore.xds import types
from meshcore.xds.translate import (
    Generated,
    Translator,
    parse_node_id,
    proxy_for_node,
    render_static_bootstrap,
)

# One translator for the module's tests, as a control plane holds one: each translation carries
# over from the one before; tests that need a cold translation create their own.
TRANSLATOR = Translator()
generate = TRANSLATOR.generate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"
REVIEWS_NODE = "sidecar~127.0.20.1~reviews-v1-1.default~default.svc.cluster.local"
FRONTEND_NODE = "sidecar~127.0.10.1~frontend-1.default~default.svc.cluster.local"


def svc(name: str, port: int = 9080, ns: str = "default", pname: str = "http") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"name": pname, "port": port}]},
    }


def we(name: str, app: str, address: str, version: str = "v1", **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "address": address,
            "labels": {"app": app, "version": version},
            "serviceAccount": app,
            **extra,
        },
    }


def vs(name: str, host: str, http: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": [host], "http": http},
    }


def dr(
    host: str, policy: dict[str, Any], subsets: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"host": host, "trafficPolicy": policy}
    if subsets:
        spec["subsets"] = subsets
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": host, "namespace": "default"},
        "spec": spec,
    }


def peer_auth(mode: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": mode}},
    }


BASE = [
    svc("reviews"),
    svc("ratings"),
    svc("frontend", 8080),
    we("reviews-v1-1", "reviews", "127.0.20.1", "v1"),
    we("reviews-v2-1", "reviews", "127.0.20.2", "v2", locality="us-east/zone-a", weight=3),
    we("ratings-1", "ratings", "127.0.30.1"),
    we("frontend-1", "frontend", "127.0.10.1"),
]


def gen(
    objects: list[dict[str, Any]],
    node: str = FRONTEND_NODE,
    translator: Translator = TRANSLATOR,
    **meta: Any,
) -> Generated:
    mesh = load_objects(objects)
    return translator.generate(mesh, proxy_for_node(mesh, node, meta))


def vhost(result: Generated, host: str, port: int = 9080) -> Any:
    rcfg = result.resources[types.ROUTE][str(port)]
    found = [v for v in rcfg.virtual_hosts if v.name == f"{host}:{port}"]
    assert len(found) == 1
    return found[0]


def hcm_of(listener: Any) -> Any:
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[-1].filters[0].typed_config.Unpack(hcm)
    return hcm


# --- node ids and proxies ---------------------------------------------------------------------


def test_parse_node_id() -> None:
    assert parse_node_id(REVIEWS_NODE) == (
        "sidecar",
        "127.0.20.1",
        "reviews-v1-1",
        "default",
        "cluster.local",
    )
    for bad in ("sidecar~1.2.3.4~pod", "sidecar~1.2.3.4~pod~default.svc.cluster.local"):
        with pytest.raises(ValueError, match="node id"):
            parse_node_id(bad)


def test_proxy_matches_workload_by_name_then_address() -> None:
    mesh = load(EXAMPLES)
    p = proxy_for_node(mesh, REVIEWS_NODE)
    assert p.workload is not None
    assert p.workload.name == "reviews-v1-1"
    assert p.labels == {"app": "reviews", "version": "v1"}
    by_ip = proxy_for_node(mesh, "sidecar~127.0.20.2~pod-xyz.default~default.svc.cluster.local")
    assert by_ip.workload is not None
    assert by_ip.workload.name == "reviews-v2-1"
    none = proxy_for_node(
        mesh,
        "sidecar~10.9.9.9~other.default~default.svc.cluster.local",
        {"LABELS": {"app": "x"}},
    )
    assert none.workload is None
    assert none.labels == {"app": "x"}
    assert not none.proxyless
    assert proxy_for_node(mesh, REVIEWS_NODE, {"GENERATOR": "grpc"}).proxyless


# --- names ----------------------------------------------------------------------------------------


def test_examples_names() -> None:
    mesh = load(EXAMPLES)
    result = generate(mesh, proxy_for_node(mesh, REVIEWS_NODE))
    assert result.problems == []
    r = result.resources
    assert list(r[types.CLUSTER]) == [
        "inbound|9080||",
        "outbound|8080||frontend.default.svc.cluster.local",
        f"outbound|9080|v1|{REVIEWS}",
        f"outbound|9080|v2|{REVIEWS}",
        f"outbound|9080||{RATINGS}",
        f"outbound|9080||{REVIEWS}",
    ]
    assert list(r[types.ENDPOINT]) == [n for n in r[types.CLUSTER] if n.startswith("outbound")]
    assert all(cla.cluster_name == n for n, cla in r[types.ENDPOINT].items())
    assert list(r[types.LISTENER]) == ["127.0.0.1_8080", "127.0.0.1_9080", "127.0.20.1_9080"]
    assert list(r[types.ROUTE]) == ["8080", "9080"]
    hcm = hcm_of(r[types.LISTENER]["127.0.0.1_9080"])
    assert hcm.rds.route_config_name == "9080"
    assert [f.name for f in hcm.http_filters][-1] == "envoy.filters.http.router"
    vh = vhost(result, REVIEWS)
    assert "reviews" in vh.domains
    assert "reviews:9080" in vh.domains
    assert REVIEWS in vh.domains


def test_outbound_address_and_short_names_per_namespace() -> None:
    other = svc("reviews", ns="other")
    result = gen([*BASE, other], MESHCORE_OUTBOUND_ADDRESS="127.0.11.1")
    assert "127.0.11.1_9080" in result.resources[types.LISTENER]
    rcfg = result.resources[types.ROUTE]["9080"]
    domains = [d for v in rcfg.virtual_hosts for d in v.domains]
    assert len(domains) == len(set(domains))  # Envoy rejects duplicate domains
    other_vh = vhost(result, "reviews.other.svc.cluster.local")
    assert "reviews" not in other_vh.domains
    assert "reviews.other" in other_vh.domains


# --- routes ---------------------------------------------------------------------------------------


def test_default_route_is_istios() -> None:
    route = vhost(gen(BASE), RATINGS).routes[0]
    assert route.name == "default"
    assert route.match.prefix == "/"
    assert route.route.cluster == f"outbound|9080||{RATINGS}"
    assert route.route.timeout.ToNanoseconds() == 0
    rp = route.route.retry_policy
    assert rp.num_retries.value == 2
    assert list(rp.retriable_status_codes) == [503]
    assert (
        rp.retry_on == "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    )


def test_matches() -> None:
    http = [
        {
            "name": "r",
            "match": [
                {
                    "name": "m",
                    "uri": {"regex": "/api/v[0-9]+"},
                    "ignoreUriCase": True,
                    "method": {"exact": "GET"},
                    "authority": {"prefix": "reviews"},
                    "headers": {"x-user": {"exact": "tester"}, "x-present": {}},
                    "withoutHeaders": {"x-debug": {"prefix": "1"}},
                    "queryParams": {"q": {"exact": "1"}, "flag": {"exact": ""}},
                },
                {"uri": {"exact": "/exact"}},
                {"uri": {"prefix": "/pre"}, "port": 1234},  # another port: left out
            ],
            "route": [{"destination": {"host": "reviews"}}],
        }
    ]
    routes = vhost(gen([*BASE, vs("reviews", "reviews", http)]), REVIEWS).routes
    assert len(routes) == 2
    m = routes[0].match
    assert routes[0].name == "r.m"
    assert m.safe_regex.regex == "/api/v[0-9]+"
    assert m.case_sensitive.value is False
    headers = {h.name: h for h in m.headers}
    assert headers[":method"].string_match.exact == "GET"
    assert headers[":authority"].string_match.prefix == "reviews"
    assert headers["x-user"].string_match.exact == "tester"
    assert headers["x-present"].present_match
    assert headers["x-debug"].invert_match
    assert headers["x-debug"].string_match.prefix == "1"
    qp = {q.name: q for q in m.query_parameters}
    assert qp["q"].string_match.exact == "1"
    assert qp["flag"].present_match
    assert routes[1].match.path == "/exact"
    assert routes[1].name == "r"


def test_weights_timeout_retries_rewrite_mirror_headers_fault() -> None:
    http = [
        {
            "name": "split",
            "route": [
                {
                    "destination": {"host": "reviews", "subset": "v1"},
                    "weight": 75,
                    "headers": {"request": {"set": {"x-v": "1"}}},
                },
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 25},
                {"destination": {"host": "reviews", "subset": "v3"}, "weight": 0},
            ],
            "timeout": "1.5s",
            "retries": {"attempts": 4, "perTryTimeout": "250ms", "retryOn": "5xx,503,reset"},
            "rewrite": {"uri": "/v2", "authority": "new-host"},
            "mirror": {"host": "ratings"},
            "mirrorPercentage": {"value": 12.5},
            "headers": {
                "request": {"add": {"x-a": "b"}, "remove": ["x-secret"]},
                "response": {"set": {"x-r": "1"}},
            },
            "fault": {
                "delay": {"fixedDelay": "5s", "percentage": {"value": 0.1}},
                "abort": {"httpStatus": 503, "percentage": {"value": 50}},
            },
        }
    ]
    route = vhost(gen([*BASE, vs("reviews", "reviews", http)]), REVIEWS).routes[0]
    wc = route.route.weighted_clusters.clusters
    assert [(c.name, c.weight.value) for c in wc] == [
        (f"outbound|9080|v1|{REVIEWS}", 75),
        (f"outbound|9080|v2|{REVIEWS}", 25),
    ]
    assert wc[0].request_headers_to_add[0].header.key == "x-v"
    assert route.route.timeout.ToMilliseconds() == 1500
    rp = route.route.retry_policy
    assert rp.num_retries.value == 4
    assert rp.per_try_timeout.ToMilliseconds() == 250
    assert rp.retry_on == "5xx,reset,retriable-status-codes"
    assert list(rp.retriable_status_codes) == [503]
    assert route.route.prefix_rewrite == "/v2"
    assert route.route.host_rewrite_literal == "new-host"
    mirror = route.route.request_mirror_policies[0]
    assert mirror.cluster == f"outbound|9080||{RATINGS}"
    assert mirror.runtime_fraction.default_value.numerator == 125000
    assert [h.header.key for h in route.request_headers_to_add] == ["x-a"]
    assert list(route.request_headers_to_remove) == ["x-secret"]
    assert route.response_headers_to_add[0].append_action == 2  # OVERWRITE_IF_EXISTS_OR_ADD
    fault = fault_pb2.HTTPFault()
    route.typed_per_filter_config["envoy.filters.http.fault"].Unpack(fault)
    assert fault.delay.fixed_delay.seconds == 5
    assert fault.delay.percentage.numerator == 1000
    assert fault.abort.http_status == 503
    assert fault.abort.percentage.numerator == 500000


def test_zero_attempts_disable_retries_and_redirect_direct_response() -> None:
    http = [
        {"match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/new", "redirectCode": 308}},
        {
            "match": [{"uri": {"prefix": "/gone"}}],
            "directResponse": {"status": 410, "body": {"string": "gone"}},
        },
        {"route": [{"destination": {"host": "reviews"}}], "retries": {"attempts": 0}},
    ]
    routes = vhost(gen([*BASE, vs("reviews", "reviews", http)]), REVIEWS).routes
    assert routes[0].redirect.path_redirect == "/new"
    assert routes[0].redirect.response_code == 4
    assert routes[1].direct_response.status == 410
    assert routes[1].direct_response.body.inline_string == "gone"
    assert not routes[2].route.HasField("retry_policy")


def test_source_labels_select_routes_per_proxy() -> None:
    http = [
        {
            "match": [{"sourceLabels": {"app": "frontend"}}],
            "route": [{"destination": {"host": "reviews", "subset": "v2"}}],
        },
        {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
    ]
    objects = [*BASE, vs("reviews", "reviews", http)]
    from_frontend = vhost(gen(objects, FRONTEND_NODE), REVIEWS).routes
    from_reviews = vhost(gen(objects, REVIEWS_NODE), REVIEWS).routes
    assert [r.route.cluster.split("|")[2] for r in from_frontend] == ["v2", "v1"]
    assert [r.route.cluster.split("|")[2] for r in from_reviews] == ["v1"]


# --- isolation of a bad VirtualService ----------------------------------------------------------


def test_bad_virtual_service_is_isolated() -> None:
    good = load_objects([*BASE, vs("ratings", "ratings", [{"route": [{"destination": {"host": "ratings"}}], "timeout": "3s"}]), vs("reviews", "reviews", [{"route": [{"destination": {"host": "reviews"}}]}])])  # fmt: skip
    # A VirtualService that passed no validation (e.g. built in code): an RE2-invalid regex.
    bad = VirtualService(
        kind="VirtualService",
        api_version="networking.istio.io/v1",
        name="reviews-bad",
        namespace="default",
        spec=freeze(
            {
                "hosts": ["reviews"],
                "http": [
                    {
                        "match": [{"uri": {"regex": "(?<=x)a"}}],
                        "route": [{"destination": {"host": "reviews"}}],
                    }
                ],
            }
        ),
        file="bad.yaml",
        line=7,
    )
    resources = [
        r for r in good.resources if not (r.kind == "VirtualService" and r.name == "reviews")
    ]
    mesh = MeshModel([*resources, bad])
    result = generate(mesh, proxy_for_node(mesh, FRONTEND_NODE))
    (problem,) = [p for p in result.problems if p.severity == "error"]
    assert (problem.kind, problem.name, problem.file, problem.line) == (
        "VirtualService",
        "reviews-bad",
        "bad.yaml",
        7,
    )
    assert problem.path == "spec.http[0].match[0].uri.regex"
    assert "default route" in problem.message
    # reviews falls back to the default route; ratings keeps its VirtualService.
    assert [r.name for r in vhost(result, REVIEWS).routes] == ["default"]
    assert vhost(result, RATINGS).routes[0].route.timeout.seconds == 3


def test_second_virtual_service_for_a_host_is_reported() -> None:
    objects = [
        *BASE,
        vs("a", "reviews", [{"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]),
        vs("b", "reviews", [{"route": [{"destination": {"host": "reviews", "subset": "v2"}}]}]),
    ]
    result = gen(objects)
    assert vhost(result, REVIEWS).routes[0].route.cluster.split("|")[2] == "v1"
    assert [(p.name, p.severity) for p in result.problems] == [("b", "warning")]


# --- clusters -----------------------------------------------------------------------------------


def cluster(result: Generated, name: str) -> cluster_pb2.Cluster:
    c: cluster_pb2.Cluster = result.resources[types.CLUSTER][name]
    return c


def test_destination_rule_policies() -> None:
    policy = {
        "loadBalancer": {"consistentHash": {"httpHeaderName": "x-user", "ringHash": {"minimumRingSize": 1024}}},
        "connectionPool": {
            "tcp": {"maxConnections": 10, "connectTimeout": "2s"},
            "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 20, "maxRetries": 3, "maxRequestsPerConnection": 1},
        },
        "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "10s", "maxEjectionPercent": 50},
        "tls": {"mode": "ISTIO_MUTUAL"},
    }  # fmt: skip
    subsets = [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 65537}}}}},
    ]  # fmt: skip
    result = gen([*BASE, dr("reviews", policy, subsets)])
    c = cluster(result, f"outbound|9080||{REVIEWS}")
    assert c.type == cluster_pb2.Cluster.EDS
    assert c.eds_cluster_config.service_name == c.name
    assert c.lb_policy == cluster_pb2.Cluster.RING_HASH
    assert c.ring_hash_lb_config.minimum_ring_size.value == 1024
    th = c.circuit_breakers.thresholds[0]
    assert (th.max_connections.value, th.max_pending_requests.value, th.max_requests.value) == (
        10,
        5,
        20,
    )
    assert th.max_retries.value == 3
    assert c.connect_timeout.seconds == 2
    assert c.outlier_detection.consecutive_5xx.value == 3
    assert c.outlier_detection.base_ejection_time.seconds == 10
    assert c.outlier_detection.max_ejection_percent.value == 50
    ctx = tls_pb2.UpstreamTlsContext()
    c.transport_socket.typed_config.Unpack(ctx)
    assert ctx.sni == f"outbound_.9080_._.{REVIEWS}"
    common = ctx.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"
    # Istio's form: secrets from the sidecar's agent over the bootstrap cluster sds-grpc.
    for ref in (
        common.tls_certificate_sds_secret_configs[0],
        common.combined_validation_context.validation_context_sds_secret_config,
    ):
        source = ref.sds_config
        assert source.resource_api_version == config_source_pb2.V3
        assert source.HasField("initial_fetch_timeout")
        assert source.initial_fetch_timeout.ToNanoseconds() == 0
        api = source.api_config_source
        assert api.api_type == config_source_pb2.ApiConfigSource.GRPC
        assert api.transport_api_version == config_source_pb2.V3
        assert [g.envoy_grpc.cluster_name for g in api.grpc_services] == ["sds-grpc"]
    sans = (
        common.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    )
    assert [s.matcher.exact for s in sans] == ["spiffe://cluster.local/ns/default/sa/reviews"]
    v2 = cluster(result, f"outbound|9080|v2|{REVIEWS}")
    assert v2.lb_policy == cluster_pb2.Cluster.MAGLEV
    assert v2.maglev_lb_config.table_size.value == 65537
    # the route carries the hash policy of its destination
    assert vhost(result, REVIEWS).routes[0].route.hash_policy[0].header.header_name == "x-user"


def test_auto_mtls_follows_peer_authentication() -> None:
    strict = gen([*BASE, peer_auth("STRICT")])
    c = cluster(strict, f"outbound|9080||{RATINGS}")
    assert [m.name for m in c.transport_socket_matches] == ["tlsMode-istio", "tlsMode-disabled"]
    ep = strict.resources[types.ENDPOINT][f"outbound|9080||{RATINGS}"].endpoints[0].lb_endpoints[0]
    assert ep.metadata.filter_metadata["envoy.transport_socket_match"]["tlsMode"] == "istio"
    disabled = gen([*BASE, peer_auth("DISABLE")])
    ep = (
        disabled.resources[types.ENDPOINT][f"outbound|9080||{RATINGS}"].endpoints[0].lb_endpoints[0]
    )
    assert "envoy.transport_socket_match" not in ep.metadata.filter_metadata


def test_endpoints_locality_weight_health() -> None:
    result = gen(BASE)
    cla = result.resources[types.ENDPOINT][f"outbound|9080||{REVIEWS}"]
    groups = {(g.locality.region, g.locality.zone): g for g in cla.endpoints}
    assert set(groups) == {("", ""), ("us-east", "zone-a")}
    ep = groups[("us-east", "zone-a")].lb_endpoints[0]
    assert ep.endpoint.address.socket_address.address == "127.0.20.2"
    assert ep.endpoint.address.socket_address.port_value == 9080
    assert ep.load_balancing_weight.value == 3
    assert ep.health_status == 1
    v1 = result.resources[types.ENDPOINT].get(f"outbound|9080|v1|{REVIEWS}")
    assert v1 is None  # no DestinationRule, no subset clusters


# --- inbound ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "chains", "inspector"),
    [
        ("STRICT", ["inbound_mtls"], False),
        ("PERMISSIVE", ["inbound_mtls", "inbound_plaintext"], True),
        ("DISABLE", ["inbound_plaintext"], False),
    ],
)
def test_inbound_tls_per_peer_authentication(mode: str, chains: list[str], inspector: bool) -> None:
    result = gen([*BASE, peer_auth(mode)], REVIEWS_NODE, MESHCORE_APP_ADDRESS="127.0.21.1")
    listener = result.resources[types.LISTENER]["127.0.20.1_9080"]
    assert listener.address.socket_address.address == "127.0.20.1"
    assert [c.name for c in listener.filter_chains] == chains
    assert bool(listener.listener_filters) is inspector
    if mode != "DISABLE":
        ctx = tls_pb2.DownstreamTlsContext()
        listener.filter_chains[0].transport_socket.typed_config.Unpack(ctx)
        assert ctx.require_client_certificate.value
    inbound = cluster(result, "inbound|9080||")
    addr = inbound.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (addr.address, addr.port_value) == ("127.0.21.1", 9080)


def test_inbound_carries_rbac_filters() -> None:
    mesh = load(EXAMPLES)
    node = "sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local"
    result = generate(mesh, proxy_for_node(mesh, node))
    hcm = hcm_of(result.resources[types.LISTENER]["127.0.30.1_9080"])
    assert [f.name for f in hcm.http_filters] == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.rbac",
        "envoy.filters.http.router",
    ]


# --- proxyless gRPC -------------------------------------------------------------------------------


def test_proxyless_grpc_api_listeners() -> None:
    result = gen([*BASE, dr("reviews", {"tls": {"mode": "ISTIO_MUTUAL"}})], GENERATOR="grpc")
    name = f"{REVIEWS}:9080"
    listener = result.resources[types.LISTENER][name]
    hcm = hcm_pb2.HttpConnectionManager()
    listener.api_listener.api_listener.Unpack(hcm)
    assert hcm.rds.route_config_name == name
    rcfg = result.resources[types.ROUTE][name]
    assert list(rcfg.virtual_hosts[0].domains) == [REVIEWS, name]
    assert not any(n.startswith("inbound") for n in result.resources[types.CLUSTER])
    ctx = tls_pb2.UpstreamTlsContext()
    cluster(result, f"outbound|9080||{REVIEWS}").transport_socket.typed_config.Unpack(ctx)
    assert ctx.common_tls_context.tls_certificate_provider_instance.instance_name == "default"
    # gRPC's xDS client NACKs least request: proxyless clusters use round robin
    assert cluster(result, f"outbound|9080||{REVIEWS}").lb_policy == cluster_pb2.Cluster.ROUND_ROBIN


# --- determinism and the static bootstrap ---------------------------------------------------------


def _bytes(result: Generated) -> dict[str, dict[str, bytes]]:
    return {
        t: {n: m.SerializeToString(deterministic=True) for n, m in d.items()}
        for t, d in result.resources.items()
    }


def test_deterministic_bytes() -> None:
    a = generate(m := load(EXAMPLES), proxy_for_node(m, REVIEWS_NODE))
    b = generate(m2 := load(EXAMPLES), proxy_for_node(m2, REVIEWS_NODE))
    assert _bytes(a) == _bytes(b)
    assert [list(d) for d in a.resources.values()] == [list(d) for d in b.resources.values()]


def test_static_bootstrap_inlines_routes_and_endpoints() -> None:
    mesh = load(EXAMPLES)
    result = generate(mesh, proxy_for_node(mesh, REVIEWS_NODE))
    boot = render_static_bootstrap(result, REVIEWS_NODE, 15000)
    assert boot["node"]["id"] == REVIEWS_NODE
    assert boot["admin"]["address"]["socket_address"]["port_value"] == 15000
    clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    reviews = clusters[f"outbound|9080||{REVIEWS}"]
    assert reviews["type"] == "STATIC"
    assert "eds_cluster_config" not in reviews
    assert len(reviews["load_assignment"]["endpoints"]) == 1
    listeners = {item["name"]: item for item in boot["static_resources"]["listeners"]}
    hcm = listeners["127.0.0.1_9080"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert "rds" not in hcm
    assert hcm["route_config"]["name"] == "9080"


def test_mtls_cluster_without_endpoints_keeps_a_validation_context() -> None:
    # Envoy rejects a combined_validation_context without default_validation_context.
    result = gen([*BASE, svc("lonely"), dr("lonely", {"tls": {"mode": "ISTIO_MUTUAL"}})])
    ctx = tls_pb2.UpstreamTlsContext()
    lonely = cluster(result, "outbound|9080||lonely.default.svc.cluster.local")
    lonely.transport_socket.typed_config.Unpack(ctx)
    assert ctx.common_tls_context.combined_validation_context.HasField("default_validation_context")


def test_bootstrap_raises_the_re2_program_size_limit_as_istio() -> None:
    mesh = load(EXAMPLES)
    boot = render_static_bootstrap(
        generate(mesh, proxy_for_node(mesh, REVIEWS_NODE)), REVIEWS_NODE, 1
    )
    layer = boot["layered_runtime"]["layers"][0]["static_layer"]
    assert layer["re2.max_program_size.error_level"] == 32768


def _options(c: cluster_pb2.Cluster) -> Any:
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

    opts = http_protocol_options_pb2.HttpProtocolOptions()
    c.typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ].Unpack(opts)
    return opts


def test_upstream_protocol_options() -> None:
    streams = {"connectionPool": {"http": {"maxConcurrentStreams": 7, "idleTimeout": "5s"}}}
    client = {"connectionPool": {"http": {"useClientProtocol": True, "maxConcurrentStreams": 3}}}
    result = gen([*BASE, svc("grpcsvc", 7070, pname="grpc"), dr("reviews", streams), dr("ratings", client), dr("grpcsvc", streams)])  # fmt: skip
    # HTTP/1.1 service: the HTTP/2 stream limit must not switch it to h2
    plain = _options(cluster(result, f"outbound|9080||{REVIEWS}"))
    assert plain.explicit_http_config.HasField("http_protocol_options")
    assert plain.common_http_protocol_options.idle_timeout.seconds == 5
    grpc = _options(cluster(result, "outbound|7070||grpcsvc.default.svc.cluster.local"))
    assert grpc.explicit_http_config.http2_protocol_options.max_concurrent_streams.value == 7
    downstream = _options(
        cluster(result, f"outbound|9080||{RATINGS}")
    ).use_downstream_protocol_config
    assert downstream.http2_protocol_options.max_concurrent_streams.value == 3


def test_untranslated_fields_are_warnings() -> None:
    objects = [
        *BASE,
        dr("reviews", {"loadBalancer": {"simple": "ROUND_ROBIN", "zoneAwareLbSetting": {"enabled": True}}}),
        {**vs("ratings", "ratings", [{"route": [{"destination": {"host": "ratings"}}]}]),
         "spec": {"hosts": ["ratings"], "http": [{"route": [{"destination": {"host": "ratings"}}]}],
                  "tcp": [{"route": [{"destination": {"host": "ratings"}}]}]}},
    ]  # fmt: skip
    problems = {(p.kind, p.path, p.severity) for p in gen(objects).problems}
    assert (
        "DestinationRule",
        "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting",
        "warning",
    ) in problems
    assert ("VirtualService", "spec.tcp", "warning") in problems


# --- carrying over the previous mesh's translation ----------------------------------------------


def test_a_new_mesh_reuses_what_did_not_change() -> None:
    ratings_vs = vs("ratings", "ratings", [{"route": [{"destination": {"host": "ratings"}}]}])
    changed = [dict(o) for o in BASE]
    changed[5] = we("ratings-1", "ratings", "127.0.30.1", weight=7)  # one endpoint's weight
    objects_a = [*BASE, ratings_vs, dr("reviews", {"loadBalancer": {"simple": "PASSTHROUGH"}})]
    objects_b = [*changed, ratings_vs, dr("reviews", {"loadBalancer": {"simple": "PASSTHROUGH"}})]
    translator = Translator()
    a = gen(objects_a, translator=translator)
    b = gen(objects_b, translator=translator)  # translated after a: carries over a's translation
    cold_b = gen(objects_b, translator=Translator())
    assert _bytes(b) == _bytes(cold_b)
    assert b.problems == cold_b.problems  # problems of what is reused are still reported
    assert any(p.kind == "DestinationRule" for p in b.problems)
    ra, rb = a.resources, b.resources
    reviews = f"outbound|9080||{REVIEWS}"
    ratings = f"outbound|9080||{RATINGS}"
    assert rb[types.CLUSTER][reviews] is ra[types.CLUSTER][reviews]
    assert rb[types.ENDPOINT][reviews] is ra[types.ENDPOINT][reviews]
    assert rb[types.CLUSTER][ratings] is not ra[types.CLUSTER][ratings]
    weight = rb[types.ENDPOINT][ratings].endpoints[0].lb_endpoints[0].load_balancing_weight
    assert weight.value == 7
    assert rb[types.ROUTE]["9080"] is ra[types.ROUTE]["9080"]  # no route input changed


def test_a_fixed_virtual_service_is_no_longer_reported() -> None:
    delegating = vs("reviews", "reviews", [{"delegate": {"name": "other"}}])
    fixed = vs("reviews", "reviews", [{"route": [{"destination": {"host": "reviews"}}]}])
    broken = gen([*BASE, delegating])
    (problem,) = [p for p in broken.problems if p.severity == "error"]
    assert problem.path == "spec.http[0].delegate"
    assert [r.name for r in vhost(broken, REVIEWS).routes] == ["default"]
    assert not [p for p in gen([*BASE, fixed]).problems if p.severity == "error"]


def test_wildcard_virtual_service_covers_services_without_their_own() -> None:
    wildcard = vs("all", "*.default.svc.cluster.local", [{"route": [{"destination": {"host": "reviews"}}], "timeout": "7s"}])  # fmt: skip
    own = vs("ratings", "ratings", [{"route": [{"destination": {"host": "ratings"}}], "timeout": "1s"}])  # fmt: skip
    result = gen([*BASE, wildcard, own])
    assert vhost(result, REVIEWS).routes[0].route.timeout.seconds == 7
    assert vhost(result, RATINGS).routes[0].route.timeout.seconds == 1


def test_export_to_is_reported_not_ignored() -> None:
    exported = vs("ratings", "ratings", [{"route": [{"destination": {"host": "ratings"}}]}])
    exported["spec"]["exportTo"] = ["."]
    problems = [(p.name, p.path, p.severity) for p in gen([*BASE, exported]).problems]
    assert ("ratings", "spec.exportTo", "warning") in problems


def test_custom_policy_gets_ext_authz_from_extension_providers() -> None:
    custom = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "reviews"}},
            "action": "CUSTOM",
            "provider": {"name": "authz"},
            "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}],
        },
    }
    providers = [
        {
            "name": "authz",
            "envoyExtAuthzGrpc": {"service": "authz.default.svc.cluster.local", "port": 9000},
        }
    ]
    objects = [*BASE, svc("authz", 9000, pname="grpc"), custom]
    mesh = load_objects(objects)
    proxy = proxy_for_node(mesh, REVIEWS_NODE)
    result = generate(mesh, proxy, extension_providers=providers)
    hcm = hcm_of(result.resources[types.LISTENER]["127.0.20.1_9080"])
    names = [f.name for f in hcm.http_filters]
    assert "envoy.filters.http.ext_authz" in names
    assert "outbound|9000||authz.default.svc.cluster.local" in result.resources[types.CLUSTER]
    # without the provider the policy fails closed (Istio: a bad CUSTOM provider becomes DENY)
    closed = generate(mesh, proxy)
    assert "envoy.filters.http.ext_authz" not in [
        f.name for f in hcm_of(closed.resources[types.LISTENER]["127.0.20.1_9080"]).http_filters
    ]
    assert closed.problems


# --- ServiceEntry -------------------------------------------------------------------------------


def se(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


SE_OBJECTS = [
    *BASE,
    se("static", {"hosts": ["db.internal"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                  "ports": [{"number": 5432, "name": "tcp-pg", "protocol": "TCP"}],
                  "endpoints": [{"address": "127.0.70.1", "labels": {"version": "v1"}},
                                {"address": "127.0.70.2", "ports": {"tcp-pg": 6432}, "weight": 2}]}),
    se("api", {"hosts": ["api.example.com"], "location": "MESH_EXTERNAL", "resolution": "DNS",
               "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"},
                         {"number": 80, "name": "http", "protocol": "HTTP"}]}),
    se("rr", {"hosts": ["rr.example.com"], "resolution": "DNS_ROUND_ROBIN",
              "ports": [{"number": 8081, "name": "http", "protocol": "HTTP"}],
              "endpoints": [{"address": "a.example.com"}, {"address": "b.example.com"}]}),
    se("passthrough", {"hosts": ["any.example.com"], "resolution": "NONE",
                       "ports": [{"number": 8443, "name": "tls", "protocol": "TLS"}]}),
    dr("api.example.com", {"portLevelSettings": [{"port": {"number": 443}, "tls": {"mode": "SIMPLE"}}]}),
    vs("api", "api.example.com", [{"route": [{"destination": {"host": "api.example.com"}}], "timeout": "4s"}]),
]  # fmt: skip


def test_service_entries() -> None:
    result = gen(SE_OBJECTS)
    r = result.resources
    # STATIC: EDS, endpoints from spec.endpoints (named port override, weight)
    static = cluster(result, "outbound|5432||db.internal")
    assert static.type == cluster_pb2.Cluster.EDS
    eps = r[types.ENDPOINT]["outbound|5432||db.internal"].endpoints[0].lb_endpoints
    assert [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value, e.load_balancing_weight.value) for e in eps] == [
        ("127.0.70.1", 5432, 1),
        ("127.0.70.2", 6432, 2),
    ]  # fmt: skip
    assert "127.0.0.1_5432" in r[types.LISTENER]  # a TCP port of its own: tcp_proxy
    # DNS: Envoy resolves the host itself; MESH_EXTERNAL: no auto mTLS; SIMPLE TLS: SNI = host
    api = cluster(result, "outbound|443||api.example.com")
    assert api.type == cluster_pb2.Cluster.STRICT_DNS
    assert "outbound|443||api.example.com" not in r[types.ENDPOINT]
    addr = api.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (addr.address, addr.port_value) == ("api.example.com", 443)
    ctx = tls_pb2.UpstreamTlsContext()
    api.transport_socket.typed_config.Unpack(ctx)
    assert ctx.sni == "api.example.com"
    assert not cluster(result, "outbound|80||api.example.com").transport_socket_matches
    # its HTTP port gets a virtual host with the VirtualService's routes
    api_vh = vhost(result, "api.example.com", 80)
    assert list(api_vh.domains) == ["api.example.com", "api.example.com:80"]
    assert api_vh.routes[0].route.timeout.seconds == 4
    # DNS_ROUND_ROBIN: LOGICAL_DNS with exactly one endpoint
    rr = cluster(result, "outbound|8081||rr.example.com")
    assert rr.type == cluster_pb2.Cluster.LOGICAL_DNS
    assert len(rr.load_assignment.endpoints[0].lb_endpoints) == 1
    # NONE needs iptables: reported, no cluster
    assert not any("any.example.com" in n for n in r[types.CLUSTER])
    assert ("ServiceEntry", "spec.resolution", "warning") in {
        (p.kind, p.path, p.severity) for p in result.problems
    }


def test_a_new_service_entry_is_not_hidden_by_carried_over_routes() -> None:
    gen(BASE)
    result = gen(SE_OBJECTS)
    assert vhost(result, "api.example.com", 80).routes[0].route.timeout.seconds == 4
    assert "127.0.0.1_5432" in result.resources[types.LISTENER]


def test_problems_are_the_proxys_own_whatever_the_order() -> None:
    custom = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "ext", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "reviews"}},
            "action": "CUSTOM",
            "provider": {"name": "missing"},
            "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}],
        },
    }
    bad_dr = dr("ratings", {"loadBalancer": {"simple": "PASSTHROUGH"}})
    mesh = load_objects([*BASE, custom, bad_dr])
    seen: dict[str, list[list[Any]]] = {}
    for order in ((FRONTEND_NODE, REVIEWS_NODE), (REVIEWS_NODE, FRONTEND_NODE)):
        translator = Translator()
        for node in order:
            problems = translator.generate(mesh, proxy_for_node(mesh, node)).problems
            seen.setdefault(node, []).append([(p.kind, p.name, p.path) for p in problems])
    for node, runs in seen.items():
        assert runs[0] == runs[1], node
    paths = {node: {path.split("[")[0] for _, _, path in runs[0]} for node, runs in seen.items()}
    # every proxy gets the ratings cluster (and its DestinationRule's problem); only reviews
    # is selected by the CUSTOM policy whose provider is missing
    assert paths[FRONTEND_NODE] == {"spec.trafficPolicy.loadBalancer.simple"}
    assert paths[REVIEWS_NODE] == {"spec.trafficPolicy.loadBalancer.simple", "extensionProviders"}


def test_one_header_name_rule_for_validation_and_translation() -> None:
    # The translator's check is the loader's: a name with a trailing line break (which a
    # `$`-anchored pattern lets through) is refused by both. The translator has no header-name
    # rule of its own: a resource built by hand goes through the loader's checker
    # (``checked_of``) before the builders read it.
    from meshcore.config.model import DestinationRule
    from meshcore.config.validate import is_header_name
    from meshcore.xds.common import Invalid, checked_of

    for name in ["x-user", ":authority", "X-Tenant_1", "x-user\n", "", ":", "a b", "é"]:
        lb = {"consistentHash": {"httpHeaderName": name}}
        dr = DestinationRule(kind="DestinationRule", api_version="networking.istio.io/v1",
                             name="d", namespace="default",
                             spec=freeze({"host": "reviews", "trafficPolicy": {"loadBalancer": lb}}))  # fmt: skip
        if is_header_name(name):
            checked_of(dr)
        else:
            with pytest.raises(Invalid, match="invalid header name"):
                checked_of(dr)
    assert not is_header_name("x-user\n")
