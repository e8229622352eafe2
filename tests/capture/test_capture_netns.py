"""``meshcore iptables`` in a real network namespace: the kernel takes the rules, traffic is
captured as Istio's rules capture it, the proxy's UID is not, and --cleanup takes exactly
our rules away.

Skips (saying why) only where network namespaces cannot be made: not root, or no
iproute2/iptables. CI runs as root, so there these tests run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from tests.capture._programs import connect, start_listener

from meshcore.capture import CaptureConfig, build_rules
from meshcore.capture.apply import istio_chains
from meshcore.capture.pods import Pod, PodNetwork, available

UNAVAILABLE = available()
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"no network namespaces: {UNAVAILABLE}"
)

# The flags of Istio's sidecar injector for a pod with no annotations (the example).
SIDECAR_FLAGS = ["-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-m", "REDIRECT",
                 "-b", "*", "-d", "15090,15021,15020", "-i", "*", "-x", "", "-o", ""]  # fmt: skip
SIDECAR = CaptureConfig(
    inbound_ports_include="*",
    inbound_ports_exclude="15090,15021,15020",
    outbound_ip_ranges_include="*",
    inbound_interception_mode="REDIRECT",
    proxy_gid="1337",
)


@pytest.fixture
def pods() -> Iterator[tuple[Pod, Pod]]:
    with PodNetwork() as net:
        yield net.add_pod("app"), net.add_pod("peer")


def meshcore_iptables(pod: Pod, *flags: str) -> str:
    out = pod.run([sys.executable, "-m", "meshcore", "iptables", *flags],
                  capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return str(out.stdout)


def iptables_save(pod: Pod, binary: str = "iptables-save") -> str:
    out = pod.run([binary], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return str(out.stdout)


def rules_of(save: str) -> list[str]:
    """Rules and user chains of an iptables-save output (no comments, no counters)."""
    return [line for line in save.splitlines()
            if line.startswith("-") or (line.startswith(":") and line.split()[1] == "-")]  # fmt: skip


def test_rules_applied_in_kernel_and_cleanup_removes_exactly_them(pods: tuple[Pod, Pod]) -> None:
    app, _ = pods
    assert rules_of(iptables_save(app)) == []
    assert "applied" in meshcore_iptables(app, *SIDECAR_FLAGS)
    save = iptables_save(app)
    plan = build_rules(SIDECAR).v4
    planned_chains = {(r.table, r.chain) for r in plan if r.chain.startswith("ISTIO_")}
    assert set(istio_chains(save)) == planned_chains
    # The kernel's own spelling of some of them (iptables-save adds "-m tcp").
    for line in ("-A OUTPUT -j ISTIO_OUTPUT", "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                 "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                 "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                 "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
                 "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"):  # fmt: skip
        assert line in save.splitlines()
    for (table, chain), count in istio_chains(save).items():
        assert count == sum(1 for r in plan if (r.table, r.chain) == (table, chain))
    # Applying again is a no-op; different options over existing rules are refused.
    assert "already in place" in meshcore_iptables(app, *SIDECAR_FLAGS)
    other = app.run([sys.executable, "-m", "meshcore", "iptables", "-b", "*", "-i", "*"],
                    capture_output=True, text=True)  # fmt: skip
    assert other.returncode == 1
    assert "ISTIO_* chains already exist" in other.stderr
    # A rule of someone else's survives our cleanup.
    assert app.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9",
                    "-j", "RETURN"]).returncode == 0  # fmt: skip
    assert "removed 6 rules and 4 chains" in meshcore_iptables(app, *SIDECAR_FLAGS, "--cleanup")
    assert rules_of(iptables_save(app)) == ["-A OUTPUT -p udp -m udp --dport 9 -j RETURN"]
    # Cleaning up twice is harmless.
    assert "removed 0 rules and 0 chains" in meshcore_iptables(app, *SIDECAR_FLAGS, "--cleanup")


def test_tproxy_dual_stack_rules_apply_and_clean_up(pods: tuple[Pod, Pod]) -> None:
    app, _ = pods
    flags = ["-m", "TPROXY", "-b", "*", "-i", "*", "--ipv6", "--redirect-dns",
             "--dns-servers", "198.18.0.53,fd00::53", "--drop-invalid"]  # fmt: skip
    assert "applied (iptables, ip6tables)" in meshcore_iptables(app, *flags)
    for binary in ("iptables-save", "ip6tables-save"):
        save = iptables_save(app, binary)
        assert any("-j TPROXY" in line for line in save.splitlines())
        assert any(line.startswith("-A ISTIO_OUTPUT_DNS") for line in save.splitlines())
    rules = app.run(["ip", "rule"], capture_output=True, text=True).stdout
    assert "fwmark 0x539 lookup 133" in rules
    meshcore_iptables(app, *flags, "--cleanup")
    assert rules_of(iptables_save(app)) == []
    assert rules_of(iptables_save(app, "ip6tables-save")) == []
    assert "lookup 133" not in app.run(["ip", "rule"], capture_output=True, text=True).stdout


def test_outbound_and_inbound_traffic_is_captured_and_the_proxy_uid_is_not(
    pods: tuple[Pod, Pod],
) -> None:
    app, peer = pods
    meshcore_iptables(app, *SIDECAR_FLAGS)
    start_listener(app, "outbound", "0.0.0.0", 15001)
    start_listener(app, "inbound", "0.0.0.0", 15006)
    start_listener(peer, "peer", "0.0.0.0", 9080)
    # The app dials the peer: Envoy's 15001 gets it and reads where it was going.
    assert connect(app, peer.ip, 9080) == f"outbound {peer.ip}:9080"
    # A service VIP (nothing has it) is captured the same way.
    assert connect(app, "198.19.0.10", 9080) == "outbound 198.19.0.10:9080"
    # The proxy's own UID (Envoy's upstream connection) leaves uncaptured.
    assert connect(app, peer.ip, 9080, uid=1337) == f"peer {peer.ip}:9080"
    # Inbound: the peer dials the app's port 8080, Envoy's 15006 gets it ...
    assert connect(peer, app.ip, 8080) == f"inbound {app.ip}:8080"
    # ... but not an excluded port (15021: nothing listens, so refused).
    assert connect(peer, app.ip, 15021).startswith("error ConnectionRefusedError")
    # After cleanup the app's calls go straight to the peer.
    meshcore_iptables(app, *SIDECAR_FLAGS, "--cleanup")
    assert connect(app, peer.ip, 9080) == f"peer {peer.ip}:9080"


def test_run_validation_fails_without_rules_and_passes_with_them(pods: tuple[Pod, Pod]) -> None:
    app, _ = pods
    base = [sys.executable, "-m", "meshcore", "iptables", *SIDECAR_FLAGS]
    probe = ["--run-validation", "--probe-timeout", "3"]
    bare = app.run([*base, "--skip-rule-apply", *probe], capture_output=True, text=True)
    assert bare.returncode == 126, bare.stderr
    assert "validation failed" in bare.stderr
    ok = app.run([*base, *probe], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "validation passed" in ok.stdout
    # Rules made for another proxy UID do not capture this one's probe.
    meshcore_iptables(app, *SIDECAR_FLAGS, "--cleanup")
    meshcore_iptables(app, *SIDECAR_FLAGS[:4], "-u", "4242", "-g", "4242", *SIDECAR_FLAGS[8:])
    other = app.run([*base, "--skip-rule-apply", *probe], capture_output=True, text=True)
    assert other.returncode == 126, other.stderr


def test_a_failed_apply_leaves_nothing_behind(pods: tuple[Pod, Pod]) -> None:
    app, _ = pods
    # With IPv6 off in the pod, TPROXY's IPv6 route fails after both restores went in.
    for key in ("all", "default", "lo"):
        knob = f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6"
        assert app.run([sys.executable, "-c", f"open({knob!r}, 'w').write('1')"]).returncode == 0
    out = app.run([sys.executable, "-m", "meshcore", "iptables", "-m", "TPROXY", "-b", "*",
                   "-i", "*", "--ipv6"], capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 1
    assert "ip route add failed" in out.stderr
    assert rules_of(iptables_save(app)) == []
    assert rules_of(iptables_save(app, "ip6tables-save")) == []
    assert "lookup 133" not in app.run(["ip", "rule"], capture_output=True, text=True).stdout
