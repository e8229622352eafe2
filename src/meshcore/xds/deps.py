"""The dependency index: which proxies and resources a config change touches.

The translator (:class:`meshcore.xds.translator.Translator`) gives every proxy, per type, its own resources (its
workload's inbound listeners and clusters) over a layer shared with other proxies (the mesh's
clusters and endpoints, the outbound listeners of its address, the route configurations of its
namespace). The index remembers, per connected proxy, the workload it is bound to and the
shared layers it holds, and per config file the objects it defines. On a change:

- the objects that changed are those of the keys the config source reports changed (a
  :class:`~meshcore.config.ChangeSet`), compared by value between the old and new models;
- :meth:`DependencyIndex.affected` says which proxies' own resources may change: a
  WorkloadEntry -> the proxies bound to it, named like it, or at its old or new address; a
  PeerAuthentication, RequestAuthentication,
  AuthorizationPolicy or Sidecar -> the proxies of its namespace (every proxy for the root namespace);
  VirtualServices and DestinationRules -> none (they only produce shared route
  configurations, clusters and endpoints), except a DestinationRule with a workloadSelector
  -> the proxies of its namespace (it decides which clusters they hold); Services, ServiceEntries, and anything that changes
  how proxies share layers (a VirtualService starting to match on source labels) -> every
  proxy (None);
- each shared layer is translated once (for one proxy holding it) and compared with the old
  one by identity: the translator carries over every message the change does not touch (see
  the builders' ``inherit``), so the difference is the resources the change regenerated, which
  :meth:`meshcore.xds.cache.SnapshotCache.update_shared` applies to every holder at once.

So an endpoint change costs the translation of the service it belongs to and the diff of the
shared layers, then one persistent-map update per holder in the Rust core, whatever the fleet.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcore.config import DestinationRule, MeshModel, Resource, WorkloadEntry
from meshcore.config.changes import ChangeSet, resource_value
from meshcore.xds import types
from meshcore.xds.cache import Layered, NodeInfo
from meshcore.xds.gateway import ROUTER
from meshcore.xds.index import uses_source_match
from meshcore.xds.node import proxy_for_node

Key = tuple[str, str, str]  # (kind, namespace, name)
Change = tuple[Resource | None, Resource | None]  # (old, new); None: absent
GroupKey = int  # a group's number, kept while the group's shared layer is replaced

# Kinds whose objects only produce shared resources (routes, clusters, endpoints).
_SHARED_ONLY = frozenset({"VirtualService", "DestinationRule"})
# Kinds that produce the inbound side of the workloads of their namespace.
_INBOUND_POLICY = frozenset({"PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication"})
# Kinds that decide what the proxies of their namespace (every proxy: the root's) may reach.
_NAMESPACE_SCOPE = frozenset({"Sidecar"})
# Kinds no translation reads (WorkloadGroups make WorkloadEntries, which are themselves changes).
_NOT_TRANSLATED = frozenset({"WorkloadGroup"})
# The types whose shared layers a change of only these kinds can change, by the builders'
# carry-over rules (meshcore.xds.translator): WorkloadEntries reach the clusters (Istio's
# subset and locality settings read the workloads a cluster selects) and the endpoints; routes
# and outbound listeners are kept while no Service, ServiceEntry, VirtualService or
# DestinationRule changed. Any other kind: every type.
_LAYER_TYPES: dict[str, frozenset[str]] = {
    "WorkloadEntry": frozenset({types.CLUSTER, types.ENDPOINT}),
    "WorkloadGroup": frozenset(),
}


def changed_objects(old: MeshModel | None, new: MeshModel, changes: ChangeSet) -> dict[Key, Change]:
    """The objects behind ``changes`` (keys from the config source) that really differ between
    the two models, by value (a key changed and changed back is no change), as (old, new)."""
    if old is None or changes.everything:
        keys: Iterable[Key] = {r.key for r in new.resources} | (
            {r.key for r in old.resources} if old is not None else set()
        )
    else:
        keys = changes.keys
    out: dict[Key, Change] = {}
    for key in keys:
        o = old.get(*key) if old is not None else None
        n = new.get(*key)
        if o is n or (o is not None and n is not None and resource_value(o) == resource_value(n)):
            continue
        out[key] = (o, n)
    return out


@dataclass(slots=True)
class Plan:
    """What one change asks for (:meth:`DependencyIndex.plan`)."""

    changes: dict[Key, Change]  # the objects that changed: (old, new), None when absent
    affected: set[str] | None  # proxies whose own resources may change; None: every proxy
    # The shared layers to translate again, each for one of its holders the change does not
    # otherwise touch (its difference then goes to all of its holders).
    layers: list[tuple[GroupKey, str]]


@dataclass(slots=True)
class _Entry:
    node: NodeInfo
    namespace: str
    name: str
    ip: str
    workload: Key | None
    groups: tuple[GroupKey, ...]


@dataclass(slots=True)
class Group:
    """Proxies that hold the same shared layer of one type (``key``: its number in the
    index, the same when :meth:`DependencyIndex.move` gives it a new layer)."""

    key: GroupKey
    type_url: str
    shared: Mapping[str, Any]
    members: set[str] = field(default_factory=set)


class DependencyIndex:
    """Per proxy: its binding (namespace, name, address, WorkloadEntry) and the shared layers
    it holds, indexed by WorkloadEntry key, (namespace, name), (namespace, address) and
    namespace."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.groups: dict[GroupKey, Group] = {}
        # Each group's by (type URL, identity of its shared layer).
        self._by_layer: dict[tuple[str, int], Group] = {}
        self._numbers = itertools.count()
        self._by_workload: dict[Key, set[str]] = {}
        self._by_address: dict[tuple[str, str], set[str]] = {}
        self._by_name: dict[tuple[str, str], set[str]] = {}  # (namespace, pod name)
        self._by_namespace: dict[str, set[str]] = {}
        # Gateway proxies: their route configurations are their own (meshcore.xds.gateway)
        self._routers: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.entries

    def add(
        self, mesh: MeshModel, node: NodeInfo, resources: Mapping[str, Mapping[str, Any]] | None
    ) -> None:
        """Records what ``node`` was given (``resources``, as the translator returned them)."""
        self.remove(node.id)
        try:
            proxy = proxy_for_node(mesh, node.id, node.metadata)
        except ValueError:
            return  # never served: nothing depends on it
        groups: list[GroupKey] = []
        for type_url, by_name in (resources or {}).items():
            if isinstance(by_name, Layered):
                group = self._group(type_url, by_name.shared)
                group.members.add(node.id)
                groups.append(group.key)
        wkey = proxy.workload.key if proxy.workload is not None else None
        entry = _Entry(node, proxy.namespace, proxy.name, proxy.ip, wkey, tuple(groups))
        self.entries[node.id] = entry
        if wkey is not None:
            self._by_workload.setdefault(wkey, set()).add(node.id)
        self._by_address.setdefault((entry.namespace, entry.ip), set()).add(node.id)
        self._by_name.setdefault((entry.namespace, entry.name), set()).add(node.id)
        self._by_namespace.setdefault(entry.namespace, set()).add(node.id)
        if proxy.type == ROUTER:
            self._routers.add(node.id)

    def _group(self, type_url: str, shared: Mapping[str, Any]) -> Group:
        """The group holding ``shared`` (a new one if none does)."""
        group = self._by_layer.get((type_url, id(shared)))
        if group is None or group.shared is not shared:
            group = Group(next(self._numbers), type_url, shared)
            self.groups[group.key] = self._by_layer[(type_url, id(shared))] = group
        return group

    def _drop(self, group: Group) -> None:
        del self.groups[group.key]
        if self._by_layer.get((group.type_url, id(group.shared))) is group:
            del self._by_layer[(group.type_url, id(group.shared))]

    def move(self, gk: GroupKey, shared: Mapping[str, Any]) -> None:
        """The members of group ``gk`` now hold ``shared`` (its new shared layer): the group
        keeps its number, so no member's entry changes (nothing per proxy). Merged into the
        group already holding ``shared``, if one does."""
        group = self.groups[gk]
        other = self._by_layer.get((group.type_url, id(shared)))
        self._drop(group)
        if other is not None and other.shared is shared:
            # Rare (two layers became one): the members' entries name the other group.
            other.members |= group.members
            for n in group.members:
                e = self.entries[n]
                e.groups = tuple(other.key if g == gk else g for g in e.groups)
            return
        group.shared = shared
        self.groups[gk] = self._by_layer[(group.type_url, id(shared))] = group

    def remove(self, node_id: str) -> None:
        entry = self.entries.pop(node_id, None)
        if entry is None:
            return
        for gk in entry.groups:
            group = self.groups.get(gk)
            if group is not None:
                group.members.discard(node_id)
                if not group.members:
                    self._drop(group)
        if entry.workload is not None:
            _discard(self._by_workload, entry.workload, node_id)
        _discard(self._by_address, (entry.namespace, entry.ip), node_id)
        _discard(self._by_name, (entry.namespace, entry.name), node_id)
        _discard(self._by_namespace, entry.namespace, node_id)
        self._routers.discard(node_id)

    def nodes(self) -> list[NodeInfo]:
        return [e.node for e in self.entries.values()]

    def node(self, node_id: str) -> NodeInfo:
        return self.entries[node_id].node

    def plan(self, old: MeshModel | None, new: MeshModel, changes: ChangeSet) -> Plan:
        """The one place a change is turned into work: the changed keys (``changes``, from
        the config source, since ``old`` was served) into the objects that changed, the
        proxies to translate again and the shared layers to translate once each."""
        objects = changed_objects(old, new, changes)
        affected = self.affected(old, new, objects)
        layers: list[tuple[GroupKey, str]] = []
        if affected is not None:
            reach = layer_types(objects)
            reps: list[str] = []  # as few proxies to translate as cover the layers
            for gk, group in self.groups.items():
                if reach is not None and group.type_url not in reach:
                    continue
                rep = next((r for r in reps if r in group.members), None)
                if rep is None:
                    rep = next((n for n in group.members if n not in affected), None)
                    if rep is None:
                        continue
                    reps.append(rep)
                layers.append((gk, rep))
        return Plan(objects, affected, layers)

    def affected(
        self, old: MeshModel | None, new: MeshModel, changes: Mapping[Key, Change]
    ) -> set[str] | None:
        """The proxies whose own resources may change, or None when every proxy must be
        translated again (the change reaches what decides how proxies share layers)."""
        if old is None or (old.domain, old.root_namespace) != (new.domain, new.root_namespace):
            return None
        if any(k[0] == "VirtualService" for k in changes) and uses_source_match(
            old
        ) != uses_source_match(new):
            return None  # route configurations are now shared differently
        out: set[str] = set()
        for key, (o, n) in changes.items():
            kind, namespace, _ = key
            if kind == "WorkloadEntry":
                # Bound to it; named like it (bound to it by name once it exists); at its
                # old or new address (bound by address when no name matches).
                out |= self._by_workload.get(key, set())
                out |= self._by_name.get((namespace, key[2]), set())
                for r in (o, n):
                    if isinstance(r, WorkloadEntry) and r.address:
                        out |= self._by_address.get((namespace, r.address), set())
            elif kind == "DestinationRule" and any(
                isinstance(r, DestinationRule) and r.workload_selector is not None for r in (o, n)
            ):
                # A rule with a workloadSelector decides which clusters the proxies of its
                # namespace hold (see MeshIndex.overrides).
                out |= self._by_namespace.get(namespace, set())
            elif kind in _INBOUND_POLICY or kind in _NAMESPACE_SCOPE:
                if namespace == new.root_namespace:
                    return None
                out |= self._by_namespace.get(namespace, set())
            elif kind in _NOT_TRANSLATED:
                continue
            elif kind not in _SHARED_ONLY:
                return None  # Services, ServiceEntries: listeners, clusters, routes, inbound
            else:  # VirtualServices and DestinationRules make the gateways' own routes
                out |= self._routers
        return out


def layer_types(objects: Mapping[Key, Change]) -> frozenset[str] | None:
    """The types whose shared layers the changed objects can change (None: every type)."""
    out: frozenset[str] = frozenset()
    for kind, _, _ in objects:
        reach = _LAYER_TYPES.get(kind)
        if reach is None:
            return None
        out |= reach
    return out


def _discard(index: dict[Any, set[str]], key: Any, node_id: str) -> None:
    found = index.get(key)
    if found is not None:
        found.discard(node_id)
        if not found:
            del index[key]
