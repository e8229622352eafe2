"""Gateway proxies (Istio's ``router`` nodes): the Gateways that select a proxy, their servers
and the VirtualServices bound to them, translated as Istio's gateway generator does.

- A listener per server port, named ``ADDRESS_PORT`` (``0.0.0.0_PORT`` unless the server has a
  ``bind``, or the proxy's node metadata ``MESHCORE_GATEWAY_ADDRESS`` gives the loopback
  layout's address).
- Plain HTTP servers of a port share one filter chain and the route configuration
  ``http.PORT`` (``http.PORT.BIND`` with a bind); ``tls.httpsRedirect`` makes their virtual
  hosts require TLS (Envoy answers 301 to https).
- HTTPS servers terminating TLS (SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL) get a filter
  chain each, chosen by SNI, with the route configuration ``https.PORT.PORTNAME.GATEWAY.NS``;
  ``credentialName`` certificates come over SDS on the ADS stream as ``kubernetes://NAME``
  (and ``kubernetes://NAME-cacert`` for the client CA), ISTIO_MUTUAL uses the proxy's mesh
  certificate from its agent.
- PASSTHROUGH servers route the VirtualServices' ``tls`` routes by SNI to their destination;
  AUTO_PASSTHROUGH routes by the SNI itself (``outbound_.PORT_.SUBSET_.HOST``) to Istio's
  SNI-DNAT clusters; TCP servers take the ``tcp`` routes.

Virtual hosts come from the VirtualServices bound to the server's Gateway (``gateways``
resolved as Istio does), in namespaces the server's ``ns/host`` entries allow, for the hosts
the server and the VirtualService share. The route configurations of a gateway proxy are its
own (not shared with sidecars); the clusters are the mesh's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.sni_cluster.v3 import sni_cluster_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from meshcore.config.gateway import TLS_PROTOCOLS, is_http
from meshcore.config.model import Gateway, VirtualService, resolve_gateways
from meshcore.config.values import resolve_host, selector_matches
from meshcore.errors import ConfigProblem
from meshcore.names import (
    CORS_NAME,
    FAULT_NAME,
    HCM_NAME,
    JWT_AUTHN_NAME,
    OUTBOUND,
    ROUTER_NAME,
    TCP_PROXY_NAME,
    TLS_INSPECTOR_NAME,
    cluster_name,
    parse_cluster_name,
)
from meshcore.xds import types
from meshcore.xds.cache import Layered
from meshcore.xds.common import Invalid, ads, copy_message, pack, socket_address, tls_socket
from meshcore.xds.gateway_tls import downstream_tls, server_secrets
from meshcore.xds.node import Proxy
from meshcore.xds.problems import ProblemLog
from meshcore.xds.telemetry import istio_stats_http, istio_stats_tcp, observe
from meshcore.xds.virtualservice import VsRoutes

__all__ = ["GATEWAY_ADDRESS_KEY", "ROUTER", "GatewayBuilder", "gateways_for", "sni_dnat_name"]

# The node type of gateway proxies (``router~IP~NAME.NS~NS.svc.DOMAIN``), as Istio's.
ROUTER = "router"
# Node metadata: the address a gateway's listeners bind to when its servers name none (the
# loopback layout; Istio's gateways listen on 0.0.0.0).
GATEWAY_ADDRESS_KEY = "MESHCORE_GATEWAY_ADDRESS"
BLACKHOLE = "BlackHoleCluster"
TERMINATING = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL")


def gateways_for(gateways: tuple[Gateway, ...], labels: Mapping[str, str]) -> list[Gateway]:
    """The Gateways whose selector selects a proxy with ``labels`` (any namespace, as Istio's
    default), by namespace and name."""
    return sorted(
        (g for g in gateways if selector_matches(g.selector, labels)),
        key=lambda g: (g.namespace, g.name),
    )


def sni_dnat_name(cluster: str) -> str | None:
    """Istio's SNI-DNAT name of an outbound cluster: ``outbound_.PORT_.SUBSET_.HOST``."""
    parsed = parse_cluster_name(cluster)
    if parsed is None or parsed.direction != OUTBOUND:
        return None
    return f"outbound_.{parsed.port}_.{parsed.subset}_.{parsed.host}"


