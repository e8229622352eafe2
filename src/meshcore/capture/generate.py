"""Istio's sidecar capture rules (``istio-iptables``), rule for rule.

Outbound TCP goes to Envoy's ``proxy_port`` (15001) through ISTIO_OUTPUT -> ISTIO_REDIRECT,
inbound TCP to ``inbound_capture_port`` (15006) through ISTIO_INBOUND -> ISTIO_IN_REDIRECT
(or TPROXY in the mangle table); the proxy's own UID/GID is never captured, so Envoy's
upstream connections leave as they are. The order of the rules is Istio's
(``tools/istio-iptables/pkg/capture/run.go``): Istio's golden files are the test.
"""

from __future__ import annotations

from meshcore.capture.config import CaptureConfig, NetworkRange, separate_v4_v6, split
from meshcore.capture.rules import IP_VERSION_SPECIFIC as IPV
from meshcore.capture.rules import RuleBuilder

ISTIO_OUTPUT = "ISTIO_OUTPUT"
ISTIO_OUTPUT_DNS = "ISTIO_OUTPUT_DNS"
ISTIO_INBOUND = "ISTIO_INBOUND"
ISTIO_DIVERT = "ISTIO_DIVERT"
ISTIO_TPROXY = "ISTIO_TPROXY"
ISTIO_REDIRECT = "ISTIO_REDIRECT"
ISTIO_IN_REDIRECT = "ISTIO_IN_REDIRECT"
ISTIO_DROP = "ISTIO_DROP"
# Envoy marks its connections to the app by pod IP with this in TPROXY mode.
OUTBOUND_MARK = "1338"
AGENT_DNS_PORT = "15053"
V6_LOOPBACK = "::1/128"


