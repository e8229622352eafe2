"""meshcore diff: the preview, and the preview against what a real control plane sends its
proxies (ADS streams) after the same change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from meshcore.config import validate
from meshcore.dataplane.plane import DataPlane
from meshcore.tools.diff import preview, proxies_of
from meshcore.xds import types
from tests._cli import main
from tests.envoy._sidecar import control_plane_in_thread, free_port, wait_for

from .conftest import EXAMPLES

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-from-frontend, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/frontend]}}]}]
"""


def change(config: Path) -> None:
    """A longer timeout for reviews (every sidecar's routes) and a policy on reviews (only the
    reviews workloads' inbound listeners)."""
    traffic = config / "traffic.yaml"
    traffic.write_text(traffic.read_text().replace("timeout: 2s", "timeout: 3s"))
    (config / "policy.yaml").write_text(POLICY)


def copy_examples(to: Path) -> Path:
    shutil.copytree(EXAMPLES, to, symlinks=False)
    return to


def test_preview(tmp_path: Path) -> None:
    old = copy_examples(tmp_path / "old")
    new = copy_examples(tmp_path / "new")
    change(new)
    a, b = validate([str(old)]).model, validate([str(new)]).model
    assert a is not None
    assert b is not None
    p = preview(a, b)
    assert len(p.proxies) == 5
    assert p.every_proxy
    by = {d.node_id.split("~")[2]: d for d in p.proxies}
    for name, d in by.items():
        assert d.types["RDS"].changed == ("9080",)
        lds = d.types["LDS"]
        assert bool(lds) is name.startswith("reviews"), (name, lds)
        assert not d.types["CDS"]
        assert not d.types["EDS"]
    assert by["reviews-v1-1.default"].types["LDS"].changed == ("127.0.20.1_9080",)
    assert p.push_seconds == pytest.approx(5 * 0.00013)
    assert not preview(a, a).touched


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = copy_examples(tmp_path / "old")
    new = copy_examples(tmp_path / "new")
    change(new)
    assert main(["diff", str(old), str(new), "-o", "json", "--push-cost-ms", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["proxies"], data["touched"], data["every_proxy"]) == (5, 5, True)
    assert data["estimated_push_seconds"] == pytest.approx(0.005)
    assert main(["diff", str(old), str(new)]) == 0
    assert "warning: this change touches every proxy" in capsys.readouterr().out
    assert main(["diff", str(old), str(tmp_path / "nope")]) == 2


def held(dp: DataPlane) -> dict[str, dict[str, bytes]]:
    return {types.SHORT_NAMES[url]: {n: raw for n, (_, raw) in by.items()}
            for url, by in dp.ads.resources.items()}  # fmt: skip


def test_preview_matches_what_the_control_plane_sends(tmp_path: Path) -> None:
    config = copy_examples(tmp_path / "config")
    old = validate([str(config)]).model
    assert old is not None
    nodes = proxies_of(old)
    with control_plane_in_thread([str(config)], xds_port=free_port()) as (_, server):
        planes = {n: DataPlane.connect(f"127.0.0.1:{server.ads_port}", node_id=n) for n in nodes}
        try:
            before = {n: held(dp) for n, dp in planes.items()}
            change(config)
            new = validate([str(config)]).model
            assert new is not None
            expected = {d.node_id: d for d in preview(old, new).proxies}

            def received() -> dict[str, dict[str, tuple[set[str], set[str], set[str]]]]:
                out = {}
                for n, dp in planes.items():
                    now, was = held(dp), before[n]
                    out[n] = {
                        k: ({x for x in now.get(k, {}) if x not in was.get(k, {})},
                            {x for x in now.get(k, {}) if x in was.get(k, {})
                             and now[k][x] != was[k][x]},
                            {x for x in was.get(k, {}) if x not in now.get(k, {})})
                        for k in ("CDS", "EDS", "LDS", "RDS")
                    }  # fmt: skip
                return out

            want = {n: {k: (set(t.added), set(t.changed), set(t.removed))
                        for k, t in d.types.items() if k != "SDS"}
                    for n, d in expected.items()}  # fmt: skip
            wait_for(lambda: received() == want, "the proxies to receive the previewed change")
            assert received() == want
            for n, dp in planes.items():  # and the full sets they hold are the preview's
                assert {k: set(v) for k, v in held(dp).items() if k != "SDS"} == {
                    k: set(v) for k, v in expected[n].after.items() if k != "SDS"
                }
        finally:
            for dp in planes.values():
                dp.close()


def test_a_workload_a_gateway_selects_is_a_router(tmp_path: Path) -> None:
    config = copy_examples(tmp_path / "config")
    (config / "gw-workload.yaml").write_text("""
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ingress-1, namespace: default}
spec: {address: 127.0.40.1, labels: {istio: ingressgateway}, serviceAccount: ingress}
""")
    mesh = validate([str(config)]).model
    assert mesh is not None
    nodes = proxies_of(mesh)
    assert "router~127.0.40.1~ingress-1.default~default.svc.cluster.local" in nodes
    assert sum(n.startswith("sidecar~") for n in nodes) == 5