@dataclass(frozen=True, slots=True)
class Server:
    """One server of a Gateway, with what the translation needs."""

    gateway: Gateway
    index: int
    spec: Mapping[str, Any]
    port: int
    port_name: str
    protocol: str
    bind: str
    hosts: tuple[tuple[str, str], ...]  # (namespace: *, . or a name; host)

    @property
    def path(self) -> str:
        return f"spec.servers[{self.index}]"

    @property
    def tls(self) -> Mapping[str, Any]:
        tls: Mapping[str, Any] = self.spec.get("tls") or {}
        return tls

    @property
    def mode(self) -> str:
        return str(self.tls.get("mode", "PASSTHROUGH"))

    @property
    def key(self) -> str:
        return f"{self.gateway.namespace}/{self.gateway.name}"

    @property
    def terminates_tls(self) -> bool:
        return self.protocol in TLS_PROTOCOLS and self.mode in TERMINATING

    def sni_hosts(self) -> list[str]:
        """The server names of its filter chain: its hosts, none when one is ``*``."""
        names = sorted({h for _, h in self.hosts})
        return [] if "*" in names else names

    def allows(self, vs: VirtualService, host: str) -> list[str]:
        """The domains the VirtualService's ``host`` gets on this server: for each server host
        admitting the VirtualService's namespace and meeting ``host``, the more specific of
        the two."""
        out: set[str] = set()
        for ns, pattern in self.hosts:
            if ns not in ("*", vs.namespace) and not (
                ns == "." and vs.namespace == self.gateway.namespace
            ):
                continue
            got = _intersect(host, pattern)
            if got is not None:
                out.add(got)
        return sorted(out)


def virtual_host_domains(host: str, port: int) -> list[str]:
    """Istio's gateway domains: the host, and the host with any port (a gateway behind a load
    balancer sees other ports); a wildcard host keeps its port (Envoy allows one wildcard)."""
    if host == "*":
        return [host]
    if host.startswith("*"):
        return [host, f"{host}:{port}"]
    return [host, f"[{host}]:*" if ":" in host else f"{host}:*"]


def _intersect(host: str, pattern: str) -> str | None:
    """Istio's host matching between a VirtualService host and a server host (wildcards on
    either side): the more specific one, or None."""
    if pattern in (host, "*"):
        return host
    if host == "*":
        return pattern
    if pattern.startswith("*.") and host.endswith(pattern[1:]):
        return host
    if host.startswith("*.") and pattern.endswith(host[1:]):
        return pattern
    return None


def servers_of(gateways: list[Gateway], address: str) -> list[Server]:
    out = []
    for gw in gateways:
        for i, spec in enumerate(gw.servers):
            port = spec.get("port") or {}
            hosts = []
            for raw in spec.get("hosts") or ():
                ns, sep, host = str(raw).partition("/")
                hosts.append((ns, host) if sep else ("*", str(raw)))
            out.append(
                Server(
                    gateway=gw,
                    index=i,
                    spec=spec,
                    port=int(port.get("number") or 0),
                    port_name=str(port.get("name", "")),
                    protocol=str(port.get("protocol", "")).upper(),
                    bind=str(spec.get("bind") or address),
                    hosts=tuple(hosts),
                )
            )
    return out


class GatewayBuilder:
    """A gateway proxy's listeners, route configurations, secrets and SNI-DNAT clusters,
    built per proxy (namespace, labels, address) from the mesh's index, route and listener
    builders (whose VirtualService routes, authorization and JWT filters it reuses)."""

    def __init__(self, translation: Any, log: ProblemLog) -> None:
        self.t = translation
        self.index = translation.index
        self.mesh = translation.mesh
        self.log = log
        self.gateways = self.mesh.gateways
        self._built: dict[tuple[Any, ...], tuple[dict[str, dict[str, Message]], list[Any]]] = {}

    def generate(self, proxy: Proxy) -> tuple[dict[str, dict[str, Message]], list[ConfigProblem]]:
        address = str(proxy.metadata.get(GATEWAY_ADDRESS_KEY) or "0.0.0.0")
        # The telemetry scope too: an agent that collects Istio's metrics gets their loggers.
        scope = self.t.listeners.scope(proxy).key
        key = (proxy.namespace, tuple(sorted(proxy.labels.items())), address, scope)
        found = self._built.get(key)
        if found is None:
            with self.log.capture() as met:
                built = _Build(self, proxy, address).run()
            found = self._built[key] = (built, met)
        return found

    def resources(self, proxy: Proxy, shared_clusters: Mapping[str, Message]) -> dict[str, Any]:
        """The proxy's resources by type: its own listeners, routes and secrets, the mesh's
        clusters and endpoints (with the SNI-DNAT clusters of AUTO_PASSTHROUGH servers)."""
        built, _ = self.generate(proxy)
        own_clusters: dict[str, Message] = {}
        if built.get("auto_passthrough"):
            for name, cluster in shared_clusters.items():
                dnat = sni_dnat_name(name)
                if dnat is None:
                    continue
                c = cluster_pb2.Cluster()
                c.CopyFrom(cluster)
                c.name = dnat
                # the client's TLS passes through: no TLS origination to the endpoints
                c.ClearField("transport_socket")
                c.ClearField("transport_socket_matches")
                own_clusters[dnat] = c
        # Listeners, routes and secrets are the proxy's alone (no shared layer): a change to
        # what they are built from translates the gateway again (meshcore.xds.deps).
        return {
            types.CLUSTER: Layered(own_clusters, shared_clusters),
            types.LISTENER: built["listeners"],
            types.ROUTE: built["routes"],
            types.SECRET: built["secrets"],
        }


