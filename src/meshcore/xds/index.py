"""The per-mesh index (Istio's PushContext): what every builder looks up about one mesh,
whatever the proxy, built once per MeshModel.

Services and ServiceEntry hosts by port, workloads by label, the Services selecting a
workload, DestinationRule subsets, PeerAuthentication modes, AuthorizationPolicies by namespace,
wildcard VirtualServices; each kind of resource as a value that compares equal when nothing
changed (what the builders' ``inherit`` compares), and the mesh-wide warnings (valid Istio
fields meshcore does not carry to Envoy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshcore.config.changes import EVERYTHING, ChangeSet, ResourceKey
from meshcore.config.model import (
    DestinationRule,
    MeshModel,
    Service,
    ServiceEntry,
    ServicePort,
    Sidecar,
    WorkloadEntry,
)
from meshcore.config.values import selector_matches
from meshcore.errors import ConfigProblem
from meshcore.xds.common import CAPTURE_ONLY, is_http, port_protocol, spiffe
from meshcore.xds.problems import ProblemLog
from meshcore.xds.sidecarscope import SidecarScope, SidecarScopes, registry_only

KINDS = (
    "services",
    "service_entries",
    "workload_entries",
    "virtual_services",
    "destination_rules",
    "authorization_policies",
    "peer_authentications",
    "request_authentications",
)


# The resource kind of each KINDS entry.
_KIND_OF = {
    "Service": "services",
    "ServiceEntry": "service_entries",
    "WorkloadEntry": "workload_entries",
    "VirtualService": "virtual_services",
    "DestinationRule": "destination_rules",
    "AuthorizationPolicy": "authorization_policies",
    "PeerAuthentication": "peer_authentications",
    "RequestAuthentication": "request_authentications",
}


def kind_state(mesh: MeshModel, kind: str) -> tuple[Any, ...]:
    """One kind of a mesh's resources, as a value that compares equal when nothing changed."""
    return tuple((r.key, r.spec, r.labels, r.annotations) for r in getattr(mesh, kind))


def uses_source_match(mesh: MeshModel) -> bool:
    """Whether route configurations depend on the proxy's labels (VirtualService matches on
    sourceLabels or sourceNamespace): it decides which proxies share route configurations."""
    return any(
        "sourceLabels" in m or "sourceNamespace" in m
        for vs in mesh.virtual_services
        for r in vs.http
        for m in r.get("match", ())
    )


@dataclass(frozen=True, slots=True)
class SeHost:
    """One host of a ServiceEntry, shaped like a Service for the translator."""

    entry: ServiceEntry
    hostname: str
    ports: tuple[ServicePort, ...]
    inline: tuple[WorkloadEntry, ...] | None  # spec.endpoints, as WorkloadEntries

    kind = "ServiceEntry"

    @property
    def name(self) -> str:
        return str(self.entry.name)

    @property
    def namespace(self) -> str:
        return str(self.entry.namespace)

    @property
    def file(self) -> str:
        return str(self.entry.file)

    @property
    def line(self) -> int:
        return int(self.entry.line)

    @property
    def spec(self) -> Mapping[str, Any]:
        spec: Mapping[str, Any] = self.entry.spec
        return spec

    @property
    def selector(self) -> Mapping[str, str]:
        labels: Mapping[str, str] = (self.entry.spec.get("workloadSelector") or {}).get(
            "labels"
        ) or {}
        return labels

    @property
    def dns(self) -> bool:
        return self.entry.resolution in ("DNS", "DNS_ROUND_ROBIN")


Host = Service | SeHost
Key = ResourceKey
# The DestinationRules with a workloadSelector that select one proxy, by host (sorted).
Overrides = tuple[tuple[str, DestinationRule], ...]


@dataclass(slots=True)
class PortService:
    service: Host
    port: ServicePort
    protocol: str


