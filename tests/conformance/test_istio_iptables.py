"""meshcore's ``iptables --dry-run`` equals Istio's own golden outputs of istio-iptables.

Each case's options are in istio-iptables/cases.json (transcribed from Istio's run_test.go,
Go field names); they go through the real command line (flags, and the environment variables
Istio reads), and stdout must equal istio-iptables/golden/NAME.golden byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests._cli import main

HERE = Path(__file__).parent / "istio-iptables"
CASES: dict[str, Any] = json.loads((HERE / "cases.json").read_text())

# Istio's Config field -> meshcore's flag.
FLAGS = {
    "ProxyPort": "--envoy-port",
    "InboundCapturePort": "--inbound-capture-port",
    "InboundTunnelPort": "--inbound-tunnel-port",
    "ProxyUID": "--proxy-uid",
    "ProxyGID": "--proxy-gid",
    "InboundInterceptionMode": "--istio-inbound-interception-mode",
    "InboundTProxyMark": "--istio-inbound-tproxy-mark",
    "InboundTProxyRouteTable": "--istio-inbound-tproxy-route-table",
    "InboundPortsInclude": "--istio-inbound-ports",
    "InboundPortsExclude": "--istio-local-exclude-ports",
    "OutboundPortsInclude": "--istio-outbound-ports",
    "OutboundPortsExclude": "--istio-local-outbound-ports-exclude",
    "OutboundIPRangesInclude": "--istio-service-cidr",
    "OutboundIPRangesExclude": "--istio-service-exclude-cidr",
    "RerouteVirtualInterfaces": "--kube-virt-interfaces",
    "ExcludeInterfaces": "--istio-exclude-interfaces",
}
SWITCHES = {
    "RedirectDNS": "--redirect-dns",
    "CaptureAllDNS": "--capture-all-dns",
    "DropInvalid": "--drop-invalid",
    "EnableIPv6": "--ipv6",
    "DryRun": "--dry-run",
}
ENVIRONMENT = {
    "OwnerGroupsInclude": "ISTIO_OUTBOUND_OWNER_GROUPS",
    "OwnerGroupsExclude": "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    "HostIPv4LoopbackCidr": "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
}


def command_line(config: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    argv = ["iptables", "--dry-run"]
    env: dict[str, str] = {}
    servers = [*config.get("DNSServersV4", []), *config.get("DNSServersV6", [])]
    # Istio's test gives the resolvers explicitly; an empty list must not fall back to
    # this machine's /etc/resolv.conf.
    argv.append(f"--dns-servers={','.join(servers)}")
    for key, value in config.items():
        if key in FLAGS:
            argv.append(f"{FLAGS[key]}={value}")
        elif key in SWITCHES:
            if value:
                argv.append(SWITCHES[key])
        elif key in ENVIRONMENT:
            env[ENVIRONMENT[key]] = value
        elif key not in ("DNSServersV4", "DNSServersV6"):
            raise AssertionError(f"cases.json: no flag for {key}")
    return argv, env


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_dry_run_equals_istio_golden(
    case: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv, env = command_line({**CASES["defaults"], **case["config"]})
    for name in ENVIRONMENT.values():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == (HERE / "golden" / f"{case['name']}.golden").read_text()


def test_every_vendored_golden_has_a_case() -> None:
    names = {c["name"] for c in CASES["cases"]}
    assert names == {p.stem for p in (HERE / "golden").glob("*.golden")}
    assert len(names) >= 15
