"""Hostile config input (issue 11, items 1-5): every file that once crashed ``validate`` and
``serve`` (SIGSEGV, exit 70), or was silently read in part, is refused with an error at its
file and line, through the CLI and the Python API; legal oddities (a byte order mark, UTF-16,
CR LF) are read whole."""

from __future__ import annotations

import codecs
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshcore._core import yaml as core_yaml
from meshcore.config import load, load_objects, validate, validate_object
from meshcore.config.loader import MAX_FILE_BYTES
from meshcore.errors import ConfigError
from tests._cli import main
from tests.hostile._config_helpers import DENY, HOSTILE, SERVICE, Hostile

CASES = {h.name: h for h in HOSTILE}


def _write(tmp_path: Path, case: Hostile, suffix: str = ".yaml") -> Path:
    path = tmp_path / f"{case.name}{suffix}"
    path.write_bytes(case.data)
    return path


def _at_line(case: Hostile, line: int) -> bool:
    return line == case.line if case.exact else line >= case.line


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
def test_validate_cli_refuses_with_file_and_line(
    tmp_path: Path, case: Hostile, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, case)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "internal error" not in err
    located = [
        line
        for line in err.splitlines()
        if line.startswith(f"error: {path}:") and case.words in line
    ]
    assert located, err
    where = int(located[0].split(f"{path}:", 1)[1].split(":", 1)[0])
    assert _at_line(case, where), (where, err)


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
def test_python_api_reports_each_problem_at_its_line(tmp_path: Path, case: Hostile) -> None:
    path = _write(tmp_path, case)
    report = validate([path])
    assert not report.ok
    assert report.model is None
    assert all(p.file == str(path) and p.line >= 1 for p in report.errors), report.errors
    assert any(case.words in str(p) and _at_line(case, p.line) for p in report.errors), [
        str(p) for p in report.errors
    ]
    with pytest.raises(ConfigError):
        load(path)