class MeshIndex:
    """Everything about one mesh that does not depend on the proxy, looked up by builders."""

    def __init__(self, mesh: MeshModel, log: ProblemLog) -> None:
        self.mesh = mesh
        self.log = log
        self._subset_cache: dict[str, Mapping[str, Any]] = {}
        self._mtls_cache: dict[tuple[Any, ...], str] = {}
        self._pa_namespaces = {pa.namespace for pa in mesh.peer_authentications}
        self._selector_hosts: dict[str, list[str]] = {}
        for namespace, host in sorted(mesh.selector_hosts):
            self._selector_hosts.setdefault(namespace, []).append(host)
        self._overrides: dict[tuple[Any, ...], Overrides] = {}
        # The ServiceEntry hosts of resolution NONE: only capture-mode sidecars route them.
        self.passthrough_hosts: list[SeHost] = []
        # The mesh-wide problems, reported to every proxy.
        with log.capture() as self.mesh_problems:
            self._warn_untranslated()
            self.services = sorted(mesh.services, key=lambda s: s.hostname)
            self.by_port: dict[int, list[PortService]] = {}
            for svc in self.services:
                for sp in sorted(svc.ports, key=lambda p: p.port):
                    proto = port_protocol(sp)
                    if proto == "udp":
                        continue
                    self.by_port.setdefault(sp.port, []).append(PortService(svc, sp, proto))
            for se_host in self._service_entry_hosts():
                for sp in se_host.ports:
                    proto = port_protocol(sp)
                    if proto != "udp":
                        self.by_port.setdefault(sp.port, []).append(PortService(se_host, sp, proto))
            for group in self.by_port.values():
                group.sort(key=lambda ps: ps.service.hostname)
            self._warn_egress_protocols()
        # A REGISTRY_ONLY Sidecar's word to the loopback proxies it selects (capture-mode ones
        # apply it: :mod:`meshcore.xds.capturelisteners`), by Sidecar.
        self.loopback_sidecar_problems: dict[Any, list[ConfigProblem]] = {}
        for sc in mesh.sidecars:
            if registry_only(sc):
                with log.capture() as self.loopback_sidecar_problems[sc.key]:
                    log.problem(
                        sc,
                        "spec.outboundTrafficPolicy.mode",
                        f"REGISTRY_ONLY {CAPTURE_ONLY}; a loopback proxy cannot block what an app"
                        " sends outside the mesh directly (it never reaches the proxy)",
                        "warning",
                    )
        # The service ports of each host, in port order (host_ports).
        self._host_ports: dict[str, list[PortService]] = {}
        for port in sorted(self.by_port):
            for ps in self.by_port[port]:
                self._host_ports.setdefault(ps.service.hostname, []).append(ps)
        self.uses_source_match = uses_source_match(mesh)
        self._eps: dict[str, tuple[WorkloadEntry, ...]] = {}
        self._by_label: dict[tuple[str, str, str], list[WorkloadEntry]] = {}
        for w in mesh.workload_entries:
            for k, v in w.workload_labels.items():
                self._by_label.setdefault((w.namespace, k, v), []).append(w)
        self._svc_by_label: dict[tuple[str, str, str], list[int]] = {}
        for i, svc in enumerate(self.services):
            for k, v in svc.selector.items():
                self._svc_by_label.setdefault((svc.namespace, k, v), []).append(i)
        self.policies_by_ns: dict[str, list[Any]] = {}
        for pol in mesh.authorization_policies:
            self.policies_by_ns.setdefault(pol.namespace, []).append(pol)
        self.request_authns_by_ns: dict[str, list[Any]] = {}
        for ra in mesh.request_authentications:
            self.request_authns_by_ns.setdefault(ra.namespace, []).append(ra)
        self._fingerprints: dict[str, tuple[Any, ...]] = {}
        self.wildcard_vs = sorted(
            (
                (host[1:], vs)
                for vs in mesh.virtual_services
                if not vs.gateways or "mesh" in vs.gateways
                for host in vs.hosts
                if host.startswith("*.")
            ),
            key=lambda e: -len(e[0]),
        )
        self._state: dict[str, tuple[Any, ...]] = {}
        self._workload_namespaces: dict[str, int] | None = None
        self._se_selectors: list[PortService] | None = None
        self._scopes: SidecarScopes | None = None

    def sidecar_scope(self, namespace: str, labels: Mapping[str, str]) -> SidecarScope | None:
        """What a proxy of ``namespace`` with ``labels`` may reach, by its Sidecar (None: no
        Sidecar applies, every service); see :mod:`meshcore.xds.sidecarscope`."""
        if not self.mesh.sidecars:
            return None
        return self._sidecar_scopes().scope(namespace, labels)

    def _warn_egress_protocols(self) -> None:
        """Istio builds a Sidecar egress listener with a port as its ``protocol`` says; the
        loopback layout has one outbound listener per port, typed by the services on it: a
        protocol that disagrees is said, not silently overridden."""
        for sc in self.mesh.sidecars:
            for i, egress in enumerate(sc.egress):
                port = egress.get("port") or {}
                name = str(port.get("protocol") or "").lower()
                if not name or not port.get("number"):
                    continue
                number = int(port["number"])
                wanted = is_http(port_protocol(ServicePort(name, number, number, "TCP")))
                found = {is_http(ps.protocol) for ps in self.by_port.get(number, ())}
                if found and found != {wanted}:
                    self.log.problem(
                        sc,
                        f"spec.egress[{i}].port.protocol",
                        f"protocol {port['protocol']} is not applied: the outbound listener of"
                        f" port {number} is typed by the services on it"
                        f" ({'HTTP' if True in found else 'TCP'}), one listener per port in"
                        " the loopback layout",
                        "warning",
                    )

    def loopback_problems(self, namespace: str, labels: Mapping[str, str]) -> list[ConfigProblem]:
        """What a loopback proxy of ``namespace`` with ``labels`` is told of its Sidecar."""
        sc = self.sidecar_for(namespace, labels) if self.loopback_sidecar_problems else None
        return self.loopback_sidecar_problems.get(sc.key, []) if sc is not None else []

    def sidecar_for(self, namespace: str, labels: Mapping[str, str]) -> Sidecar | None:
        """The Sidecar that applies to a proxy of ``namespace`` with ``labels`` (its ingress
        listeners replace the workload's inbound ports), or None."""
        if not self.mesh.sidecars:
            return None
        return self._sidecar_scopes().sidecar_for(namespace, labels)

    def _sidecar_scopes(self) -> SidecarScopes:
        if self._scopes is None:
            hosts: dict[str, tuple[str, tuple[int, ...]]] = {}
            for port in sorted(self.by_port):
                for ps in self.by_port[port]:
                    ns, ports = hosts.get(ps.service.hostname, (ps.service.namespace, ()))
                    hosts[ps.service.hostname] = (ns, (*ports, port))
            self._scopes = SidecarScopes(self.mesh, hosts)
        return self._scopes

    @classmethod
    def patched(
        cls, prev: MeshIndex, mesh: MeshModel, log: ProblemLog, workloads: Iterable[Key]
    ) -> MeshIndex:
        """``prev``'s index for ``mesh``, a mesh that differs from ``prev``'s only in the
        WorkloadEntries ``workloads`` (keys): everything else is shared with ``prev`` (never
        changed after it is built, but for the lazily filled lookups, which are copied), and
        only the label index entries and lookups those workloads reach are redone. What a
        build from scratch gives, at the cost of the change rather than of the mesh."""
        new = cls.__new__(cls)
        new.__dict__.update(prev.__dict__)
        new.mesh, new.log = mesh, log
        by_label = dict(prev._by_label)
        # Kept up to date only when already counted (else counted when first asked for).
        counts = dict(prev._workload_namespaces) if prev._workload_namespaces is not None else None
        stale: set[str] = set()  # hosts whose workloads changed
        for key in workloads:
            for w in (prev.mesh.get(*key), mesh.get(*key)):
                if isinstance(w, WorkloadEntry):
                    stale.update(prev.hosts_selecting(w))
            old, now = prev.mesh.get(*key), mesh.get(*key)
            if isinstance(old, WorkloadEntry):
                for k, v in old.workload_labels.items():
                    lk = (old.namespace, k, v)
                    # By key: an entry may be an older object of equal value (a document
                    # whose lines moved is a new object, not a change).
                    kept = [x for x in by_label.get(lk, ()) if x.key != key]
                    if kept:
                        by_label[lk] = kept
                    else:
                        by_label.pop(lk, None)
                if counts is not None:
                    counts[old.namespace] -= 1
                    if not counts[old.namespace]:
                        del counts[old.namespace]
            if isinstance(now, WorkloadEntry):
                for k, v in now.workload_labels.items():
                    lk = (now.namespace, k, v)
                    by_label[lk] = [*by_label.get(lk, ()), now]
                if counts is not None:
                    counts[now.namespace] = counts.get(now.namespace, 0) + 1
        new._by_label = by_label
        new._workload_namespaces = counts
        new._eps = dict(prev._eps)
        new._fingerprints = dict(prev._fingerprints)
        for host in stale:
            new._eps.pop(host, None)
            new._fingerprints.pop(host, None)
        new._state = {k: v for k, v in prev._state.items() if k != "workload_entries"}
        new.stale_hosts = frozenset(stale)
        new.changed_workloads = tuple(
            w for key in workloads if isinstance(w := mesh.get(*key), WorkloadEntry)
        )
        # Lookups of what did not change (DestinationRules, PeerAuthentications, hosts): copied,
        # so that filling them for the new mesh leaves the old index as it was.
        new._subset_cache = dict(prev._subset_cache)
        new._mtls_cache = dict(prev._mtls_cache)
        new._overrides = dict(prev._overrides)
        return new

    # The hosts whose workloads changed, when this index was patched from another (else None).
    stale_hosts: frozenset[str] | None = None
    # When patched: the WorkloadEntries changed (as they are now; those removed are not).
    changed_workloads: tuple[WorkloadEntry, ...] = ()

    def workload_namespaces(self) -> Mapping[str, int]:
        """The namespaces with WorkloadEntries (and how many each has)."""
        if self._workload_namespaces is None:
            counts: dict[str, int] = {}
            for w in self.mesh.workload_entries:
                counts[w.namespace] = counts.get(w.namespace, 0) + 1
            self._workload_namespaces = counts
        return self._workload_namespaces

    def hosts_selecting(self, w: WorkloadEntry) -> set[str]:
        """The hosts (Services and ServiceEntries with a workloadSelector) that select ``w``:
        those whose endpoints and clusters it is part of."""
        out = {svc.hostname for svc in self.services_of(w)}
        for ps in self._se_selecting():
            svc = ps.service
            if svc.namespace == w.namespace and selector_matches(svc.selector, w.workload_labels):
                out.add(svc.hostname)
        return out

    def _se_selecting(self) -> list[PortService]:
        if self._se_selectors is None:
            self._se_selectors = [
                ps
                for group in self.by_port.values()
                for ps in group
                if isinstance(ps.service, SeHost)
                and ps.service.inline is None
                and ps.service.selector
            ]
        return self._se_selectors

    def kind_state(self, kind: str) -> tuple[Any, ...]:
        """:func:`kind_state` of this index's mesh, computed once."""
        found = self._state.get(kind)
        if found is None:
            found = self._state[kind] = kind_state(self.mesh, kind)
        return found

    def same_scope(self, other: MeshIndex) -> bool:
        """Whether translations of the two meshes can share anything (same trust domain and
        root namespace)."""
        return (self.mesh.domain, self.mesh.root_namespace) == (
            other.mesh.domain,
            other.mesh.root_namespace,
        )

    def unchanged(self, other: MeshIndex, changes: ChangeSet = EVERYTHING) -> dict[str, bool]:
        """Per kind (KINDS), whether ``other``'s mesh has the same resources (by value): told
        by ``changes`` (the keys changed from ``other``'s mesh to this one) when known."""
        if not changes.everything:
            changed = {_KIND_OF[k] for k in changes.kinds() if k in _KIND_OF}
            if changes.kinds() <= _KIND_OF.keys():
                return {kind: kind not in changed for kind in KINDS}
        return {kind: other.kind_state(kind) == self.kind_state(kind) for kind in KINDS}

    def _warn_untranslated(self) -> None:
        """Valid Istio fields this translator does not carry to Envoy: said, never ignored."""
        wide: dict[str, Any] = {}
        for sc in self.mesh.sidecars:
            if sc.workload_selector:
                continue
            first = wide.setdefault(sc.namespace, sc)
            if first is not sc:
                self.log.problem(
                    sc,
                    "spec",
                    f"namespace {sc.namespace} already has a Sidecar without workloadSelector"
                    f" ({first.name}), which is used (Istio keeps the oldest)",
                    "warning",
                )
        for res in (*self.mesh.virtual_services, *self.mesh.destination_rules):
            export = tuple(res.spec.get("exportTo", ()))
            if export and export != ("*",):
                self.log.problem(
                    res,
                    "spec.exportTo",
                    "not honoured by meshcore: visible to every namespace",
                    "warning",
                )
        for vs in self.mesh.virtual_services:
            for key in ("tcp", "tls"):
                # on gateways they are translated (meshcore.xds.gateway); on sidecars not
                if vs.spec.get(key) and "mesh" in vs.bound_gateways:
                    self.log.problem(
                        vs,
                        f"spec.{key}",
                        f"{key} routes are not translated: TCP ports go to the destination"
                        " service's default cluster",
                        "warning",
                    )
            for i, http in enumerate(vs.http):
                if (http.get("retries") or {}).get("retryRemoteLocalities"):
                    self.log.problem(
                        vs,
                        f"spec.http[{i}].retries.retryRemoteLocalities",
                        "not translated (retries may stay in the local locality)",
                        "warning",
                    )
                if (http.get("corsPolicy") or {}).get("unmatchedPreflights"):
                    self.log.problem(
                        vs,
                        f"spec.http[{i}].corsPolicy.unmatchedPreflights",
                        "not translated (Envoy's default: preflights forwarded)",
                        "warning",
                    )
        for dr in self.mesh.destination_rules:
            policies = [("spec.trafficPolicy", dr.traffic_policy)]
            policies += [
                (f"spec.subsets[{s.name}].trafficPolicy", s.traffic_policy)
                for s in dr.subsets.values()
            ]
            for base, tp in policies:
                levels = [(base, tp)] + [
                    (f"{base}.portLevelSettings[{k}]", pls)
                    for k, pls in enumerate(tp.get("portLevelSettings", ()))
                ]
                for path, pol in levels:
                    lb = pol.get("loadBalancer") or {}
                    tls = pol.get("tls") or {}
                    fields = [
                        (lb, "zoneAwareLbSetting", ".loadBalancer"),
                        (lb, "warmupDurationSecs", ".loadBalancer"),
                        (lb, "warmup", ".loadBalancer"),
                        (tls, "caCrl", ".tls"),
                        (pol, "tunnel", ""),
                        (pol, "proxyProtocol", ""),
                    ]
                    for spec, name, sub in fields:
                        if spec.get(name):
                            self.log.problem(
                                dr, f"{path}{sub}.{name}", "not translated by meshcore", "warning"
                            )
                    if dr.workload_selector is not None and lb.get("consistentHash"):
                        self.log.problem(
                            dr,
                            f"{path}.loadBalancer.consistentHash",
                            "the hash key of a DestinationRule with a workloadSelector is not"
                            " put on routes (meshcore shares them per namespace): the selected"
                            " proxies' hash-based clusters get requests without a key",
                            "warning",
                        )

    def service_accounts(self, svc: Host, workloads: Iterable[WorkloadEntry]) -> list[str]:
        """Istio's service accounts of a service (the SANs its mTLS clusters verify): the
        identities of its endpoints that name a service account and, for a ServiceEntry, its
        ``subjectAltNames``."""
        out = {
            spiffe(self.mesh.domain, w.namespace, w.service_account)
            for w in workloads
            if w.spec.get("serviceAccount")
        }
        if isinstance(svc, SeHost):
            out.update(str(san) for san in svc.spec.get("subjectAltNames", ()))
        return sorted(out)

    def subsets(self, host: str) -> Mapping[str, Any]:
        # DestinationRule.subsets builds a new mapping on every access.
        found = self._subset_cache.get(host)
        if found is None:
            found = self._subset_cache[host] = self.mesh.subsets(host)
        return found

    def mtls_mode(self, w: WorkloadEntry, port: int) -> str:
        key = (w.namespace, tuple(sorted(w.workload_labels.items())), port)
        found = self._mtls_cache.get(key)
        if found is None:
            if not self._pa_namespaces & {w.namespace, self.mesh.root_namespace}:
                found = "PERMISSIVE"  # no PeerAuthentication applies: Istio's mesh default
            else:
                found = self.mesh.mtls_mode(w.namespace, w.workload_labels, port)
            self._mtls_cache[key] = found
        return found

    def _service_entry_hosts(self) -> list[SeHost]:
        """ServiceEntry hosts the translator gives clusters (and routes, for HTTP ports)."""
        seen = {svc.hostname for svc in self.services}
        out: list[SeHost] = []
        for se in sorted(self.mesh.service_entries, key=lambda e: (e.namespace, e.name)):
            ports = _se_ports(se)
            if se.resolution not in ("STATIC", "DNS", "DNS_ROUND_ROBIN"):
                self.log.problem(
                    se,
                    "spec.resolution",
                    f"resolution {se.resolution} {CAPTURE_ONLY}; loopback proxies get no"
                    " cluster for it",
                    "warning",
                )
                if se.resolution == "NONE":
                    self.passthrough_hosts.extend(SeHost(se, h, ports, None) for h in se.hosts)
                continue
            inline = None
            if se.spec.get("endpoints"):
                inline = tuple(
                    WorkloadEntry(
                        kind="WorkloadEntry",
                        api_version=se.api_version,
                        name=f"{se.name}[{i}]",
                        namespace=se.namespace,
                        spec=ep,
                        file=se.file,
                        line=se.line,
                    )
                    for i, ep in enumerate(se.spec["endpoints"])
                )
            for i, host in enumerate(se.hosts):
                if host.startswith("*"):
                    self.log.problem(
                        se,
                        f"spec.hosts[{i}]",
                        "wildcard hosts need a dynamic forward proxy; not translated",
                        "warning",
                    )
                elif host in seen:
                    self.log.problem(
                        se,
                        f"spec.hosts[{i}]",
                        f"host {host} is already defined by a Service or an earlier"
                        " ServiceEntry, which is used",
                        "warning",
                    )
                else:
                    seen.add(host)
                    out.append(SeHost(se, host, ports, inline))
        return out

    def selected(self, svc: Host) -> tuple[WorkloadEntry, ...]:
        """The workloads a Service selects, through a label index (MeshModel scans)."""
        if isinstance(svc, SeHost) and svc.inline is not None:
            return svc.inline
        found = self._eps.get(svc.hostname)
        if found is None:
            found = ()
            if svc.selector:
                lists = [
                    self._by_label.get((svc.namespace, k, v), []) for k, v in svc.selector.items()
                ]
                smallest = min(lists, key=len)
                found = tuple(
                    w for w in smallest if selector_matches(svc.selector, w.workload_labels)
                )
            self._eps[svc.hostname] = found
        return found

    def services_of(self, w: WorkloadEntry) -> list[Service]:
        """The Services selecting a workload, in hostname order."""
        cands: set[int] = set()
        for k, v in w.workload_labels.items():
            cands.update(self._svc_by_label.get((w.namespace, k, v), ()))
        return [
            self.services[i]
            for i in sorted(cands)
            if selector_matches(self.services[i].selector, w.workload_labels)
        ]

    def overrides(self, namespace: str, labels: Mapping[str, str]) -> Overrides:
        """The DestinationRules with a workloadSelector that select a proxy of ``namespace``
        with ``labels``, by host: where its clusters differ from the mesh's shared ones."""
        hosts = self._selector_hosts.get(namespace)
        if not hosts:
            return ()
        key = (namespace, tuple(sorted(labels.items())))
        found = self._overrides.get(key)
        if found is None:
            picked = [
                (host, self.mesh.selected_destination_rule(host, namespace, labels))
                for host in hosts
            ]
            found = self._overrides[key] = tuple((h, dr) for h, dr in picked if dr is not None)
        return found

    def host_ports(self, host: str) -> list[PortService]:
        """The service ports of one host, in port order."""
        return self._host_ports.get(host, [])

    def subset_workloads(
        self, svc: Host, subset: str, dr: DestinationRule | None = None
    ) -> tuple[WorkloadEntry, ...]:
        """The workloads of a service's subset: as the host's DestinationRule defines it, or
        ``dr`` (one with a workloadSelector) when given."""
        eps = self.selected(svc)
        if not subset:
            return eps
        sub = (dr.subsets if dr is not None else self.subsets(svc.hostname)).get(subset)
        if sub is None:
            return ()
        return tuple(w for w in eps if selector_matches(sub.labels, w.workload_labels))

    def fingerprint(self, svc: Host) -> tuple[Any, ...]:
        """Everything a service's outbound clusters are built from (compared by value)."""
        found = self._fingerprints.get(svc.hostname)
        if found is None:
            dr = self.mesh.destination_rule_for(svc.hostname)
            found = (
                svc.spec,
                dr.spec if dr is not None else None,
                tuple((w.key, w.spec, w.labels, w.healthy) for w in self.selected(svc)),
            )
            self._fingerprints[svc.hostname] = found
        return found

    def port_groups(self) -> list[tuple[PortService, list[str]]]:
        return [
            (ps, ["", *sorted(self.subsets(ps.service.hostname))])
            for port in sorted(self.by_port)
            for ps in self.by_port[port]
        ]


def _se_ports(se: ServiceEntry) -> tuple[ServicePort, ...]:
    """A ServiceEntry's ports, shaped as a Service's."""
    return tuple(
        ServicePort(
            name=str(p.get("name") or p["number"]),
            port=int(p["number"]),
            target_port=int(p.get("targetPort") or p["number"]),
            protocol="TCP",
            app_protocol=str(p.get("protocol", "")).lower(),
        )
        for p in se.spec.get("ports", ())
    )
