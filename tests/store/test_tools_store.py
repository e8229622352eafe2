"""meshcore analyze --store and x explain --store: the config as a replica reads it from a real
etcd, with the answers the same files give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from meshcore.store import parse_store_url
from meshcore.store.etcd import EtcdClient
from meshcore.tools.analyze import analyze, analyze_store
from tests._cli import main
from tests.store._etcd import EtcdCluster

EXAMPLES = Path(__file__).parents[2] / "examples"

DANGLING = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: dangling, namespace: default}
spec:
  hosts: [dangling.example.com]
  http:
  - route: [{destination: {host: ratings, subset: v9}}]
"""


def test_analyze_store_equals_analyze_of_the_files(
    etcd: EtcdCluster, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = etcd.url(prefix)
    extra = tmp_path / "dangling.yaml"
    extra.write_text(DANGLING)
    assert main(["apply", "-f", str(EXAMPLES), "--store", store]) == 0
    assert main(["apply", "-f", str(extra), "--store", store]) == 0
    capsys.readouterr()
    from_files = analyze([str(EXAMPLES), str(extra)])
    from_store = analyze_store(store)
    # The same messages (sorted by resource: keys stand for files, so the order differs).
    assert sorted((x.code, x.kind, x.name, x.path) for x in from_store.messages) == sorted(
        (x.code, x.kind, x.name, x.path) for x in from_files.messages
    )
    assert ("IST0101", "dangling") in {(x.code, x.name) for x in from_store.messages}
    assert from_store.resources == from_files.resources
    # The command: istioctl's exit code for issues found (warnings count with -o json too).
    assert main(["analyze", "--store", store, "--failure-threshold", "Warning", "-o", "json"]) == 79
    shown = json.loads(capsys.readouterr().out)
    assert any(x["code"] == "IST0101" for x in shown)


def test_a_key_the_store_refuses_is_a_schema_error(
    etcd: EtcdCluster, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = parse_store_url(etcd.url(prefix))
    client = EtcdClient(url.endpoints)
    try:  # another writer puts an invalid resource under the prefix
        client.put(
            f"{url.config_prefix}networking.istio.io/DestinationRule/default/bad",
            b"apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            b"metadata: {name: bad, namespace: default}\nspec: {host: reviews, "
            b"trafficPolicy: {connectionPool: {tcp: {maxConnections: -1}}}}\n",
        )
    finally:
        client.close()
    found = analyze_store(etcd.url(prefix))
    assert [(x.code, x.name) for x in found.messages if x.level == "Error"] == [("IST0106", "bad")]
    assert main(["analyze", "--store", etcd.url(prefix)]) == 79


def test_explain_store(etcd: EtcdCluster, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = etcd.url(prefix)
    assert main(["apply", "-f", str(EXAMPLES), "--store", store]) == 0
    capsys.readouterr()
    args = ["x", "explain", "--proxy", "frontend-1", "--request", "GET http://ratings:9080/admin"]
    assert main([*args, "--store", store, "-o", "json"]) == 0
    from_store = json.loads(capsys.readouterr().out)
    assert main([*args, "--config", str(EXAMPLES), "-o", "json"]) == 0
    from_files = json.loads(capsys.readouterr().out)
    assert from_store["policy_id"] == "ns[default]-policy[ratings-deny-admin]-rule[0]"
    assert {k: from_store[k] for k in ("route", "cluster", "allowed", "policy_id")} == {
        k: from_files[k] for k in ("route", "cluster", "allowed", "policy_id")
    }


def test_unreachable_store_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.envoy._sidecar import free_ports

    [port] = free_ports(1)
    assert main(["analyze", "--store", f"etcd://127.0.0.1:{port}/mesh"]) == 2
    assert "meshcore analyze" in capsys.readouterr().err
    assert main(["analyze"]) == 2


def test_diff_store_previews_an_apply(
    etcd: EtcdCluster, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """diff --store FILE: what apply of FILE would push, per proxy (apply --dry-run's impact);
    the same preview as diff of the directories before and after."""
    import shutil

    store = etcd.url(prefix)
    assert main(["apply", "-f", str(EXAMPLES), "--store", store]) == 0
    change = tmp_path / "change.yaml"  # the canary moves from 90/10 to 50/50
    (reviews,) = [
        d
        for d in yaml.safe_load_all((EXAMPLES / "traffic.yaml").read_text())
        if d["kind"] == "VirtualService" and d["metadata"]["name"] == "reviews"
    ]
    for dest in reviews["spec"]["http"][1]["route"]:
        dest["weight"] = 50
    change.write_text(yaml.safe_dump(reviews))
    capsys.readouterr()
    assert main(["diff", "--store", store, str(change), "-o", "json"]) == 0
    from_store = json.loads(capsys.readouterr().out)
    after = tmp_path / "after"
    shutil.copytree(EXAMPLES, after)
    docs = [
        reviews if d["kind"] == "VirtualService" and d["metadata"]["name"] == "reviews" else d
        for d in yaml.safe_load_all((EXAMPLES / "traffic.yaml").read_text())
    ]
    (after / "traffic.yaml").write_text(yaml.safe_dump_all(docs))
    assert main(["diff", str(EXAMPLES), str(after), "-o", "json"]) == 0
    from_dirs = json.loads(capsys.readouterr().out)
    assert from_store == from_dirs
    assert from_store["touched"] > 0
    assert any("RDS" in p["types"] for p in from_store["by_proxy"])
    # nothing to apply: a usage error (argparse's exit status 2)
    assert main(["diff", "--store", store]) == 2
