"""RE2 program-size limits: RouteTable and RbacEngine accept exactly the regexes Envoy accepts,
at Envoy's default limit (100) and at the runtime limit meshcore's bootstrap sets
(``BOOTSTRAP_RUNTIME``: ``re2.max_program_size.error_level`` 32768).

Each case is one pattern near a limit, used as a route's ``safe_regex`` path and in an RBAC
filter's ``url_path``; ``envoy --mode validate`` with the limit in its runtime says whether
Envoy compiles it, and ``max_program_size=`` must make meshcore agree for both engines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _sidecar import http_connection_manager, listener, validate
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from google.protobuf import json_format

from meshcore import ConfigError, RbacEngine, RouteTable
from meshcore.xds.translate import BOOTSTRAP_RUNTIME

pytestmark = pytest.mark.envoy

MESHCORE_LIMIT = int(BOOTSTRAP_RUNTIME["re2.max_program_size.error_level"])

# (pattern, RE2 program size as Envoy 1.40 reports it)
NEAR_100 = [
    ("^[a-z]{98}", 100),
    ("^[a-z]{99}", 101),
    ("[a-z]{96}", 100),
    ("[a-z]{97}", 101),
    ("(?:ab|cd)[a-z]{94}", 102),
]
NEAR_32768 = [
    ("[a-z]{500}", 504),
    ("[a-z]{1000}" * 32 + "[a-z]{764}", 32768),
    ("[a-z]{1000}" * 32 + "[a-z]{765}", 32769),
    ("^" + "[a-z]{1000}" * 32 + "[a-z]{766}", 32768),
    ("^" + "[a-z]{1000}" * 32 + "[a-z]{767}", 32769),
]
CASES = [(p, size, None) for p, size in NEAR_100] + [
    (p, size, MESHCORE_LIMIT) for p, size in NEAR_100 + NEAR_32768
]


def route_config(pattern: str) -> dict[str, Any]:
    return {
        "name": "r",
        "virtual_hosts": [
            {
                "name": "v",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"safe_regex": {"regex": pattern}},
                        "direct_response": {"status": 200},
                    }
                ],
            }
        ],
    }


def rbac_filter(pattern: str) -> dict[str, Any]:
    return {
        "rules": {
            "action": "ALLOW",
            "policies": {
                "p": {
                    "permissions": [{"url_path": {"path": {"safe_regex": {"regex": pattern}}}}],
                    "principals": [{"any": True}],
                }
            },
        }
    }


def bootstrap(pattern: str, limit: int | None) -> dict[str, Any]:
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            **rbac_filter(pattern),
        },
    }
    boot: dict[str, Any] = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                listener(
                    "l",
                    [
                        {
                            "filters": [
                                http_connection_manager(route_config(pattern), http_filters=[rbac])
                            ]
                        }
                    ],
                )
            ]
        },
    }
    if limit is not None:
        layer = {"re2.max_program_size.error_level": limit}
        boot["layered_runtime"] = {"layers": [{"name": "static", "static_layer": layer}]}
    return boot


def meshcore_accepts(pattern: str, limit: int | None) -> tuple[bool, bool]:
    kw = {} if limit is None else {"max_program_size": limit}
    verdicts = []
    for build in (
        lambda: RouteTable.from_proto(
            json_format.ParseDict(route_config(pattern), route_pb2.RouteConfiguration()), **kw
        ),
        lambda: RbacEngine.from_proto(
            json_format.ParseDict(rbac_filter(pattern), rbac_pb2.RBAC()), **kw
        ),
    ):
        try:
            build()
            verdicts.append(True)
        except ConfigError as e:
            verdicts.append(False)
            why = str(e)
            assert "program size" in why, why
    return verdicts[0], verdicts[1]


@pytest.mark.parametrize(
    ("pattern", "size", "limit"),
    CASES,
    ids=[f"{size}-under-{lim or 100}" for _, size, lim in CASES],
)
def test_program_size_limit_as_envoy(
    pattern: str, size: int, limit: int | None, tmp_path: Path
) -> None:
    proc = validate(bootstrap(pattern, limit), tmp_path)
    envoy_ok = proc.returncode == 0
    effective = 100 if limit is None else limit
    # The sizes are Envoy's own: the case sits where it claims, on its side of the limit.
    assert envoy_ok == (size <= effective), proc.stdout + proc.stderr
    if not envoy_ok:
        assert "program size" in proc.stdout + proc.stderr
    assert meshcore_accepts(pattern, limit) == (envoy_ok, envoy_ok)