def build_rules(cfg: CaptureConfig) -> RuleBuilder:
    """Every rule Istio's generator writes for ``cfg`` (validated here first)."""
    cfg.validate()
    b = RuleBuilder(ipv6=cfg.enable_ipv6)
    loop4 = cfg.host_ipv4_loopback_cidr
    exclude4, exclude6 = separate_v4_v6(cfg.outbound_ip_ranges_exclude)
    include4, include6 = separate_v4_v6(cfg.outbound_ip_ranges_include)
    # Without servers to redirect to (and without --capture-all-dns) DNS capture is off.
    redirect_dns = cfg.redirect_dns and (
        cfg.capture_all_dns or bool(cfg.dns_servers_v4) or bool(cfg.dns_servers_v6)
    )

    _exclude_interfaces(b, cfg)
    for nic in split(cfg.reroute_virtual_interfaces):
        b.insert("PREROUTING", "nat", 1, "-i", nic, "-j", "RETURN")
    if cfg.drop_invalid:
        b.append(
            "PREROUTING", "mangle", "-m", "conntrack", "--ctstate", "INVALID", "-j", ISTIO_DROP
        )
        b.append(ISTIO_DROP, "mangle", "-j", "DROP")
    # The tunnel port (HBONE) is Envoy's own: never captured inbound.
    b.append(ISTIO_INBOUND, "nat", "-p", "tcp", "--dport", cfg.inbound_tunnel_port, "-j", "RETURN")
    b.append(ISTIO_REDIRECT, "nat", "-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.proxy_port)
    b.append(
        ISTIO_IN_REDIRECT,
        "nat",
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        cfg.inbound_capture_port,
    )
    _inbound(b, cfg)

    b.append("OUTPUT", "nat", "-j", ISTIO_OUTPUT)
    # Port exclusions come before the rules that send the app's calls to itself via Envoy.
    for port in split(cfg.outbound_ports_exclude):
        b.append(ISTIO_OUTPUT, "nat", "-p", "tcp", "--dport", port, "-j", "RETURN")
        b.append(ISTIO_OUTPUT, "nat", "-p", "udp", "--dport", port, "-j", "RETURN")
    # 127.0.0.6 (::6) is where Envoy's inbound passthrough connects from.
    b.append_versioned("127.0.0.6/32", "::6/128", ISTIO_OUTPUT, "nat", "-o", "lo", "-s", IPV, "-j", "RETURN")  # fmt: skip
    loopback_included = include4.has_loopback or include6.has_loopback
    for owner, ids in (("--uid-owner", cfg.proxy_uid), ("--gid-owner", cfg.gid)):
        for ident in split(ids):
            _proxy_owner(b, cfg, owner, ident, redirect_dns=redirect_dns,
                         loopback_included=loopback_included, loop4=loop4)  # fmt: skip

    _owner_groups(b, cfg)
    if redirect_dns:
        _dns(b, cfg)

    # Envoy-aware apps and container-to-container calls use localhost: never captured.
    b.append_versioned(loop4, V6_LOOPBACK, ISTIO_OUTPUT, "nat", "-d", IPV, "-j", "RETURN")
    for cidr in exclude4.cidrs:
        b.append_v4(ISTIO_OUTPUT, "nat", "-d", cidr, "-j", "RETURN")
    for cidr in exclude6.cidrs:
        b.append_v6(ISTIO_OUTPUT, "nat", "-d", cidr, "-j", "RETURN")
    for port in split(cfg.outbound_ports_include):
        b.append(ISTIO_OUTPUT, "nat", "-p", "tcp", "--dport", port, "-j", ISTIO_REDIRECT)
    _outbound_include(b, cfg, include4, version=4)
    _outbound_include(b, cfg, include6, version=6)
    if cfg.tproxy:
        _tproxy_marks(b, cfg, loop4)
    return b


def _exclude_interfaces(b: RuleBuilder, cfg: CaptureConfig) -> None:
    tables = ("nat", "mangle") if cfg.tproxy else ("nat",)
    for table in tables:
        for nic in split(cfg.exclude_interfaces):
            b.append("PREROUTING", table, "-i", nic, "-j", "RETURN")
            b.append("OUTPUT", table, "-o", nic, "-j", "RETURN")


def _inbound(b: RuleBuilder, cfg: CaptureConfig) -> None:
    """Inbound ports to Envoy's 15006: none when the list is empty, all with ``*``."""
    if not cfg.inbound_ports_include:
        return
    mark = cfg.inbound_tproxy_mark
    if cfg.tproxy:
        # Marked packets are routed to lo (policy routing), where TPROXY hands them to Envoy.
        b.append(ISTIO_DIVERT, "mangle", "-j", "MARK", "--set-mark", mark)
        b.append(ISTIO_DIVERT, "mangle", "-j", "ACCEPT")
        b.append_versioned(
            cfg.host_ipv4_loopback_cidr, V6_LOOPBACK, ISTIO_TPROXY, "mangle", "!", "-d", IPV,
            "-p", "tcp", "-j", "TPROXY", "--tproxy-mark", f"{mark}/0xffffffff",
            "--on-port", cfg.inbound_capture_port,
        )  # fmt: skip
        table = "mangle"
    else:
        table = "nat"
    b.append("PREROUTING", table, "-p", "tcp", "-j", ISTIO_INBOUND)
    established = ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", ISTIO_DIVERT)
    if cfg.inbound_ports_include == "*":
        for port in split(cfg.inbound_ports_exclude):
            b.append(ISTIO_INBOUND, table, "-p", "tcp", "--dport", port, "-j", "RETURN")
        if cfg.tproxy:
            b.append(ISTIO_INBOUND, "mangle", "-p", "tcp", *established)
            b.append(ISTIO_INBOUND, "mangle", "-p", "tcp", "-j", ISTIO_TPROXY)
        else:
            b.append(ISTIO_INBOUND, "nat", "-p", "tcp", "-j", ISTIO_IN_REDIRECT)
        return
    for port in split(cfg.inbound_ports_include):
        if cfg.tproxy:
            b.append(ISTIO_INBOUND, "mangle", "-p", "tcp", "--dport", port, *established)
            b.append(ISTIO_INBOUND, "mangle", "-p", "tcp", "--dport", port, "-j", ISTIO_TPROXY)
        else:
            b.append(ISTIO_INBOUND, "nat", "-p", "tcp", "--dport", port, "-j", ISTIO_IN_REDIRECT)


def _proxy_owner(
    b: RuleBuilder,
    cfg: CaptureConfig,
    owner: str,
    ident: str,
    *,
    redirect_dns: bool,
    loopback_included: bool,
    loop4: str,
) -> None:
    """The proxy's own traffic: its calls to a service VIP that lands back on this pod go to
    Envoy's inbound side; everything else it sends leaves uncaptured (no loop)."""
    tunnel = cfg.inbound_tunnel_port
    # With DNS capture, the agent's DNS calls on lo skip Envoy's inbound (UID rules only,
    # as Istio does).
    if redirect_dns and owner == "--uid-owner":
        ports: tuple[str, ...] = ("-m", "multiport", "!", "--dports", f"53,{tunnel}")
    else:
        ports = ("!", "--dport", tunnel)
    b.append_versioned(
        loop4, V6_LOOPBACK, ISTIO_OUTPUT, "nat", "-o", "lo", "!", "-d", IPV, "-p", "tcp",
        *ports, "-m", "owner", owner, ident, "-j", ISTIO_IN_REDIRECT,
    )  # fmt: skip
    # The app calling itself by its endpoint address over lo is not captured, unless the
    # user asked for a loopback range to be captured.
    if not loopback_included:
        if redirect_dns:
            # A DNS server on localhost may be reached over TCP: that is still captured.
            b.append(ISTIO_OUTPUT, "nat", "-o", "lo", "-p", "tcp", "!", "--dport", "53",
                     "-m", "owner", "!", owner, ident, "-j", "RETURN")  # fmt: skip
        else:
            b.append(ISTIO_OUTPUT, "nat", "-o", "lo", "-m", "owner", "!", owner, ident,
                     "-j", "RETURN")  # fmt: skip
    # Any other packet of the proxy's (TCP or UDP, any destination) leaves as it is.
    b.append(ISTIO_OUTPUT, "nat", "-m", "owner", owner, ident, "-j", "RETURN")


def _owner_groups(b: RuleBuilder, cfg: CaptureConfig) -> None:
    """ISTIO_OUTBOUND_OWNER_GROUPS(_EXCLUDE): which groups' outbound traffic is captured."""
    if cfg.owner_groups_include == "*":
        for group in split(cfg.owner_groups_exclude):
            b.append(ISTIO_OUTPUT, "nat", "-m", "owner", "--gid-owner", group, "-j", "RETURN")
        return
    none_of: list[str] = []
    for group in split(cfg.owner_groups_include):
        none_of += ["-m", "owner", "!", "--gid-owner", group]
    b.append(ISTIO_OUTPUT, "nat", *none_of, "-j", "RETURN")


def _dns(b: RuleBuilder, cfg: CaptureConfig) -> None:
    """DNS to the agent's 15053, and the conntrack zones that keep the agent's own queries
    and its answers to the app apart (Istio's SetupDNSRedir)."""
    v4, v6, every = cfg.dns_servers_v4, cfg.dns_servers_v6, cfg.capture_all_dns
    b.append("OUTPUT", "raw", "-j", ISTIO_OUTPUT_DNS)
    if every or v4:
        b.append_v4(ISTIO_OUTPUT, "nat", "-j", ISTIO_OUTPUT_DNS)
    if every or v6:
        b.append_v6(ISTIO_OUTPUT, "nat", "-j", ISTIO_OUTPUT_DNS)
    to_agent_tcp = ("-j", "REDIRECT", "--to-ports", AGENT_DNS_PORT)
    # Istio writes --to-port (singular) for UDP; iptables accepts both spellings.
    to_agent_udp = ("-j", "REDIRECT", "--to-port", AGENT_DNS_PORT)
    if every:
        b.append(ISTIO_OUTPUT_DNS, "nat", "-p", "tcp", "--dport", "53", *to_agent_tcp)
    else:
        for s in v4:
            b.append_v4(ISTIO_OUTPUT_DNS, "nat", "-p", "tcp", "--dport", "53", "-d", f"{s}/32", *to_agent_tcp)  # fmt: skip
        for s in v6:
            b.append_v6(ISTIO_OUTPUT_DNS, "nat", "-p", "tcp", "--dport", "53", "-d", f"{s}/128", *to_agent_tcp)  # fmt: skip
    if every:
        b.append(ISTIO_OUTPUT_DNS, "nat", "-p", "udp", "--dport", "53", *to_agent_udp)
    else:
        for s in v4:
            b.append_v4(ISTIO_OUTPUT_DNS, "nat", "-p", "udp", "--dport", "53", "-d", f"{s}/32", *to_agent_udp)  # fmt: skip
        for s in v6:
            b.append_v6(ISTIO_OUTPUT_DNS, "nat", "-p", "udp", "--dport", "53", "-d", f"{s}/128", *to_agent_udp)  # fmt: skip
    _dns_conntrack_zones(b, cfg)


def _dns_conntrack_zones(b: RuleBuilder, cfg: CaptureConfig) -> None:
    # Zone 1: the agent <-> upstream resolvers; zone 2: the app <-> the agent.
    for owner, ids in (("--uid-owner", cfg.proxy_uid), ("--gid-owner", cfg.gid)):
        for ident in split(ids):
            b.append(ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53",
                     "-m", "owner", owner, ident, "-j", "CT", "--zone", "1")  # fmt: skip
            b.append(ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--sport", AGENT_DNS_PORT,
                     "-m", "owner", owner, ident, "-j", "CT", "--zone", "2")  # fmt: skip
    if cfg.capture_all_dns:
        b.append("PREROUTING", "raw", "-j", ISTIO_INBOUND)
        b.append(ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2")
        b.append(ISTIO_INBOUND, "raw", "-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1")
        return
    if cfg.dns_servers_v4:
        b.append_v4("PREROUTING", "raw", "-j", ISTIO_INBOUND)
    for s in cfg.dns_servers_v4:
        b.append_v4(ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-d", f"{s}/32", "-j", "CT", "--zone", "2")  # fmt: skip
        b.append_v4(ISTIO_INBOUND, "raw", "-p", "udp", "--sport", "53", "-s", f"{s}/32", "-j", "CT", "--zone", "1")  # fmt: skip
    if cfg.dns_servers_v6:
        b.append_v6("PREROUTING", "raw", "-j", ISTIO_INBOUND)
    for s in cfg.dns_servers_v6:
        b.append_v6(ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-d", f"{s}/128", "-j", "CT", "--zone", "2")  # fmt: skip
        b.append_v6(ISTIO_INBOUND, "raw", "-p", "udp", "--sport", "53", "-s", f"{s}/128", "-j", "CT", "--zone", "1")  # fmt: skip


def _outbound_include(
    b: RuleBuilder, cfg: CaptureConfig, include: NetworkRange, *, version: int
) -> None:
    """Outbound ranges to Envoy's 15001 (``*``: everything left), and the same for traffic
    arriving on --kube-virt-interfaces (treated as outbound)."""
    append = b.append_v4 if version == 4 else b.append_v6
    insert = b.insert_v4 if version == 4 else b.insert_v6
    nics = split(cfg.reroute_virtual_interfaces)
    if include.is_wildcard:
        append(ISTIO_OUTPUT, "nat", "-j", ISTIO_REDIRECT)
        for nic in nics:
            insert("PREROUTING", "nat", 1, "-i", nic, "-j", ISTIO_REDIRECT)
        return
    for cidr in include.cidrs:
        for nic in nics:
            insert("PREROUTING", "nat", 1, "-i", nic, "-d", cidr, "-j", ISTIO_REDIRECT)
        append(ISTIO_OUTPUT, "nat", "-d", cidr, "-j", ISTIO_REDIRECT)


def _tproxy_marks(b: RuleBuilder, cfg: CaptureConfig, loop4: str) -> None:
    mark = cfg.inbound_tproxy_mark
    # The mark Envoy's original_src sets is kept on the connection ...
    b.append("PREROUTING", "mangle", "-p", "tcp", "-m", "mark", "--mark", mark,
             "-j", "CONNMARK", "--save-mark")  # fmt: skip
    b.append("OUTPUT", "mangle", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")  # fmt: skip
    # ... Envoy's calls to the app by pod IP are marked so that inbound does not take them ...
    for owner, ids in (("--uid-owner", cfg.proxy_uid), ("--gid-owner", cfg.gid)):
        for ident in split(ids):
            b.append_versioned(
                loop4, V6_LOOPBACK, "OUTPUT", "mangle", "!", "-d", IPV, "-p", "tcp", "-o", "lo",
                "-m", "owner", owner, ident, "-j", "MARK", "--set-mark", OUTBOUND_MARK,
            )  # fmt: skip
    # ... and the app's replies get the mark back, for the policy route to lo.
    b.append("OUTPUT", "mangle", "-p", "tcp", "-m", "connmark", "--mark", mark,
             "-j", "CONNMARK", "--restore-mark")  # fmt: skip
    b.insert(ISTIO_INBOUND, "mangle", 1, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN")
    b.insert_v4(ISTIO_INBOUND, "mangle", 2, "-p", "tcp", "-s", "127.0.0.6/32", "-i", "lo", "-j", "RETURN")  # fmt: skip
    b.insert_v6(ISTIO_INBOUND, "mangle", 2, "-p", "tcp", "-s", "::6/128", "-i", "lo", "-j", "RETURN")  # fmt: skip
    b.insert(ISTIO_INBOUND, "mangle", 3, "-p", "tcp", "-i", "lo", "-m", "mark", "!",
             "--mark", OUTBOUND_MARK, "-j", "RETURN")  # fmt: skip
