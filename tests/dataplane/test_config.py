"""The compiled config's own logic: the inbound path normalisation's fast path agrees with the
core's normalisation on any path; bad resources are refused naming the resource and field."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

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
