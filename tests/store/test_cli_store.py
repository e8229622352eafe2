"""meshcore apply / get / delete against a real etcd."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from meshcore.config import validate
from meshcore.store import parse_store_url
from meshcore.store.etcd import EtcdClient
from tests._cli import main
from tests.envoy._sidecar import free_ports
from tests.store._etcd import EtcdCluster

EXAMPLES = Path(__file__).parents[2] / "examples"

GOOD = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
"""
BAD = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: -1}
"""


def keys(etcd: EtcdCluster, prefix: str) -> list[str]:
    c = EtcdClient(etcd.endpoints)
    try:
        _, kvs = c.range_prefix(prefix + "/")
        return [kv.key.decode() for kv in kvs]
    finally:
        c.close()


def test_apply_writes_every_resource_then_get_and_delete(
    etcd: EtcdCluster, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = etcd.url(prefix)
    assert main(["apply", "-f", str(EXAMPLES), "--store", store, "--dry-run"]) == 0
    assert "created (dry run)" in capsys.readouterr().out
    assert keys(etcd, prefix) == []
    assert main(["apply", "-f", str(EXAMPLES), "--store", store]) == 0
    out = capsys.readouterr().out
    assert "VirtualService default/reviews created" in out
    assert f"{prefix}/networking.istio.io/VirtualService/default/reviews" in keys(etcd, prefix)
    revisions = {kv.split("/")[-1] for kv in keys(etcd, prefix)}
    assert "reviews" in revisions
    # Applied again: unchanged, nothing written.
    assert main(["apply", "-f", str(EXAMPLES), "--store", store]) == 0
    assert "created" not in capsys.readouterr().out
    # get -o yaml gives back what apply takes (with resourceVersion), and the table.
    assert main(["get", "VirtualService", "reviews", "--store", store, "-o", "yaml"]) == 0
    (got,) = list(yaml.safe_load_all(capsys.readouterr().out))
    assert got["metadata"]["resourceVersion"].isdigit()
    assert main(["get", "--store", store, "-o", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "List"
    examples = len(validate([EXAMPLES]).model or ())  # every resource of the examples
    assert len(listed["items"]) == examples
    assert main(["delete", "VirtualService", "reviews", "--store", store]) == 0
    assert "VirtualService default/reviews deleted" in capsys.readouterr().out
    assert main(["delete", "-f", str(EXAMPLES / "security.yaml"), "--store", store]) == 0
    assert len(keys(etcd, prefix)) == examples - 1 - 3


def test_a_batch_with_one_invalid_resource_writes_nothing(
    etcd: EtcdCluster, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "mixed.yaml").write_text(GOOD.replace("name: a", "name: c") + "---\n" + BAD)
    code = main(["apply", "-f", str(tmp_path), "--store", etcd.url(prefix)])
    err = capsys.readouterr().err
    assert code == 1
    assert keys(etcd, prefix) == []
    # The problem with its file and line (the DestinationRule starts on line 10 of mixed.yaml,
    # its maxConnections is on line 17).
    assert f"{tmp_path / 'mixed.yaml'}:17: DestinationRule default/b:" in err
    assert "nothing written" in err


def test_concurrent_applies_of_one_read_one_wins_one_fails(
    etcd: EtcdCluster, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = etcd.url(prefix)
    (tmp_path / "a.yaml").write_text(GOOD)
    assert main(["apply", "-f", str(tmp_path / "a.yaml"), "--store", store]) == 0
    capsys.readouterr()
    assert main(["get", "VirtualService", "a", "--store", store, "-o", "yaml"]) == 0
    read = yaml.safe_load(capsys.readouterr().out)
    # Two writers edit what they read and apply at the same moment.
    for i, host in enumerate(("ratings", "frontend")):
        edited = {**read, "spec": {**read["spec"], "hosts": [host]}}
        (tmp_path / f"edit{i}.yaml").write_text(yaml.safe_dump(edited))
    codes: list[int] = [0, 0]
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait()
        codes[i] = main(["apply", "-f", str(tmp_path / f"edit{i}.yaml"), "--store", store])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [0, 1]
    err = capsys.readouterr().err
    assert "conflict, nothing written" in err
    assert "apply --force" in err
    # --force writes over the moved revision.
    assert main(["apply", "-f", str(tmp_path / "edit0.yaml"), "--store", store, "--force"]) == 0


def test_store_unreachable_and_usage_exit_2(
    prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (port,) = free_ports(1)
    nowhere = f"etcd://127.0.0.1:{port}{prefix}"
    assert main(["apply", "-f", str(tmp_path), "--store", nowhere]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert main(["apply", "-f", str(tmp_path), "--store", "etcd://127.0.0.1:1"]) == 2
    assert main(["apply", "-f", str(tmp_path / "none.yaml"), "--store", nowhere]) == 2
    assert parse_store_url(f"etcd://a:1,b:2{prefix}").endpoints == ("a:1", "b:2")


def test_serve_with_an_unreachable_store_or_mixed_sources_exits_2(
    prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead, xds = free_ports(2)
    store = f"etcd://127.0.0.1:{dead}{prefix}"
    args = ["serve", "--xds-port", str(xds), "--monitoring-port", "0"]
    assert main([*args, "--config", store]) == 2
    assert "cannot read the config store" in capsys.readouterr().err
    assert main([*args, "--config", store, "--config", str(tmp_path)]) == 2
    assert "give it alone" in capsys.readouterr().err
    assert main([*args, "--config", "etcd://127.0.0.1:1"]) == 2
    assert "key prefix" in capsys.readouterr().err
