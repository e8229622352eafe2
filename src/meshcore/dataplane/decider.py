"""A compiled config's outbound decisions in the core (``meshcore._core.decide.Decider``): the
listeners' route tables, the routes' clusters, hash policies and rewrites, and the clusters'
endpoints, so that ``DataPlane.decide`` is one call into the core, the load balancing included
(state in the shared :class:`~meshcore.dataplane.lb.CoreLoadBalancer`). Routes the core form
does not cover (direct responses, redirects, cookie and query-parameter hash policies) are
left out: ``decide`` takes its general path for them, with the same balancer."""

from __future__ import annotations

from typing import Any

from meshcore._core import decide as _core_decide
from meshcore.dataplane.config import CompiledConfig, InboundListener, RouteInfo
from meshcore.dataplane.lb import CoreLoadBalancer, cluster_head
from meshcore.security.authz import _istio_id

_COVERED_HASHES = ("header", "source_ip")


def _route(info: RouteInfo | None) -> Any:
    if info is None or info.kind != "route":
        return None
    if any(hp.kind not in _COVERED_HASHES for hp in info.hash_policies):
        return None
    if info.cluster is not None:
        clusters, weighted = [(info.cluster, 0)], False
    else:
        clusters, weighted = list(info.weighted), bool(info.weighted)
    rewrite = (info.rewrite_from, info.prefix_rewrite) if info.rewrite_from is not None else None
    return (info.name, clusters, weighted, info.total_weight,
            [(hp.kind, hp.name, hp.terminal) for hp in info.hash_policies], rewrite,
            info.timeout, info.retry_policy, info.host_rewrite)  # fmt: skip


def _inbound(lst: InboundListener) -> Any:
    """An inbound listener as the core decides it, or None when its filter chain has what the
    core form does not cover (ext_authz and CUSTOM filters, dry-run rules)."""
    if lst.authz is None:
        return None
    stages = []
    for engine, layer, custom in lst.authz.layers:
        if engine is None or custom or layer == "CUSTOM" or engine.shadow_action is not None:
            return None
        ids = [_istio_id(p) for p in engine.policy_ids]
        stages.append((engine, layer or "", ids))
    normalizes = lst.normalizer is not None
    return (lst.port, lst.address, lst.mtls_mode == "STRICT", stages, lst.cluster, normalizes,
            lst.options.merge_slashes)  # fmt: skip


def compile_decider(
    cfg: CompiledConfig, lb: CoreLoadBalancer, rng: _core_decide.Random, decision: Any
) -> _core_decide.Decider:
    """The core's decider for ``cfg``, deciding with ``lb``'s state and ``rng`` (weighted
    clusters), returning ``decision`` objects."""
    listeners = []
    for port, routes in cfg.listener_routes.items():
        lst = cfg.outbound.get(port)
        infos = [_route(routes.routes.get(i)) for i in range(len(routes.table))]
        normalizes = lst is not None and lst.normalizer is not None
        merge = lst is not None and lst.options.merge_slashes
        listeners.append((port, routes.table, normalizes, merge, infos))
    clusters = []
    for c in cfg.clusters.values():
        up = c.tls
        eps = [(e, str(e), e.weight, up is not None and (e.tls or not up.auto))
               for e in cfg.endpoints_of(c)]  # fmt: skip
        clusters.append((*cluster_head(c), eps, up.sni if up is not None else ""))
    inbound = [(port, _inbound(lst)) for port, lst in cfg.inbound.items()]
    return _core_decide.Decider(listeners, clusters, inbound, lb.core, rng, decision,
                                cfg.generation)  # fmt: skip
