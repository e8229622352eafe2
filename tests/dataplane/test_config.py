"""The compiled config's own logic: the inbound path normalisation's fast path agrees with the
core's normalisation on any path; bad resources are refused naming the resource and field."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.dataplane import DataPlane
from meshcore.dataplane.ads import AdsClient
from meshcore.dataplane.config import (
    Compiler,
    HttpOptions,
    InboundListener,
    _normalizer,
    compile_routes,
)
from meshcore.errors import ConfigError
from meshcore.xds import types

LISTENERS = [
    InboundListener("l", "127.0.0.1", 1, None, None, "DISABLE", opts, _normalizer(opts))
    for opts in (HttpOptions(normalize_path=True),
                 HttpOptions(normalize_path=True, merge_slashes=True))
]  # fmt: skip

paths = st.text(alphabet="/ab.%2eEfF5c\\#?=&~ é<", min_size=0, max_size=24).map(lambda s: "/" + s)


@settings(max_examples=400, deadline=None)
@given(paths)
def test_fast_path_agrees_with_the_core(path: str) -> None:
    for lst in LISTENERS:
        assert lst.normalizer is not None
        core = lst.normalizer.explain("_", path).get("path")
        assert lst.normalized_path(path) == core


def test_uncompilable_route_names_resource_and_field() -> None:
    rc = route_pb2.RouteConfiguration(name="9080")
    vh = rc.virtual_hosts.add(name="v", domains=["*"])
    r = vh.routes.add(name="bad")
    r.match.safe_regex.regex = "(unclosed"
    r.route.cluster = "c"
    with pytest.raises(ConfigError) as err:
        compile_routes("9080", "1", rc.SerializeToString())
    problem = err.value.errors()[0]
    assert (problem.kind, problem.name) == ("RDS", "9080")
    assert problem.path == "virtual_hosts[0].routes[0].match.safe_regex.regex"
    # Through the compiler: every bad resource is reported, none is half-applied.
    with pytest.raises(ConfigError) as err2:
        Compiler().compile({types.ROUTE: {"9080": ("1", rc.SerializeToString()),
                                          "8080": ("1", b"\xff\xff")}})  # fmt: skip
    assert {p.name for p in err2.value.errors()} == {"9080", "8080"}


def test_prefix_and_host_rewrites_reach_the_decision() -> None:
    rc = route_pb2.RouteConfiguration(name="80")
    vh = rc.virtual_hosts.add(name="v", domains=["*"])
    for match, rewrite in (("/api/", "/v2/"), ("/exact", "/other")):
        r = vh.routes.add(name=match)
        if match.endswith("/"):
            r.match.prefix = match
        else:
            r.match.path = match
        r.route.cluster = "static"
        r.route.prefix_rewrite = rewrite
        r.route.host_rewrite_literal = "backend.internal"
    plain = vh.routes.add(name="plain")
    plain.match.safe_regex.regex = "/re/.*"
    plain.route.cluster = "static"
    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="x")
    hcm.rds.route_config_name = "80"
    hcm.rds.config_source.ads.SetInParent()
    lst = listener_pb2.Listener(name="out_80")
    lst.address.socket_address.address = "127.0.0.1"
    lst.address.socket_address.port_value = 80
    f = lst.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager")
    f.typed_config.Pack(hcm)
    c = cluster_pb2.Cluster(name="static", type=cluster_pb2.Cluster.STATIC)
    ep = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    ep.address.socket_address.address = "127.0.0.9"
    ep.address.socket_address.port_value = 8080
    ads = AdsClient("127.0.0.1:1", "sidecar~127.0.0.1~a.ns~ns.svc.cluster.local")
    ads.config = Compiler().compile(
        {
            types.ROUTE: {"80": ("1", rc.SerializeToString())},
            types.LISTENER: {"out_80": ("1", lst.SerializeToString())},
            types.CLUSTER: {"static": ("1", c.SerializeToString())},
        }
    )
    dp = DataPlane(ads)
    d = dp.decide(direction="outbound", authority="svc", path="/api/items?x=1")
    assert (d.path, d.host_rewrite, str(d.endpoint)) == (
        "/v2/items?x=1", "backend.internal", "127.0.0.9:8080")  # fmt: skip
    assert dp.decide(direction="outbound", authority="svc", path="/exact").path == "/other"
    assert dp.decide(direction="outbound", authority="svc", path="/re/x").path is None
    # The route table answers for the authority's port: no port means 80.
    assert dp.decide(direction="outbound", authority="svc:81", path="/api/").status == 404
