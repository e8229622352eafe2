"""``meshcore agent --capture``: the sidecar's part of Istio's capture, in a pod's namespace.

What Istio spreads over an init container (``istio-iptables``), the ``istio-proxy`` container
(pilot-agent and Envoy as UID/GID 1337) and ``holdApplicationUntilProxyStarts``:

1. :func:`ensure_rules`: the capture rules of :class:`~meshcore.capture.CaptureConfig` are
   applied in the current namespace (``apply``) or, when an init step made them, checked to be
   exactly there (``check``); anything else stops the agent before Envoy starts.
2. :func:`join_proxy_group`: the agent's own connections (to the CA, to the control plane's
   ADS through Envoy's bootstrap, to Envoy's admin) must not be captured, so the agent takes
   the proxy's GID as its effective group; the rules return ``--gid-owner 1337`` traffic
   uncaptured, as they do for pilot-agent running as 1337. Envoy runs as UID/GID 1337.
3. The application (the command after ``--``) starts only once Envoy is LIVE with its
   certificate (:func:`start_app`), in the agent's original group, so that its traffic is
   captured.

The rules are never taken away by the agent, even while Envoy is down (restarting after a
crash): a connection to a port nobody listens on is refused, whereas removing the rules would
let plaintext past mTLS and authorization. ``meshcore iptables --cleanup`` removes them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from meshcore.capture.apply import CaptureError, _planned, apply, istio_chains, run_command
from meshcore.capture.config import CaptureConfig
from meshcore.capture.generate import build_rules

__all__ = [
    "PROXY_UID",
    "capture_counts",
    "ensure_rules",
    "join_proxy_group",
    "sidecar_config",
    "start_app",
]

PROXY_UID = 1337


def sidecar_config(proxy_uid: int = PROXY_UID) -> CaptureConfig:
    """Istio's sidecar injection defaults: every inbound port but the agent's own (15090,
    15021, 15020), every outbound address, REDIRECT, the proxy's UID and GID exempt."""
    return CaptureConfig(
        proxy_uid=str(proxy_uid),
        proxy_gid=str(proxy_uid),
        inbound_interception_mode="REDIRECT",
        inbound_ports_include="*",
        inbound_ports_exclude="15090,15021,15020",
        outbound_ip_ranges_include="*",
    ).validate()


def ensure_rules(cfg: CaptureConfig, *, check_only: bool) -> str:
    """Apply the rules (idempotent), or check that exactly these are in place (ISTIO_* chains
    with as many rules as planned). Raises CaptureError saying what is wrong."""
    if not check_only:
        return apply(cfg)
    res = run_command(["iptables-save"])
    if res.returncode != 0:
        raise CaptureError(f"iptables-save failed: {res.stderr.strip()}")
    found = istio_chains(res.stdout)
    planned = _planned(build_rules(cfg).family(4))
    if found != planned:
        missing = sorted(f"{t}/{c}" for t, c in planned if (t, c) not in found)
        raise CaptureError(
            "the capture rules are not in place"
            + (f" (missing {', '.join(missing)})" if missing else " (they differ from the options)")
            + ": run `meshcore iptables` with the same options first, or let the agent apply them"
        )
    return "checked: the capture rules are in place"


def join_proxy_group(gid: int) -> int:
    """Make ``gid`` the agent's effective group (its sockets are then not captured); returns
    the group it had, for the application."""
    before = os.getegid()
    os.setegid(gid)
    return before


async def start_app(argv: Sequence[str], gid: int) -> asyncio.subprocess.Process:
    """The application, in group ``gid`` with no supplementary groups (so the rules capture
    its traffic), sharing the agent's output."""
    from meshcore.dataplane.agent import as_user

    return await asyncio.create_subprocess_exec(
        *as_user(os.getuid(), gid), *argv, stdin=asyncio.subprocess.DEVNULL
    )


def capture_counts(save_output: str) -> dict[str, int]:
    """Packets counted by each ISTIO_* chain's rules in ``iptables-save -c`` output (nat
    rules see a connection's first packet only: for REDIRECT chains, connections)."""
    counts: dict[str, int] = {}
    for line in save_output.splitlines():
        if not line.startswith("["):
            continue
        packets, _, rule = line[1:].partition(":")
        words = rule.split("] ", 1)[-1].split()
        chain = words[1] if len(words) >= 2 and words[0] == "-A" else ""
        if chain.startswith("ISTIO_") and packets.isdigit():
            counts[chain] = counts.get(chain, 0) + int(packets)
    return counts
