"""``meshcore iptables``: bad options are refused by flag name (never a traceback, never a
rule built from them), and the cleanup text undoes exactly the restore text."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests._cli import main

from meshcore.capture import CaptureConfig, build_rules
from meshcore.capture.config import resolv_conf_servers
from meshcore.capture.rules import cleanup_text, created_chains, restore_text
from meshcore.errors import ConfigError


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-p", "abc"], "--envoy-port: 'abc' is not a port number"),
        (["-z", "70000"], "--inbound-capture-port: '70000' is not a port number"),
        (["-b", "80,http"], "--istio-inbound-ports: 'http' is not a port number"),
        (["-m", "NAT"], "--istio-inbound-interception-mode: 'NAT': expected REDIRECT or TPROXY"),
        (["-i", "10.0.0.1"], "--istio-service-cidr: '10.0.0.1' is not a CIDR"),
        (["-x", "*"], "--istio-service-exclude-cidr: '*' is not allowed"),
        (["-u", "1337\n-A OUTPUT -j DROP"], "--proxy-uid:"),
        (["-k", "eth0 -j DROP"], "--kube-virt-interfaces:"),
        (["-u", ""], "--proxy-uid: at least one UID"),
        (["--redirect-dns", "--dns-servers", "fd00::zz"], "--dns-servers: 'fd00::zz'"),
    ],
)
def test_bad_flags_are_refused_by_name(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["iptables", "--dry-run", *flags]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert "Traceback" not in captured.err


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        CaptureConfig(proxy_port="x", inbound_capture_port="y").validate()
    assert [p.path for p in info.value.errors()] == ["--envoy-port", "--inbound-capture-port"]


def test_dry_run_with_cleanup_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["iptables", "--dry-run", "--cleanup"]) == 2
    assert "--cleanup" in capsys.readouterr().err


def test_dns_servers_default_toresolv_conf_servers(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# c\nnameserver 10.96.0.10\nsearch x\nnameserver fd00::a\n")
    assert resolv_conf_servers(conf) == ["10.96.0.10", "fd00::a"]
    assert resolv_conf_servers(tmp_path / "missing") == []


def test_cleanup_text_undoes_the_restore_text() -> None:
    cfg = CaptureConfig(
        inbound_ports_include="*",
        outbound_ip_ranges_include="*",
        inbound_interception_mode="TPROXY",
        reroute_virtual_interfaces="eth1",
        redirect_dns=True,
        dns_servers_v4=("10.96.0.10",),
        drop_invalid=True,
    )
    rules = build_rules(cfg).v4
    chains = {(t, c) for t, cs in created_chains(rules).items() for c in cs}
    text = cleanup_text(rules, set(rules), chains)
    lines = text.splitlines()
    # Every rule outside our chains, and every jump into them, is deleted ...
    for r in rules:
        if not r.chain.startswith("ISTIO_") or r.jumps_into_istio():
            assert " ".join(("-D", r.chain, *r.spec)) in lines
    # ... every chain we create is flushed and deleted, in each table after the deletes ...
    for _, chain in chains:
        assert f"-X {chain}" in lines
        assert f"-N {chain}" in restore_text(rules)
    for block in text.split("COMMIT\n")[:-1]:
        verbs = [line[:2] for line in block.splitlines()[1:]]
        assert verbs == sorted(verbs, key=["-D", "-F", "-X"].index)
    # ... and nothing that is absent is named (iptables-restore would fail on it).
    assert cleanup_text(rules, set(), set()) == ""
