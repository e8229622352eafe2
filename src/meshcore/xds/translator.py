"""The translator: MeshModel -> the Envoy xDS resources Istio would give one proxy.

A :class:`Translator` is what a control plane holds (Istio's ConfigGenerator). For each mesh
it keeps one :class:`MeshTranslation` (the per-mesh index and one builder per xDS type:
:mod:`~meshcore.xds.clusters`, :mod:`~meshcore.xds.routes`, :mod:`~meshcore.xds.listeners`),
shared by the mesh's proxies; a new mesh's translation inherits from the previous one whatever
the change does not touch (each builder decides, in its ``inherit``). ``generate`` assembles a
proxy's resources from the builders and collects the problems of exactly what it got.

The caches, and what a new mesh keeps of them (compared by value, kind by kind; nothing is kept
when the trust domain, the root namespace or the MeshConfig change):

- the index (services by port, workloads by label, subsets, mTLS modes): rebuilt for every mesh;
- clusters, per service port: while the service, its DestinationRule and the workloads it
  selects are equal; its endpoints: the same, and the PeerAuthentications too;
- routes (VirtualService routes, virtual hosts, route configurations, hash policies): while
  the Services, ServiceEntries, VirtualServices and DestinationRules are all equal;
- outbound listeners, per kind of client and outbound address: while the Services and
  ServiceEntries are equal; authorization filters: while the AuthorizationPolicies, the
  Services and the extension providers are; inbound listeners (and clusters), per workload:
  all that, and the PeerAuthentications, and the workload's own spec and labels.

Problems are kept with what they were found building (:mod:`meshcore.xds.problems`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from meshcore.config.meshconfig import MeshConfig
from meshcore.config.model import MeshModel
from meshcore.errors import ConfigProblem
from meshcore.xds import types
from meshcore.xds.cache import Layered, NodeInfo
from meshcore.xds.clusters import ClusterBuilder
from meshcore.xds.index import MeshIndex
from meshcore.xds.listeners import ListenerBuilder
from meshcore.xds.node import Proxy, proxy_for_node
from meshcore.xds.problems import ProblemLog, problem_key
from meshcore.xds.routes import RouteBuilder
from meshcore.xds.types import Resources

__all__ = ["Generated", "MeshTranslation", "Translator"]

log = logging.getLogger("meshcore.xds")


@dataclass(frozen=True, slots=True)
class Generated:
    """What ``generate`` returns: resources by type URL then name, and the problems met."""

    resources: Resources
    problems: list[ConfigProblem]


class MeshTranslation:
    """One mesh's translation, shared by its proxies: the index and a builder per xDS type."""

    def __init__(
        self,
        mesh: MeshModel,
        previous: MeshTranslation | None = None,
        providers: Any = None,
        mesh_config: MeshConfig | None = None,
    ) -> None:
        self.mesh = mesh
        self.providers = providers
        self.mesh_config = mesh_config
        problems = ProblemLog()
        self.index = MeshIndex(mesh, problems)
        self.clusters = ClusterBuilder(self.index, problems, mesh_config)
        self.routes = RouteBuilder(self.index, problems)
        self.listeners = ListenerBuilder(self.index, problems, providers, mesh_config)
        if previous is not None and previous.index.same_scope(self.index):
            same = self.index.unchanged(previous.index)
            self.clusters.inherit(previous.clusters)
            self.routes.inherit(previous.routes, same)
            self.listeners.inherit(previous.listeners, same)

    def generate(self, proxy: Proxy) -> Generated:
        """The proxy's resources and the problems of exactly those (see :meth:`Translator.generate`)."""
        inbound_listeners, inbound_clusters, inbound_problems = self.listeners.inbound(proxy)
        # Each type is the proxy's own resources (its workload's inbound side) over resources
        # shared with other proxies, not merged: the snapshot store reuses a shared set for every
        # proxy that has it, and the control plane updates every holder of a shared set at once
        # (see meshcore.xds.deps). Shared mappings and messages are read-only.
        resources: Resources = {
            types.CLUSTER: Layered(inbound_clusters, self.clusters.clusters(proxy.proxyless)),
            types.ENDPOINT: Layered({}, self.clusters.endpoints()),
            types.LISTENER: Layered(inbound_listeners, self.listeners.outbound_listeners(proxy)),
            types.ROUTE: Layered({}, self.routes.route_configs(proxy)),
        }
        problems = {
            problem_key(p): p
            for group in (
                self.index.mesh_problems,
                self.clusters.problems[proxy.proxyless],
                self.routes.problems[self.routes.route_key(proxy)],
                self.listeners.outbound_problems[(proxy.proxyless, proxy.outbound_address)],
                inbound_problems,
                _duplicate_names(proxy, resources),
            )
            for p in group
        }
        return Generated(resources, [problems[k] for k in sorted(problems)])


