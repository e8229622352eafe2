"""Route actions (retry policy, hash policies, rewrites, timeouts) come from the core's one
RouteConfiguration decoder: on random RouteConfigurations, what the data plane compiled agrees
with the same message read through the protobuf library; unsupported hash policies are refused
at their field path."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.dataplane.config import DEFAULT_ROUTE_TIMEOUT, compile_routes
from meshcore.dataplane.routeactions import PREVIOUS_HOSTS, HashPolicy, RetryPolicy
from meshcore.errors import UnsupportedFeatureError

names = st.text(alphabet="abcXY-_", min_size=1, max_size=6)
retry_ons = st.lists(
    st.sampled_from(["5xx", "gateway-error", "connect-failure", "retriable-4xx",
                     "retriable-status-codes", "reset", " "]), max_size=4,
).map(",".join)  # fmt: skip
hash_policies = st.lists(
    st.tuples(st.sampled_from(["header", "cookie", "query_parameter", "source_ip"]), names,
              st.booleans(), st.none() | st.integers(0, 10**6), st.sampled_from(["", "/p"]),
              st.lists(st.tuples(names, st.sampled_from(["", "v"])), max_size=2)), max_size=3,
)  # fmt: skip


@st.composite
def retry_policies(draw: st.DrawFn) -> route_components_pb2.RetryPolicy | None:
    if not draw(st.booleans()):
        return None
    rp = route_components_pb2.RetryPolicy(retry_on=draw(retry_ons))
    if draw(st.booleans()):
        rp.num_retries.value = draw(st.integers(0, 10))
    if draw(st.booleans()):
        rp.per_try_timeout.seconds = draw(st.integers(0, 5))
        rp.per_try_timeout.nanos = draw(st.integers(0, 999_999_999))
    rp.retriable_status_codes.extend(draw(st.lists(st.integers(100, 599), max_size=3)))
    for predicate in draw(st.lists(st.sampled_from([PREVIOUS_HOSTS, "other"]), max_size=2)):
        rp.retry_host_predicate.add(name=predicate)
    rp.host_selection_retry_max_attempts = draw(st.integers(0, 7))
    return rp


@st.composite
def route_configs(draw: st.DrawFn) -> route_pb2.RouteConfiguration:
    rc = route_pb2.RouteConfiguration(name="80")
    for v in range(draw(st.integers(1, 3))):
        vh = rc.virtual_hosts.add(name=f"v{v}", domains=[f"h{v}" if v else "*"])
        for i in range(draw(st.integers(1, 3))):
            r = vh.routes.add(name=f"r{v}.{i}")
            which = draw(st.sampled_from(["prefix", "path", "safe_regex"]))
            if which == "safe_regex":
                r.match.safe_regex.regex = f"/re{i}/.*"
            else:
                setattr(r.match, which, f"/{which}{i}")
            if draw(st.booleans()):
                r.route.cluster = draw(names)
            else:
                for c in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
                    r.route.weighted_clusters.clusters.add(name=c).weight.value = draw(
                        st.integers(0, 100)
                    )
            if draw(st.booleans()):
                r.route.timeout.seconds = draw(st.integers(0, 30))
            if draw(st.booleans()):
                r.route.prefix_rewrite = "/" + draw(names)
            if draw(st.booleans()):
                r.route.host_rewrite_literal = draw(names)
            rp = draw(retry_policies())
            if rp is not None:
                r.route.retry_policy.CopyFrom(rp)
            for kind, key, terminal, ttl, cookie_path, attrs in draw(hash_policies):
                hp = r.route.hash_policy.add(terminal=terminal)
                if kind == "header":
                    hp.header.header_name = key
                elif kind == "cookie":
                    hp.cookie.name = key
                    if ttl is not None:
                        hp.cookie.ttl.seconds = ttl
                        hp.cookie.ttl.nanos = 500_000_000
                    hp.cookie.path = cookie_path
                    for n, v in attrs:
                        hp.cookie.attributes.add(name=n, value=v)
                elif kind == "query_parameter":
                    hp.query_parameter.name = key
                else:
                    hp.connection_properties.source_ip = True
    return rc


def _expected_retry(ra: Any) -> RetryPolicy | None:
    if not ra.HasField("retry_policy"):
        return None
    rp = ra.retry_policy
    per_try = rp.per_try_timeout.seconds + rp.per_try_timeout.nanos / 1e9
    return RetryPolicy(
        tuple(x.strip() for x in rp.retry_on.split(",") if x.strip()),
        rp.num_retries.value if rp.HasField("num_retries") else 1,
        (per_try or None) if rp.HasField("per_try_timeout") else None,
        tuple(rp.retriable_status_codes),
        previous_hosts=any(p.name == PREVIOUS_HOSTS for p in rp.retry_host_predicate),
        host_selection_attempts=rp.host_selection_retry_max_attempts or 1,
    )


def _expected_hashes(ra: Any) -> tuple[HashPolicy, ...]:
    out = []
    for hp in ra.hash_policy:
        which = hp.WhichOneof("policy_specifier")
        if which == "header":
            out.append(HashPolicy("header", hp.header.header_name.lower(), hp.terminal))
        elif which == "connection_properties":
            out.append(HashPolicy("source_ip", "", hp.terminal))
        elif which == "cookie":
            c = hp.cookie
            ttl = c.ttl.seconds if c.HasField("ttl") else None  # Envoy: whole seconds
            attrs = tuple((a.name, a.value) for a in c.attributes)
            out.append(HashPolicy("cookie", c.name, hp.terminal, ttl, c.path, attrs))
        else:
            out.append(HashPolicy(which, getattr(hp, which).name, hp.terminal))
    return tuple(out)


@settings(max_examples=150, deadline=None)
@given(route_configs())
def test_route_actions_agree_with_the_protobuf_library(rc: route_pb2.RouteConfiguration) -> None:
    compiled = compile_routes("80", "1", rc.SerializeToString())
    flat = [r for vh in rc.virtual_hosts for r in vh.routes]
    assert len(compiled.routes) == len(flat)
    for i, r in enumerate(flat):
        info, ra = compiled.routes[i], r.route
        assert info.name == r.name
        assert info.cluster == (ra.cluster or None)
        assert info.weighted == tuple(
            (c.name, c.weight.value) for c in ra.weighted_clusters.clusters
        )
        timeout = ra.timeout.seconds if ra.HasField("timeout") else DEFAULT_ROUTE_TIMEOUT
        assert info.timeout == (timeout or None)
        assert info.retry_policy == _expected_retry(ra)
        assert info.hash_policies == _expected_hashes(ra)
        assert info.prefix_rewrite == ra.prefix_rewrite
        assert info.host_rewrite == ra.host_rewrite_literal
        which = r.match.WhichOneof("path_specifier")
        expected_from = getattr(r.match, which) if which in ("prefix", "path") else None
        assert info.rewrite_from == (expected_from if ra.prefix_rewrite else None)


@pytest.mark.parametrize("kind", ["filter_state", "connection_properties", "none"])
def test_unsupported_hash_policy_is_refused_at_its_path(kind: str) -> None:
    rc = route_pb2.RouteConfiguration(name="80")
    rc.virtual_hosts.add(name="a", domains=["a"]).routes.add(name="x").match.prefix = "/"
    vh = rc.virtual_hosts.add(name="b", domains=["*"])
    for i in range(2):
        r = vh.routes.add(name=f"r{i}")
        r.match.prefix = f"/{i}"
        r.route.cluster = "c"
    hashes = vh.routes[1].route.hash_policy
    hashes.add().header.header_name = "x-user"
    bad = hashes.add()
    if kind == "filter_state":
        bad.filter_state.key = "k"
    elif kind == "connection_properties":
        bad.connection_properties.source_ip = False
        bad.connection_properties.SetInParent()
    else:
        bad.terminal = True
    rc.virtual_hosts[0].routes[0].route.cluster = "c"
    with pytest.raises(UnsupportedFeatureError) as err:
        compile_routes("80", "1", rc.SerializeToString())
    problem = err.value.errors()[0]
    assert (problem.kind, problem.name) == ("RDS", "80")
    assert problem.path == "virtual_hosts[1].routes[1].route.hash_policy[1]"


def test_header_regex_rewrite_is_refused_at_its_path() -> None:
    """Envoy rewrites the header's value before hashing it; the data plane does not, so it
    refuses the policy rather than hash the raw value."""
    rc = route_pb2.RouteConfiguration(name="80")
    r = rc.virtual_hosts.add(name="a", domains=["*"]).routes.add(name="x")
    r.match.prefix = "/"
    r.route.cluster = "c"
    hp = r.route.hash_policy.add()
    hp.header.header_name = "x-user"
    hp.header.regex_rewrite.pattern.regex = "^/(.*)$"
    hp.header.regex_rewrite.substitution = "\\1"
    with pytest.raises(UnsupportedFeatureError) as err:
        compile_routes("80", "1", rc.SerializeToString())
    problem = err.value.errors()[0]
    assert problem.path == "virtual_hosts[0].routes[0].route.hash_policy[0].header.regex_rewrite"
    assert "regex_rewrite" in problem.message