@pytest.mark.parametrize("name", ["nul", "deep-block-seq", "deep-flow-map", "duration-310-digits"])
def test_validate_process_exits_1_never_crashes(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, CASES[name])
    done = subprocess.run(
        [sys.executable, "-m", "meshcore", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, (done.returncode, done.stderr)  # not -11 (SIGSEGV), not 70
    assert f"{path}:" in done.stderr


def test_nul_no_longer_drops_what_follows(tmp_path: Path) -> None:
    """Without its NUL the file is valid and holds the DENY policy; with it, it is refused
    (the old reader stopped at the NUL and said valid, without the policy)."""
    case = CASES["nul"]
    clean = tmp_path / "clean.yaml"
    clean.write_bytes(case.data.replace(b"\x00", b" "))
    mesh = load(clean)
    assert [p.name for p in mesh.authorization_policies] == ["deny-admin"]
    assert not validate([_write(tmp_path, case)]).ok


def test_the_rust_reader_never_raises_on_hostile_text() -> None:
    for case in HOSTILE:
        try:
            text = case.data.decode()
        except UnicodeDecodeError:
            continue
        _docs, problems = core_yaml.parse_yaml(text)
        assert all(line >= 1 for line, *_ in problems), (case.name, problems)


# --- legal input is read whole ---------------------------------------------------------------

TWO = SERVICE.format(name="a") + "---\n" + DENY


@pytest.mark.parametrize(
    "data",
    [
        codecs.BOM_UTF8 + TWO.encode(),
        codecs.BOM_UTF8 + TWO.replace("\n", "\r\n").encode(),
        TWO.replace("\n", "\r").encode(),
        codecs.BOM_UTF16_LE + TWO.encode("utf-16-le"),
        codecs.BOM_UTF16_BE + TWO.encode("utf-16-be"),
        codecs.BOM_UTF32_LE + TWO.encode("utf-32-le"),
        (
            SERVICE.format(name="esc").replace("esc}", 'esc, annotations: {t: "\t\\0\\x01é💡"}}')
            + "---\n"
            + TWO
        ).encode(),
    ],
    ids=["bom", "bom-crlf", "cr", "utf16le", "utf16be", "utf32le", "escapes"],
)
def test_legal_encodings_and_line_breaks_are_read_whole(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_bytes(data)
    report = validate([path])
    assert report.ok, [str(p) for p in report.problems]
    assert report.model is not None
    escapes = b"annotations" in data
    assert len(report.model) == 3 if escapes else 2
    if escapes:
        assert report.model.resources[0].annotations["t"] == "\t\0\x01é💡"
        return
    # Lines are those of the text: the policy's action is on line 11.
    path.write_bytes(data.replace("DENY".encode(_encoding(data)), "NOPE".encode(_encoding(data))))
    [problem] = validate([path]).errors
    assert problem.line == 11, problem


def _encoding(data: bytes) -> str:
    for bom, name in ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                      (codecs.BOM_UTF16_BE, "utf-16-be")):  # fmt: skip
        if data.startswith(bom):
            return name
    return "utf-8"


def test_non_utf8_is_reported_at_its_real_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(TWO.replace("/admin", "/caf\u00e9").encode("latin-1"))
    [problem] = validate([path]).errors
    assert problem.line == 12, problem
    assert "column 42" in problem.message, problem
    utf16_bad = codecs.BOM_UTF16_LE + "a: 1\nb: 2\n".encode("utf-16-le") + b"\x00\xd8"
    path.write_bytes(utf16_bad)
    [problem] = validate([path]).errors
    assert problem.line == 3, problem
    assert "UTF-16" in problem.message, problem


def test_file_size_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(TWO * 20)
    size = path.stat().st_size
    assert validate([path]).errors  # duplicate names, but read
    report = validate([path], max_file_bytes=size - 1)
    [problem] = report.errors
    assert "larger than the limit" in problem.message
    assert problem.line == 240  # the last
    assert validate([path], max_file_bytes=size).errors[0].message != problem.message
    assert main(["validate", "--max-file-bytes", "1000", str(path)]) == 1
    assert f"{path}:" in capsys.readouterr().err
    # The default limit, on a sparse file (no time spent writing it).
    with path.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    [problem] = validate([path]).errors
    assert "larger than the limit of 67,108,864 bytes" in problem.message
    assert problem.line == 1


def test_duplicate_keys_compare_as_the_dict_would(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(SERVICE.format(name="a") + "status:\n  1: a\n  true: b\n  1.0: c\n")
    report = validate([path])
    assert [(p.line, p.path) for p in report.errors] == [
        (8, "status.true"),
        (9, "status['1']"),
    ], [str(p) for p in report.errors]


def test_forty_thousand_duplicate_keys_are_each_reported(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    keys = "".join(f"    k{i}: v\n" for i in range(40_000))
    path.write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  labels:\n"
        + keys
        + keys
        + "spec: {ports: [{port: 80}]}\n"
    )
    report = validate([path])
    assert len(report.errors) == 40_000
    assert report.errors[0].line == 40_006
    assert report.errors[-1].line == 80_005


def test_mesh_config_file_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "mesh-config.yaml"
    bad.write_bytes(b"accessLogFile: /dev/stdout\ndefaultConfig: {x: '\xff'}\n")
    config = tmp_path / "config"
    config.mkdir()
    assert main(["serve", "--config", str(config), "--mesh-config", str(bad)]) == 1
    assert f"{bad}:2: not UTF-8" in capsys.readouterr().err


def _nested(depth: int) -> Any:
    value: Any = "x"
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_manifests_given_as_python_values_are_depth_limited(depth: int) -> None:
    """The webhook's JSON and ``load_objects`` do not go through the YAML reader: the same
    limit applies (the schema walk and freeze recursed until RecursionError, an internal
    error)."""
    manifest: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "a"},
        "spec": {"host": "a", "trafficPolicy": {"loadBalancer": {"warmup": {}}}},
    }
    lb = manifest["spec"]["trafficPolicy"]["loadBalancer"]
    lb["warmup"] = _nested(depth)  # a free-form field
    [problem] = validate_object(manifest)
    assert problem.message == "nesting deeper than 128 levels"
    assert problem.path.startswith("spec.trafficPolicy.loadBalancer.warmup.a[0]")
    with pytest.raises(ConfigError):
        load_objects([manifest])
    lb["warmup"] = _nested(120)
    assert validate_object(manifest) == []
    assert len(load_objects([manifest])) == 1
