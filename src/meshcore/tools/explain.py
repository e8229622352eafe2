"""``meshcore x explain``: the path Envoy takes for one request, and the authorization decision
on the destination's inbound side, from the same compiled tables the data plane decides with.

``explain(planes, proxy=..., request=...)`` takes a :data:`Planes` (a data plane for a node id):
:func:`planes_from_mesh` translates a loaded mesh (no control plane), :func:`planes_from_xds`
connects to a running control plane's ADS server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from meshcore.config import MeshModel
from meshcore.config.model import WorkloadEntry
from meshcore.dataplane.plane import DataPlane, Decision
from meshcore.tools.nodes import node_id
from meshcore.xds.node import parse_node_id, proxy_for_node

Planes = Callable[[str], DataPlane]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    scheme: str
    authority: str
    path: str
    port: int
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str, headers: Sequence[str] = ()) -> Request:
        """``'GET http://reviews:9080/api?x=1'`` and ``'name: value'`` headers."""
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(f"request {text!r}: expected 'METHOD URL'")
        method, url = parts
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError(f"request {text!r}: expected an http:// URL with a host")
        try:
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"request {text!r}: bad port") from None
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        hs = []
        for h in headers:
            name, sep, value = h.partition(":")
            if not sep or not name.strip():
                raise ValueError(f"header {h!r}: expected 'name: value'")
            hs.append((name.strip().lower(), value.strip()))
        return cls(method.upper(), u.scheme, u.netloc, path, port, tuple(hs))


def node_id_for(mesh: MeshModel | None, proxy: str, domain: str = "cluster.local") -> str:
    """A node id (kept) or a workload ``name[.namespace]`` of the mesh (made a node id)."""
    if "~" in proxy:
        parse_node_id(proxy)  # ValueError names what is wrong
        return proxy
    name, _, ns = proxy.partition(".")
    ns = ns or "default"
    if mesh is not None:
        w = mesh.get("WorkloadEntry", ns, name)
        if not isinstance(w, WorkloadEntry):
            raise ValueError(f"no WorkloadEntry {ns}/{name} (give a node id or name.namespace)")
        return node_id(mesh, w)
    return f"sidecar~~{name}.{ns}~{ns}.svc.{domain}"


def planes_from_mesh(mesh: MeshModel, *, seed: int | None = 0) -> Planes:
    """Data planes on the translator's resources for each node (no control plane); their
    load balancers are seeded (``seed``) so that the endpoint picked is reproducible."""
    from meshcore.dataplane.lb import LoadBalancer
    from meshcore.xds.translator import Translator

    translator = Translator()
    built: dict[str, DataPlane] = {}

    def plane(node_id: str) -> DataPlane:
        dp = built.get(node_id)
        if dp is None:
            proxy = proxy_for_node(mesh, node_id)
            resources = translator.generate(mesh, proxy).resources
            dp = built[node_id] = DataPlane.from_resources(
                node_id, resources, lb=LoadBalancer(seed)
            )
        return dp

    return plane


@contextlib.contextmanager
def planes_from_xds(address: str, timeout: float = 10.0) -> Iterator[Planes]:
    """Data planes connected to a control plane's ADS server (closed on exit)."""
    opened: dict[str, DataPlane] = {}

    def plane(node_id: str) -> DataPlane:
        dp = opened.get(node_id)
        if dp is None:
            dp = opened[node_id] = DataPlane.connect(address, node_id=node_id, timeout=timeout)
        return dp

    try:
        yield plane
    finally:
        for dp in opened.values():
            dp.close()


def _identity(mesh: MeshModel | None, node_id: str) -> str:
    _, _, _, namespace, domain = parse_node_id(node_id)
    sa = "default"
    if mesh is not None:
        proxy = proxy_for_node(mesh, node_id)
        if proxy.workload is not None:
            sa = proxy.workload.service_account
    return f"spiffe://{domain}/ns/{namespace}/sa/{sa}"


