"""RouteTable accepts exactly the RouteConfigurations Envoy accepts (``envoy --mode validate``),
except for the features it reports as unsupported."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from _sidecar import http_connection_manager, listener, validate
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from meshcore import ConfigError, RouteTable, UnsupportedFeatureError

pytestmark = pytest.mark.envoy


def envoy_accepts(rc: dict[str, Any], tmp: Path) -> tuple[bool, str]:
    """Whether ``envoy --mode validate`` accepts a listener serving ``rc``, and its complaint."""
    boot = {
        "static_resources": {
            "listeners": [listener("l", [{"filters": [http_connection_manager(rc)]}])]
        }
    }
    proc = validate(boot, tmp)
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


def _vh(
    name: str, domains: list[str], match: dict[str, Any] | None = None, status: int = 200
) -> dict[str, Any]:
    return {
        "name": name,
        "domains": domains,
        "routes": [{"match": match or {"prefix": "/"}, "direct_response": {"status": status}}],
    }


CASES: dict[str, list[dict[str, Any]]] = {
    "duplicate vhost names": [_vh("a", ["x"]), _vh("a", ["y"])],
    "wildcard in the middle": [_vh("a", ["a*b"])],
    "double star": [_vh("a", ["**"])],
    "two star domains": [_vh("a", ["*"]), _vh("b", ["*"])],
    "duplicate domain across case": [_vh("a", ["X.com"]), _vh("b", ["x.COM"])],
    "same suffix twice": [_vh("a", ["*.x"]), _vh("b", ["*.x"])],
    "empty domain": [_vh("a", [""])],
    "status 199": [_vh("a", ["x"], status=199)],
    "status 600": [_vh("a", ["x"], status=600)],
    "ignore_case with regex": [
        _vh(
            "a",
            ["x"],
            {
                "prefix": "/",
                "headers": [
                    {
                        "name": "x",
                        "string_match": {"safe_regex": {"regex": "a"}, "ignore_case": True},
                    }
                ],
            },
        )
    ],
    "header name with space": [_vh("a", ["x"], {"prefix": "/", "headers": [{"name": "x y"}]})],
    "prefix without slash": [_vh("a", ["x"], {"prefix": "abc"})],
    "empty path": [_vh("a", ["x"], {"path": ""})],
    "path_separated_prefix ending in /": [_vh("a", ["x"], {"path_separated_prefix": "/a/"})],
    "path_separated_prefix with ?": [_vh("a", ["x"], {"path_separated_prefix": "/a?b"})],
    "bad regex": [_vh("a", ["x"], {"safe_regex": {"regex": "(a"}})],
    "regex lookahead": [_vh("a", ["x"], {"safe_regex": {"regex": "(?=a)"}})],
    "empty string_match prefix": [
        _vh("a", ["x"], {"prefix": "/", "headers": [{"name": "x", "string_match": {"prefix": ""}}]})
    ],
    "empty header name": [_vh("a", ["x"], {"prefix": "/", "headers": [{"name": ""}]})],
    "empty query name": [_vh("a", ["x"], {"prefix": "/", "query_parameters": [{"name": ""}]})],
}


@pytest.mark.parametrize("name", list(CASES))
def test_accepts_what_envoy_accepts(name: str, tmp_path: Path) -> None:
    rc = {"name": "rc", "virtual_hosts": CASES[name]}
    envoy_ok, why = envoy_accepts(rc, tmp_path)
    try:
        RouteTable.from_proto(json_format.ParseDict(rc, route_pb2.RouteConfiguration()))
        ours_ok = True
    except UnsupportedFeatureError:
        pytest.skip("meshcore reports this as unsupported")
    except ConfigError:
        ours_ok = False
    assert ours_ok == envoy_ok, why


REGEXES = [
    "[a-z]{96}",
    "[a-z]{97}",
    "[a-z]{98}",
    "[a-z]{99}",
    "[a-z]{100}",
    "(a|b){32}",
    "(a|b){33}",
    "(ab){25}",
    r"\d{60}",
    ".{50}",
    ".{99}",
    "(?i)abcdefghij{9}",
    r"/api/(v1|v2)/users/[0-9]{1,10}",
    "(a{10}){5}",
    "(a{10}){10}",
    "(x|yy|zzz){30}",
    "[^/]+/[^/]+/[^/]+",
]


def _random_regexes(count: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    atoms = [
        "a",
        "[a-z]",
        r"\d",
        ".",
        "(ab)",
        "(?:ab)",
        "(a|bc)",
        "[^/]",
        r"\w",
        "é",
        "(?i)x",
        r"\b",
        "^",
        "$",
        "x*",
        "y+",
        "z?",
        "(?:ab|cd|ef)",
    ]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 5)):
            a = rng.choice(atoms)
            if rng.random() < 0.5:
                n = rng.randint(1, 40)
                lo = n if rng.random() < 0.5 else rng.randint(0, n)
                a = f"(?:{a}){{{lo},{n}}}"
            parts.append(a)
        out.append("".join(parts))
    return out


@pytest.mark.parametrize("regex", REGEXES + _random_regexes(40))
def test_regex_program_size_limit(regex: str, tmp_path: Path) -> None:
    """Envoy rejects regexes whose RE2 program exceeds 100 instructions. meshcore computes a
    lower bound: it must never reject one Envoy accepts."""
    rc = {
        "name": "rc",
        "virtual_hosts": [_vh("a", ["x"], {"safe_regex": {"regex": regex}})],
    }
    envoy_ok, why = envoy_accepts(rc, tmp_path)
    try:
        RouteTable.from_proto(json_format.ParseDict(rc, route_pb2.RouteConfiguration()))
        ours_ok = True
    except ConfigError:
        ours_ok = False
    if not ours_ok:
        assert not envoy_ok, f"meshcore rejects {regex!r}, Envoy accepts it"
    # Where the bound is exact (classes and literals repeated, captures), both agree.
    if regex.startswith("[a-z]") or regex.startswith("(a|b)"):
        assert ours_ok == envoy_ok, why
