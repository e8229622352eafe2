"""RouteTable: hand-pinned tricky cases (each checked against Envoy 1.40 by the differential
test's generator or by a direct probe) and the API's contract."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import json_format

from meshcore import ConfigError, RouteTable, UnsupportedFeatureError


def config(*vhosts: dict[str, Any], **extra: Any) -> route_pb2.RouteConfiguration:
    return json_format.ParseDict(
        {"name": "rc", "virtual_hosts": list(vhosts), **extra}, route_pb2.RouteConfiguration()
    )


def vh(name: str, domains: list[str], *matches: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "domains": domains,
        "routes": [
            {"name": f"{name}-{i}", "match": m, "route": {"cluster": f"c-{name}-{i}"}}
            for i, m in enumerate(matches)
        ],
    }


def routed(table: RouteTable, authority: str, path: str, **kw: Any) -> str | None:
    m = table.route(authority, path, **kw)
    return None if m is None else m.name


def test_issue_example() -> None:
    table = RouteTable.from_proto(
        config(
            vh(
                "reviews",
                ["reviews.default.svc:9080"],
                {"prefix": "/api", "headers": [{"name": "x-user", "string_match": {"exact": "a"}}]},
            )
        )
    )
    m = table.route(
        authority="reviews.default.svc:9080",
        path="/api/v1?x=1",
        method="GET",
        headers={"x-user": "a"},
    )
    assert m is not None
    assert (m.name, m.virtual_host, m.route_index) == ("reviews-0", "reviews", 0)
    assert m.action["kind"] == "route"
    assert m.action["cluster"] == "c-reviews-0"
    assert table.routes[0] is m
    assert table.route("reviews.default.svc:9080", "/api", headers={"x-user": "b"}) is None


def test_virtual_host_order_ports_and_case() -> None:
    table = RouteTable.from_proto(
        config(
            vh("exact", ["foo.bar.com"], {"prefix": "/"}),
            vh("long-suffix", ["*.bar.com"], {"prefix": "/"}),
            vh("short-suffix", ["*.com"], {"prefix": "/"}),
            vh("prefix", ["foo.*"], {"prefix": "/"}),
            vh("default", ["*"], {"prefix": "/"}),
        )
    )
    assert routed(table, "FOO.BAR.COM", "/") == "exact-0"
    assert routed(table, "x.bar.com", "/") == "long-suffix-0"
    # The wildcard must cover at least one character.
    assert routed(table, ".bar.com", "/") == "short-suffix-0"
    # A port is part of the host unless the options strip it.
    assert routed(table, "foo.bar.com:80", "/") == "prefix-0"
    assert routed(table, "foo.bar.com:80", "/", strip_any_host_port=True) == "exact-0"
    assert routed(table, "foo.bar.com:", "/", strip_any_host_port=True) == "prefix-0"
    assert routed(table, "other:80", "/") == "default-0"


def test_strip_matching_host_port_and_ignore_port() -> None:
    table = RouteTable.from_proto(
        config(vh("a", ["a.com"], {"prefix": "/"})),
        strip_matching_host_port=True,
        listener_port=8080,
    )
    assert routed(table, "a.com:8080", "/") == "a-0"
    assert routed(table, "a.com:8081", "/") is None
    ignoring = RouteTable.from_proto(
        config(vh("a", ["a.com"], {"prefix": "/"}), ignore_port_in_host_matching=True)
    )
    assert routed(ignoring, "a.com:1", "/") == "a-0"


def test_first_match_wins_across_specifiers() -> None:
    table = RouteTable.from_proto(
        config(
            vh(
                "v",
                ["*"],
                {"path_separated_prefix": "/api"},
                {"prefix": "/api"},
                {"path": "/EXACT", "case_sensitive": False},
                {"safe_regex": {"regex": r"/v\d+"}},
                {"prefix": "/"},
            )
        )
    )
    assert routed(table, "h", "/api") == "v-0"
    assert routed(table, "h", "/api/x") == "v-0"
    assert routed(table, "h", "/apix") == "v-1"
    assert routed(table, "h", "/exact?q=1") == "v-2"
    assert routed(table, "h", "/v12") == "v-3"
    # RE2's \d is ASCII, and the regex must match the whole path.
    assert routed(table, "h", "/v١") == "v-4"
    assert routed(table, "h", "/v1/") == "v-4"


def test_inverted_header_matcher_and_missing_headers() -> None:
    inverted = {"name": "x-a", "string_match": {"exact": "v"}, "invert_match": True}
    table = RouteTable.from_proto(
        config(
            vh(
                "v",
                ["*"],
                {"prefix": "/inv", "headers": [inverted]},
                {
                    "prefix": "/empty",
                    "headers": [{**inverted, "treat_missing_header_as_empty": True}],
                },
                {"prefix": "/absent", "headers": [{"name": "x-a", "present_match": False}]},
                {
                    "prefix": "/range",
                    "headers": [{"name": "x-a", "range_match": {"start": "1", "end": "10"}}],
                },
            )
        )
    )
    assert routed(table, "h", "/inv") is None  # the known trap
    assert routed(table, "h", "/inv", headers={"x-a": "w"}) == "v-0"
    assert routed(table, "h", "/empty") == "v-1"
    assert routed(table, "h", "/absent") == "v-2"
    assert routed(table, "h", "/absent", headers=[("X-A", "")]) is None
    assert routed(table, "h", "/range", headers={"x-a": " 9 "}) == "v-3"
    assert routed(table, "h", "/range", headers={"x-a": "10"}) is None
    # Repeated headers: a value that matches is enough.
    assert routed(table, "h", "/range", headers=[("x-a", "x"), ("x-a", "5")]) == "v-3"
    assert routed(table, "h", "/inv", headers=[("x-a", "w"), ("x-a", "v")]) is None


def test_query_parameters_and_grpc() -> None:
    table = RouteTable.from_proto(
        config(
            vh(
                "v",
                ["*"],
                {
                    "prefix": "/q",
                    "query_parameters": [{"name": "a", "string_match": {"exact": "x y"}}],
                },
                {"prefix": "/q", "query_parameters": [{"name": "a", "present_match": False}]},
                {"prefix": "/g", "grpc": {}},
            )
        )
    )
    # Query values are not percent-decoded; only the first value of a key counts.
    assert routed(table, "h", "/q?a=x%20y") is None
    assert routed(table, "h", "/q?b=1") == "v-1"
    assert routed(table, "h", "/g", headers={"content-type": "application/grpc+proto"}) == "v-2"
    assert routed(table, "h", "/g", headers={"content-type": "application/grpc-web"}) is None


def test_connection_manager_path_options() -> None:
    table = RouteTable.from_proto(config(vh("v", ["*"], {"path": "/b"})))
    assert routed(table, "h", "/a/../b") is None
    assert routed(table, "h", "/a/../b", normalize_path=True) == "v-0"
    assert routed(table, "h", "//b") is None
    assert routed(table, "h", "//b", merge_slashes=True) == "v-0"
    assert routed(table, "h", "/%62", normalize_path=True) == "v-0"
    assert routed(table, "h", "/a%2F..%2Fb", normalize_path=True) is None
    assert (
        routed(
            table,
            "h",
            "/a%2F..%2Fb",
            normalize_path=True,
            path_with_escaped_slashes_action="UNESCAPE_AND_FORWARD",
        )
        == "v-0"
    )
    # Envoy answers 400 for a fragment, and for %00 under normalize_path.
    assert routed(table, "h", "/b#x") is None
    assert (
        routed(table, "h", "/b?x=%2F", path_with_escaped_slashes_action="REJECT_REQUEST") == "v-0"
    )
    assert routed(table, "h", "/b%2f", path_with_escaped_slashes_action=2) is None
    with pytest.raises(UnsupportedFeatureError):
        routed(table, "h", "/b", path_with_escaped_slashes_action="UNESCAPE_AND_REDIRECT")
    with_options = RouteTable.from_proto(
        config(vh("v", ["*"], {"path": "/b"})), normalize_path=True, merge_slashes=True
    )
    assert routed(with_options, "h", "/x/..//b") == "v-0"


def test_runtime_fraction_zero_and_hundred() -> None:
    def frac(n: int) -> dict[str, Any]:
        return {"default_value": {"numerator": n, "denominator": "HUNDRED"}, "runtime_key": "k"}

    table = RouteTable.from_proto(
        config(
            vh(
                "v",
                ["*"],
                {"prefix": "/", "runtime_fraction": frac(0)},
                {"prefix": "/", "runtime_fraction": frac(100)},
            )
        )
    )
    assert routed(table, "h", "/") == "v-1"
    with pytest.raises(UnsupportedFeatureError) as err:
        RouteTable.from_proto(config(vh("v", ["*"], {"prefix": "/", "runtime_fraction": frac(50)})))
    assert err.value.errors()[0].path == "virtual_hosts[0].routes[0].match.runtime_fraction"


def test_errors_name_every_field() -> None:
    with pytest.raises(ConfigError) as err:
        RouteTable.from_proto(
            config(
                vh("a", ["x.com"], {"safe_regex": {"regex": "(a"}}),
                vh("b", ["X.com"], {"path_separated_prefix": "/a/"}),
            )
        )
    paths = {p.path for p in err.value.errors()}
    assert paths == {
        "virtual_hosts[0].routes[0].match.safe_regex.regex",
        "virtual_hosts[1].domains[0]",
        "virtual_hosts[1].routes[0].match.path_separated_prefix",
    }
    assert not isinstance(err.value, UnsupportedFeatureError)


def test_unsupported_fields_are_never_ignored() -> None:
    with pytest.raises(UnsupportedFeatureError) as err:
        RouteTable.from_proto(
            config(
                vh("a", ["*"], {"prefix": "/", "tls_context": {"presented": True}}),
                vhds={"config_source": {"ads": {}}},
            )
        )
    assert {p.path for p in err.value.errors()} == {
        "vhds",
        "virtual_hosts[0].routes[0].match.tls_context",
    }
    # A field number this decoder has never heard of (a newer API) is reported, not dropped.
    raw = config(vh("a", ["*"], {"prefix": "/"})).SerializeToString() + b"\xf8\x06\x01"
    with pytest.raises(UnsupportedFeatureError) as err2:
        RouteTable.from_proto(raw)
    assert err2.value.errors()[0].path == "<field 111>"


def test_route_batch_matches_route() -> None:
    table = RouteTable.from_proto(
        config(vh("a", ["a.com"], {"prefix": "/x"}), vh("b", ["*"], {"path": "/y"}))
    )
    authorities = ["a.com", "a.com", "b", "b"]
    paths = ["/x1", "/y", "/y", "/y/"]
    got = table.route_batch(authorities, paths)
    assert got.dtype == np.int32
    assert got.tolist() == [0, -1, 1, -1]
    assert table.route_batch(np.array(authorities), np.array(paths)).tolist() == got.tolist()
    assert table.route_batch("b", ["/y", "/x"]).tolist() == [1, -1]
    with pytest.raises(ValueError, match="same length"):
        table.route_batch(["a"], [])
    # numpy 'S' (UTF-8 bytes) and 'U' arrays, mixed with lists and scalars.
    for dtype in ("S", "U"):
        got2 = table.route_batch(np.array(authorities, dtype=dtype), np.array(paths, dtype=dtype))
        assert got2.tolist() == got.tolist()
    assert table.route_batch("b", np.array(["/y", "/x"], dtype="S")).tolist() == [1, -1]
    assert table.route_batch(["b"], np.array(["/y"]), ["GET"]).tolist() == [1]
    # Non-ASCII survives both encodings.
    uni = RouteTable.from_proto(config(vh("u", ["*"], {"path": "/caf\u00e9"})))
    enc = np.array(["/caf\u00e9".encode(), b"/cafe"], dtype="S")
    assert uni.route_batch("h", enc).tolist() == [0, -1]
    assert uni.route_batch("h", np.array(["/caf\u00e9", "/cafe"])).tolist() == [0, -1]
    # Byte order, strides and empty columns.
    swapped = np.array(["/caf\u00e9", "/cafe"], dtype=">U5")
    assert uni.route_batch("h", swapped).tolist() == [0, -1]
    assert uni.route_batch("h", np.array(["/caf\u00e9", "/x", "/cafe"])[::2]).tolist() == [0, -1]
    assert uni.route_batch("h", np.array([], dtype="S")).tolist() == []
    assert uni.route_batch([], []).tolist() == []
    with pytest.raises(ValueError, match=r"paths\[0\] is not valid UTF-8"):
        uni.route_batch("h", np.array([b"/\xff"], dtype="S"))
    with pytest.raises(TypeError, match=r"paths\[1\] must be str"):
        table.route_batch("h", ["/x", None])
    with pytest.raises(ValueError, match="one-dimensional"):
        table.route_batch("h", np.array([["/x"]]))


def test_explain_says_why() -> None:
    table = RouteTable.from_proto(
        config(
            vh(
                "v",
                ["*.com"],
                {"prefix": "/a", "headers": [{"name": "x-a", "present_match": True}]},
                {"prefix": "/"},
            )
        )
    )
    e = table.explain("x.com", "/a")
    assert e["virtual_host"] == "v"
    assert e["virtual_host_reason"] == 'longest suffix wildcard "*.com"'
    routes = e["routes"]
    assert isinstance(routes, list)
    assert routes[0]["reason"] == 'header "x-a" present failed'
    assert e["route_index"] == 1
    assert table.explain("x.org", "/")["virtual_host"] is None


def test_actions_are_decoded_and_kept_whole() -> None:
    msg = json_format.ParseDict(
        {
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/w"},
                            "route": {
                                "weighted_clusters": {
                                    "clusters": [
                                        {"name": "a", "weight": 80},
                                        {"name": "b", "weight": 20},
                                    ]
                                },
                                "timeout": "2.5s",
                                "retry_policy": {"retry_on": "5xx", "num_retries": 3},
                                "hash_policy": [{"header": {"header_name": "x"}}],
                            },
                        },
                        {"match": {"prefix": "/r"}, "redirect": {"https_redirect": True}},
                        {
                            "match": {"prefix": "/d"},
                            "direct_response": {"status": 503, "body": {"inline_string": "no"}},
                        },
                    ],
                }
            ]
        },
        route_pb2.RouteConfiguration(),
    )
    table = RouteTable.from_proto(msg.SerializeToString())
    w, r, d = (m.action for m in table.routes)
    assert w["weighted_clusters"] == (("a", 80), ("b", 20))
    assert (w["timeout"], w["retry_on"], w["num_retries"]) == (2.5, "5xx", 3)
    # What we do not decode (hash_policy here) is still in the action's bytes.
    action = route_components_pb2.RouteAction.FromString(w["proto"])  # type: ignore[arg-type]
    assert action.hash_policy[0].header.header_name == "x"
    assert (r["kind"], r["scheme_redirect"], r["response_code"]) == ("redirect", "https", 301)
    assert (d["kind"], d["status"], d["body"]) == ("direct_response", 503, b"no")
    # The match object is frozen and its action dict is a copy.
    w["cluster"] = "mutated"
    assert table.routes[0].action["cluster"] is None
    with pytest.raises(AttributeError):
        table.routes[0].name = "x"  # type: ignore[misc]


def test_vhost_header_chooses_the_virtual_host() -> None:
    table = RouteTable.from_proto(
        config(
            vh("a", ["a.com"], {"prefix": "/"}),
            vh("b", ["b.com"], {"prefix": "/"}),
            vh("d", ["*"], {"prefix": "/"}),
            vhost_header="x-vhost",
        )
    )
    assert routed(table, "a.com", "/", headers={"X-VHost": "B.COM"}) == "b-0"
    assert (
        routed(table, "a.com", "/", headers=[("x-vhost", "b.com"), ("x-vhost", "a.com")]) == "b-0"
    )
    # No header, no virtual host (not even "*"), as Envoy 1.40 answers 404.
    assert routed(table, "a.com", "/") is None
    assert routed(table, "a.com", "/", headers={"x-vhost": ""}) == "d-0"


def test_host_and_pseudo_header_matchers() -> None:
    table = RouteTable.from_proto(
        config(
            vh(
                "v",
                ["*"],
                {"prefix": "/h", "headers": [{"name": "host", "present_match": True}]},
                {
                    "prefix": "/m",
                    "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
                },
                {
                    "prefix": "/a",
                    "headers": [{"name": ":authority", "string_match": {"exact": "a.com"}}],
                },
            )
        )
    )
    # Envoy finds HTTP/1's Host under "host" and ":authority" (checked against Envoy 1.40).
    assert routed(table, "a.com:80", "/h") == "v-0"
    assert routed(table, "a.com", "/m", method="POST") == "v-1"
    assert routed(table, "a.com", "/m") is None
    assert routed(table, "a.com:80", "/a", strip_any_host_port=True) == "v-2"
