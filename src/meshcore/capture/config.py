"""The options of Istio's rule generator (``istio-iptables``), validated once.

Field names follow ``istio.io/istio/tools/common/config.Config`` in snake case; values keep
Istio's forms (comma-separated lists, ``*`` wildcards) so that flags mean what Istio's mean.
Every value is checked before a rule is built: a value ends up inside an iptables-restore
file, so a space or a newline in it would be a rule of its own.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from meshcore.errors import ConfigError, ConfigProblem

# Names iptables accepts for an owner (uid/gid), an interface, a mark: no blanks, no quotes.
_TOKEN = re.compile(r"^[A-Za-z0-9_.:@+-]+$")
_MODES = ("", "REDIRECT", "TPROXY")


def resolv_conf_servers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf (Istio captures DNS to these when no
    ``--dns-servers`` are given); none when it cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return []
    return [
        words[1]
        for line in text.splitlines()
        if len(words := line.split()) >= 2 and words[0] == "nameserver"
    ]


def split(value: str) -> list[str]:
    """Istio's ``config.Split``: a comma-separated list, empty items dropped."""
    return [item for item in value.split(",") if item] if value else []


@dataclass(frozen=True, slots=True)
class NetworkRange:
    """Istio's ``NetworkRange``: the CIDRs of one IP family, or the wildcard."""

    is_wildcard: bool = False
    cidrs: tuple[str, ...] = ()
    has_loopback: bool = False


def separate_v4_v6(value: str) -> tuple[NetworkRange, NetworkRange]:
    """Istio's ``SeparateV4V6``; CIDRs are printed as given (address not masked), as Go's
    ``netip.Prefix.String`` does, with IPv6 addresses in their canonical form."""
    if value == "*":
        return NetworkRange(is_wildcard=True), NetworkRange(is_wildcard=True)
    v4: list[str] = []
    v6: list[str] = []
    loop4 = loop6 = False
    for item in split(value):
        iface = _interface(item)
        text = f"{iface.ip}/{iface.network.prefixlen}"
        if iface.version == 4:
            v4.append(text)
            loop4 = loop4 or iface.ip.is_loopback
        else:
            v6.append(text)
            loop6 = loop6 or iface.ip.is_loopback
    return NetworkRange(False, tuple(v4), loop4), NetworkRange(False, tuple(v6), loop6)


