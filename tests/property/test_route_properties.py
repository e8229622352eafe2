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