def _retry(d: Decision) -> dict[str, Any] | None:
    r = d.retry_policy
    if r is None:
        return None
    return {"retry_on": list(r.retry_on), "num_retries": r.num_retries,
            "per_try_timeout": r.per_try_timeout,
            "retriable_status_codes": list(r.retriable_status_codes)}  # fmt: skip


def explain(
    planes: Planes, *, proxy: str, request: Request, principal: str | None = None,
    domain: str = "cluster.local", mesh: MeshModel | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The explanation as a dict (the stable ``-o json`` schema; see the README)."""
    source = node_id_for(mesh, proxy, domain)
    if principal is None:  # the source workload's own identity (what its sidecar presents)
        principal = _identity(mesh, source)
    dp = planes(source)
    cfg = dp.config
    out: dict[str, Any] = {
        "proxy": source,
        "request": {"method": request.method, "authority": request.authority,
                    "path": request.path, "headers": dict(request.headers)},
        "listener": None, "filter_chain": None, "route_config": None, "virtual_host": None,
        "route": None, "match": None, "cluster": None, "weighted_clusters": None,
        "lb_policy": None, "endpoints": [], "endpoint": None, "timeout": None, "retry": None,
        "status": None, "response_flags": "-",
        "allowed": None, "policy_id": None, "authz_action": None, "authz": None,
    }  # fmt: skip
    lst = cfg.outbound.get(request.port)
    if lst is not None:
        out["listener"] = lst.name
        out["filter_chain"] = "tcp_proxy" if lst.tcp_cluster else "http_connection_manager"
        out["route_config"] = lst.route_config
    routes = cfg.listener_routes.get(request.port)
    headers = list(request.headers)
    if routes is not None:
        ex = routes.table.explain(request.authority, request.path, request.method, headers,
                                  scheme=request.scheme)  # fmt: skip
        out["virtual_host"] = ex.get("virtual_host")
        out["match"] = ex
        idx = ex.get("route_index")
        if isinstance(idx, int) and idx in routes.routes and routes.routes[idx].weighted:
            out["weighted_clusters"] = [
                {"cluster": c, "weight": w} for c, w in routes.routes[idx].weighted
            ]
    d = dp.decide(direction="outbound", method=request.method, authority=request.authority,
                  path=request.path, headers=headers, port=request.port)  # fmt: skip
    out.update(route=d.route, cluster=d.cluster, timeout=d.timeout, retry=_retry(d),
               status=d.status, response_flags=d.response_flags)  # fmt: skip
    cluster = cfg.clusters.get(d.cluster) if d.cluster else None
    if cluster is not None:
        out["lb_policy"] = cluster.lb_policy
        out["endpoints"] = [f"{e.address}:{e.port}" for e in cfg.endpoints_of(cluster)]
    if d.endpoint is None:
        out["allowed"] = d.allowed if d.status is None else None
        return out
    out["endpoint"] = f"{d.endpoint.address}:{d.endpoint.port}"
    source_ip = parse_node_id(source)[1] or None
    out.update(_inbound(planes, d, request, principal, source_ip, domain, mesh))
    return out


def _inbound(
    planes: Planes, d: Decision, request: Request, principal: str | None,
    source_ip: str | None, domain: str, mesh: MeshModel | None,
) -> dict[str, Any]:  # fmt: skip
    """The destination's inbound side: its listener for the endpoint's port and its RBAC."""
    assert d.endpoint is not None
    host = (d.cluster or "").rsplit("|", 1)[-1]
    labels = host.split(".")
    ns = labels[1] if len(labels) > 2 else "default"
    name = f"explain-{d.endpoint.address.replace('.', '-').replace(':', '-')}"
    node = f"sidecar~{d.endpoint.address}~{name}.{ns}~{ns}.svc.{domain}"  # found by address
    if mesh is not None:
        w = next((w for w in mesh.workloads(ns) if w.address == d.endpoint.address), None)
        if w is not None:
            node = node_id(mesh, w)
    dst = planes(node)
    # What the destination sees: the authority as sent, the path as forwarded, mTLS when the
    # source originates it (its principal then is the peer's).
    path = d.path or request.path
    tls = d.tls
    inbound = dst.decide(direction="inbound", method=request.method, authority=request.authority,
                         path=path, headers=list(request.headers), port=d.endpoint.port,
                         principal=principal if tls else None, tls=tls,
                         source_ip=source_ip)  # fmt: skip
    lst = dst.config.inbound.get(d.endpoint.port)
    authz: dict[str, Any] = {"destination": node, "listener": lst.name if lst else None,
                             "mtls_mode": lst.mtls_mode if lst else None, "tls": tls,
                             "principal": principal if tls else None,
                             "status": inbound.status}  # fmt: skip
    action = None
    if lst is not None and lst.authz is not None and inbound.status != 400:
        request_attrs: dict[str, Any] = {
            "method": request.method, "path": inbound.path or path,
            "authority": request.authority, "headers": list(request.headers),
            "destination_port": lst.port, "destination_ip": lst.address, "tls": tls,
        }  # fmt: skip
        if principal is not None and tls:
            request_attrs["principal"] = principal
            request_attrs["uri_sans"] = [principal]
        if source_ip is not None:
            for key in ("source_ip", "remote_ip", "direct_remote_ip"):
                request_attrs[key] = source_ip
        a = lst.authz.evaluate(**request_attrs)
        action = a.action
        authz.update(engines=len(lst.authz), custom_provider=a.custom_provider,
                     audit_policy_id=a.audit_policy_id,
                     dry_run=[list(x) for x in a.dry_run])  # fmt: skip
    authz["decision"] = (
        "no listener" if lst is None
        else "plaintext refused (STRICT mTLS)" if inbound.status == 403 and lst.mtls_mode == "STRICT" and not tls
        else f"{'allowed' if inbound.allowed else 'denied'} by {action} policy {inbound.policy_id}"
        if inbound.policy_id else
        ("no policy matched (default deny)" if not inbound.allowed else "no policy applies (allowed)")
    )  # fmt: skip
    return {"allowed": inbound.allowed, "policy_id": inbound.policy_id,
            "authz_action": action, "authz": authz}  # fmt: skip


def render(e: dict[str, Any]) -> str:
    """The text form of an explanation."""
    r = e["request"]
    lines = [f"{r['method']} {r['authority']}{r['path']} from {e['proxy']}"]
    lines.append(f"  listener      {e['listener'] or '(none for this port)'}"
                 + (f"  [{e['filter_chain']}]" if e["filter_chain"] else ""))  # fmt: skip
    if e["route_config"]:
        lines.append(f"  route config  {e['route_config']}")
    if e["virtual_host"]:
        lines.append(
            f"  virtual host  {e['virtual_host']}  ({e['match'].get('virtual_host_reason')})"
        )
    lines.append(f"  route         {e['route'] or '(no route: 404 NR)'}")
    if e["weighted_clusters"]:
        ws = ", ".join(f"{w['cluster']} {w['weight']}" for w in e["weighted_clusters"])
        lines.append(f"  weighted      {ws}")
    if e["cluster"]:
        lines.append(f"  cluster       {e['cluster']}  (lb {e['lb_policy']})")
        lines.append(f"  endpoints     {', '.join(e['endpoints']) or '(none)'}")
    if e["endpoint"]:
        lines.append(f"  picked        {e['endpoint']}")
    if e["timeout"] is not None or e["retry"]:
        retry = e["retry"]
        lines.append(f"  timeout       {e['timeout'] if e['timeout'] is not None else 'none'}"
                     + (f"; retries {retry['num_retries']} on {','.join(retry['retry_on'])}"
                        if retry else ""))  # fmt: skip
    if e["status"] is not None:
        lines.append(f"  local reply   {e['status']} {e['response_flags']}")
    a = e["authz"]
    if a is not None:
        lines.append(f"  inbound       {a['destination']} listener {a['listener']} "
                     f"(mTLS {a['mtls_mode']}, peer {a['principal'] or 'none'})")  # fmt: skip
        lines.append(f"  authorization {a['decision']}")
    lines.append(f"  allowed       {e['allowed']}")
    return "\n".join(lines)