def _route_after_jwt(jwt: Message) -> Message:
    """The gateway's jwt_authn filter, choosing the route again once a token is verified
    (``clear_route_cache``, as Istio's gateways do): claim routes match on its metadata."""
    cfg = jwt_pb2.JwtAuthentication()
    copy_message(jwt).typed_config.Unpack(cfg)
    for provider in cfg.providers.values():
        provider.clear_route_cache = True
    out: Message = hcm_pb2.HttpFilter(name=JWT_AUTHN_NAME, typed_config=pack(cfg))
    return out


class _Build:
    """One gateway proxy's translation."""

    def __init__(self, builder: GatewayBuilder, proxy: Proxy, address: str) -> None:
        self.b = builder
        self.proxy = proxy
        self.log = builder.log
        self.gateways = gateways_for(builder.gateways, proxy.labels)
        self.servers = servers_of(self.gateways, address)
        self.listeners: dict[str, Message] = {}
        self.routes: dict[str, Message] = {}
        self.secrets: dict[str, Message] = {}
        self.auto_passthrough = False
        self._owners: list[Server] = []  # the server of each filter chain being built

    def run(self) -> dict[str, Any]:
        by_port: dict[tuple[str, int], list[Server]] = {}
        for s in self.servers:
            if s.bind.startswith("unix://"):
                self.log.problem(
                    s.gateway, s.path + ".bind", "unix domain socket binds are not translated",
                    "warning",
                )  # fmt: skip
                continue
            by_port.setdefault((s.bind, s.port), []).append(s)
        for (bind, port), servers in sorted(by_port.items()):
            name = f"{bind}_{port}"
            listener = listener_pb2.Listener(
                name=name, address=socket_address(bind, port), traffic_direction=base_pb2.OUTBOUND
            )
            self._chains(listener, name, bind, port, servers)
            self._unique(listener)
            if listener.filter_chains:
                if any(c.filter_chain_match.transport_protocol for c in listener.filter_chains):
                    listener.listener_filters.add(
                        name=TLS_INSPECTOR_NAME, typed_config=pack(tls_inspector_pb2.TlsInspector())
                    )
                self.listeners[name] = listener
        return {
            "listeners": dict(sorted(self.listeners.items())),
            "routes": dict(sorted(self.routes.items())),
            "secrets": dict(sorted(self.secrets.items())),
            "auto_passthrough": self.auto_passthrough,
        }

    def _chains(
        self,
        listener: listener_pb2.Listener,
        name: str,
        bind: str,
        port: int,
        servers: list[Server],
    ) -> None:
        plain_http = [s for s in servers if is_http(s.protocol)]
        if plain_http:
            bound = any(s.spec.get("bind") for s in plain_http)
            rds = f"http.{port}" + (f".{bind}" if bound else "")
            self.routes[rds] = self._route_config(rds, port, plain_http)
            self._chain(listener, plain_http[0]).filters.append(self._hcm(name, rds))
        for s in servers:
            if is_http(s.protocol):
                continue
            if s.terminates_tls and s.protocol == "HTTPS":
                rds = f"https.{port}.{s.port_name}.{s.gateway.name}.{s.gateway.namespace}"
                self.routes[rds] = self._route_config(rds, port, [s])
                chain = self._chain(listener, s, rds)
                self._tls_chain(chain, s)
                chain.filters.append(self._hcm(name, rds))
            elif s.protocol in TLS_PROTOCOLS and s.mode == "AUTO_PASSTHROUGH":
                self.auto_passthrough = True
                chain = self._chain(listener, s)
                chain.filter_chain_match.server_names.extend(s.sni_hosts())
                chain.filter_chain_match.transport_protocol = "tls"
                chain.filters.add(
                    name="envoy.filters.network.sni_cluster",
                    typed_config=pack(sni_cluster_pb2.SniCluster()),
                )
                chain.filters.append(self._tcp_proxy(BLACKHOLE))
            elif s.protocol in TLS_PROTOCOLS:
                # PASSTHROUGH: the tls routes by SNI; TLS-terminated TLS: the tcp routes
                for sni, cluster in self._l4_routes(s, "tls" if not s.terminates_tls else "tcp"):
                    chain = self._chain(listener, s)
                    if s.terminates_tls:
                        self._tls_chain(chain, s)
                    else:
                        chain.filter_chain_match.transport_protocol = "tls"
                        chain.filter_chain_match.server_names.extend(sni)
                    chain.filters.append(self._tcp_proxy(cluster))
            else:  # TCP, MONGO, REDIS, MYSQL: the tcp routes
                routes = self._l4_routes(s, "tcp")
                if routes:
                    self._chain(listener, s).filters.append(self._tcp_proxy(routes[0][1]))

    def _chain(self, listener: listener_pb2.Listener, s: Server, name: str = "") -> Any:
        """A new filter chain of ``listener`` for server ``s`` (kept in order with its server:
        see :meth:`_unique`)."""
        self._owners.append(s)
        return listener.filter_chains.add(name=name)

    def _unique(self, listener: listener_pb2.Listener) -> None:
        """Envoy refuses a listener whose filter chains match the same connections: the
        first server's chain is kept (Istio keeps the first too) and the others reported."""
        seen: dict[bytes, Server] = {}
        keep = []
        for chain, s in zip(listener.filter_chains, self._owners, strict=True):
            key = chain.filter_chain_match.SerializeToString(deterministic=True)
            first = seen.get(key)
            if first is not None:
                self.log.problem(
                    s.gateway,
                    s.path,
                    f"port {s.port} already has a filter chain for the same connections (from"
                    f" server {first.index} of Gateway {first.key}): this one is left out",
                    "warning",
                )
                continue
            seen[key] = s
            keep.append(chain)
        if len(keep) != len(listener.filter_chains):
            kept = [listener_components_pb2.FilterChain() for _ in keep]
            for new, old in zip(kept, keep, strict=True):
                new.CopyFrom(old)
            del listener.filter_chains[:]
            listener.filter_chains.extend(kept)
        self._owners.clear()

    def _tls_chain(self, chain: Any, s: Server) -> None:
        snis = s.sni_hosts()
        chain.filter_chain_match.server_names.extend(snis)
        chain.filter_chain_match.transport_protocol = "tls"
        ctx = downstream_tls(s.tls, http=s.protocol == "HTTPS")
        chain.transport_socket.CopyFrom(tls_socket(ctx))
        for name, secret in server_secrets(s, self.b.mesh, self.proxy, self.log).items():
            self.secrets[name] = secret

    def _hcm(self, name: str, rds: str) -> listener_components_pb2.Filter:
        t = self.b.t
        hcm = hcm_pb2.HttpConnectionManager(stat_prefix=f"outbound_{name}")
        scope = t.listeners.scope(self.proxy)
        observe(hcm, scope, OUTBOUND)
        if scope.metrics(OUTBOUND):  # Istio's gateways report as the source of what they forward
            istio_stats_http(hcm, OUTBOUND, disabled=scope.disabled_metrics(OUTBOUND))
        hcm.rds.route_config_name = rds
        hcm.rds.config_source.CopyFrom(ads())
        hcm.normalize_path.value = True
        hcm.use_remote_address.value = True  # the edge: the client is the peer (Istio's)
        jwt = t.listeners.jwt_filter(self.proxy)
        http_filters, _ = t.listeners.authz_filters(self.proxy)
        if jwt is not None:
            hcm.http_filters.append(_route_after_jwt(jwt))
        hcm.http_filters.extend(copy_message(f) for f in http_filters)
        hcm.http_filters.add(name=FAULT_NAME, typed_config=pack(fault_pb2.HTTPFault()))
        hcm.http_filters.add(name=CORS_NAME, typed_config=pack(cors_pb2.Cors()))
        hcm.http_filters.add(name=ROUTER_NAME, typed_config=pack(router_pb2.Router()))
        return listener_components_pb2.Filter(name=HCM_NAME, typed_config=pack(hcm))

    def _tcp_proxy(self, cluster: str) -> listener_components_pb2.Filter:
        proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=cluster, cluster=cluster)
        scope = self.b.t.listeners.scope(self.proxy)
        proxy.access_log.extend(scope.access_logs(OUTBOUND))
        if scope.metrics(OUTBOUND):
            istio_stats_tcp(proxy, OUTBOUND, disabled=scope.disabled_metrics(OUTBOUND))
        return listener_components_pb2.Filter(name=TCP_PROXY_NAME, typed_config=pack(proxy))

    def _bound(self, s: Server) -> list[VirtualService]:
        return [
            vs for vs in self.b.mesh.virtual_services if s.key in vs.bound_gateways and vs.hosts
        ]

    def _route_config(self, name: str, port: int, servers: list[Server]) -> Message:
        rcfg = route_pb2.RouteConfiguration(
            name=name, validate_clusters=wrappers_pb2.BoolValue(value=False)
        )
        vhosts: dict[str, rc.VirtualHost] = {}
        seen: set[tuple[str, tuple[str, str, str]]] = set()
        for s in servers:
            for vs in self._bound(s):
                domains = [d for host in vs.hosts for d in s.allows(vs, host)]
                routes = self._http_routes(vs, s, port) if domains and vs.http else None
                if routes is None:
                    continue
                for domain in dict.fromkeys(domains):
                    vname = f"{domain}:{port}"
                    if (vname, vs.key) in seen:  # the same host on two servers of the port
                        continue
                    seen.add((vname, vs.key))
                    vh = vhosts.get(vname)
                    if vh is None:
                        vh = vhosts[vname] = rc.VirtualHost(
                            name=vname, domains=virtual_host_domains(domain, port)
                        )
                        if s.tls.get("httpsRedirect"):
                            vh.require_tls = rc.VirtualHost.ALL
                    vh.routes.extend(routes)
        if not vhosts:
            # Istio: no virtual host on the port, every request answered 404 (no route)
            rcfg.virtual_hosts.add(name=f"blackhole:{port}", domains=["*"])
        for vname in sorted(vhosts):
            rcfg.virtual_hosts.append(vhosts[vname])
        out: Message = rcfg
        return out

    def _http_routes(self, vs: VirtualService, s: Server, port: int) -> list[rc.Route] | None:
        try:
            return VsRoutes(self.b.t.routes, vs, None, port, self.proxy, False, s.key).build()
        except Invalid as bad:
            self.log.problem(
                vs,
                bad.path,
                f"{bad.message}; this VirtualService's routes are left out of gateway"
                f" {s.key} port {port}",
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self.log.problem(
                vs,
                "spec.http",
                f"cannot be translated ({exc}); this VirtualService's routes are left out"
                f" of gateway {s.key} port {port}",
            )
        return None

    def _l4_routes(self, s: Server, kind: str) -> list[tuple[list[str], str]]:
        """(SNI hosts, cluster) of the bound VirtualServices' ``tls`` (or ``tcp``) routes that
        apply to this server, in order."""
        out: list[tuple[list[str], str]] = []
        for vs in self._bound(s):
            for i, route in enumerate(vs.spec.get(kind) or ()):
                path = f"spec.{kind}[{i}]"
                matches = list(route.get("match") or ({},))
                snis: list[str] = []
                applies = False
                for m in matches:
                    if m.get("port") is not None and int(m["port"]) != s.port:
                        continue
                    if m.get("gateways") and s.key not in resolve_gateways(
                        m["gateways"], vs.namespace
                    ):
                        continue
                    applies = True
                    for sni in m.get("sniHosts") or ():
                        snis.extend(s.allows(vs, str(sni)))
                if not applies or (kind == "tls" and not snis):
                    continue
                dests = list(route.get("route") or ())
                if len(dests) != 1:
                    self.log.problem(
                        vs,
                        path + ".route",
                        f"{kind} routes with several destinations are not translated on gateways;"
                        " the first destination takes all connections",
                        "warning",
                    )
                dest = (dests[0] if dests else {}).get("destination") or {}
                host = resolve_host(str(dest.get("host", "")), vs.namespace, self.b.mesh.domain)
                number = int((dest.get("port") or {}).get("number") or s.port)
                out.append(
                    (
                        sorted(set(snis)),
                        cluster_name(OUTBOUND, number, str(dest.get("subset", "")), host),
                    )
                )
        return out
