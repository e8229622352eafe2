"""Any malformed document yields ConfigError (every problem with a message and a field path)
or warnings: never another exception, whatever the YAML holds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcore.config import load_objects, validate, validate_object
from meshcore.config.loader import parse_yaml
from meshcore.errors import ConfigError, ConfigProblem

EXAMPLES = Path(__file__).parents[2] / "tests" / "conformance" / "config" / "valid"
SEEDS: list[dict[str, Any]] = [
    d
    for f in sorted(EXAMPLES.glob("*.yaml"))
    for d in yaml.safe_load_all(f.read_text())
    if isinstance(d, dict) and d.get("kind") != "Widget"
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["*", "", "foo.*", "1s", "-1", "STRICT", "/(a)\\1", "::1", "a" * 300]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), children, max_size=4),
    ),
    max_leaves=12,
)


def paths_of(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths_of(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths_of(doc)))
        if not path:
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return doc


def check(problems_or_error: Any) -> None:
    for p in problems_or_error:
        assert p.message
        assert p.severity in ("error", "warning")
        assert "Traceback" not in p.message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_manifests(doc: dict[str, Any]) -> None:
    check(validate_object(doc))
    errors: list[ConfigProblem] = []
    try:
        load_objects([doc])
    except ConfigError as exc:
        errors = list(exc.errors())
        assert errors
    check(errors)
    for p in errors:
        if p.kind:  # a problem inside a known resource names where it is
            assert p.path


@settings(max_examples=200, deadline=None)
@given(values)
def test_arbitrary_documents(doc: Any) -> None:
    check(validate_object(yaml.safe_dump(doc)))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    _docs, problems = parse_yaml(text, "fuzz.yaml")
    check(problems)
    for p in problems:
        assert p.file == "fuzz.yaml"


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_files(tmp_path_factory: Any, data: bytes) -> None:
    f = tmp_path_factory.mktemp("fuzz") / "x.yaml"
    f.write_bytes(data)
    check(validate([f]).problems)
