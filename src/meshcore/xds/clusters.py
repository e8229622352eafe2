"""Clusters and endpoints (CDS, EDS): Istio's ``outbound|PORT|SUBSET|HOST`` per service port
and DestinationRule subset (EDS over ADS; STRICT_DNS / LOGICAL_DNS for DNS ServiceEntries),
their traffic policy (:mod:`meshcore.xds.trafficpolicy`) and auto mTLS, the
ClusterLoadAssignments named after them, and the inbound cluster ``inbound|PORT||`` to the app.

Locality load balancing (:mod:`meshcore.xds.locality`): a DestinationRule's
``localityLbSetting``, and with outlier detection Istio's mesh-wide default (enabled: failover
by locality), make a cluster's endpoints depend on the proxy's locality; those are built once
per locality (and the labels a ``failoverPriority`` names) over the shared ones.

Built once per mesh and shared by its proxies. A new mesh carries over, per service port, the
clusters and endpoints of services whose Service, DestinationRule and workloads are equal (and,
for endpoints, the PeerAuthentications: they decide the ``tlsMode`` metadata).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf.message import Message

from meshcore.config.meshconfig import MeshConfig
from meshcore.config.model import DestinationRule, WorkloadEntry
from meshcore.errors import ConfigProblem
from meshcore.names import (
    HTTP_OPTIONS_KEY,
    OUTBOUND,
    RAW_BUFFER_SOCKET,
    TRANSPORT_SOCKET_MATCH_KEY,
    cluster_name,
)
from meshcore.xds.common import (
    DEFAULT_CONNECT_TIMEOUT_NS,
    HTTP2_PROTOCOLS,
    NOTHING_PARSED,
    Invalid,
    ads,
    checked_of,
    duration_ns,
    endpoint_port,
    pack,
    socket_address,
    tls_socket,
)
from meshcore.xds.index import MeshIndex, Overrides, PortService, SeHost
from meshcore.xds.locality import (
    apply_locality_lb,
    failover_enabled,
    locality_labels,
    setting_of,
)
from meshcore.xds.problems import ProblemLog
from meshcore.xds.telemetry import tracing_clusters, workload_metadata
from meshcore.xds.trafficpolicy import (
    SYSTEM_CA_BUNDLE,
    apply_connection_pool,
    apply_lb,
    apply_outlier,
    effective_policy,
    upstream_tls,
)

# Circuit breakers: effectively off but tracked (Istio's defaults).
MAX_U32 = 4294967295
_GRPC_LB_POLICIES = frozenset({cluster_pb2.Cluster.ROUND_ROBIN, cluster_pb2.Cluster.RING_HASH})


class ClusterBuilder:
    """The mesh's outbound clusters (per kind of client: Envoy or proxyless gRPC) and
    endpoints, with the problems met building them."""

    def __init__(
        self,
        index: MeshIndex,
        log: ProblemLog,
        mesh_config: MeshConfig | None,
        system_ca: str = SYSTEM_CA_BUNDLE,
    ) -> None:
        self.index = index
        self.system_ca = system_ca
        self.mesh = index.mesh
        self.log = log
        self.mesh_config = mesh_config
        self._clusters: dict[bool, dict[str, Message]] = {}
        self.problems: dict[Any, list[ConfigProblem]] = {}
        # Per kind of client and set of DestinationRules with a workloadSelector.
        self._selected_clusters: dict[tuple[Any, ...], dict[str, Message]] = {}
        self._selected_endpoints: dict[tuple[Any, ...], dict[str, Message]] = {}
        self._endpoints: dict[str, Message] | None = None
        # Per set of overrides: the clusters with a localityLbSetting; per (overrides, proxy
        # locality, proxy labels failoverPriority names): their endpoints.
        self._locality_targets: dict[tuple[Any, ...], list[_LocalityTarget]] = {}
        self._has_locality: bool | None = None
        self._local_endpoints: dict[tuple[Any, ...], dict[str, Message]] = {}
        self._lb_endpoints: dict[tuple[Any, ...], endpoint_components_pb2.LbEndpoint] = {}
        # Per service port: (what it was built from, what was built[, problems met]).
        self._cluster_parts: dict[tuple[Any, ...], tuple[Any, dict[str, Message], list[Any]]] = {}
        self._cla_parts: dict[tuple[Any, ...], tuple[Any, dict[str, Message]]] = {}
        self._prev_cluster_parts: dict[
            tuple[Any, ...], tuple[Any, dict[str, Message], list[Any]]
        ] = {}
        self._prev_cla_parts: dict[tuple[Any, ...], tuple[Any, dict[str, Message]]] = {}
        self._prev_clusters: dict[bool, dict[str, Message]] = {}
        self._prev_endpoints: dict[str, Message] | None = None
        self._prev_problems: dict[bool, list[ConfigProblem]] = {}

    def inherit(self, prev: ClusterBuilder) -> None:
        """Keeps the previous mesh's per-service parts to reuse those still built from equal
        input (only the parts, never the previous builder: no chain of old meshes is kept
        alive)."""
        self._prev_cluster_parts = prev._cluster_parts
        self._prev_cla_parts = prev._cla_parts
        # What the shared maps were: patched when only some hosts' workloads changed.
        self._prev_clusters = prev._clusters
        self._prev_endpoints = prev._endpoints
        self._prev_problems = {k: v for k, v in prev.problems.items() if isinstance(k, bool)}
        if self.index.stale_hosts is not None:
            # Only workloads changed (the index was patched): the clusters with a
            # localityLbSetting are those of the same Services and DestinationRules, and no
            # workload has a locality if none had and none of the changed ones has.
            self._locality_targets = dict(prev._locality_targets)
            if prev._has_locality is False and not any(
                w.locality for w in self.index.changed_workloads
            ):
                self._has_locality = False

    def clusters(self, proxyless: bool, overrides: Overrides = ()) -> dict[str, Message]:
        """The outbound clusters of a kind of client; with ``overrides`` (the DestinationRules
        with a workloadSelector that select the proxy), the shared ones with those hosts'
        clusters built from the selecting rules (built once per set of rules)."""
        shared = self._shared_clusters(proxyless)
        if not overrides:
            return shared
        key = (proxyless, _override_key(overrides))
        found = self._selected_clusters.get(key)
        if found is None:
            built = dict(shared)
            hosts = {host for host, _ in overrides}
            problems = [
                p
                for (pl, host, _), part in self._cluster_parts.items()
                if pl == proxyless and host not in hosts
                for p in part[2]
            ]
            with self.log.capture() as met:
                for host, dr in overrides:
                    for ps in self.index.host_ports(host):
                        for subset in ["", *sorted(self.index.subsets(host))]:
                            built.pop(cluster_name(OUTBOUND, ps.port.port, subset, host), None)
                        for subset in ["", *sorted(dr.subsets)]:
                            name = cluster_name(OUTBOUND, ps.port.port, subset, host)
                            c = self._outbound_cluster(name, ps, subset, proxyless, dr)
                            if c is not None:
                                built[name] = c
            found = self._selected_clusters[key] = dict(sorted(built.items()))
            self.problems[key] = problems + met
        return found

    def problems_for(self, proxyless: bool, overrides: Overrides = ()) -> list[ConfigProblem]:
        """The problems met building what :meth:`clusters` gives (call it first)."""
        return self.problems[(proxyless, _override_key(overrides)) if overrides else proxyless]

    def _shared_clusters(self, proxyless: bool) -> dict[str, Message]:
        if proxyless not in self._clusters and not self._patch_clusters(proxyless):
            built: dict[str, Message] = {}
            problems: list[ConfigProblem] = []
            for ps, subsets in self.index.port_groups():
                part = self._cluster_part(ps, subsets, proxyless)
                self._cluster_parts[(proxyless, ps.service.hostname, ps.port.port)] = part
                built.update(part[1])
                problems.extend(part[2])
            if not proxyless and self.mesh_config is not None:
                built.update((c.name, c) for c in tracing_clusters(self.mesh_config))
            self._clusters[proxyless] = dict(sorted(built.items()))
            self.problems[proxyless] = problems
        return self._clusters[proxyless]

    def _cluster_part(
        self, ps: PortService, subsets: list[str], proxyless: bool, keep: bool = False
    ) -> tuple[Any, dict[str, Message], list[Any]]:
        """One service port's clusters (one per subset), and the problems met building them:
        the previous mesh's when nothing they depend on changed (and, with ``keep``, each
        previous message still equal to the one built)."""
        fp = self.index.fingerprint(ps.service)
        old = self._prev_cluster_parts.get((proxyless, ps.service.hostname, ps.port.port))
        if old is not None and old[0] == fp:
            return old  # nothing this service's clusters depend on changed
        made: dict[str, Message] = {}
        dr = self.mesh.destination_rule_for(ps.service.hostname)
        with self.log.capture() as met:
            for subset in subsets:
                name = cluster_name(OUTBOUND, ps.port.port, subset, ps.service.hostname)
                c = self._outbound_cluster(name, ps, subset, proxyless, dr)
                if c is not None:
                    made[name] = c
        return (fp, _kept(made, old[1]) if keep and old is not None else made, met)

    def _patch_clusters(self, proxyless: bool) -> bool:
        """The previous mesh's clusters with those of the hosts whose workloads changed built
        again (:attr:`MeshIndex.stale_hosts`; when the index was patched, nothing else
        changed); False when there is nothing to patch (then they are built in full)."""
        prev = self._prev_clusters.get(proxyless)
        stale = self.index.stale_hosts
        if prev is None or stale is None:
            return False
        parts = dict(self._prev_cluster_parts)
        changed: dict[str, Message] = {}
        renamed = problems_moved = False
        for host in sorted(stale):
            subsets = ["", *sorted(self.index.subsets(host))]
            for ps in self.index.host_ports(host):
                key = (proxyless, host, ps.port.port)
                old = parts.get(key)
                part = self._cluster_part(ps, subsets, proxyless, keep=True)
                parts[key] = part
                if old is None or old[1].keys() != part[1].keys():
                    renamed = True
                problems_moved |= old is None or old[2] != part[2]
                changed.update((n, c) for n, c in part[1].items() if c is not prev.get(n))
        self._cluster_parts.update(parts)
        built = prev
        if renamed:
            return False
        if changed:
            built = dict(prev)
            built.update(changed)
        self._clusters[proxyless] = built
        if problems_moved:
            self.problems[proxyless] = [
                p
                for ps, _ in self.index.port_groups()
                for p in parts[(proxyless, ps.service.hostname, ps.port.port)][2]
            ]
        else:
            self.problems[proxyless] = self._prev_problems[proxyless]
        return True

    def _outbound_cluster(
        self,
        name: str,
        ps: PortService,
        subset: str,
        proxyless: bool,
        dr: DestinationRule | None,
        original_dst: bool = False,
    ) -> cluster_pb2.Cluster | None:
        svc, port = ps.service, ps.port
        policy = effective_policy(dr, subset, port.port)
        # Capture-mode sidecars (meshcore.xds.capturelisteners): PASSTHROUGH is the cluster's
        # type (ORIGINAL_DST), the rest of the policy applies as usual.
        if original_dst and (policy.get("loadBalancer") or {}).get("simple") == "PASSTHROUGH":
            policy = {k: v for k, v in policy.items() if k != "loadBalancer"}
        c = _eds_cluster(name, proxyless)
        th = c.circuit_breakers.thresholds.add()
        for attr in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
            getattr(th, attr).value = MAX_U32
        th.track_remaining = True
        options = http_protocol_options_pb2.HttpProtocolOptions()
        if ps.protocol in HTTP2_PROTOCOLS:
            options.explicit_http_config.http2_protocol_options.SetInParent()
        base = "spec.trafficPolicy" if not subset else f"spec.subsets[{subset}].trafficPolicy"
        try:
            # (the loader's parse; a DestinationRule built by hand is checked here first)
            checked = checked_of(dr) if dr is not None else NOTHING_PARSED
            if "loadBalancer" in policy:
                apply_lb(c, policy["loadBalancer"], base + ".loadBalancer")
            if "connectionPool" in policy:
                apply_connection_pool(
                    c, policy["connectionPool"], options, base + ".connectionPool", checked
                )
                tcp = policy["connectionPool"].get("tcp") or {}
                if (
                    dr is not None
                    and dr.workload_selector is not None
                    and (
                        tcp.get("idleTimeout") is not None
                        or tcp.get("maxConnectionDuration") is not None
                    )
                ):
                    # The TCP proxy of an outbound listener takes them from the host's
                    # DestinationRule; listeners are shared per namespace, not per selection.
                    self.log.problem(
                        dr,
                        base + ".connectionPool.tcp",
                        "idleTimeout and maxConnectionDuration of a DestinationRule with a"
                        " workloadSelector apply to the cluster's HTTP connections, not to the"
                        " TCP proxy of the host's outbound listener (meshcore shares listeners"
                        " per namespace)",
                        "warning",
                    )
            if "outlierDetection" in policy:
                apply_outlier(c, policy["outlierDetection"], base + ".outlierDetection", checked)
            self._locality_lb(c, ps, policy, base, dr)
            workloads = self.index.subset_workloads(svc, subset, dr)
            sans = self.index.service_accounts(svc, workloads)
            sni = f"outbound_.{port.port}_.{subset}_.{svc.hostname}"
            external = isinstance(svc, SeHost) and svc.entry.location == "MESH_EXTERNAL"
            if "tls" in policy:
                mode = policy["tls"].get("mode", "DISABLE")
                ctx = upstream_tls(
                    policy["tls"],
                    # Istio: SIMPLE and MUTUAL default the SNI to the host itself
                    sni if mode == "ISTIO_MUTUAL" else svc.hostname,
                    sans,
                    proxyless=proxyless,
                    path=base + ".tls",
                    # Istio: SIMPLE and MUTUAL to a ServiceEntry host verify its service
                    # accounts when the DestinationRule names no subjectAltNames.
                    simple_sans=isinstance(svc, SeHost),
                    system_ca=self.system_ca,
                )
                if ctx is not None:
                    c.transport_socket.CopyFrom(tls_socket(ctx))
            elif not proxyless and not external:
                # Istio's auto mTLS is for mesh workloads, never for MESH_EXTERNAL hosts.
                self._auto_mtls(c, sni, sans)
        except Invalid as bad:
            # The DestinationRule's policy is dropped, not the cluster: traffic keeps flowing
            # with Istio's defaults, and the problem names the field.
            self.log.problem(dr, bad.path, bad.message + "; the cluster uses default settings")
            c = self._dns_shaped(_eds_cluster(name, proxyless), ps, subset, dr)
            return _as_original_dst(c) if original_dst else c
        self._dns_shaped(c, ps, subset, dr)
        if proxyless and c.lb_policy not in _GRPC_LB_POLICIES:
            # gRPC's xDS client NACKs the policies it lacks (least request, random, maglev);
            # Istio's proxyless default is round robin.
            if "loadBalancer" in policy:
                self.log.problem(
                    dr,
                    base + ".loadBalancer",
                    f"{cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy)} is not supported by"
                    " proxyless gRPC; its clients use ROUND_ROBIN",
                    "warning",
                )
            c.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
            c.ClearField("maglev_lb_config")
        if options.ByteSize():
            if options.WhichOneof("upstream_protocol_options") is None:
                # Envoy requires the upstream protocol once the options are given at all.
                options.explicit_http_config.http_protocol_options.SetInParent()
            c.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(options))
        return _as_original_dst(c) if original_dst else c

    def _locality_lb(
        self,
        c: cluster_pb2.Cluster,
        ps: PortService,
        policy: dict[str, Any],
        base: str,
        dr: DestinationRule | None,
    ) -> None:
        """Istio's locality load balancing on the cluster: locality weighted when failover (it
        needs outlier detection) or ``distribute`` applies; the priorities and weights are the
        endpoints' (:meth:`endpoints`, per proxy locality)."""
        path = base + ".loadBalancer.localityLbSetting"
        setting = _locality_setting(policy)
        if setting is None:
            return
        if isinstance(ps.service, SeHost) and ps.service.dns:
            if setting.get("implicit"):
                return  # Istio's mesh-wide default, not asked for by this rule
            self.log.problem(
                dr,
                path,
                "not translated for DNS-resolved hosts (their endpoints are in the cluster,"
                " shared by proxies of every locality)",
                "warning",
            )
            return
        outlier = "outlierDetection" in policy
        if (setting["failover"] or setting["failoverPriority"]) and not outlier:
            # Istio's validation warning; Envoy would never leave priority 0.
            self.log.problem(
                dr, path, "outlier detection policy must be provided for failover", "warning"
            )
        if setting["distribute"] or failover_enabled(setting, outlier):
            c.common_lb_config.locality_weighted_lb_config.SetInParent()

    def _dns_shaped(
        self, c: cluster_pb2.Cluster, ps: PortService, subset: str, dr: DestinationRule | None
    ) -> cluster_pb2.Cluster:
        """A DNS-resolved ServiceEntry host: Envoy resolves the endpoints itself (no EDS)."""
        svc = ps.service
        if not isinstance(svc, SeHost) or not svc.dns:
            return c
        c.type = (
            cluster_pb2.Cluster.LOGICAL_DNS
            if svc.entry.resolution == "DNS_ROUND_ROBIN"
            else cluster_pb2.Cluster.STRICT_DNS
        )
        c.ClearField("eds_cluster_config")
        c.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
        cla = self._load_assignment(c.name, ps, subset, dr)
        if not cla.endpoints:  # no endpoints listed: the host itself is resolved
            lb = cla.endpoints.add().lb_endpoints.add()
            lb.endpoint.address.CopyFrom(socket_address(svc.hostname, int(ps.port.target_port)))
        if c.type == cluster_pb2.Cluster.LOGICAL_DNS:
            # Envoy's LOGICAL_DNS takes exactly one endpoint: the first, as Istio does.
            first = type(cla.endpoints[0].lb_endpoints[0])()
            first.CopyFrom(cla.endpoints[0].lb_endpoints[0])
            del cla.endpoints[1:]
            del cla.endpoints[0].lb_endpoints[:]
            cla.endpoints[0].lb_endpoints.append(first)
        c.load_assignment.CopyFrom(cla)
        return c

    def _auto_mtls(self, c: cluster_pb2.Cluster, sni: str, sans: list[str]) -> None:
        """Istio's auto mTLS: TLS to endpoints labelled ``tlsMode: istio`` (those whose
        PeerAuthentication is not DISABLE), plaintext to the rest."""
        ctx = upstream_tls({"mode": "ISTIO_MUTUAL"}, sni, sans, proxyless=False, path="")
        assert ctx is not None
        tls_match = c.transport_socket_matches.add(name="tlsMode-istio")
        tls_match.match.fields["tlsMode"].string_value = "istio"
        tls_match.transport_socket.CopyFrom(tls_socket(ctx))
        plain = c.transport_socket_matches.add(name="tlsMode-disabled")
        plain.match.SetInParent()
        plain.transport_socket.CopyFrom(tls_socket(raw_buffer_pb2.RawBuffer(), RAW_BUFFER_SOCKET))

    def endpoints(
        self,
        overrides: Overrides = (),
        locality: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Message]:
        """The endpoints of :meth:`clusters` (with the same ``overrides``) for a proxy in
        ``locality`` with ``labels``: those of clusters with a localityLbSetting have
        priorities and weights relative to it (built once per locality and the labels their
        failoverPriority names)."""
        base = self._override_endpoints(overrides)
        targets = self._targets(overrides)
        if not locality and not self._any_locality():
            # Nobody has a locality: Istio's default (implicit) failover changes nothing, and
            # the shared endpoints (the same objects from change to change) serve.
            targets = self._explicit_targets(overrides)
        if not targets:
            return base
        own = {**(labels or {}), **locality_labels(locality)}
        names = sorted({n for t in targets for n in t.setting["failoverPriority"]})
        key = (
            _override_key(overrides),
            locality,
            tuple(own.get(n.partition("=")[0]) for n in names),
        )
        found = self._local_endpoints.get(key)
        if found is None:
            found = dict(base)
            for t in targets:
                ep_labels: list[list[Mapping[str, str]]] = []
                cla = self._load_assignment(t.name, t.ps, t.subset, t.dr, ep_labels)
                apply_locality_lb(cla, ep_labels, locality, own, t.setting, t.outlier)
                shared = base.get(t.name)
                found[t.name] = shared if shared is not None and shared == cla else cla
            self._lb_endpoints.clear()  # copied into the assignments (as for the shared ones)
            self._local_endpoints[key] = found
        return found

    def _any_locality(self) -> bool:
        """Whether any workload of the mesh has a locality."""
        if self._has_locality is None:
            self._has_locality = any(w.locality for w in self.mesh.workload_entries)
        return self._has_locality

    def _explicit_targets(self, overrides: Overrides) -> list[_LocalityTarget]:
        """:meth:`_targets` but those of Istio's default (implicit) failover."""
        key = ("explicit", _override_key(overrides))
        found = self._locality_targets.get(key)
        if found is None:
            found = [t for t in self._targets(overrides) if not t.setting.get("implicit")]
            self._locality_targets[key] = found
        return found

    def _targets(self, overrides: Overrides) -> list[_LocalityTarget]:
        """The EDS clusters whose policy has a (valid) localityLbSetting."""
        key = _override_key(overrides)
        found = self._locality_targets.get(key)
        if found is not None:
            return found
        found = []
        chosen = dict(overrides)
        for ps, subsets in self.index.port_groups():
            host = ps.service.hostname
            if isinstance(ps.service, SeHost) and ps.service.dns:
                continue
            dr = chosen.get(host) or self.mesh.destination_rule_for(host)
            if dr is None:
                continue
            try:
                checked_of(dr)  # one built by hand: its problems are reported with the cluster
            except Invalid:
                continue
            for subset in ["", *sorted(dr.subsets)] if host in chosen else subsets:
                policy = effective_policy(dr, subset, ps.port.port)
                setting = _locality_setting(policy)
                if setting is None:
                    continue
                name = cluster_name(OUTBOUND, ps.port.port, subset, host)
                outlier = "outlierDetection" in policy
                found.append(_LocalityTarget(name, ps, subset, dr, setting, outlier))
        self._locality_targets[key] = found
        return found

    def _override_endpoints(self, overrides: Overrides) -> dict[str, Message]:
        shared = self._shared_endpoints()
        if not overrides:
            return shared
        key = _override_key(overrides)
        found = self._selected_endpoints.get(key)
        if found is None:
            built = dict(shared)
            for host, dr in overrides:
                for ps in self.index.host_ports(host):
                    if isinstance(ps.service, SeHost) and ps.service.dns:
                        continue  # endpoints inline in the DNS cluster, no EDS
                    for subset in ["", *sorted(self.index.subsets(host))]:
                        built.pop(cluster_name(OUTBOUND, ps.port.port, subset, host), None)
                    for subset in ["", *sorted(dr.subsets)]:
                        name = cluster_name(OUTBOUND, ps.port.port, subset, host)
                        built[name] = self._load_assignment(name, ps, subset, dr)
            found = self._selected_endpoints[key] = dict(sorted(built.items()))
        return found

    def _shared_endpoints(self) -> dict[str, Message]:
        if self._endpoints is None and not self._patch_endpoints():
            built: dict[str, Message] = {}
            for ps, subsets in self.index.port_groups():
                if isinstance(ps.service, SeHost) and ps.service.dns:
                    continue  # endpoints inline in the DNS cluster, no EDS
                part = self._cla_part(ps, subsets)
                self._cla_parts[(ps.service.hostname, ps.port.port)] = part
                built.update(part[1])
            self._endpoints = dict(sorted(built.items()))
        # The endpoint messages were copied into the assignments: let them go now rather than
        # with this mesh (a later change would otherwise pay for freeing the whole mesh's).
        self._lb_endpoints.clear()
        assert self._endpoints is not None
        return self._endpoints

    def _cla_part(
        self, ps: PortService, subsets: list[str], keep: bool = False
    ) -> tuple[Any, dict[str, Message]]:
        """One service port's ClusterLoadAssignments (one per subset): the previous mesh's
        when nothing they depend on changed (and, with ``keep``, the equal ones)."""
        # PeerAuthentications decide the endpoints' tlsMode metadata.
        fp = (self.index.fingerprint(ps.service), self.index.kind_state("peer_authentications"))
        old = self._prev_cla_parts.get((ps.service.hostname, ps.port.port))
        if old is not None and old[0] == fp:
            return old
        made: dict[str, Message] = {}
        dr = self.mesh.destination_rule_for(ps.service.hostname)
        for subset in subsets:
            name = cluster_name(OUTBOUND, ps.port.port, subset, ps.service.hostname)
            made[name] = self._load_assignment(name, ps, subset, dr)
        return (fp, _kept(made, old[1]) if keep and old is not None else made)

    def _patch_endpoints(self) -> bool:
        """:meth:`_patch_clusters` for the endpoints."""
        prev = self._prev_endpoints
        stale = self.index.stale_hosts
        if prev is None or stale is None:
            return False
        parts: dict[tuple[Any, ...], tuple[Any, dict[str, Message]]] = {}
        changed: dict[str, Message] = {}
        for host in sorted(stale):
            subsets = ["", *sorted(self.index.subsets(host))]
            for ps in self.index.host_ports(host):
                if isinstance(ps.service, SeHost) and ps.service.dns:
                    continue
                key = (host, ps.port.port)
                old = self._prev_cla_parts.get(key)
                part = parts[key] = self._cla_part(ps, subsets, keep=True)
                if old is None or old[1].keys() != part[1].keys():
                    return False
                changed.update((n, c) for n, c in part[1].items() if c is not prev.get(n))
        self._cla_parts = {**self._prev_cla_parts, **parts}
        self._endpoints = prev
        if changed:
            self._endpoints = dict(prev)
            self._endpoints.update(changed)
        return True

    def _load_assignment(
        self,
        name: str,
        ps: PortService,
        subset: str,
        dr: DestinationRule | None,
        labels: list[list[Mapping[str, str]]] | None = None,
    ) -> endpoint_pb2.ClusterLoadAssignment:
        """The cluster's endpoints grouped per locality (with ``labels``, the endpoints'
        labels and topology labels are appended there, per group, in the same order)."""
        by_locality: dict[str, list[tuple[str, int, WorkloadEntry]]] = {}
        # Istio sends unhealthy endpoints (marked UNHEALTHY) except when the outlier detection
        # keeps a panic threshold (minHealthPercent > 0): Envoy would then route to them.
        outlier = effective_policy(dr, subset, ps.port.port).get("outlierDetection") or {}
        send_unhealthy = not int(outlier.get("minHealthPercent") or 0) > 0
        for w in self.index.subset_workloads(ps.service, subset, dr):
            port = endpoint_port(w, ps.port)
            if port is None or not w.address or not (send_unhealthy or w.healthy):
                continue
            by_locality.setdefault(w.locality, []).append((w.address, port, w))
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        for locality in sorted(by_locality):
            group = cla.endpoints.add()
            region, _, rest = locality.partition("/")
            zone, _, subzone = rest.partition("/")
            group.locality.region, group.locality.zone, group.locality.sub_zone = (
                region,
                zone,
                subzone,
            )
            # by address and port, then key: the same order however the workloads were read
            ordered = sorted(by_locality[locality], key=lambda e: (e[0], e[1], e[2].key))
            group.lb_endpoints.extend(self._lb_endpoint(a, p, w) for a, p, w in ordered)
            if labels is not None:
                labels.append(
                    [{**w.workload_labels, **locality_labels(w.locality)} for _, _, w in ordered]
                )
            group.load_balancing_weight.value = sum(w.weight for _, _, w in by_locality[locality])
        return cla

    def _lb_endpoint(
        self, address: str, port: int, w: WorkloadEntry
    ) -> endpoint_components_pb2.LbEndpoint:
        """One workload as an endpoint; built once, as it appears in several clusters (the
        service's and its subset's)."""
        key = (w.key, address, port)
        found = self._lb_endpoints.get(key)
        if found is None:
            # Istio sends an unhealthy endpoint (its probe fails) as UNHEALTHY: Envoy keeps it
            # out of load balancing (PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS).
            found = endpoint_components_pb2.LbEndpoint(
                health_status=health_check_pb2.HEALTHY if w.healthy else health_check_pb2.UNHEALTHY
            )
            found.endpoint.address.CopyFrom(socket_address(address, port))
            found.load_balancing_weight.value = w.weight
            # Istio: the endpoint's tlsMode (label, else whether it has a service account),
            # and never TLS to an endpoint whose PeerAuthentication is DISABLE.
            if w.tls_mode == "istio" and self.index.mtls_mode(w, port) != "DISABLE":
                meta = found.metadata.filter_metadata[TRANSPORT_SOCKET_MATCH_KEY]
                meta.fields["tlsMode"].string_value = "istio"
            # Istio's workload metadata on every endpoint (the source side's metrics read it).
            found.metadata.filter_metadata["istio"].fields[
                "workload"
            ].string_value = workload_metadata(w.name, w.namespace, w.workload_labels)
            self._lb_endpoints[key] = found
        return found


