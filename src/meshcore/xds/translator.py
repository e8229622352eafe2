"""The translator: MeshModel -> the Envoy xDS resources Istio would give one proxy.

A :class:`Translator` is what a control plane holds (Istio's ConfigGenerator). For each mesh
it keeps one :class:`MeshTranslation` (the per-mesh index and one builder per xDS type:
:mod:`~meshcore.xds.clusters`, :mod:`~meshcore.xds.routes`, :mod:`~meshcore.xds.listeners`),
shared by the mesh's proxies; a new mesh's translation inherits from the previous one whatever
the change does not touch (each builder decides, in its ``inherit``). ``generate`` assembles a
proxy's resources from the builders and collects the problems of exactly what it got.

The caches, and what a new mesh keeps of them (told by the keys the new mesh carries,
``MeshModel.changes_since``, else compared by value, kind by kind; nothing is kept when the
trust domain, the root namespace or the MeshConfig change; the one list of every cache of the
pipeline is in :mod:`meshcore.xds.controlplane`):

- the index (services by port, workloads by label, subsets, mTLS modes): rebuilt for every mesh,
  but patched when only WorkloadEntries changed (then only the clusters and endpoints of the
  hosts those workloads belong to are built again; the rest is the previous mesh's);
- clusters, per service port: while the service, its DestinationRule and the workloads it
  selects are equal; its endpoints: the same, and the PeerAuthentications too;
- routes (VirtualService routes, virtual hosts, route configurations, hash policies): while
  the Services, ServiceEntries, VirtualServices and DestinationRules are all equal;
- outbound listeners, per kind of client, outbound address and Sidecar scope: while the
  Services, ServiceEntries and DestinationRules (TCP proxy timeouts) are equal; authorization filters: while the AuthorizationPolicies, the
  Services and the extension providers are; inbound listeners (and clusters), per workload:
  all that, and the PeerAuthentications, and the workload's own spec and labels.

Problems are kept with what they were found building (:mod:`meshcore.xds.problems`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from meshcore._text import shown
from meshcore.config import ValidationReport
from meshcore.config.changes import EVERYTHING
from meshcore.config.meshconfig import MeshConfig
from meshcore.config.model import MeshModel
from meshcore.config.values import selector_matches
from meshcore.errors import ConfigProblem
from meshcore.xds import types
from meshcore.xds.cache import Layered, NodeInfo
from meshcore.xds.capturelisteners import CaptureBuilder
from meshcore.xds.clusters import ClusterBuilder
from meshcore.xds.common import CAPTURE_ONLY
from meshcore.xds.gateway import ROUTER, GatewayBuilder
from meshcore.xds.index import MeshIndex
from meshcore.xds.jwt import JwksFetcher
from meshcore.xds.listeners import ListenerBuilder
from meshcore.xds.node import Proxy, proxy_for_node
from meshcore.xds.problems import ProblemLog, problem_key
from meshcore.xds.routes import RouteBuilder
from meshcore.xds.sidecarscope import SidecarScope, scoped_layer, tcp_proxy_cluster
from meshcore.xds.trafficpolicy import SYSTEM_CA_BUNDLE
from meshcore.xds.types import Resources

LISTENER_SCOPE = "listeners"  # a key part of _scoped_layers: TCP listeners, not clusters

__all__ = ["Generated", "MeshTranslation", "Translator", "with_load_problems"]

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
        system_ca: str = SYSTEM_CA_BUNDLE,
        jwks: JwksFetcher | None = None,
    ) -> None:
        self.mesh = mesh
        self.providers = providers
        self.mesh_config = mesh_config
        problems = ProblemLog()
        self.index: MeshIndex
        changes = EVERYTHING
        if previous is not None:
            changes = mesh.changes_since(previous.mesh)
        if previous is not None and not changes.everything and changes.kinds() <= {"WorkloadEntry"}:
            # Only workloads changed: the index is patched, and the clusters and endpoints
            # of the hosts they belong to are all that is built again.
            self.index = MeshIndex.patched(previous.index, mesh, problems, changes.keys)
        else:
            self.index = MeshIndex(mesh, problems)
        self.clusters = ClusterBuilder(self.index, problems, mesh_config, system_ca)
        self.routes = RouteBuilder(self.index, problems)
        self.listeners = ListenerBuilder(self.index, problems, providers, mesh_config, jwks)
        self.gateways = GatewayBuilder(self, problems)
        # Istio's capture layout (INTERCEPTION_MODE REDIRECT), from the same builders.
        self.capture = CaptureBuilder(
            self.index, problems, self.listeners, self.routes, self.clusters, mesh_config
        )
        self._scoped_layers: dict[tuple[Any, ...], tuple[Any, dict[str, Message]]] = {}
        if self.index.stale_hosts is not None and previous is not None:
            self.capture.inherit_vips(previous.capture)  # only workloads changed
        if previous is not None and previous.index.same_scope(self.index):
            same = self.index.unchanged(previous.index, changes)
            self.clusters.inherit(previous.clusters)
            self.routes.inherit(previous.routes, same)
            self.listeners.inherit(previous.listeners, same)

    def generate(self, proxy: Proxy) -> Generated:
        """The proxy's resources and the problems of exactly those (see :meth:`Translator.generate`)."""
        if proxy.type == ROUTER:
            return self._generate_router(proxy)
        if proxy.capture and not proxy.proxyless:
            return self._generate_capture(proxy)
        inbound_listeners, inbound_clusters, inbound_problems = self.listeners.inbound(proxy)
        # DestinationRules with a workloadSelector change this proxy's clusters and endpoints.
        overrides = self.index.overrides(proxy.namespace, proxy.labels)
        clusters = self.clusters.clusters(proxy.proxyless, overrides)
        endpoints = self.clusters.endpoints(overrides, proxy.locality, proxy.labels)
        # A Sidecar limits the clusters and endpoints to the hosts the proxy may reach.
        scope = self.index.sidecar_scope(proxy.namespace, proxy.labels)
        if scope is not None:
            clusters = self._scoped(clusters, scope)
            endpoints = self._scoped(endpoints, scope)
        # Each type is the proxy's own resources (its workload's inbound side) over resources
        # shared with other proxies, not merged: the snapshot store reuses a shared set for every
        # proxy that has it, and the control plane updates every holder of a shared set at once
        # (see meshcore.xds.deps). Shared mappings and messages are read-only.
        resources: Resources = {
            types.CLUSTER: Layered(inbound_clusters, clusters),
            types.ENDPOINT: Layered({}, endpoints),
            types.LISTENER: Layered(inbound_listeners, self.listeners.outbound_listeners(proxy)),
            types.ROUTE: Layered({}, self.routes.route_configs(proxy)),
        }
        problems = {
            problem_key(p): p
            for group in (
                self.index.mesh_problems,
                self.clusters.problems_for(proxy.proxyless, overrides),
                self.routes.problems[self.routes.route_key(proxy)],
                self.listeners.outbound_problems[self.listeners.outbound_key(proxy)],
                inbound_problems,
                _duplicate_names(proxy, resources),
                self.index.loopback_problems(proxy.namespace, proxy.labels),
            )
            for p in group
        }
        return Generated(resources, [problems[k] for k in sorted(problems)])

    def _generate_router(self, proxy: Proxy) -> Generated:
        """A gateway proxy (:mod:`meshcore.xds.gateway`): its own listeners, routes and
        secrets over the mesh's clusters and endpoints."""
        overrides = self.index.overrides(proxy.namespace, proxy.labels)
        shared = self.clusters.clusters(False, overrides)
        resources: Resources = {
            **self.gateways.resources(proxy, shared),
            types.ENDPOINT: Layered(
                {}, self.clusters.endpoints(overrides, proxy.locality, proxy.labels)
            ),
        }
        problems = {
            problem_key(p): p
            for group in (
                self.index.mesh_problems,
                self.clusters.problems_for(False, overrides),
                self.gateways.generate(proxy)[1],
            )
            for p in group
        }
        return Generated(resources, [problems[k] for k in sorted(problems)])

    def _generate_capture(self, proxy: Proxy) -> Generated:
        """Istio's capture layout (:mod:`meshcore.xds.capturelisteners`): the shared clusters
        and endpoints, with the capture layout's listeners and route configurations."""
        capture = self.capture
        inbound_listeners, inbound_clusters, inbound_problems = capture.inbound(proxy)
        overrides = self.index.overrides(proxy.namespace, proxy.labels)
        shared = self.clusters.clusters(False, overrides)
        endpoints = self.clusters.endpoints(overrides, proxy.locality, proxy.labels)
        outbound = capture.outbound_listeners(proxy)
        # A Sidecar limits clusters and endpoints as for loopback sidecars; the route
        # configurations are scoped already (out-of-scope HTTP hosts meet allow_any/block_all),
        # and out-of-scope TCP services lose their VIP_PORT listener, so that their traffic
        # takes virtualOutbound's catch-all (PassthroughCluster or BlackHoleCluster), as in Istio.
        scope = self.index.sidecar_scope(proxy.namespace, proxy.labels)
        if scope is not None:
            shared = self._scoped(shared, scope)
            endpoints = self._scoped(endpoints, scope)
            outbound = self._scoped_tcp_listeners(outbound, scope)
        own = {**capture.clusters(), **capture.passthrough_clusters(overrides), **inbound_clusters}
        own_clusters = dict(sorted(own.items()))
        resources: Resources = {
            types.CLUSTER: Layered(own_clusters, shared),
            types.ENDPOINT: Layered({}, endpoints),
            types.LISTENER: Layered(inbound_listeners, outbound),
            types.ROUTE: Layered({}, capture.route_configs(proxy)),
        }
        problems = {
            problem_key(p): p
            for group in (
                self.index.mesh_problems,
                self.clusters.problems_for(False, overrides),
                self.routes.problems[self.routes.route_key(proxy)],
                capture.problems(proxy),
                capture.passthrough_problems(overrides),
                inbound_problems,
            )
            for p in group
            if CAPTURE_ONLY not in p.message  # applied here
        }
        return Generated(resources, [problems[k] for k in sorted(problems)])

    def _scoped_tcp_listeners(
        self, layer: dict[str, Message], scope: SidecarScope
    ) -> dict[str, Message]:
        """``layer`` (outbound listeners) without the TCP listeners of clusters the proxy of
        ``scope`` does not get; one mapping per layer and scope."""
        key = (id(layer), scope, LISTENER_SCOPE)
        found = self._scoped_layers.get(key)
        if found is None or found[0] is not layer:
            kept = {
                name: listener
                for name, listener in layer.items()
                if (cluster := tcp_proxy_cluster(listener)) is None or scope.has_cluster(cluster)
            }
            found = self._scoped_layers[key] = (layer, kept)
        return found[1]

    def _scoped(self, layer: dict[str, Message], scope: SidecarScope) -> dict[str, Message]:
        """``layer`` as a proxy of ``scope`` gets it: one mapping per layer and scope, shared
        by the proxies with that scope."""
        key = (id(layer), scope)
        found = self._scoped_layers.get(key)
        if found is None or found[0] is not layer:
            found = self._scoped_layers[key] = (layer, scoped_layer(layer, scope))
        return found[1]

    def load_problems(self) -> list[ConfigProblem]:
        """What proxies will be told about this mesh, found once when it is loaded (so that
        ``meshcore validate`` and ``serve`` report them before any proxy connects): the
        mesh-wide warnings, the clusters' problems and those of a sidecar's outbound
        listeners and routes in each namespace with workloads. Builds what proxies will get (nothing
        is built twice)."""
        groups = [self.index.mesh_problems, *self.index.loopback_sidecar_problems.values()]
        # A sidecar of each namespace with workloads (route configurations are per namespace).
        namespaces = set(self.index.workload_namespaces())
        for namespace in sorted(namespaces or {self.mesh.root_namespace}):
            proxy = Proxy(node_id="", ip="", name="", namespace=namespace, workload=None, labels={})
            self.listeners.outbound_listeners(proxy)
            self.routes.route_configs(proxy)
            groups.append(self.listeners.outbound_problems[self.listeners.outbound_key(proxy)])
            groups.append(self.routes.problems[self.routes.route_key(proxy)])
        self.clusters.clusters(False)
        groups.append(self.clusters.problems_for(False))
        # A gateway proxy of each Gateway, with the labels it selects, in the namespaces of
        # the workloads it selects (a gateway reads its Secrets there), else in its own.
        for gw in self.gateways.gateways:
            spaces = {
                w.namespace
                for w in self.mesh.workload_entries
                if selector_matches(gw.selector, w.workload_labels)
            }
            for namespace in sorted(spaces or {gw.namespace}):
                proxy = Proxy(node_id="", ip="", name="", namespace=namespace, workload=None,
                              labels=dict(gw.selector), type=ROUTER)  # fmt: skip
                # another Gateway's problems are found with its own namespaces
                groups.append(
                    [
                        p
                        for p in self.gateways.generate(proxy)[1]
                        if p.kind != "Gateway" or (p.namespace, p.name) == (gw.namespace, gw.name)
                    ]
                )
        groups.append(self.capture.vip_problems())
        problems = {problem_key(p): p for group in groups for p in group}
        return [problems[k] for k in sorted(problems)]


