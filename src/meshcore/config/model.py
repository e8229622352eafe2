"""The loaded mesh: typed, immutable resources and the indexes a translator needs."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from meshcore.config.changes import EVERYTHING, NOTHING, ChangeSet
from meshcore.config.validate import DRY_RUN, GO_TRUE
from meshcore.config.values import DEFAULT_DOMAIN, resolve_host, selector_matches, thaw

DEFAULT_ROOT_NAMESPACE = "istio-system"
# The workload label Istio's auto mTLS reads (``istio`` or ``disabled``).
TLS_MODE_LABEL = "security.istio.io/tlsMode"

_EMPTY: Mapping[str, Any] = MappingProxyType({})
# A WorkloadEntry's health (see WorkloadEntry.healthy).
HEALTH_CHECKS_ANNOTATION = "proxy.istio.io/health-checks-enabled"
HEALTHY_ANNOTATION = "meshcore.io/healthy"


@dataclass(frozen=True, slots=True)
class Resource:
    """One Kubernetes-style resource as loaded: identity, source location and frozen spec."""

    kind: str
    api_version: str
    name: str
    namespace: str
    spec: Mapping[str, Any] = field(repr=False)
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, repr=False)
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY, repr=False)
    file: str = ""
    line: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def manifest(self) -> dict[str, Any]:
        """The resource as a plain Kubernetes manifest dict."""
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": metadata,
            "spec": thaw(self.spec),
        }


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str
    protocol: str
    app_protocol: str = ""


@dataclass(frozen=True, slots=True)
class Service(Resource):
    domain: str = DEFAULT_DOMAIN

    @property
    def hostname(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{self.domain}"

    @property
    def selector(self) -> Mapping[str, str]:
        return self.spec.get("selector") or _EMPTY

    @property
    def ports(self) -> tuple[ServicePort, ...]:
        return tuple(
            ServicePort(
                name=p.get("name", ""),
                port=p["port"],
                target_port=p.get("targetPort", p["port"]),
                protocol=p.get("protocol", "TCP"),
                app_protocol=p.get("appProtocol", ""),
            )
            for p in self.spec.get("ports", ())
        )


@dataclass(frozen=True, slots=True)
class WorkloadEntry(Resource):
    @property
    def healthy(self) -> bool:
        """Istio: an entry with health checks enabled (annotation
        ``proxy.istio.io/health-checks-enabled: "true"``) is healthy only once its probe said
        so (Istio keeps that in the status' Healthy condition; meshcore's auto-registration
        writes it as the annotation ``meshcore.io/healthy``); any other entry is healthy."""
        if self.annotations.get(HEALTH_CHECKS_ANNOTATION) != "true":
            return True
        return self.annotations.get(HEALTHY_ANNOTATION) == "true"

    @property
    def address(self) -> str:
        return str(self.spec.get("address", ""))

    @property
    def workload_labels(self) -> Mapping[str, str]:
        """The labels services select on: spec.labels, else metadata.labels (as Istio)."""
        return self.spec.get("labels") or self.labels

    @property
    def ports(self) -> Mapping[str, int]:
        return self.spec.get("ports") or _EMPTY

    @property
    def weight(self) -> int:
        return int(self.spec.get("weight") or 1)

    @property
    def locality(self) -> str:
        return str(self.spec.get("locality", ""))

    @property
    def network(self) -> str:
        return str(self.spec.get("network", ""))

    @property
    def service_account(self) -> str:
        return str(self.spec.get("serviceAccount") or "default")

    @property
    def tls_mode(self) -> str:
        """Istio's ``tlsMode`` of the endpoint (what its auto mTLS follows): the
        ``security.istio.io/tlsMode`` label if present, else ``istio`` when the entry names a
        service account (a sidecar with a mesh identity), else ``disabled`` (plaintext)."""
        label = self.workload_labels.get(TLS_MODE_LABEL)
        if label is not None:
            return str(label)
        return "istio" if self.spec.get("serviceAccount") else "disabled"


@dataclass(frozen=True, slots=True)
class ServiceEntry(Resource):
    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(self.spec.get("hosts", ()))

    @property
    def location(self) -> str:
        return str(self.spec.get("location", "MESH_EXTERNAL"))

    @property
    def resolution(self) -> str:
        return str(self.spec.get("resolution", "NONE"))


@dataclass(frozen=True, slots=True)
class Checked:
    """What the loader's validation parsed in a resource, by text: each duration in ns and the
    regexes that compiled. Builders read these instead of parsing or compiling again."""

    durations: Mapping[str, int]
    regexes: frozenset[str]


@dataclass(frozen=True, slots=True)
class VirtualService(Resource):
    domain: str = DEFAULT_DOMAIN
    # Set by the loader (None: built by hand, not validated here).
    checked: Checked | None = field(default=None, repr=False, compare=False)

    @property
    def hosts(self) -> tuple[str, ...]:
        """Hosts as written, short names resolved in the VirtualService's namespace."""
        return tuple(
            resolve_host(h, self.namespace, self.domain) for h in self.spec.get("hosts", ())
        )

    @property
    def gateways(self) -> tuple[str, ...]:
        return tuple(self.spec.get("gateways", ()))

    @property
    def bound_gateways(self) -> tuple[str, ...]:
        """Where the VirtualService applies, as Istio resolves ``gateways``: ``mesh`` (the
        sidecars; the default) and ``namespace/name`` of Gateways."""
        return resolve_gateways(self.gateways, self.namespace) or ("mesh",)

    @property
    def http(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(self.spec.get("http", ()))


def resolve_gateways(names: Iterable[str], namespace: str) -> tuple[str, ...]:
    """Istio's resolveGatewayName for each name: ``mesh`` stays; ``ns/name`` stays (``./name``
    is in ``namespace``); a bare name is in ``namespace``; the legacy ``name.ns[.svc...]``
    becomes ``ns/name``."""
    out = []
    for raw in names:
        g = str(raw)
        if g == "mesh":
            out.append(g)
        elif "/" in g:
            ns, _, name = g.partition("/")
            out.append(f"{namespace if ns == '.' else ns}/{name}")
        elif "." in g:
            name, _, rest = g.partition(".")
            out.append(f"{rest.partition('.')[0]}/{name}")
        else:
            out.append(f"{namespace}/{g}")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Subset:
    name: str
    labels: Mapping[str, str]
    traffic_policy: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DestinationRule(Resource):
    domain: str = DEFAULT_DOMAIN
    checked: Checked | None = field(default=None, repr=False, compare=False)

    @property
    def host(self) -> str:
        return resolve_host(str(self.spec.get("host", "")), self.namespace, self.domain)

    @property
    def traffic_policy(self) -> Mapping[str, Any]:
        return self.spec.get("trafficPolicy") or _EMPTY

    @property
    def workload_selector(self) -> Mapping[str, str] | None:
        """``workloadSelector.matchLabels`` ({} for a selector without labels: every workload
        of the namespace), None when the rule has no selector (it applies to every proxy)."""
        sel = self.spec.get("workloadSelector")
        if sel is None:
            return None
        labels: Mapping[str, str] = sel.get("matchLabels") or _EMPTY
        return labels

    @property
    def subsets(self) -> Mapping[str, Subset]:
        return MappingProxyType(
            {
                s["name"]: Subset(
                    s["name"], s.get("labels") or _EMPTY, s.get("trafficPolicy") or _EMPTY
                )
                for s in self.spec.get("subsets", ())
            }
        )


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy(Resource):
    # Set by the loader's validation: the (path, message) warnings Istio's webhook rules give
    # this policy, reported again for each workload it selects (Authorizer.from_policies trusts
    # a policy that carries them and does not check it again). None: not validated here.
    checked_warnings: tuple[tuple[str, str], ...] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def action(self) -> str:
        return str(self.spec.get("action", "ALLOW"))

    @property
    def selector(self) -> Mapping[str, str] | None:
        sel = self.spec.get("selector")
        return None if sel is None else (sel.get("matchLabels") or _EMPTY)

    @property
    def rules(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(self.spec.get("rules", ()))

    @property
    def provider(self) -> str:
        return str((self.spec.get("provider") or _EMPTY).get("name", ""))

    @property
    def dry_run(self) -> bool:
        # As Istio reads it (Go's strconv.ParseBool; validation refuses other values).
        return str(self.annotations.get(DRY_RUN, "")) in GO_TRUE


@dataclass(frozen=True, slots=True)
class PeerAuthentication(Resource):
    @property
    def selector(self) -> Mapping[str, str] | None:
        sel = self.spec.get("selector")
        return None if sel is None else (sel.get("matchLabels") or _EMPTY)

    @property
    def mode(self) -> str:
        return str((self.spec.get("mtls") or _EMPTY).get("mode", "UNSET"))

    @property
    def port_level_modes(self) -> Mapping[int, str]:
        return MappingProxyType(
            {
                int(port): str(m.get("mode", "UNSET"))
                for port, m in (self.spec.get("portLevelMtls") or {}).items()
            }
        )


@dataclass(frozen=True, slots=True)
class RequestAuthentication(Resource):
    """End-user (JWT) authentication for the workloads it selects: ``spec.jwtRules``."""

    # Set by the loader (None: built by hand, not validated here).
    checked: Checked | None = field(default=None, repr=False, compare=False)

    @property
    def jwt_rules(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(self.spec.get("jwtRules") or ())


@dataclass(frozen=True, slots=True)
class Gateway(Resource):
    """A load balancer at the edge of the mesh (``networking.istio.io`` Gateway): the servers
    (ports, hosts, TLS) its selected gateway proxies listen with."""

    @property
    def selector(self) -> Mapping[str, str]:
        return self.spec.get("selector") or _EMPTY

    @property
    def servers(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(self.spec.get("servers") or ())


@dataclass(frozen=True, slots=True)
class Secret(Resource):
    """A Kubernetes ``v1`` Secret as written in the config directory: the keys and certificates
    a Gateway's ``credentialName`` names. The loader puts its ``type``, ``data`` (base64) and
    ``stringData`` in ``spec``; :meth:`value` reads a key from either, as bytes."""

    def manifest(self) -> dict[str, Any]:
        """As Kubernetes writes a Secret: its fields at the top level, no spec."""
        out = Resource.manifest(self)
        out.update(out.pop("spec"))
        return out

    def value(self, key: str) -> bytes | None:
        import base64

        text = (self.spec.get("stringData") or _EMPTY).get(key)
        if text is not None:
            return str(text).encode()
        data = (self.spec.get("data") or _EMPTY).get(key)
        if data is None:
            return None
        return base64.b64decode(str(data))


@dataclass(frozen=True, slots=True)
class Sidecar(Resource):
    """Which services a sidecar may reach (``spec.egress``), for the workloads it selects
    (``spec.workloadSelector.labels``; none: its whole namespace, or every namespace without a
    Sidecar of its own when it is in the root namespace). See :mod:`meshcore.xds.sidecarscope`."""

    @property
    def workload_selector(self) -> Mapping[str, str] | None:
        sel = self.spec.get("workloadSelector")
        return None if sel is None else (sel.get("labels") or _EMPTY)

    @property
    def egress(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(self.spec.get("egress") or ())


@dataclass(frozen=True, slots=True)
class WorkloadGroup(Resource):
    """The template of the WorkloadEntries auto-registered for its workloads (an agent started
    with ``--workload-group``), and their readiness ``probe``; see
    :mod:`meshcore.xds.autoregistration`."""

    @property
    def template(self) -> Mapping[str, Any]:
        return self.spec.get("template") or _EMPTY

    @property
    def probe(self) -> Mapping[str, Any] | None:
        probe: Mapping[str, Any] | None = self.spec.get("probe")
        return probe


RESOURCE_CLASSES: Mapping[str, type[Resource]] = {
    "Service": Service,
    "WorkloadEntry": WorkloadEntry,
    "ServiceEntry": ServiceEntry,
    "VirtualService": VirtualService,
    "DestinationRule": DestinationRule,
    "AuthorizationPolicy": AuthorizationPolicy,
    "PeerAuthentication": PeerAuthentication,
    "RequestAuthentication": RequestAuthentication,
    "Gateway": Gateway,
    "Secret": Secret,
    "Telemetry": Resource,  # read by meshcore.config.telemetry
    "Sidecar": Sidecar,
    "WorkloadGroup": WorkloadGroup,
}


def _group(pairs: Iterable[tuple[Any, Any]]) -> MappingProxyType[Any, tuple[Any, ...]]:
    out: dict[Any, list[Any]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return MappingProxyType({k: tuple(v) for k, v in out.items()})


# The resources of each type, by attribute of the model.
_BY_TYPE: tuple[tuple[type[Resource], str], ...] = (
    (Service, "services"),
    (WorkloadEntry, "workload_entries"),
    (ServiceEntry, "service_entries"),
    (VirtualService, "virtual_services"),
    (DestinationRule, "destination_rules"),
    (AuthorizationPolicy, "authorization_policies"),
    (PeerAuthentication, "peer_authentications"),
    (RequestAuthentication, "request_authentications"),
    (Sidecar, "sidecars"),
    (WorkloadGroup, "workload_groups"),
    (Gateway, "gateways"),
)
_ATTR_OF = dict(_BY_TYPE)


class MeshModel:
    """An immutable, indexed view of a whole mesh's configuration."""

    __slots__ = (
        "__weakref__",
        "_by_key",
        "_derived",
        "_dr_by_host",
        "_dr_selected",
        "_places",
        "_se_by_host",
        "_services",
        "_vs_by_host",
        "_workloads_by_ns",
        "authorization_policies",
        "destination_rules",
        "domain",
        "gateways",
        "peer_authentications",
        "request_authentications",
        "resources",
        "root_namespace",
        "service_entries",
        "services",
        "sidecars",
        "virtual_services",
        "workload_entries",
        "workload_groups",
    )
    resources: tuple[Resource, ...]
    domain: str
    root_namespace: str
    services: tuple[Service, ...]
    workload_entries: tuple[WorkloadEntry, ...]
    service_entries: tuple[ServiceEntry, ...]
    virtual_services: tuple[VirtualService, ...]
    destination_rules: tuple[DestinationRule, ...]
    authorization_policies: tuple[AuthorizationPolicy, ...]
    peer_authentications: tuple[PeerAuthentication, ...]
    request_authentications: tuple[RequestAuthentication, ...]
    sidecars: tuple[Sidecar, ...]
    workload_groups: tuple[WorkloadGroup, ...]
    gateways: tuple[Gateway, ...]
    _by_key: MappingProxyType[tuple[str, str, str], Resource]
    _services: Mapping[str, Service]
    _workloads_by_ns: MappingProxyType[str, tuple[WorkloadEntry, ...]]
    _vs_by_host: Mapping[str, tuple[VirtualService, ...]]
    _dr_by_host: Mapping[str, tuple[DestinationRule, ...]]
    _dr_selected: Mapping[tuple[str, str], tuple[DestinationRule, ...]]
    _se_by_host: Mapping[str, tuple[ServiceEntry, ...]]
    _derived: tuple[weakref.ref[MeshModel], ChangeSet] | None
    # Per resource: its place among the resources of its type (MeshModel.replacing).
    _places: list[int]

    def __init__(
        self,
        resources: Iterable[Resource],
        *,
        domain: str = DEFAULT_DOMAIN,
        root_namespace: str = DEFAULT_ROOT_NAMESPACE,
        derived_from: tuple[MeshModel, ChangeSet] | None = None,
    ) -> None:
        set_ = object.__setattr__
        # The model this one was loaded after and what changed from it (see changes_since);
        # by weak reference, so that a chain of old models is not kept alive.
        set_(
            self,
            "_derived",
            None if derived_from is None else (weakref.ref(derived_from[0]), derived_from[1]),
        )
        res = tuple(resources)
        set_(self, "resources", res)
        set_(self, "domain", domain)
        set_(self, "root_namespace", root_namespace)

        by_type: dict[type, list[Resource]] = {}
        places: list[int] = []
        for r in res:
            of_type = by_type.setdefault(type(r), [])
            places.append(len(of_type))
            of_type.append(r)
        set_(self, "_places", places)
        for cls, attr in _BY_TYPE:
            set_(self, attr, tuple(by_type.get(cls, ())))
        set_(self, "_by_key", MappingProxyType({r.key: r for r in res}))
        self._index(None, None)

    def _index(self, prev: MeshModel | None, kinds: frozenset[str] | None) -> None:
        """The lookups by host and namespace: built, or ``prev``'s where none of ``kinds``
        (the kinds of the resources replaced since ``prev``) reaches them."""
        set_ = object.__setattr__

        def keep(kind: str, attr: str) -> bool:
            if prev is not None and kinds is not None and kind not in kinds:
                set_(self, attr, getattr(prev, attr))
                return True
            return False

        if not keep("Service", "_services"):
            set_(self, "_services", MappingProxyType({s.hostname: s for s in self.services}))
        if not keep("WorkloadEntry", "_workloads_by_ns"):
            set_(self, "_workloads_by_ns", _group((w.namespace, w) for w in self.workload_entries))
        if not keep("VirtualService", "_vs_by_host"):
            set_(
                self,
                "_vs_by_host",
                _group((h, vs) for vs in self.virtual_services for h in vs.hosts),
            )
        if not keep("DestinationRule", "_dr_by_host"):
            set_(
                self,
                "_dr_by_host",
                _group(
                    (dr.host, dr) for dr in self.destination_rules if dr.workload_selector is None
                ),
            )
            set_(
                self,
                "_dr_selected",
                _group(
                    ((dr.namespace, dr.host), dr)
                    for dr in self.destination_rules
                    if dr.workload_selector is not None
                ),
            )
        else:
            assert prev is not None
            set_(self, "_dr_selected", prev._dr_selected)
        if not keep("ServiceEntry", "_se_by_host"):
            set_(
                self,
                "_se_by_host",
                _group((h, se) for se in self.service_entries for h in se.hosts),
            )

    @classmethod
    def replacing(
        cls,
        prev: MeshModel,
        resources: Sequence[Resource],
        replaced: Mapping[int, Resource],
        changes: ChangeSet,
    ) -> MeshModel:
        """``MeshModel(resources, derived_from=(prev, changes))``, ``resources`` being
        ``prev``'s with those at the places ``replaced`` replaced by ones of the same key, at
        the cost of the change (what the replaced kinds reach is patched, the rest shared)."""
        new = cls.__new__(cls)
        set_ = object.__setattr__
        set_(new, "_derived", (weakref.ref(prev), changes))
        set_(new, "resources", tuple(resources))
        set_(new, "domain", prev.domain)
        set_(new, "root_namespace", prev.root_namespace)
        set_(new, "_places", prev._places)
        by_key = prev._by_key.copy() if replaced else prev._by_key
        patched: dict[str, list[Any]] = {}
        kinds: set[str] = set()
        for at, r in replaced.items():
            attr = _ATTR_OF.get(type(r))
            if attr is not None:
                if attr not in patched:
                    patched[attr] = list(getattr(prev, attr))
                patched[attr][prev._places[at]] = r
            by_key[r.key] = r  # type: ignore[index]
            kinds.add(r.kind)
        for _, attr in _BY_TYPE:
            set_(new, attr, tuple(patched[attr]) if attr in patched else getattr(prev, attr))
        set_(new, "_by_key", MappingProxyType(by_key) if replaced else prev._by_key)
        new._index(prev, frozenset(kinds - {"WorkloadEntry"}))
        workloads = {  # the workloads of a namespace: the replaced ones in their places
            id(prev.resources[at]): r for at, r in replaced.items() if isinstance(r, WorkloadEntry)
        }
        if workloads:
            by_ns = prev._workloads_by_ns.copy()
            for ns in {w.namespace for w in workloads.values()}:
                by_ns[ns] = tuple(workloads.get(id(w), w) for w in by_ns[ns])
            set_(new, "_workloads_by_ns", MappingProxyType(by_ns))
        return new

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("MeshModel is immutable; build a new one")

    def __len__(self) -> int:
        return len(self.resources)

    def changes_since(self, other: MeshModel) -> ChangeSet:
        """The keys of the resources that differ between ``other`` and this model, as the
        loader found them when it derived this model from ``other``; ``EVERYTHING`` when this
        model was not derived from ``other`` (nothing finer is known)."""
        if other is self:
            return NOTHING
        derived = self._derived
        if derived is None or derived[0]() is not other:
            return EVERYTHING
        if (other.domain, other.root_namespace) != (self.domain, self.root_namespace):
            return EVERYTHING
        return derived[1]

    def get(self, kind: str, namespace: str, name: str) -> Resource | None:
        return self._by_key.get((kind, namespace, name))

    def service(self, host: str, namespace: str = "default") -> Service | None:
        """A Service by FQDN (``reviews.default.svc.cluster.local``) or short name in ``namespace``."""
        return self._services.get(resolve_host(host, namespace, self.domain))

    def service_entries_for(self, host: str) -> tuple[ServiceEntry, ...]:
        return self._se_by_host.get(host, ())

    def has_host(self, host: str) -> bool:
        """True when a Service or ServiceEntry provides ``host`` (an FQDN)."""
        return host in self._services or host in self._se_by_host

    def workloads(
        self, namespace: str, labels: Mapping[str, str] | None = None
    ) -> tuple[WorkloadEntry, ...]:
        """WorkloadEntries in ``namespace`` whose labels include ``labels``."""
        found = self._workloads_by_ns.get(namespace, ())
        if not labels:
            return found
        return tuple(w for w in found if selector_matches(labels, w.workload_labels))

    def endpoints(self, service: Service) -> tuple[WorkloadEntry, ...]:
        """The workloads a Service selects (none for a Service without a selector)."""
        if not service.selector:
            return ()
        return self.workloads(service.namespace, service.selector)

    def virtual_services_for(self, host: str) -> tuple[VirtualService, ...]:
        return self._vs_by_host.get(host, ())

    def destination_rule_for(self, host: str) -> DestinationRule | None:
        """The DestinationRule for ``host`` of every proxy: one without a workloadSelector
        (Istio: the oldest wins; here the first loaded)."""
        rules = self._dr_by_host.get(host, ())
        return rules[0] if rules else None

    def selected_destination_rule(
        self, host: str, namespace: str, labels: Mapping[str, str]
    ) -> DestinationRule | None:
        """The DestinationRule with a workloadSelector that applies to ``host`` for a proxy
        of ``namespace`` with ``labels`` (Istio: only in the rule's own namespace, for the
        workloads its matchLabels select; the first loaded wins), None when there is none."""
        for dr in self._dr_selected.get((namespace, host), ()):
            if selector_matches(dr.workload_selector, labels):
                return dr
        return None

    def destination_rule_for_proxy(
        self, host: str, namespace: str, labels: Mapping[str, str]
    ) -> DestinationRule | None:
        """The DestinationRule a proxy uses for ``host``: one selecting it, else the host's."""
        return self.selected_destination_rule(host, namespace, labels) or (
            self.destination_rule_for(host)
        )

    @property
    def selector_hosts(self) -> frozenset[tuple[str, str]]:
        """(namespace, host) of the DestinationRules with a workloadSelector."""
        return frozenset(self._dr_selected)

    def subset_defined(self, host: str, subset: str) -> bool:
        """Whether any DestinationRule for ``host`` (with a workloadSelector or not) defines
        ``subset``."""
        if subset in self.subsets(host):
            return True
        return any(
            subset in dr.subsets
            for (_, h), rules in self._dr_selected.items()
            if h == host
            for dr in rules
        )

    def subsets(self, host: str) -> Mapping[str, Subset]:
        dr = self.destination_rule_for(host)
        return dr.subsets if dr is not None else MappingProxyType({})

    def authorization_policies_for(
        self, namespace: str, labels: Mapping[str, str]
    ) -> tuple[AuthorizationPolicy, ...]:
        """Policies that apply to a workload: its namespace's and the root namespace's."""
        return tuple(
            p
            for p in self.authorization_policies
            if p.namespace in (namespace, self.root_namespace)
            and selector_matches(p.selector, labels)
        )

    def peer_authentications_for(
        self, namespace: str, labels: Mapping[str, str]
    ) -> tuple[PeerAuthentication, ...]:
        """Most specific first: workload-selecting, then namespace-wide, then mesh-wide."""
        selected = [
            p
            for p in self.peer_authentications
            if p.namespace in (namespace, self.root_namespace)
            and selector_matches(p.selector, labels)
        ]

        def rank(p: PeerAuthentication) -> int:
            if p.namespace == namespace and p.selector:
                return 0
            return 1 if p.namespace == namespace else 2

        return tuple(sorted(selected, key=rank))

    def mtls_mode(self, namespace: str, labels: Mapping[str, str], port: int | None = None) -> str:
        """Effective PeerAuthentication mode (STRICT, PERMISSIVE or DISABLE) as Istio resolves it.

        The most specific policy with a mode other than UNSET wins (a port-level setting first);
        UNSET inherits from the parent; the mesh default is PERMISSIVE.
        """
        for p in self.peer_authentications_for(namespace, labels):
            if port is not None and p.selector:
                mode = p.port_level_modes.get(port, "UNSET")
                if mode != "UNSET":
                    return mode
            if p.mode != "UNSET":
                return p.mode
        return "PERMISSIVE"

    def summary(self) -> dict[str, int]:
        return {
            "Service": len(self.services),
            "WorkloadEntry": len(self.workload_entries),
            "ServiceEntry": len(self.service_entries),
            "VirtualService": len(self.virtual_services),
            "DestinationRule": len(self.destination_rules),
            "AuthorizationPolicy": len(self.authorization_policies),
            "PeerAuthentication": len(self.peer_authentications),
            "RequestAuthentication": len(self.request_authentications),
            "Sidecar": len(self.sidecars),
            "WorkloadGroup": len(self.workload_groups),
        }