@dataclass(frozen=True, slots=True)
class _LocalityTarget:
    """An EDS cluster with a localityLbSetting, and what its endpoints are built from."""

    name: str
    ps: PortService
    subset: str
    dr: DestinationRule
    setting: dict[str, Any]
    outlier: bool


def _locality_setting(policy: Mapping[str, Any]) -> dict[str, Any] | None:
    """The policy's localityLbSetting (validated by the loader), else Istio's mesh-wide default (locality load
    balancing enabled, default failover) when the policy has outlier detection, else None."""
    raw = (policy.get("loadBalancer") or {}).get("localityLbSetting")
    if raw is not None:
        return setting_of(raw)
    if "outlierDetection" in policy:
        return {**setting_of(None), "implicit": True}
    return None


def _kept(made: dict[str, Message], old: dict[str, Message]) -> dict[str, Message]:
    """``made`` with the previous messages where they are equal: the same objects, so that the
    snapshot store sees no change (it compares by identity) and serializes nothing again."""
    out = {}
    for name, m in made.items():
        o = old.get(name)
        out[name] = o if o is not None and o == m else m
    return out


def _override_key(overrides: Overrides) -> tuple[tuple[str, tuple[str, str, str]], ...]:
    return tuple((host, dr.key) for host, dr in overrides)


