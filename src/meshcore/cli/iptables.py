"""``meshcore iptables``: Istio's ``istio-iptables`` with its flags, for the current netns.

Flags keep Istio's short and long names and meanings. Where Istio reads the environment
(ISTIO_OUTBOUND_OWNER_GROUPS, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE,
ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR) so does meshcore. Two things Istio finds out by itself are
flags here: ``--ipv6`` (Istio turns IPv6 rules on when the pod's address is IPv6) and
``--dns-servers`` (Istio reads /etc/resolv.conf; so does meshcore when the flag is absent).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from meshcore.capture.config import resolv_conf_servers
from meshcore.cli._parser import Formatter

if TYPE_CHECKING:
    from meshcore.capture import CaptureConfig

EXIT_OK, EXIT_FAILED = 0, 1


class IptablesFormatter(Formatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default shown as elsewhere."""


def add_parser(sub: Any) -> None:
    """Register the subcommand on the ``meshcore`` subparsers."""
    p = sub.add_parser(
        "iptables",
        help="Istio's sidecar capture rules (istio-iptables) for the current network namespace",
        description=__doc__,
        formatter_class=IptablesFormatter,
    )
    opt = p.add_argument
    opt("-p", "--envoy-port", default="15001", help="where outbound TCP is redirected")
    opt("-z", "--inbound-capture-port", default="15006", help="where inbound TCP is redirected")
    opt("-e", "--inbound-tunnel-port", default="15008", help="never captured inbound (HBONE)")
    opt("-u", "--proxy-uid", default="1337", help="UIDs whose traffic is not captured")
    opt("-g", "--proxy-gid", default="", help="GIDs whose traffic is not captured (default: -u)")
    opt("-m", "--istio-inbound-interception-mode", default="", metavar="REDIRECT|TPROXY",
        help="how inbound TCP is captured (empty: REDIRECT)")  # fmt: skip
    opt("-b", "--istio-inbound-ports", default="", help="inbound ports to capture; '*' all")
    opt("-d", "--istio-local-exclude-ports", default="", help="inbound ports not captured with '*'")
    opt("-c", "--istio-exclude-interfaces", default="", help="NICs never captured")
    opt("-i", "--istio-service-cidr", default="", help="outbound CIDRs to capture; '*' all")
    opt("-x", "--istio-service-exclude-cidr", default="", help="outbound CIDRs never captured")
    opt("-q", "--istio-outbound-ports", default="", help="outbound ports always captured")
    opt(
        "-o", "--istio-local-outbound-ports-exclude", default="", help="outbound ports not captured"
    )
    opt("-k", "--kube-virt-interfaces", default="", help="NICs whose inbound counts as outbound")
    opt("-t", "--istio-inbound-tproxy-mark", default="1337", help="the packet mark for TPROXY")
    opt("-r", "--istio-inbound-tproxy-route-table", default="133",
        help="the policy route table for TPROXY")  # fmt: skip
    opt("-n", "--dry-run", action="store_true", help="print the commands; change nothing")
    opt("--redirect-dns", action="store_true", help="DNS to the agent's 15053")
    opt("--capture-all-dns", action="store_true", help="all port-53 traffic, not only resolvers'")
    opt("--drop-invalid", action="store_true", help="drop conntrack-INVALID packets")
    opt("--cleanup", "--cleanup-only", dest="cleanup", action="store_true",
        help="remove what these options add (ISTIO_* chains and the jumps into them)")  # fmt: skip
    opt("--run-validation", action="store_true",
        help="check that a connection as the proxy's UID is captured (exit 126 if not)")  # fmt: skip
    opt("--skip-rule-apply", action="store_true", help="apply nothing (with --run-validation)")
    opt("--iptables-probe-port", type=int, default=15002, help="the validation's probe port")
    opt("--probe-timeout", type=float, default=5.0, metavar="SECONDS",
        help="how long the validation waits")  # fmt: skip
    opt("--ipv6", action="store_true", help="also write ip6tables rules")
    opt("--dns-servers", default=None, metavar="IP,IP",
        help="the resolvers whose DNS is captured (default: /etc/resolv.conf's)")  # fmt: skip


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> CaptureConfig:
    from meshcore.capture import CaptureConfig

    servers: list[str] = []
    if args.redirect_dns and not args.capture_all_dns:
        listed = args.dns_servers
        servers = resolv_conf_servers() if listed is None else [s for s in listed.split(",") if s]

    def version(s: str) -> int:
        try:
            return ipaddress.ip_address(s).version
        except ValueError:
            return 4  # validation names it

    return CaptureConfig(
        proxy_port=args.envoy_port,
        inbound_capture_port=args.inbound_capture_port,
        inbound_tunnel_port=args.inbound_tunnel_port,
        proxy_uid=args.proxy_uid,
        proxy_gid=args.proxy_gid,
        inbound_interception_mode=args.istio_inbound_interception_mode,
        inbound_tproxy_mark=args.istio_inbound_tproxy_mark,
        inbound_tproxy_route_table=args.istio_inbound_tproxy_route_table,
        inbound_ports_include=args.istio_inbound_ports,
        inbound_ports_exclude=args.istio_local_exclude_ports,
        owner_groups_include=environ.get("ISTIO_OUTBOUND_OWNER_GROUPS", "*"),
        owner_groups_exclude=environ.get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", ""),
        outbound_ports_include=args.istio_outbound_ports,
        outbound_ports_exclude=args.istio_local_outbound_ports_exclude,
        outbound_ip_ranges_include=args.istio_service_cidr,
        outbound_ip_ranges_exclude=args.istio_service_exclude_cidr,
        reroute_virtual_interfaces=args.kube_virt_interfaces,
        exclude_interfaces=args.istio_exclude_interfaces,
        redirect_dns=args.redirect_dns,
        capture_all_dns=args.capture_all_dns,
        drop_invalid=args.drop_invalid,
        enable_ipv6=args.ipv6,
        dns_servers_v4=tuple(s for s in servers if version(s) == 4),
        dns_servers_v6=tuple(s for s in servers if version(s) == 6),
        host_ipv4_loopback_cidr=environ.get("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32"),
    )


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    from meshcore.capture import CaptureError, apply, cleanup, dry_run_lines
    from meshcore.errors import ConfigError

    cfg = config_from_args(args, os.environ if environ is None else environ)
    try:
        cfg.validate()
        if args.dry_run:
            if args.cleanup:
                print("meshcore iptables: --dry-run with --cleanup is not supported",
                      file=sys.stderr)  # fmt: skip
                return 2
            sys.stdout.write("".join(line + "\n" for line in dry_run_lines(cfg)))
            return EXIT_OK
        done = "rules not applied (--skip-rule-apply)"
        if args.cleanup:
            done = cleanup(cfg)
        elif not args.skip_rule_apply:
            done = apply(cfg)
        print(f"meshcore iptables: {done}")
        if args.run_validation and not args.cleanup:
            from meshcore.capture.validate import EXIT_VALIDATION_FAILED, run_validation

            try:
                run_validation(cfg, probe_port=args.iptables_probe_port,
                               timeout=args.probe_timeout)  # fmt: skip
            except CaptureError as exc:
                print(f"meshcore iptables: {exc}", file=sys.stderr)
                return EXIT_VALIDATION_FAILED
            print("meshcore iptables: validation passed, the capture rules work")
    except ConfigError as exc:
        for problem in exc.errors():
            print(f"meshcore iptables: {problem}", file=sys.stderr)
        return EXIT_FAILED
    except CaptureError as exc:
        print(f"meshcore iptables: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
