"""Sidecar scoping (Istio's SidecarScope): which services a proxy may reach, hence which
clusters, endpoints, route configurations and outbound listeners it receives.

The Sidecar that applies to a proxy is, as Istio resolves it: the first Sidecar of the proxy's
namespace whose ``workloadSelector`` selects the proxy's labels, else the first of its namespace
without a selector (a selector without labels counts as none), else the first of the root
namespace without a selector (the mesh default). No Sidecar: no scoping (every service).

Each egress listener imports services by ``namespace/dnsName`` hosts: ``*/`` any namespace,
``./`` the proxy's namespace (also in a root-namespace Sidecar), ``ns/``; ``dnsName`` is ``*``,
``*.suffix`` or a host; a ``~`` prefix on the namespace excludes what it matches (``~/*``:
nothing). The VirtualServices (bound to ``mesh``) whose hosts an egress listener imports add
their destinations' clusters (on the destination's port, else every port), as Istio's
``collectImportedServices`` does, so a route to an unimported host still has its cluster.

The outbound listener and route configuration of a port get the services of the egress listener
with that port, else those of the catch-all listener (no port); the proxy's clusters are the
union over its egress listeners. A scope compares by value: proxies with equal scopes share
what the builders make for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshcore.config.model import MeshModel, Sidecar
from meshcore.config.values import resolve_host, selector_matches
from meshcore.names import TCP_PROXY_NAME

__all__ = [
    "SidecarScope",
    "SidecarScopes",
    "registry_only",
    "scoped_layer",
    "tcp_proxy_cluster",
]


def registry_only(sc: Sidecar) -> bool | None:
    """A Sidecar's ``outboundTrafficPolicy.mode`` (REGISTRY_ONLY when the policy is given
    without a mode, as Istio's default): True for REGISTRY_ONLY, None when it sets none."""
    policy = sc.spec.get("outboundTrafficPolicy")
    if not isinstance(policy, Mapping):
        return None
    return str(policy.get("mode") or "REGISTRY_ONLY") == "REGISTRY_ONLY"


@dataclass(frozen=True, slots=True)
class SidecarScope:
    """What one proxy may reach, by value."""

    # Ports with their own egress listener -> the hosts routed on them.
    port_hosts: tuple[tuple[int, frozenset[str]], ...]
    # The catch-all egress listener's hosts (every other port); empty when there is none.
    default_hosts: frozenset[str]
    # (host, port) whose clusters and endpoints the proxy gets.
    clusters: frozenset[tuple[str, int]]
    # The Sidecar's outboundTrafficPolicy: True for REGISTRY_ONLY, False for ALLOW_ANY, None
    # when it sets none (MeshConfig's applies). Capture-mode proxies apply it.
    registry_only: bool | None = None

    def routes_to(self, host: str, port: int) -> bool:
        """Whether the outbound listener (and route configuration) of ``port`` serves ``host``."""
        for p, hosts in self.port_hosts:
            if p == port:
                return host in hosts
        return host in self.default_hosts

    def has_cluster(self, name: str) -> bool:
        """Whether the proxy gets the cluster (or ClusterLoadAssignment) ``name``: every
        ``outbound|PORT|SUBSET|HOST`` of a reachable host and port, and every cluster that is
        not a service's (tracing collectors, inbound clusters)."""
        if not name.startswith("outbound|"):
            return True
        parts = name.split("|", 3)
        if len(parts) != 4 or not parts[1].isdigit():
            return True
        return (parts[3], int(parts[1])) in self.clusters


