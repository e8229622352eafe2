"""Service virtual IPs (Istio's ClusterIPs) for the capture layout.

In Kubernetes the API server allocates a Service's ClusterIP; meshcore has no API server, so:

- a Service with ``spec.clusterIP`` (an IPv4 address) has that VIP; ``None`` (headless) has
  none;
- any other Service gets one derived from its hostname alone: the SHA-256 of
  ``NAME.NAMESPACE.svc.DOMAIN`` picks an address of 198.19.0.0/16 (:data:`SERVICE_CIDR`, an
  RFC 2544 range never routed on real networks; .0.0/24 and the broadcast address left out);
  when two Services meet at one address, the later in hostname order takes the next free one.

So the same Services always get the same VIPs, whichever control-plane replica computes them,
and a Service keeps its VIP when others come and go (unless it had been moved by a collision:
give such a Service a ``clusterIP`` to pin it). ServiceEntry hosts use their ``spec.addresses``
(the plain IPv4 ones; CIDR ranges are matched by no listener here) and get no VIP otherwise, as
in Istio without DNS auto-allocation. Pods resolve names to these VIPs through their hosts
file (:class:`meshcore.capture.pods.PodNetwork` takes them), as kube-dns would.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable

from meshcore.config.model import Service

__all__ = ["SERVICE_CIDR", "explicit_vip", "service_vips"]

SERVICE_CIDR = ipaddress.ip_network("198.19.0.0/16")
_FIRST = 256  # 198.19.0.0/24 is left to PodNetwork's own sequential names
_SLOTS = SERVICE_CIDR.num_addresses - _FIRST - 1


def explicit_vip(svc: Service) -> str | None:
    """``spec.clusterIP`` when it is an IPv4 address; '' for headless (``None``); None when
    unset (allocate). Raises ValueError for anything else."""
    raw = svc.spec.get("clusterIP")
    if raw is None or raw == "":
        return None
    if raw == "None":
        return ""
    try:
        return str(ipaddress.IPv4Address(str(raw)))
    except ValueError:
        raise ValueError(f"clusterIP {raw!r} is not an IPv4 address (nor 'None')") from None


def _slot(hostname: str) -> int:
    digest = hashlib.sha256(hostname.encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SLOTS


def service_vips(services: Iterable[Service]) -> tuple[dict[str, str], dict[str, str]]:
    """(VIP by hostname, error by hostname for an unusable clusterIP, which is then
    allocated). Headless Services are left out."""
    vips: dict[str, str] = {}
    errors: dict[str, str] = {}
    pending: list[str] = []
    for svc in sorted(services, key=lambda s: s.hostname):
        try:
            given = explicit_vip(svc)
        except ValueError as exc:
            errors[svc.hostname] = str(exc)
            given = None
        if given is None:
            pending.append(svc.hostname)
        elif given:
            vips[svc.hostname] = given
    taken = set(vips.values())
    base = int(SERVICE_CIDR.network_address) + _FIRST
    for host in pending:
        slot = _slot(host)
        while str(ipaddress.IPv4Address(base + slot)) in taken:
            slot = (slot + 1) % _SLOTS
        vip = str(ipaddress.IPv4Address(base + slot))
        taken.add(vip)
        vips[host] = vip
    return vips, errors