class Translator:
    """Translates meshes for proxies; the object a control plane holds.

    Proxies of one mesh share its translation (clusters, endpoints and routes are built once);
    a new mesh carries over from the last one whatever the change does not touch. Only the
    last mesh's translation is kept. ``mesh_config`` and ``extension_providers`` are the
    defaults of :meth:`generate`; ``system_ca`` is the proxies' system CA bundle (what SIMPLE
    and MUTUAL TLS origination verifies servers with when a DestinationRule gives no
    ``caCertificates``); ``jwks`` fetches RequestAuthentication ``jwksUri`` keys (a
    :class:`~meshcore.xds.jwt.JwksFetcher` of its own by default).
    """

    def __init__(
        self,
        *,
        mesh_config: MeshConfig | None = None,
        extension_providers: Any = None,
        system_ca: str = SYSTEM_CA_BUNDLE,
        jwks: JwksFetcher | None = None,
    ) -> None:
        self.mesh_config = mesh_config
        self.extension_providers = extension_providers
        self.system_ca = system_ca
        # istiod's JWKS resolver: the jwksUri keys, fetched and cached for every translation.
        self.jwks = jwks if jwks is not None else JwksFetcher()
        self._jwks_changed = False
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
        providers = self._providers(extension_providers, mesh_config)
        return self._translation(mesh, providers, mesh_config).generate(proxy)

    def _providers(self, given: Any, mesh_config: MeshConfig | None) -> Any:
        if given is None:
            given = self.extension_providers
        if given is None and mesh_config is not None and mesh_config.extension_providers:
            given = list(mesh_config.extension_providers)
        return given

    def load_problems(self, mesh: MeshModel) -> list[ConfigProblem]:
        """The translation problems of ``mesh`` found at load time, before any proxy connects
        (see :meth:`MeshTranslation.load_problems`): the same checks, run once per mesh."""
        return self._translation(
            mesh, self._providers(None, self.mesh_config), self.mesh_config
        ).load_problems()

    def resources_for(self, mesh: MeshModel, node: NodeInfo) -> Resources | None:
        """The resources of a connected proxy (the control plane's generator); its problems are
        logged, never raised; None for a node id that names no proxy."""
        try:
            proxy = proxy_for_node(mesh, node.id, node.metadata)
        except ValueError as exc:
            # The node's id and metadata are the client's: shown escaped and capped.
            log.error("cannot serve node %s: %s", shown(node.id), shown(exc, 1000))
            return None
        result = self.generate(mesh, proxy)
        for problem in result.problems:
            (log.error if problem.severity == "error" else log.warning)(
                "%s: %s", shown(node.id), shown(problem, 1000)
            )
        return result.resources

    def refresh_jwks(self) -> bool:
        """Fetches again the JWKS that are due (see :meth:`JwksFetcher.refresh`); True when
        keys changed: the next translation builds the JWT filters again (the caller then
        translates its proxies again). Blocks while fetching: for a worker thread."""
        changed = self.jwks.refresh()
        if changed:
            self._jwks_changed = True
        return changed

    def _translation(
        self, mesh: MeshModel, providers: Any, mesh_config: MeshConfig | None
    ) -> MeshTranslation:
        prev = self._last
        jwks_changed, self._jwks_changed = self._jwks_changed, False
        if (
            not jwks_changed
            and prev is not None
            and prev.mesh is mesh
            and prev.providers == providers
            and prev.mesh_config == mesh_config
        ):
            return prev
        # Listeners carry the MeshConfig's logging and tracing: a new one starts afresh.
        if prev is not None and prev.mesh_config != mesh_config:
            prev = None
        self._last = MeshTranslation(
            mesh, prev, providers, mesh_config, system_ca=self.system_ca, jwks=self.jwks
        )
        return self._last


def with_load_problems(report: ValidationReport) -> ValidationReport:
    """``report`` with the translation problems of its mesh (what proxies will not get) added
    as warnings: the config is valid Istio, so validity stays that of validation (``meshcore
    validate`` and ``describe``)."""
    if report.model is None:
        return report
    found = Translator().load_problems(report.model)
    said = {problem_key(p) for p in report.problems}  # validation's own (with its field's line)
    warnings = tuple(
        dataclasses.replace(p, severity="warning") for p in found if problem_key(p) not in said
    )
    return dataclasses.replace(report, problems=(*report.problems, *warnings))


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
        for name in sorted(n for n in layers.own if n in layers.shared):
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
