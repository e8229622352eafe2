"""Locality load balancing (DestinationRule ``loadBalancer.localityLbSetting``) as Istio's
``ApplyLocalityLoadBalancer`` does it: the endpoints' priorities (failover) and locality weights
(distribute) relative to the locality of the proxy receiving them.

Localities are ``region/zone/subzone`` strings (WorkloadEntry ``locality``). Failover takes
effect only with outlier detection (Envoy would never leave priority 0 otherwise), as in Istio;
``distribute`` and failover are exclusive (``distribute`` wins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

__all__ = [
    "REGION_LABEL",
    "SUBZONE_LABEL",
    "ZONE_LABEL",
    "apply_locality_lb",
    "failover_enabled",
    "lb_priority",
    "locality_labels",
    "locality_match",
    "setting_of",
    "split_locality",
]

# Istio's topology labels, which it adds to the proxy's and the endpoints' labels.
REGION_LABEL = "topology.kubernetes.io/region"
ZONE_LABEL = "topology.kubernetes.io/zone"
SUBZONE_LABEL = "topology.istio.io/subzone"


def split_locality(locality: str) -> tuple[str, str, str]:
    region, _, rest = locality.partition("/")
    zone, _, subzone = rest.partition("/")
    return region, zone, subzone


def locality_labels(locality: str) -> dict[str, str]:
    """The topology labels Istio derives from a locality (those that are set)."""
    keys = (REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL)
    return {k: v for k, v in zip(keys, split_locality(locality), strict=True) if v}


def lb_priority(proxy: str, endpoints: str) -> int:
    """Istio's LbPriority: 0 when region, zone and subzone match, 1 region and zone, 2 region,
    3 none."""
    p, e = split_locality(proxy), split_locality(endpoints)
    if p[0] != e[0]:
        return 3
    if p[1] != e[1]:
        return 2
    return 0 if p[2] == e[2] else 1


def locality_match(locality: str, rule: str) -> bool:
    """Istio's LocalityMatch: each part of ``rule`` equal, ``*`` or absent."""
    return all(
        r in (x, "*", "")
        for x, r in zip(split_locality(locality), split_locality(rule), strict=True)
    )


