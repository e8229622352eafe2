"""Fresh virtualenvs with only meshcore-xds's base dependencies (PyYAML, numpy): what a user
gets from ``pip install meshcore-xds`` before any extra."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@dataclass(frozen=True)
class Venv:
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def run(
        self, *args: str, cwd: Path = ROOT, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        # A clean environment: nothing of the test venv leaks in (PYTHONPATH, VIRTUAL_ENV);
        # pip's and TLS settings of the machine do.
        clean = {"PATH": f"{self.path / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
                 "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONWARNINGS": "error"}  # fmt: skip
        for key in ("PIP_CONFIG_FILE", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_FIND_LINKS",
                    "SSL_CERT_FILE", "SSL_CERT_DIR"):  # fmt: skip
            if key in os.environ:
                clean[key] = os.environ[key]
        return subprocess.run(list(args), cwd=cwd, env={**clean, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip

    def meshcore(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.python), "-m", "meshcore", *args, timeout=timeout)


def make_venv(path: Path, *requirements: str) -> Venv:
    """A venv without pip of its own; this interpreter's pip installs into it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    venv = Venv(path)
    if requirements:
        subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv.python), "install", "--quiet",
             "--disable-pip-version-check", *requirements],
            check=True, timeout=600,
        )  # fmt: skip
    return venv


@pytest.fixture(scope="session")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The base dependencies only, and this checkout's ``src`` (with the built extension) on
    the path: a base install without building a wheel."""
    venv = make_venv(tmp_path_factory.mktemp("base") / "venv", *PYPROJECT["dependencies"])
    site = next((venv.path / "lib").glob("python3*/site-packages"))
    (site / "meshcore_src.pth").write_text(str(ROOT / "src") + "\n")
    return venv
