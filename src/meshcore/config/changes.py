"""What a load changed, whatever the config source: the keys of the resources that changed.

The first link of the control plane's change pipeline (:mod:`meshcore.xds.controlplane`): a
source (the directory loader, an etcd watch) reports a :class:`ChangeSet`, a model remembers the
one it was derived with (:meth:`meshcore.config.MeshModel.changes_since`), and the builders and
the dependency index turn keys into the resources and proxies to build again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["EVERYTHING", "NOTHING", "ChangeSet", "ResourceKey", "changed_keys", "resource_value"]

ResourceKey = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """What one load changed, whatever the source (files, etcd): the keys of the resources
    added, removed or changed in value (apiVersion, spec, labels, annotations; not their place
    in a file), or ``everything`` (a first load, or a change nothing finer describes).
    What the control plane's pipeline starts from (:mod:`meshcore.xds.controlplane`)."""

    keys: frozenset[ResourceKey] = frozenset()
    everything: bool = False

    def __or__(self, other: ChangeSet) -> ChangeSet:
        if self.everything or other.everything:
            return EVERYTHING
        return ChangeSet(self.keys | other.keys)

    def __bool__(self) -> bool:
        return self.everything or bool(self.keys)

    def kinds(self) -> frozenset[str]:
        """The kinds of the changed resources (meaningless with ``everything``)."""
        return frozenset(k[0] for k in self.keys)


NOTHING = ChangeSet()
EVERYTHING = ChangeSet(everything=True)


def changed_keys(before: Iterable[Any], after: Iterable[Any]) -> set[ResourceKey]:
    """The keys of the resources (anything with ``key``, ``api_version``, ``spec``, ``labels``
    and ``annotations``) added, removed or changed in value from ``before`` to ``after``;
    the same object is not compared."""
    before, after = list(before), list(after)
    if len(before) == len(after):
        # The common case (documents edited in place): compared side by side.
        pairs = [(o, n) for o, n in zip(before, after, strict=True) if o is not n]
        if all(o.key == n.key for o, n in pairs):
            return {n.key for o, n in pairs if resource_value(o) != resource_value(n)}
    old: dict[ResourceKey, Any] = {}
    out: set[ResourceKey] = set()
    for r in before:
        if old.setdefault(r.key, r) is not r:
            out.add(r.key)  # defined twice: which one counts is the model's business
    for r in after:
        key = r.key
        o = old.pop(key, None)  # None the second time a key is met: changed
        if o is r:
            continue
        if o is None or resource_value(o) != resource_value(r):
            out.add(key)
    out.update(old)
    return out


def resource_value(r: Any) -> tuple[Any, ...]:
    """What a resource means (not where it was read): what a change is found by."""
    return (r.api_version, r.spec, r.labels, r.annotations)
