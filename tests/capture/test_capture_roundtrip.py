"""Property, in a real kernel: for any options, the kernel takes every rule meshcore writes,
and ``--cleanup`` with the same options leaves the namespace as it found it (no rule, no
chain, no policy route)."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as s
from tests.capture.test_capture_netns import iptables_save, rules_of
from tests.conformance.test_istio_iptables import command_line

from meshcore.capture.pods import PodNetwork, available

UNAVAILABLE = available()
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"no network namespaces: {UNAVAILABLE}"
)

# Istio's Config fields (as in the conformance cases), drawn from values that matter.
OPTIONS = s.fixed_dictionaries(
    {
        "InboundInterceptionMode": s.sampled_from(["REDIRECT", "TPROXY"]),
        "InboundPortsInclude": s.sampled_from(["", "*", "9080,8080"]),
        "InboundPortsExclude": s.sampled_from(["", "15090,15021,15020"]),
        "OutboundIPRangesInclude": s.sampled_from(["", "*", "10.0.0.0/8,fd00::/8", "127.1.2.3/32"]),
        "OutboundIPRangesExclude": s.sampled_from(["", "10.1.0.0/16,fd00:1::/32"]),
        "OutboundPortsInclude": s.sampled_from(["", "3306"]),
        "OutboundPortsExclude": s.sampled_from(["", "22,25"]),
        "RerouteVirtualInterfaces": s.sampled_from(["", "eth1,eth2"]),
        "ExcludeInterfaces": s.sampled_from(["", "eth3"]),
        "ProxyUID": s.sampled_from(["1337", "3,4"]),
        "ProxyGID": s.sampled_from(["1337", "1,2"]),
        "RedirectDNS": s.booleans(),
        "CaptureAllDNS": s.booleans(),
        "DNSServersV4": s.sampled_from([[], ["10.96.0.10"]]),
        "DNSServersV6": s.sampled_from([[], ["fd00::a"]]),
        "DropInvalid": s.booleans(),
        "EnableIPv6": s.booleans(),
        "OwnerGroupsInclude": s.sampled_from(["*", "1000,2000"]),
    }
)


def test_any_options_apply_in_the_kernel_and_clean_up_to_nothing() -> None:
    with PodNetwork() as net:
        pod = net.add_pod("app")

        @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(OPTIONS)
        def roundtrip(options: dict[str, Any]) -> None:
            argv, env = command_line(options)
            argv.remove("--dry-run")
            cli = [sys.executable, "-m", "meshcore", *argv]
            environ = {"ISTIO_OUTBOUND_OWNER_GROUPS": "*", **env}
            runs = [pod.run(cli, capture_output=True, text=True, env=environ_of(environ))]
            applied = iptables_save(pod)
            runs.append(
                pod.run(
                    [*cli, "--cleanup"], capture_output=True, text=True, env=environ_of(environ)
                )
            )
            for run in runs:
                assert run.returncode == 0, (options, run.stderr)
            assert any(line.startswith("-A OUTPUT") for line in rules_of(applied))
            assert rules_of(iptables_save(pod)) == []
            assert rules_of(iptables_save(pod, "ip6tables-save")) == []
            routes = pod.run(["ip", "rule"], capture_output=True, text=True).stdout
            assert "lookup 133" not in routes

        roundtrip()


def environ_of(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