class SidecarScopes:
    """Resolves and computes the scopes of one mesh's proxies (cached per Sidecar and
    namespace). ``hosts`` are the mesh's services and ServiceEntry hosts that have clusters:
    hostname -> (namespace, ports)."""

    def __init__(self, mesh: MeshModel, hosts: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
        self.mesh = mesh
        self.hosts = hosts
        self._by_ns: dict[str, list[Sidecar]] = {}
        for sc in mesh.sidecars:
            self._by_ns.setdefault(sc.namespace, []).append(sc)
        self._picked: dict[tuple[Any, ...], SidecarScope | None] = {}
        self._scopes: dict[tuple[Any, ...], SidecarScope] = {}

    def sidecar_for(self, namespace: str, labels: Mapping[str, str]) -> Sidecar | None:
        """The Sidecar that applies to a proxy of ``namespace`` with ``labels``, or None."""
        own = self._by_ns.get(namespace, ())
        for sc in own:
            sel = sc.workload_selector
            if sel and selector_matches(sel, labels):
                return sc
        for candidates in (own, self._by_ns.get(self.mesh.root_namespace, ())):
            for sc in candidates:
                if not sc.workload_selector:
                    return sc
        return None

    def scope(self, namespace: str, labels: Mapping[str, str]) -> SidecarScope | None:
        """The scope of a proxy of ``namespace`` with ``labels`` (None: no Sidecar applies)."""
        if not self._by_ns:
            return None
        key = (namespace, tuple(sorted(labels.items())))
        if key in self._picked:
            return self._picked[key]
        sc = self.sidecar_for(namespace, labels)
        found = None
        if sc is not None:
            skey = (namespace, sc.key)
            found = self._scopes.get(skey)
            if found is None:
                found = self._scopes[skey] = self._compute(sc, namespace)
        self._picked[key] = found
        return found

    def _compute(self, sc: Sidecar, namespace: str) -> SidecarScope:
        port_hosts: list[tuple[int, frozenset[str]]] = []
        default_hosts: frozenset[str] = frozenset()
        clusters: set[tuple[str, int]] = set()
        # No egress: Istio's default, every service the namespace can see (*/*).
        for egress in sc.egress or ({"hosts": ["*/*"]},):
            port = int((egress.get("port") or {}).get("number") or 0)
            imports = _Imports(egress.get("hosts") or (), namespace)
            hosts = {
                h
                for h, (ns, ports) in self.hosts.items()
                if imports.matches(h, ns) and (not port or port in ports)
            }
            for h in hosts:
                clusters.update((h, p) for p in (self.hosts[h][1] if not port else (port,)))
            for h, p in self._vs_destinations(imports, port):
                clusters.add((h, p))
            if port:
                port_hosts.append((port, frozenset(hosts)))
            else:
                default_hosts = frozenset(hosts)
        return SidecarScope(tuple(sorted(port_hosts)), default_hosts, frozenset(clusters),
                            registry_only(sc))  # fmt: skip

    def _vs_destinations(self, imports: _Imports, port: int) -> Iterable[tuple[str, int]]:
        for vs in self.mesh.virtual_services:
            if vs.gateways and "mesh" not in vs.gateways:
                continue
            if not any(imports.matches_vs(h, vs.namespace) for h in vs.hosts):
                continue
            for dest in _destinations(vs.spec):
                host = resolve_host(str(dest.get("host", "")), vs.namespace, self.mesh.domain)
                found = self.hosts.get(host)
                if found is None:
                    continue
                wanted = int((dest.get("port") or {}).get("number") or 0)
                for p in found[1]:
                    if (not wanted or p == wanted) and (not port or p == port):
                        yield host, p


class _Imports:
    """One egress listener's hosts, by namespace (``.`` resolved to the proxy's)."""

    def __init__(self, hosts: Iterable[str], namespace: str) -> None:
        self.include: dict[str, list[str]] = {}
        self.exclude: dict[str, list[str]] = {}
        for h in hosts:
            ns, slash, dns = str(h).partition("/")
            if not slash:
                continue  # refused by validation
            table = self.include
            if ns.startswith("~"):
                table, ns = self.exclude, ns[1:] or "*"
            table.setdefault(namespace if ns == "." else ns, []).append(dns)

    def matches(self, host: str, namespace: str) -> bool:
        for ns in (namespace, "*"):
            if any(_subset_of(host, d) for d in self.exclude.get(ns, ())):
                return False
        return any(_subset_of(host, d) for ns in (namespace, "*") for d in self.include.get(ns, ()))

    def matches_vs(self, host: str, namespace: str) -> bool:
        # Istio's VSMatches (sidecar semantics): wildcards match both ways.
        return any(
            _subset_of(host, d) or _subset_of(d, host)
            for ns in (namespace, "*")
            for d in self.include.get(ns, ())
        )


def _subset_of(host: str, pattern: str) -> bool:
    """Istio's host.Name.SubsetOf: ``host`` is covered by ``pattern`` (``*``, ``*.suffix``)."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        if host.startswith("*"):
            return host[1:].endswith(pattern[1:])
        return host.endswith(pattern[1:])
    return host == pattern


def _destinations(spec: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    for key in ("http", "tcp", "tls"):
        for route in spec.get(key) or ():
            for d in route.get("route") or ():
                yield d.get("destination") or {}
            if route.get("mirror"):
                yield route["mirror"]
            for m in route.get("mirrors") or ():
                yield m.get("destination") or {}


def scoped_layer(layer: Mapping[str, Any], scope: SidecarScope) -> dict[str, Any]:
    """The clusters (or ClusterLoadAssignments) of ``layer`` that a proxy of ``scope`` gets."""
    return {name: msg for name, msg in layer.items() if scope.has_cluster(name)}


def tcp_proxy_cluster(listener: Any) -> str | None:
    """The cluster of a listener whose one filter chain ends in a TCP proxy (a capture-mode
    ``VIP_PORT`` listener), else None."""
    chains = listener.filter_chains
    if len(chains) != 1 or not chains[0].filters:
        return None
    last = chains[0].filters[-1]
    if last.name != TCP_PROXY_NAME:
        return None
    proxy = tcp_proxy_pb2.TcpProxy()
    if not last.typed_config.Unpack(proxy):
        return None
    return proxy.cluster or None