class Translator:
    """Translates meshes for proxies; the object a control plane holds.

    Proxies of one mesh share its translation (clusters, endpoints and routes are built once);
    a new mesh carries over from the last one whatever the change does not touch. Only the
    last mesh's translation is kept. ``mesh_config`` and ``extension_providers`` are the
    defaults of :meth:`generate`.
    """

    def __init__(
        self, *, mesh_config: MeshConfig | None = None, extension_providers: Any = None
    ) -> None:
        self.mesh_config = mesh_config
        self.extension_providers = extension_providers
        self._last: MeshTranslation | None = None

    def generate(
        self,
        mesh: MeshModel,
        proxy: Proxy,
        *,
        extension_providers: Any = None,
        mesh_config: MeshConfig | None = None,
    ) -> Generated:
        """The resources Istio would give ``proxy``: CDS, EDS, LDS and RDS, by type URL then name.

        ``extension_providers`` is MeshConfig's ``extensionProviders`` (ext_authz providers that
        CUSTOM AuthorizationPolicies name; see ``Authorizer.from_policies``), looked up among the
        mesh's Services.
        Problems (a VirtualService left out, a DestinationRule field dropped, an authorization
        policy that fails closed) are returned, never raised: a bad resource spoils only itself.
        They are the proxy's own: those of the resources it gets (and the mesh-wide warnings),
        sorted, the same whatever was translated before.
        """
        if mesh_config is None:
            mesh_config = self.mesh_config
        if extension_providers is None:
            extension_providers = self.extension_providers
        if (
            extension_providers is None
            and mesh_config is not None
            and mesh_config.extension_providers
        ):
            extension_providers = list(mesh_config.extension_providers)
        return self._translation(mesh, extension_providers, mesh_config).generate(proxy)

    def resources_for(self, mesh: MeshModel, node: NodeInfo) -> Resources | None:
        """The resources of a connected proxy (the control plane's generator); its problems are
        logged, never raised; None for a node id that names no proxy."""
        try:
            proxy = proxy_for_node(mesh, node.id, node.metadata)
        except ValueError as exc:
            log.error("cannot serve node %r: %s", node.id, exc)
            return None
        result = self.generate(mesh, proxy)
        for problem in result.problems:
            (log.error if problem.severity == "error" else log.warning)("%s: %s", node.id, problem)
        return result.resources

    def _translation(
        self, mesh: MeshModel, providers: Any, mesh_config: MeshConfig | None
    ) -> MeshTranslation:
        prev = self._last
        if (
            prev is not None
            and prev.mesh is mesh
            and prev.providers == providers
            and prev.mesh_config == mesh_config
        ):
            return prev
        # Listeners carry the MeshConfig's logging and tracing: a new one starts afresh.
        if prev is not None and prev.mesh_config != mesh_config:
            prev = None
        self._last = MeshTranslation(mesh, prev, providers, mesh_config)
        return self._last


def _duplicate_names(proxy: Proxy, resources: Resources) -> list[ConfigProblem]:
    """Names produced both for the proxy's own inbound side and for its outbound side (the
    xDS checklist: duplicate names across generators are found server-side): the inbound one
    is sent, and the clash is reported. It happens when a workload's address is the address
    its sidecar's outbound listeners bind to."""
    out = []
    w = proxy.workload
    for type_url in (types.LISTENER, types.CLUSTER):
        layers = resources[type_url]
        if not isinstance(layers, Layered) or not layers.own:
            continue
        for name in sorted(set(layers.own) & set(layers.shared)):
            out.append(
                ConfigProblem(
                    f"{types.SHORT_NAMES[type_url]} resource {name!r} is produced twice, for"
                    f" the workload's inbound side and for outbound traffic (its address is"
                    f" the outbound address {proxy.outbound_address}); the inbound one is"
                    " sent: give the sidecar another MESHCORE_OUTBOUND_ADDRESS",
                    path="spec.address",
                    kind="WorkloadEntry" if w is not None else "",
                    namespace=w.namespace if w is not None else proxy.namespace,
                    name=w.name if w is not None else proxy.name,
                    file=w.file if w is not None else "",
                    line=w.line if w is not None else 0,
                )
            )
    return out
