"""Properties of RouteTable that need no Envoy: the route index never changes the answer of
Envoy's linear first-match scan (``explain`` scans linearly), ``route_batch`` agrees with
``route``, and per-call options agree with table options."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore import ConfigError, RouteTable


def _routegen() -> ModuleType:
    # The Envoy differential test's generator (tests/envoy is not a package).
    path = Path(__file__).parents[1] / "envoy" / "routegen.py"
    spec = importlib.util.spec_from_file_location("meshcore_tests_routegen", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


routegen = _routegen()


def _compile(data: bytes) -> RouteTable | ConfigError:
    try:
        return RouteTable.from_proto(data)
    except ConfigError as e:
        return e


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_index_batch_and_options_agree_with_linear_scan(seed: int) -> None:
    gen = routegen.generate(random.Random(seed), 40, 0)
    msg = json_format.ParseDict(gen.route_config, route_pb2.RouteConfiguration())
    table = RouteTable.from_proto(msg, listener_port=8080, **gen.hcm_options)
    plain = RouteTable.from_proto(msg)
    cases = [
        routegen.Case(c.authority.replace("{LPORT}", "8080"), c.path, c.method, c.headers)
        for c in gen.cases
    ]
    batch = table.route_batch(
        [c.authority for c in cases],
        [c.path for c in cases],
        [c.method for c in cases],
        [c.headers for c in cases],
    )
    for case, b in zip(cases, batch, strict=True):
        m = table.route(case.authority, case.path, case.method, case.headers)
        got = -1 if m is None else m.route_index
        scanned = table.explain(case.authority, case.path, case.method, case.headers)
        linear = scanned["route_index"]
        assert got == (-1 if linear is None else linear), (case, scanned)
        assert got == int(b)
        per_call = plain.route(
            case.authority,
            case.path,
            case.method,
            case.headers,
            listener_port=8080,
            **{k: v for k, v in gen.hcm_options.items()},
        )
        assert (-1 if per_call is None else per_call.route_index) == got


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    # Whatever the bytes, the answer is a table or a ConfigError naming where: never a panic.
    result = _compile(data)
    if isinstance(result, ConfigError):
        assert result.errors()


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.data())
def test_corrupted_configs_never_crash(seed: int, data: st.DataObject) -> None:
    gen = routegen.generate(random.Random(seed), 1, 0)
    raw = bytearray(
        json_format.ParseDict(gen.route_config, route_pb2.RouteConfiguration()).SerializeToString()
    )
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[i] = data.draw(st.integers(min_value=0, max_value=255))
    result = _compile(bytes(raw))
    if isinstance(result, ConfigError):
        assert all(p.message for p in result.errors())
    else:
        result.route("a.com", "/api/v1?q=1", "GET", {"x-a": "v"})


# Regexes are indexed by their literal prefix (a regex whose matches all start with "/a/b/" is
# proposed only for paths under it): pieces with and without literal starts, case-insensitive
# flags, alternations, optional groups, non-ASCII text.
_REGEX_PIECES = ["a", "b", "api", "v1", "/", "x/", r"\d+", "[a-z]+", ".*", "(/.*)?", "(?i)API",
                 "(a|b)", "[^/]+", r"\.", "é", "(?:ab|ac)/", "A", "a?", "(api|apx)/"]  # fmt: skip
_PATH_PIECES = ["/", "a", "b", "api", "API", "apx", "v1", "x", "1", "23", ".", "é", "ab", "ac"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["safe_regex", "safe_regex", "prefix", "path"]),
            st.lists(st.sampled_from(_REGEX_PIECES), min_size=0, max_size=5),
        ),
        min_size=1,
        max_size=8,
    ),
    st.lists(
        st.lists(st.sampled_from(_PATH_PIECES), min_size=0, max_size=6).map(
            lambda p: "/" + "".join(p)
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_regex_prefix_index_agrees_with_linear_scan(
    routes: list[tuple[str, list[str]]], paths: list[str]
) -> None:
    matches = []
    for kind, pieces in routes:
        text = "/" + "".join(pieces)
        if kind == "safe_regex":
            matches.append({"safe_regex": {"regex": text}})
        else:  # literal routes among the regexes: their order decides
            matches.append({kind: text.replace("\\", "").replace("(", "").replace(")", "")})
    config = {
        "virtual_hosts": [
            {
                "name": "vh",
                "domains": ["*"],
                "routes": [{"match": m, "route": {"cluster": "c"}} for m in matches],
            }
        ]
    }
    table = RouteTable.from_proto(json_format.ParseDict(config, route_pb2.RouteConfiguration()))
    for path in paths:
        m = table.route("h", path)
        linear = table.explain("h", path)["route_index"]
        assert (None if m is None else m.route_index) == linear, (matches, path)


# Prefixes ending in '/' and path-separated prefixes are proven by the trie node a lookup reaches
# (no second check of the route) when they need nothing but the path; the same paths with a
# header condition, a gRPC condition or a query parameter must still be checked in full, and a
# case-insensitive or regex route before them still wins.
_LITERAL_PIECES = ["/", "//", "a", "b", "ab", "a/", "b/", "/a/", "é/", "A/"]
_REQUEST_PIECES = ["/", "//", "a", "b", "ab", "A", "é", "?q=/a/", ";p=1", "x"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["prefix", "prefix", "path_separated_prefix", "path", "safe_regex"]),
            st.lists(st.sampled_from(_LITERAL_PIECES), min_size=0, max_size=4),
            st.sampled_from(["", "", "header", "grpc", "query", "ignore_case"]),
        ),
        min_size=1,
        max_size=10,
    ),
    st.lists(
        st.lists(st.sampled_from(_REQUEST_PIECES), min_size=0, max_size=6).map(
            lambda p: "/" + "".join(p)
        ),
        min_size=1,
        max_size=20,
    ),
    st.booleans(),
)
def test_proven_prefixes_agree_with_linear_scan(
    routes: list[tuple[str, list[str], str]], paths: list[str], params: bool
) -> None:
    matches = []
    for kind, pieces, extra in routes:
        text = "/" + "".join(pieces)
        if kind == "path_separated_prefix":
            text = text.rstrip("/") or "/a"  # it may not end with '/'
        m: dict[str, object] = {kind: {"regex": text + ".*"} if kind == "safe_regex" else text}
        if extra == "header":
            m["headers"] = [{"name": "x-v", "string_match": {"exact": "1"}}]
        elif extra == "grpc":
            m["grpc"] = {}
        elif extra == "query":
            m["query_parameters"] = [{"name": "q", "present_match": True}]
        elif extra == "ignore_case" and kind != "safe_regex":
            m["case_sensitive"] = False
        matches.append(m)
    config = {
        "ignore_path_parameters_in_path_matching": params,
        "virtual_hosts": [
            {
                "name": "vh",
                "domains": ["*"],
                "routes": [{"match": m, "route": {"cluster": "c"}} for m in matches],
            }
        ],
    }
    table = RouteTable.from_proto(json_format.ParseDict(config, route_pb2.RouteConfiguration()))
    # Besides the drawn paths, each route's own text and its neighbours: itself, longer, a
    # sibling in its last segment, one byte shorter, under it.
    near = []
    for _, pieces, _ in routes:
        text = "/" + "".join(pieces)
        parent = text[: text.rfind("/") + 1]
        near += [text, text + "x", text + "/x", parent + "zz", parent + "zz/x", text[:-1] + "/"]
    near += ["*", "x/", "a/b/"]  # no leading slash: no trie node proves anything
    for path in paths + near:
        for headers in (None, {"x-v": "1", "content-type": "application/grpc"}):
            m = table.route("h", path, headers=headers)
            linear = table.explain("h", path, headers=headers)["route_index"]
            assert (None if m is None else m.route_index) == linear, (matches, path, headers)
