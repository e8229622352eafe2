"""The config corpus: every valid file loads cleanly; every invalid file reports exactly the
problems written beside it (``NAME.expected``: one ``SEVERITY LINE: PATH: MESSAGE`` per line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.config import validate
from meshcore.errors import ConfigProblem

HERE = Path(__file__).parent / "config"
VALID = sorted((HERE / "valid").glob("*.yaml"))
INVALID = sorted((HERE / "invalid").glob("*.yaml"))


def render(p: ConfigProblem) -> str:
    return f"{p.severity} {p.line}: {p.path}: {p.message}"


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path.parent)
    report = validate([path.name])
    assert report.errors == (), "\n".join(map(str, report.errors))
    assert report.model is not None
    assert len(report.model) > 0
    expected = path.with_suffix(".warnings")
    want = expected.read_text().splitlines() if expected.exists() else []
    assert [render(p) for p in report.warnings] == want


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path.parent)
    report = validate([path.name])
    assert not report.ok
    assert report.model is None
    got = [render(p) for p in report.problems]
    want = path.with_suffix(".expected").read_text().splitlines()
    assert got == want
    for p in report.problems:
        assert p.file == path.name
        assert p.line > 0


def test_corpus_is_not_empty() -> None:
    assert len(VALID) >= 3
    assert len(INVALID) >= 15
