"""The ``meshcore`` command as a user runs it: exit codes, outputs, and never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
INVALID = ROOT / "tests" / "conformance" / "config" / "invalid"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshcore", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_examples_ok() -> None:
    r = run("validate", "examples/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "valid: 17 resources"
    assert r.stderr == ""


def test_validate_invalid_text() -> None:
    r = run("validate", str(INVALID / "vs-unknown-field.yaml"))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0] == (
        f"error: {INVALID / 'vs-unknown-field.yaml'}:8: VirtualService default/reviews: "
        "spec.http[0].retires: unknown field 'retires' (did you mean 'retries'?)"
    )
    assert lines[-1] == "invalid: 2 errors, 0 warnings"


def test_validate_json() -> None:
    r = run("validate", "-o", "json", "vs-weights.yaml", cwd=INVALID)
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["valid"] is False
    first = out["errors"][0]
    assert first == {
        "message": "weight -20 must not be negative",
        "path": "spec.http[0].route[1].weight",
        "kind": "VirtualService",
        "namespace": "default",
        "name": "weights",
        "file": "vs-weights.yaml",
        "line": 12,
        "severity": "error",
    }


def test_yaml_syntax_error_names_file_and_line() -> None:
    r = run("validate", "yaml-syntax.yaml", cwd=INVALID)
    assert r.returncode == 1
    assert "yaml-syntax.yaml:7: YAML syntax error" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("validate",),
        ("validate", "no/such/dir"),
        ("frobnicate",),
        ("validate", "-o", "xml", "x"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    r = run(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip()


def test_describe_summarises_the_mesh() -> None:
    r = run("describe", "examples/")
    assert r.returncode == 0, r.stderr
    assert "service reviews.default.svc.cluster.local" in r.stdout
    assert "route canary (default/reviews): any request -> v1 90%, v2 10% (timeout 2s)" in r.stdout
    assert "authz DENY default/ratings-deny-admin: 1 rule" in r.stdout


def test_binary_garbage_is_a_clean_error(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_bytes(b"\x00\x01\xff\xfe garbage")
    r = run("validate", str(tmp_path))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr


def test_demo_ships_its_mesh_and_checks_its_arguments(tmp_path: Path) -> None:
    from tests._cli import main

    from meshcore.demo import EXAMPLES, DemoMesh

    # The example mesh is package data (a pip-installed meshcore can run the demo).
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == [
        "gateway.yaml", "security.yaml", "services.yaml", "traffic.yaml", "workloads.yaml",
    ]  # fmt: skip
    assert main(["demo", "--config", str(tmp_path / "missing")]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vs.yaml").write_text("kind: VirtualService\nmetadata: {name: x}\nspec: {htp: []}\n")
    with pytest.raises(ValueError, match="htp"):
        DemoMesh(bad, tmp_path / "work")
    with pytest.raises(ValueError, match="proxy must be one of"):
        DemoMesh(workdir=tmp_path / "work2", proxy="nginx")
    assert main(["demo", "--config", str(bad)]) == 1