def _interface(item: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if "/" not in item:
        raise ValueError(f"{item!r} is not a CIDR (ADDRESS/BITS)")
    return ipaddress.ip_interface(item)


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """What ``istio-iptables`` is told; the defaults are Istio's (``DefaultConfig``)."""

    proxy_port: str = "15001"
    inbound_capture_port: str = "15006"
    inbound_tunnel_port: str = "15008"
    proxy_uid: str = "1337"
    proxy_gid: str = ""  # empty: the same as proxy_uid, as Istio does
    inbound_interception_mode: str = ""  # "" behaves as REDIRECT
    inbound_tproxy_mark: str = "1337"
    inbound_tproxy_route_table: str = "133"
    inbound_ports_include: str = ""
    inbound_ports_exclude: str = ""
    owner_groups_include: str = "*"
    owner_groups_exclude: str = ""
    outbound_ports_include: str = ""
    outbound_ports_exclude: str = ""
    outbound_ip_ranges_include: str = ""
    outbound_ip_ranges_exclude: str = ""
    reroute_virtual_interfaces: str = ""
    exclude_interfaces: str = ""
    redirect_dns: bool = False
    capture_all_dns: bool = False
    drop_invalid: bool = False
    enable_ipv6: bool = False
    dns_servers_v4: tuple[str, ...] = field(default=())
    dns_servers_v6: tuple[str, ...] = field(default=())
    host_ipv4_loopback_cidr: str = "127.0.0.1/32"

    @property
    def gid(self) -> str:
        return self.proxy_gid or self.proxy_uid

    @property
    def tproxy(self) -> bool:
        return self.inbound_interception_mode == "TPROXY"

    def validate(self) -> CaptureConfig:
        """Return self, or raise ConfigError naming every bad option (by Istio's flag name)."""
        problems = [ConfigProblem(msg, path=flag) for flag, msg in _problems(self)]
        if problems:
            raise ConfigError(problems)
        return self


# The flag each field comes from (Istio's long names, or its environment variable).
FLAG_OF = {
    "proxy_port": "--envoy-port",
    "inbound_capture_port": "--inbound-capture-port",
    "inbound_tunnel_port": "--inbound-tunnel-port",
    "proxy_uid": "--proxy-uid",
    "proxy_gid": "--proxy-gid",
    "inbound_interception_mode": "--istio-inbound-interception-mode",
    "inbound_tproxy_mark": "--istio-inbound-tproxy-mark",
    "inbound_tproxy_route_table": "--istio-inbound-tproxy-route-table",
    "inbound_ports_include": "--istio-inbound-ports",
    "inbound_ports_exclude": "--istio-local-exclude-ports",
    "owner_groups_include": "ISTIO_OUTBOUND_OWNER_GROUPS",
    "owner_groups_exclude": "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    "outbound_ports_include": "--istio-outbound-ports",
    "outbound_ports_exclude": "--istio-local-outbound-ports-exclude",
    "outbound_ip_ranges_include": "--istio-service-cidr",
    "outbound_ip_ranges_exclude": "--istio-service-exclude-cidr",
    "reroute_virtual_interfaces": "--kube-virt-interfaces",
    "exclude_interfaces": "--istio-exclude-interfaces",
    "dns_servers_v4": "--dns-servers",
    "dns_servers_v6": "--dns-servers",
    "host_ipv4_loopback_cidr": "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
}


def _port(value: str, *, zero: bool = False) -> str | None:
    if not value.isdigit() or not (0 if zero else 1) <= int(value) <= 65535:
        return f"{value!r} is not a port number"
    return None


def _problems(cfg: CaptureConfig) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def bad(name: str, msg: str | None) -> None:
        if msg:
            out.append((FLAG_OF[name], msg))

    for name in ("proxy_port", "inbound_capture_port", "inbound_tunnel_port"):
        bad(name, _port(getattr(cfg, name)))
    for name in ("inbound_ports_exclude", "outbound_ports_include", "outbound_ports_exclude"):
        for item in split(getattr(cfg, name)):
            bad(name, _port(item, zero=True))
    if cfg.inbound_ports_include != "*":
        for item in split(cfg.inbound_ports_include):
            bad("inbound_ports_include", _port(item, zero=True))
    for name in (
        "proxy_uid",
        "proxy_gid",
        "owner_groups_include",
        "owner_groups_exclude",
        "reroute_virtual_interfaces",
        "exclude_interfaces",
    ):
        value = getattr(cfg, name)
        if name == "owner_groups_include" and value == "*":
            continue
        for item in split(value):
            if not _TOKEN.match(item):
                bad(name, f"{item!r} is not a name or number iptables accepts")
    if cfg.owner_groups_include not in ("*", "") and cfg.owner_groups_exclude:
        bad("owner_groups_exclude", "only applies when ISTIO_OUTBOUND_OWNER_GROUPS is '*'")
    if not split(cfg.proxy_uid):
        bad("proxy_uid", "at least one UID is needed (the proxy's own traffic must not loop)")
    if cfg.inbound_interception_mode not in _MODES:
        bad(
            "inbound_interception_mode",
            f"{cfg.inbound_interception_mode!r}: expected REDIRECT or TPROXY",
        )
    for name in ("inbound_tproxy_mark", "inbound_tproxy_route_table"):
        if not getattr(cfg, name).isdigit():
            bad(name, f"{getattr(cfg, name)!r} is not a number")
    for name in ("outbound_ip_ranges_include", "outbound_ip_ranges_exclude"):
        try:
            separate_v4_v6(getattr(cfg, name))
        except ValueError as exc:
            bad(name, str(exc))
    if cfg.outbound_ip_ranges_exclude == "*":
        bad(
            "outbound_ip_ranges_exclude", "'*' is not allowed (exclude everything: capture nothing)"
        )
    for name, version in (("dns_servers_v4", 4), ("dns_servers_v6", 6)):
        for item in getattr(cfg, name):
            try:
                ok = ipaddress.ip_address(item).version == version
            except ValueError:
                ok = False
            if not ok:
                bad(name, f"{item!r} is not an IPv{version} address")
    try:
        loop = ipaddress.ip_network(cfg.host_ipv4_loopback_cidr, strict=False)
        if loop.version != 4 or not loop.network_address.is_loopback:
            bad("host_ipv4_loopback_cidr", f"{cfg.host_ipv4_loopback_cidr!r} is not in 127.0.0.0/8")
    except ValueError as exc:
        bad("host_ipv4_loopback_cidr", str(exc))
    return out
