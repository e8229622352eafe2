"""The rules of a DestinationRule's ``loadBalancer.localityLbSetting`` as Istio's
``ValidateLocalityLbSetting`` checks them (pkg/config/validation): ``distribute`` and
``failover`` exclusive; ``failover`` with a topology label in ``failoverPriority`` refused;
each ``distribute`` entry's weights in [1, 100] summing to 100, its localities and the
entries' ``from`` localities well formed and not overlapping; failover between two different
plain regions; a warning when failover has no outlier detection to act on."""

from __future__ import annotations

from typing import Any

from meshcore.config.validate import Checker, Path, _d, _l

__all__ = ["TOPOLOGY_LABELS", "check_failover", "check_locality_lb"]

TOPOLOGY_LABELS = frozenset(
    {"topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"}
)


def check_locality_lb(c: Checker, setting: Any, outlier: bool, path: Path) -> None:
    """``setting`` at ``path`` (shape already checked); ``outlier``: the policy has outlier
    detection. Like Istio, stops at the first problem of the exclusive settings and weights."""
    if not isinstance(setting, dict):
        return
    distribute, failover = _l(setting.get("distribute")), _l(setting.get("failover"))
    if distribute and failover:
        c.error(path, "can not simultaneously specify 'distribute' and 'failover'")
        return
    if failover:
        for i, label in enumerate(_l(setting.get("failoverPriority"))):
            if label in TOPOLOGY_LABELS:
                c.error(
                    path + ("failoverPriority", i),
                    f"can not simultaneously set 'failover' and topology label '{label}' in"
                    " 'failover_priority'",
                )
                return
    sources = []
    for i, entry in enumerate(distribute):
        entry = _d(entry)
        dpath = path + ("distribute", i)
        sources.append((str(entry.get("from", "")), dpath + ("from",)))
        to = _d(entry.get("to"))
        weights = [w for w in to.values() if isinstance(w, int) and not isinstance(w, bool)]
        if len(weights) != len(to):
            return  # a weight that is not a number: reported with the shape
        if any(not 1 <= w <= 100 for w in weights):
            c.error(dpath + ("to",), "locality weight must be in range [1, 100]")
            return
        if sum(weights) != 100:
            c.error(dpath + ("to",), f"total locality weight {sum(weights)} != 100")
            return
        _localities(c, [(str(k), dpath + ("to", str(k))) for k in to])
    _localities(c, sources)
    if (failover or setting.get("failoverPriority")) and not outlier:
        c.warn(path, "outlier detection policy must be provided for failover")
    check_failover(c, failover, path, "locality lb", "locality lb failover only specify region")


def check_failover(c: Checker, failover: list[Any], path: Path, what: str, one_region: str) -> None:
    """Istio's rules for the ``failover`` entries of a locality or zone-aware setting at
    ``path`` (``what``: the setting's name in the messages; ``one_region``: the message for a
    zone or subzone given): two different regions, no wildcard."""
    for i, fo in enumerate(failover):
        src, dst = str(_d(fo).get("from", "")), str(_d(fo).get("to", ""))
        fpath = path + ("failover", i)
        if src == dst:
            c.error(fpath, f"{what} failover settings must specify different regions")
        if "/" in src or "/" in dst:
            c.error(fpath, one_region)
        if "*" in src or "*" in dst:
            c.error(fpath, f"{what} failover region should not contain '*' wildcard")


def _localities(c: Checker, localities: list[tuple[str, Path]]) -> None:
    """Istio's validateLocalities: ``region[/zone[/subzone]]``, no empty part, at most one
    ``*`` and only at the end, and no locality that another listed one already covers (the
    first such is reported)."""
    # region -> zone -> subzones ("*": the whole of it)
    seen: dict[str, dict[str, set[str]]] = {}
    for locality, path in localities:
        stars = locality.count("*")
        if stars > 1 or (stars == 1 and not locality.endswith("*")):
            c.error(path, f"locality {locality} wildcard '*' number can not exceed 1 and must"
                    " be in the end")  # fmt: skip
            return
        overlap = f"locality {locality} overlap with previous specified ones"
        if "*" in seen:
            c.error(path, overlap)
            return
        parts = locality.split("/", 2)
        if any(not p for p in parts):
            c.error(path, f"locality {locality} must not contain empty region/zone/subzone info")
            return
        region = parts[0]
        zones = seen.get(region)
        if len(parts) == 1:
            if zones is not None:
                c.error(path, overlap)
                return
            seen[region] = {"*": {"*"}}
            continue
        zone = parts[1]
        if zones is None:
            seen[region] = {zone: {parts[2] if len(parts) == 3 else "*"}}
            continue
        subzones = zones.get(zone)
        if "*" in zones or (len(parts) == 2 and subzones is not None):
            c.error(path, overlap)
            return
        if len(parts) == 2:
            zones[zone] = {"*"}
        elif subzones is None:
            zones[zone] = {parts[2]}
        elif "*" in subzones or parts[2] in subzones:
            c.error(path, overlap)
            return
        else:
            subzones.add(parts[2])
