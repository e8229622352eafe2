"""meshcore's validator against Istio's own validation unit-test tables.

Each case in ``istio-validation/*.yaml`` is one row of an Istio Go test table
(``pkg/config/validation/validation_test.go``), transcribed by hand to YAML: the kind, the spec,
Istio's verdict (``valid``) and whether Istio warns (``warning``). A case meshcore cannot yet
agree on carries ``xfail: REASON`` and runs as a strict xfail, so it cannot be forgotten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshcore.config import load_objects, validate_object
from meshcore.errors import ConfigProblem

HERE = Path(__file__).parent / "istio-validation"
API_VERSIONS = {
    "VirtualService": "networking.istio.io/v1",
    "DestinationRule": "networking.istio.io/v1",
    "AuthorizationPolicy": "security.istio.io/v1",
    "PeerAuthentication": "security.istio.io/v1",
    "Gateway": "networking.istio.io/v1",
    "Sidecar": "networking.istio.io/v1",
}
KEYS = {
    "test",
    "case",
    "kind",
    "spec",
    "valid",
    "warning",
    "name",
    "annotations",
    "xfail",
    "xfail_warning",
    "namespace",
    "refused",
}


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in sorted(HERE.glob("*.yaml")):
        for case in yaml.safe_load(path.read_text()):
            assert set(case) <= KEYS, (path.name, case)
            cases.append(case)
    return cases


CASES = load_cases()


def case_id(case: dict[str, Any]) -> str:
    return f"{case['test']}/{case['case']}"


def params(cases: list[dict[str, Any]], reason_key: str) -> list[Any]:
    out = []
    for case in cases:
        reason = case.get(reason_key)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(case, id=case_id(case), marks=marks))
    return out


def manifest(case: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": case.get("name", "some-name"),
        "namespace": case.get("namespace", "some-namespace"),
    }
    if "annotations" in case:
        metadata["annotations"] = case["annotations"]
    return {
        "apiVersion": API_VERSIONS[case["kind"]],
        "kind": case["kind"],
        "metadata": metadata,
        "spec": case["spec"],
    }


def problems(case: dict[str, Any]) -> list[ConfigProblem]:
    return validate_object(manifest(case), source=f"{case_id(case)}.yaml")


@pytest.mark.parametrize("case", params(CASES, "xfail"))
def test_verdict_agrees_with_istio(case: dict[str, Any]) -> None:
    found = problems(case)
    errors = [p for p in found if p.severity == "error"]
    if case.get("refused"):
        # Istio-valid, refused by meshcore on purpose (see the case's reason): with an error
        # saying why, never accepted and ignored.
        assert case["valid"], "a refusal is only recorded for an Istio-valid case"
        assert errors, "meshcore accepts this; the case says it refuses it"
        assert any(case["refused"] in p.message for p in errors), [p.message for p in errors]
    elif case["valid"]:
        assert errors == [], "Istio accepts this; meshcore refuses it"
    else:
        assert errors, "Istio refuses this; meshcore accepts it"
        for p in errors:
            assert p.path, f"an error without a field path: {p}"
            assert p.kind == case["kind"]


# (A case meshcore refuses on purpose has no warning to agree on.)
WARNED = [c for c in CASES if c.get("warning") and not c.get("refused")]


@pytest.mark.parametrize("case", params(WARNED, "xfail_warning"))
def test_istio_warning_is_a_meshcore_warning(case: dict[str, Any]) -> None:
    assert case["valid"]
    assert any(p.severity == "warning" for p in problems(case)), "Istio warns; meshcore is silent"


def test_enough_cases_are_ported() -> None:
    assert len(CASES) >= 150
    assert len({case_id(c) for c in CASES}) == len(CASES), "case ids must be unique"
    assert {c["kind"] for c in CASES} == set(API_VERSIONS)
    assert any(not c["valid"] for c in CASES)
    assert any(c["valid"] for c in CASES)


@pytest.mark.parametrize(
    ("value", "dry_run"), [("true", True), ("1", True), ("T", True), ("false", False), ("0", False)]
)
def test_dry_run_means_what_istio_parses(value: str, dry_run: bool) -> None:
    """Every value Istio accepts for istio.io/dry-run (Go's ParseBool) is read the same way."""
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "ns", "annotations": {"istio.io/dry-run": value}},
        "spec": {"action": "DENY", "rules": [{}]},
    }
    (loaded,) = load_objects([policy]).authorization_policies
    assert loaded.dry_run is dry_run
