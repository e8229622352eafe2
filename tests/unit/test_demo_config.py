"""The demo derives what it checks from its config, and fails first, with the cause, when an
address it needs is taken (no Envoy is started: these run before anything else)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import yaml
from tests._cli import main

from meshcore.config import load
from meshcore.demo import EXAMPLES, DemoMesh
from meshcore.demo.expect import expectations
from meshcore.demo.mesh import workloads_of


def _copy_with_weights(tmp: Path, v1: int, v2: int) -> Path:
    config = tmp / "mesh"
    shutil.copytree(EXAMPLES, config)
    path = config / "traffic.yaml"
    path.write_text(path.read_text().replace("weight: 90", f"weight: {v1}").replace(
        "weight: 10", f"weight: {v2}"))  # fmt: skip
    return config


def test_expectations_of_the_examples() -> None:
    e = expectations(load(EXAMPLES))
    assert e.canary is not None
    assert e.canary.weights == {"v1": 90, "v2": 10}
    assert e.canary.label == "90/10"
    assert e.canary.even() == {"v1": 50, "v2": 50}
    assert e.header is not None
    assert e.header.label == "x-user: tester → v2"


def test_expectations_follow_the_config(tmp_path: Path) -> None:
    e = expectations(load(_copy_with_weights(tmp_path, 70, 30)))
    assert e.canary is not None
    assert e.canary.label == "70/30"
    assert e.canary.share("v2") == pytest.approx(0.3)


def test_live_change_rewrites_the_configs_own_route(tmp_path: Path) -> None:
    config = _copy_with_weights(tmp_path, 70, 30)
    dm = DemoMesh(config, tmp_path / "work")
    try:
        e = expectations(dm.mesh)
        assert e.canary is not None
        dm.set_canary(e.canary, e.canary.even())
        after = expectations(load(dm.config))
        assert after.canary is not None
        assert after.canary.weights == {"v1": 50, "v2": 50}
        assert "weight: 30" in (config / "traffic.yaml").read_text()  # the user's copy untouched
        docs = list(yaml.safe_load_all((dm.config / "traffic.yaml").read_text()))
        assert [d["kind"] for d in docs][:2] == ["VirtualService", "DestinationRule"]
    finally:
        dm.zipkin.stop()


def test_demo_fails_first_when_an_address_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frontend = next(w for w in workloads_of(load(EXAMPLES)) if w.kind == "frontend")
    with socket.socket() as s:
        s.bind((frontend.app_address, frontend.port))
        s.listen()
        code = main(["demo", "--workdir", str(tmp_path / "work")])
    err = capsys.readouterr().err
    assert code == 1
    taken = f"{frontend.app_address}:{frontend.port} (frontend-1's app): Address already in use"
    assert taken in err, err
    assert not (tmp_path / "work" / "control-plane.log").exists()  # nothing was started
