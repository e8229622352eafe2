"""The agent's and ``meshcore serve``'s CA options without Envoy: bootstrap, token files, CA
state, argument errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from tests._cli import main

from meshcore.ca import CertificateAuthority
from meshcore.ca.service import BootstrapTokens
from meshcore.dataplane.agent import Agent, AgentError
from meshcore.dataplane.bootstrap import ads_bootstrap
from meshcore.xds.controlserver import CAOptions, load_ca, load_tokens

NODE = "sidecar~127.0.10.1~reviews-v1.default~default.svc.cluster.local"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"


def agent(tmp_path: Path, **overrides: object) -> Agent:
    kwargs: dict[str, object] = {
        "node_id": NODE,
        "identity": REVIEWS,
        "xds_address": "127.0.0.1:15010",
        "ca_address": "127.0.0.1:15012",
        "ca_root": CertificateAuthority.generate().trust_bundle_pem(),
        "token": "t" * 20,
        "workdir": tmp_path,
    }
    kwargs.update(overrides)
    return Agent(**kwargs)  # type: ignore[arg-type]


def test_bootstrap_has_ads_and_the_sds_cluster(tmp_path: Path) -> None:
    a = agent(tmp_path, delta=True, metadata={"MESHCORE_APP_ADDRESS": "127.0.10.2"})
    a.sds_address = "unix:/tmp/x/sds.sock"
    boot = a.bootstrap()
    assert boot["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    assert boot["node"]["metadata"] == {
        "MESHCORE_APP_ADDRESS": "127.0.10.2",
        "MESHCORE_TELEMETRY": "otlp",
    }
    clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    sds = clusters["sds-grpc"]
    address = sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"pipe": {"path": "/tmp/x/sds.sock"}}
    xds = clusters["xds-grpc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert xds["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 15010,
    }
    tcp = ads_bootstrap(NODE, "127.0.0.1", 1, sds_address="127.0.0.1:15019")
    tcp_sds = tcp["static_resources"]["clusters"][-1]["load_assignment"]["endpoints"][0]
    assert (
        tcp_sds["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] == 15019
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("xds_address", "localhost", "xds_address: expected HOST:PORT"),
        ("ca_address", "127.0.0.1:99999", "ca_address: expected HOST:PORT"),
        ("envoy_path", "/nonexistent/envoy", "is not an executable file"),
    ],
)
def test_bad_agent_arguments(tmp_path: Path, field: str, value: str, message: str) -> None:
    with pytest.raises(AgentError, match=message):
        agent(tmp_path, **{field: value})


def test_bad_identity_and_node_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="spiffe"):
        agent(tmp_path, identity="reviews")
    # The node id names the workload Istio's metrics report: checked at construction.
    with pytest.raises(ValueError, match="node"):
        agent(tmp_path, node_id="not-a-node-id")


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# bootstrap tokens\n\n{'a' * 20} {REVIEWS}  # reviews\n")
    tokens = BootstrapTokens()
    assert load_tokens(str(path), tokens) == 1
    verified = tokens.verify("a" * 20)
    assert verified is not None
    assert verified.uri == REVIEWS
    path.write_text(f"{'a' * 20} {REVIEWS}\nshort {REVIEWS}\n")
    with pytest.raises(ValueError, match=r"tokens:2: .*16 characters"):
        load_tokens(str(path), BootstrapTokens())
    path.write_text(f"{'a' * 20}\n")
    with pytest.raises(ValueError, match=r"tokens:1: expected 'TOKEN SPIFFE-ID'"):
        load_tokens(str(path), BootstrapTokens())
    path.write_text(f"{'a' * 20} reviews\n")
    with pytest.raises(ValueError, match=r"tokens:1: "):
        load_tokens(str(path), BootstrapTokens())


def test_generated_root_is_kept_in_the_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = load_ca(CAOptions(port=0, state_dir=str(state)))
    assert stat.S_IMODE((state / "ca-key.pem").stat().st_mode) == 0o600
    again = load_ca(CAOptions(port=0, state_dir=str(state)))
    assert again.trust_bundle_pem() == first.trust_bundle_pem()
    # --cacerts takes Istio's plug-in layout and wins over the state dir.
    plugged = CertificateAuthority.generate()
    plugged.save(tmp_path / "cacerts")
    loaded = load_ca(CAOptions(port=0, cacerts=str(tmp_path / "cacerts"), state_dir=str(state)))
    assert loaded.trust_bundle_pem() == plugged.trust_bundle_pem()


def test_serve_cli_ca_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config"
    config.mkdir()
    assert main(["serve", "--config", str(config), "--tokens", "x"]) == 2
    assert "--cacerts and --tokens need --ca-port" in capsys.readouterr().err
    code = main(
        ["serve", "--config", str(config), "--ca-port", "0", "--cacerts", str(tmp_path / "none")]
    )
    assert code == 2
    assert "cannot start the CA" in capsys.readouterr().err


def test_agent_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root.pem"
    root.write_text(CertificateAuthority.generate().trust_bundle_pem())
    args = ["agent", "--node-id", NODE, "--identity", REVIEWS, "--xds-address", "127.0.0.1:1",
            "--ca-address", "127.0.0.1:2", "--ca-root", str(root), "--workdir", str(tmp_path)]  # fmt: skip
    assert main([*args, "--token-file", str(tmp_path / "missing")]) == 2
    assert "cannot read" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("t" * 20)
    assert main([*args, "--token-file", str(token), "--metadata", "novalue"]) == 2
    assert "--metadata: expected KEY=VALUE" in capsys.readouterr().err
    # Nothing listens on the CA's port: the agent says so and exits 1, leaving nothing behind.
    assert main([*args, "--token-file", str(token), "--status-port", "0"]) == 1
    assert "cannot start: UNAVAILABLE" in capsys.readouterr().err
    assert not (tmp_path / "sds.sock").exists()