def _as_original_dst(c: cluster_pb2.Cluster) -> cluster_pb2.Cluster:
    """The cluster connecting to each connection's original destination instead of its
    endpoints (Istio's PASSTHROUGH load balancing and resolution NONE)."""
    c.type = cluster_pb2.Cluster.ORIGINAL_DST
    c.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    for name in ("eds_cluster_config", "load_assignment", "transport_socket_matches"):
        c.ClearField(name)
    return c


def _eds_cluster(name: str, proxyless: bool) -> cluster_pb2.Cluster:
    """An outbound cluster with Istio's defaults, its endpoints over ADS."""
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_ns(DEFAULT_CONNECT_TIMEOUT_NS),
        # gRPC's xDS client rejects LEAST_REQUEST ("LB policy is not supported"): Istio gives
        # proxyless clients ROUND_ROBIN.
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN
        if proxyless
        else cluster_pb2.Cluster.LEAST_REQUEST,
    )
    c.eds_cluster_config.eds_config.CopyFrom(ads())
    c.eds_cluster_config.service_name = name
    # Istio sends unhealthy endpoints and turns Envoy's 50% panic mode off, so that they never
    # get traffic (outlier detection's minHealthPercent sets it otherwise).
    c.common_lb_config.healthy_panic_threshold.value = 0
    return c


def inbound_cluster(name: str, address: str, port: int) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration_ns(DEFAULT_CONNECT_TIMEOUT_NS),
    )
    c.load_assignment.cluster_name = name
    c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        socket_address(address, port)
    )
    return c