def setting_of(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """A localityLbSetting the loader validated (meshcore.config.locality), with its defaults
    filled in: ``enabled`` (None: not set), ``distribute``, ``failover``, ``failoverPriority``."""
    raw = raw or {}
    return {
        "enabled": raw.get("enabled"),
        "distribute": [
            {"from": str(d.get("from", "")), "to": dict(d.get("to") or {})}
            for d in raw.get("distribute") or ()
        ],
        "failover": [
            {"from": str(f.get("from", "")), "to": str(f.get("to", ""))}
            for f in raw.get("failover") or ()
        ],
        "failoverPriority": list(raw.get("failoverPriority") or ()),
    }


def failover_enabled(setting: Mapping[str, Any], outlier: bool) -> bool:
    """Whether Istio applies failover priorities: with outlier detection, without
    ``distribute`` and not ``enabled: false``."""
    return outlier and not setting.get("distribute") and setting.get("enabled") is not False


def apply_locality_lb(
    cla: endpoint_pb2.ClusterLoadAssignment,
    labels: Sequence[Sequence[Mapping[str, str]]],
    proxy_locality: str,
    proxy_labels: Mapping[str, str],
    setting: Mapping[str, Any],
    outlier: bool,
) -> None:
    """Sets ``cla``'s priorities or locality weights for a proxy in ``proxy_locality``;
    ``labels[i][j]`` are the labels of endpoint j of locality group i (failoverPriority)."""
    if setting.get("enabled") is False:
        return
    if setting.get("distribute"):
        _apply_weights(cla, proxy_locality, setting["distribute"])
        return
    if not outlier:
        return
    priorities = [str(p) for p in setting.get("failoverPriority") or ()]
    failover = setting.get("failover") or ()
    if priorities and proxy_labels:
        _apply_failover_priority(cla, labels, proxy_labels, priorities)
        if failover:
            _apply_failover(cla, proxy_locality, failover)
    elif not priorities:
        _apply_failover(cla, proxy_locality, failover)


def _locality_of(group: endpoint_components_pb2.LocalityLbEndpoints) -> str:
    loc = group.locality
    return f"{loc.region}/{loc.zone}/{loc.sub_zone}"


def _compact(cla: endpoint_pb2.ClusterLoadAssignment) -> None:
    """Priorities renumbered 0..N in order, without gaps (Envoy requires it)."""
    order = {p: i for i, p in enumerate(sorted({g.priority for g in cla.endpoints}))}
    for g in cla.endpoints:
        g.priority = order[g.priority]


def _apply_failover(
    cla: endpoint_pb2.ClusterLoadAssignment, proxy: str, failover: Sequence[Mapping[str, Any]]
) -> None:
    region = split_locality(proxy)[0]
    for g in cla.endpoints:
        priority = lb_priority(proxy, _locality_of(g))
        if priority == 3:
            # A region not the proxy's: below the failover target, when one is given.
            for f in failover:
                if str(f.get("from", "")) == region:
                    if g.locality.region != str(f.get("to", "")):
                        priority = 4
                    break
        # Up to 5 locality priorities below each failoverPriority level.
        g.priority = g.priority * 5 + priority
    _compact(cla)


def _apply_failover_priority(
    cla: endpoint_pb2.ClusterLoadAssignment,
    labels: Sequence[Sequence[Mapping[str, str]]],
    proxy_labels: Mapping[str, str],
    priorities: Sequence[str],
) -> None:
    """Istio's failoverPriority: an endpoint's priority is the number of the listed labels
    (from the first that differs) it does not share with the proxy; ``key=value`` compares the
    endpoint's label with the value. Groups are split per priority."""
    lowest = len(priorities)
    out: list[endpoint_components_pb2.LocalityLbEndpoints] = []
    for group, group_labels in zip(cla.endpoints, labels, strict=True):
        by_priority: dict[int, list[endpoint_components_pb2.LbEndpoint]] = {}
        for ep, ep_labels in zip(group.lb_endpoints, group_labels, strict=True):
            priority = 0
            for j, label in enumerate(priorities):
                key, eq, value = label.partition("=")
                wanted = value if eq else proxy_labels.get(key)
                if ep_labels.get(key) != wanted:
                    priority = lowest - j
                    break
            by_priority.setdefault(priority, []).append(ep)
        for priority in sorted(by_priority):
            g = endpoint_components_pb2.LocalityLbEndpoints(priority=priority)
            g.locality.CopyFrom(group.locality)
            g.lb_endpoints.extend(by_priority[priority])
            g.load_balancing_weight.value = sum(
                e.load_balancing_weight.value or 1 for e in by_priority[priority]
            )
            out.append(g)
    del cla.endpoints[:]
    cla.endpoints.extend(out)
    _compact(cla)


def _apply_weights(
    cla: endpoint_pb2.ClusterLoadAssignment, proxy: str, distribute: Sequence[Mapping[str, Any]]
) -> None:
    """Istio's applyLocalityWeights: the first rule whose ``from`` matches the proxy sets the
    weight of each ``to`` locality (shared by the groups it matches, in proportion to their
    weights); groups matching no ``to`` get no endpoints."""
    for rule in distribute:
        if not locality_match(proxy, str(rule.get("from", ""))):
            continue
        unmatched = set(range(len(cla.endpoints)))
        for to, weight in (rule.get("to") or {}).items():
            matched = {
                i: cla.endpoints[i].load_balancing_weight.value or 1
                for i in sorted(unmatched)
                if locality_match(_locality_of(cla.endpoints[i]), str(to))
            }
            unmatched -= matched.keys()
            total = sum(matched.values())
            for i, original in matched.items():
                share = -(-original * int(weight) // total)  # ceil, in integers
                if share > 0:
                    cla.endpoints[i].load_balancing_weight.value = share
        for i in unmatched:
            del cla.endpoints[i].lb_endpoints[:]
        return
