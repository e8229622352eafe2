"""``DataPlane``: Envoy's routing, load-balancing and authorization decisions for a custom proxy.

    dp = DataPlane.connect("127.0.0.1:15010", node_id=..., bootstrap_token=...,
                           ca_address=..., trust_bundle=...)
    d = dp.decide(direction="outbound", method="GET", authority="reviews:9080", path="/api")
    d.route, d.cluster, d.endpoint, d.timeout, d.retry_policy, d.allowed, d.policy_id

The config comes over a delta ADS stream (:class:`~meshcore.dataplane.ads.AdsClient`) and is
compiled from the very protos Envoy receives; the certificate (SVID) from meshcore's CA
(:class:`~meshcore.dataplane.certs.CertificateClient`, rotated at half its lifetime).
``connect`` runs both on a background thread with its own event loop; ``aconnect`` runs them in
the caller's loop. ``decide`` is synchronous and cheap, and safe to call from any thread: it
reads the current compiled config through one reference, and is one call into the core
(``meshcore._core.decide``: the config compiled into a decider on its first decision, the
load-balancer state held in Rust); ``decide_batch`` decides columns of requests.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
import urllib.parse
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from google.protobuf.message import Message

from meshcore._core import decide as _core_decide
from meshcore.dataplane.ads import AdsClient
from meshcore.dataplane.certs import CertificateClient, WorkloadSecret
from meshcore.dataplane.config import (
    ClusterConfig,
    CompiledConfig,
    CompiledRoutes,
    Compiler,
    Endpoint,
    InboundListener,
    RouteInfo,
)
from meshcore.dataplane.decider import compile_decider
from meshcore.dataplane.lb import CoreLoadBalancer, LoadBalancer, hash64
from meshcore.dataplane.routeactions import HashPolicy, RetryPolicy
from meshcore.dataplane.tls import client_context, server_context
from meshcore.errors import MeshcoreError
from meshcore.xds.node import parse_node_id

Headers = Mapping[str, str] | Iterable[tuple[str, str]] | None


class DataPlaneError(MeshcoreError):
    """The data plane could not start (no config in time, no certificate, bad arguments)."""


# What to do with one request: made by the core's decider without running Python (a
# dataclass's __init__ was a third of a decision), it behaves as the dataclass it replaced
# (fields read and written, keyword construction, ==, dataclasses.replace).
Decision = _core_decide.Decision


def _split_authority(authority: str) -> tuple[str, int | None]:
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit():
        return host, int(port)
    return authority, None


def _header(headers: Headers, name: str) -> str | None:
    if headers is None:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for k, v in items:
        if k.lower() == name:
            return v
    return None


class DataPlane:
    """Decisions from the current config; see the module docstring."""

    def __init__(
        self,
        ads: AdsClient,
        certs: CertificateClient | None = None,
        *,
        trust_domain: str = "cluster.local",
        lb: LoadBalancer | CoreLoadBalancer | None = None,
    ) -> None:
        self.ads = ads
        self.certs = certs
        self.trust_domain = trust_domain
        # The core's balancer by default: decide() is then one call into the core; the Python
        # LoadBalancer (the reference) keeps decide() on its Python path.
        self.lb = lb or CoreLoadBalancer()
        self._random = _core_decide.Random()  # weighted clusters (Python's random, in the core)
        self._decider: tuple[CompiledConfig, _core_decide.Decider] | None = None
        if type(self).decide is DataPlane.decide and type(self.lb) is CoreLoadBalancer:
            # decide() entered without a Python frame: the core's method, bound to this plane
            # (same arguments and decisions; it calls _core, _outbound and _inbound below).
            self.__dict__["decide"] = _core_decide.Decide(ads, weakref.ref(self)).decide
        self._ports: dict[str, int] = {}  # authority -> port, remembered
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client_contexts: dict[tuple[int, str], ssl.SSLContext] = {}
        self._server_context: ssl.SSLContext | None = None

    # --- starting and stopping ---------------------------------------------------------------

    @classmethod
    def _build(
        cls,
        address: str,
        *,
        node_id: str,
        bootstrap_token: str | None,
        ca_address: str | None,
        ca_mtls_address: str | None,
        trust_bundle: str | None,
        identity: str | None,
        service_account: str | None,
        metadata: Mapping[str, Any] | None,
        certificate_ttl: datetime.timedelta | None,
    ) -> DataPlane:
        try:
            _, _, _, namespace, domain = parse_node_id(node_id)
        except ValueError as exc:
            raise DataPlaneError(str(exc)) from None
        certs = None
        if ca_address is not None:
            if not trust_bundle:
                raise DataPlaneError("ca_address needs trust_bundle (the mesh's root PEM)")
            sa = service_account or "default"
            certs = CertificateClient(
                ca_address,
                identity or f"spiffe://{domain}/ns/{namespace}/sa/{sa}",
                trust_bundle_pem=trust_bundle,
                mtls_address=ca_mtls_address,
                bootstrap_token=bootstrap_token,
                ttl=certificate_ttl,
            )
        ads = AdsClient(address, node_id, metadata=metadata)
        return cls(ads, certs, trust_domain=domain)

    @classmethod
    def from_resources(
        cls,
        node_id: str,
        resources: Mapping[str, Mapping[str, Message | bytes]],
        *,
        lb: LoadBalancer | CoreLoadBalancer | None = None,
    ) -> DataPlane:
        """A data plane on the given xDS resources, with no control plane and no stream: for
        tests, benchmarks and embedders. ``resources`` as the translator returns them (type
        URL -> name -> message or its serialized bytes); they compile as an ADS response would
        (:class:`~meshcore.errors.ConfigError` naming every resource that does not)."""
        try:
            domain = parse_node_id(node_id)[4]
        except ValueError as exc:
            raise DataPlaneError(str(exc)) from None
        ads = AdsClient("", node_id)
        for type_url, by_name in resources.items():
            if type_url not in ads.resources:
                raise DataPlaneError(
                    f"{type_url}: not a resource type the data plane reads "
                    f"({', '.join(sorted(ads.resources))})"
                )
            ads.resources[type_url] = {
                name: ("offline", m if isinstance(m, bytes) else m.SerializeToString())
                for name, m in by_name.items()
            }
        ads.config = Compiler().compile(ads.resources)
        return cls(ads, trust_domain=domain, lb=lb)

    @classmethod
    async def aconnect(
        cls,
        address: str,
        *,
        node_id: str,
        bootstrap_token: str | None = None,
        ca_address: str | None = None,
        ca_mtls_address: str | None = None,
        trust_bundle: str | None = None,
        identity: str | None = None,
        service_account: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        certificate_ttl: datetime.timedelta | None = None,
        timeout: float = 10.0,
    ) -> DataPlane:
        """Starts the ADS client (and the certificate client, when ``ca_address`` is given) in
        the running loop; returns once the config is complete and the SVID is there."""
        dp = cls._build(
            address, node_id=node_id, bootstrap_token=bootstrap_token, ca_address=ca_address,
            ca_mtls_address=ca_mtls_address, trust_bundle=trust_bundle, identity=identity,
            service_account=service_account, metadata=metadata, certificate_ttl=certificate_ttl,
        )  # fmt: skip
        await dp.start(timeout=timeout)
        return dp

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        node_id: str,
        bootstrap_token: str | None = None,
        ca_address: str | None = None,
        ca_mtls_address: str | None = None,
        trust_bundle: str | None = None,
        identity: str | None = None,
        service_account: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        certificate_ttl: datetime.timedelta | None = None,
        timeout: float = 10.0,
    ) -> DataPlane:
        """Like :meth:`aconnect`, with the clients on a background thread (its own loop)."""
        dp = cls._build(
            address, node_id=node_id, bootstrap_token=bootstrap_token, ca_address=ca_address,
            ca_mtls_address=ca_mtls_address, trust_bundle=trust_bundle, identity=identity,
            service_account=service_account, metadata=metadata, certificate_ttl=certificate_ttl,
        )  # fmt: skip
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="meshcore-dataplane", daemon=True)
        thread.start()
        dp._thread = thread
        try:
            asyncio.run_coroutine_threadsafe(dp.start(timeout=timeout), loop).result(timeout + 5)
        except BaseException:
            dp.close()
            raise
        return dp

    async def start(self, *, timeout: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.certs is not None:
            self._tasks.append(asyncio.ensure_future(self.certs.run(self._stop)))
        try:
            await asyncio.wait_for(self._ready(), timeout)
        except TimeoutError:
            await self.aclose()
            if self.certs is not None and self.certs.current is None:
                missing = f"no certificate from the CA at {self.certs.address}"
            else:
                missing = f"no complete config from the ADS server at {self.ads.address}"
            raise DataPlaneError(f"{missing} within {timeout}s") from None

    async def _ready(self) -> None:
        # The certificate first, as Istio's agent does: a proxy that cannot get one does not
        # connect, so the control plane never reports a proxy without a certificate as SYNCED.
        while self.certs is not None and self.certs.current is None:
            await asyncio.sleep(0.02)
        assert self._stop is not None  # set by start()
        self._tasks.append(asyncio.ensure_future(self.ads.run(self._stop)))
        await self.ads.synced.wait()

    async def aclose(self) -> None:
        if self._stop is not None:
            self._stop.set()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            try:
                await asyncio.wait_for(t, 5)
            except (TimeoutError, asyncio.CancelledError):
                t.cancel()

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if thread is None or loop is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._thread = None

    def __enter__(self) -> DataPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state ---------------------------------------------------------------------------------

    @property
    def config(self) -> CompiledConfig:
        """The current compiled config (immutable; a new object on every accepted update)."""
        return self.ads.config

    @property
    def secret(self) -> WorkloadSecret:
        current = self.certs.current if self.certs is not None else None
        if current is None:
            raise DataPlaneError("no workload certificate: connect with ca_address=")
        return current

    # --- decisions -----------------------------------------------------------------------------

    def decide(
        self,
        *,
        direction: str = "outbound",
        method: str = "GET",
        authority: str,
        path: str,
        headers: Headers = None,
        port: int | None = None,
        source_ip: str | None = None,
        principal: str | None = None,
        tls: bool | None = None,
        config: CompiledConfig | None = None,
    ) -> Decision:
        """Envoy's decision for one request. Outbound: the listener for the authority's port
        (or ``port``), its route table, the route's cluster (weighted clusters chosen by
        weight) and an endpoint by the cluster's LB policy. Inbound: the listener for ``port``
        (or the only one), its RBAC filters (Istio's layers: DENY, then ALLOW; fail closed) with
        the peer's SPIFFE ``principal``, and its inbound cluster."""
        cfg = config or self.ads.config  # one read: the whole decision uses this config
        if direction == "outbound":
            compiled = self._decider
            core = compiled[1] if compiled is not None and compiled[0] is cfg else self._core(cfg)
            if core is not None:  # one call into the core; None: the general path decides
                d: Decision | None = core.outbound(authority, path, method, headers, port,
                                                   source_ip)  # fmt: skip
                if d is not None:
                    return d
            return self._outbound(cfg, method, authority, path, headers, port, source_ip)
        if direction == "inbound":
            compiled = self._decider
            core = compiled[1] if compiled is not None and compiled[0] is cfg else self._core(cfg)
            if core is not None:
                di: Decision | None = core.inbound(authority, path, method, headers, port,
                                                   source_ip, principal, tls)  # fmt: skip
                if di is not None:
                    return di
            return self._inbound(cfg, method, authority, path, headers, port, source_ip,
                                 principal, tls)  # fmt: skip
        raise ValueError(f"direction must be 'outbound' or 'inbound', not {direction!r}")

    def decide_batch(
        self,
        *,
        direction: str = "outbound",
        authorities: Any,
        paths: Any,
        methods: Any = None,
        headers: Any = None,
        ports: Any = None,
        source_ips: Any = None,
        principals: Any = None,
        config: CompiledConfig | None = None,
    ) -> list[Decision]:
        """The decisions of many requests, in order: the same as one :meth:`decide` per row
        (the load balancers see the rows in order). Columns: each a list or tuple, a numpy
        array (dtype 'S' or 'U' for strings: no Python object per row) or one value for every
        row; ``headers`` one dict or pair list per row. Outbound, the core decides runs of rows
        with the GIL released and at one reading of the clock; rows it does not cover (see
        :meth:`decide`) take the general path in place."""
        cfg = config or self.ads.config
        if direction not in ("outbound", "inbound"):
            raise ValueError(f"direction must be 'outbound' or 'inbound', not {direction!r}")
        cols = {"authority": authorities, "path": paths, "method": methods, "headers": headers,
                "port": ports, "source_ip": source_ips, "principal": principals}  # fmt: skip

        def row(i: int) -> dict[str, Any]:
            out = {k: _cell(v, i) for k, v in cols.items()}
            out["method"] = out["method"] or "GET"
            return out

        core = self._core(cfg) if direction == "outbound" else None
        if core is None:
            n = _rows(cols)
            return [self.decide(direction=direction, config=cfg, **row(i)) for i in range(n)]

        def general(i: int) -> Decision:
            r = row(i)
            del r["principal"]
            return self._outbound(cfg, r["method"], r["authority"], r["path"], r["headers"],
                                  r["port"], r["source_ip"])  # fmt: skip

        decisions: list[Decision] = core.outbound_batch(general, authorities, paths, methods,
                                                        headers, ports, source_ips)  # fmt: skip
        return decisions

    def _core(self, cfg: CompiledConfig) -> _core_decide.Decider | None:
        """The core's decider for ``cfg`` (compiled on its first decision), or None when this
        data plane balances with the Python :class:`LoadBalancer`."""
        lb = self.lb
        if type(lb) is not CoreLoadBalancer:
            return None
        compiled = self._decider
        if compiled is None or compiled[0] is not cfg:
            if cfg is not self.ads.config:  # an older config passed in: the general path
                return None
            compiled = self._decider = (cfg, compile_decider(cfg, lb, self._random, Decision))
        return compiled[1]

    def _pick(
        self,
        cfg: CompiledConfig,
        cluster: ClusterConfig,
        endpoints: Sequence[Endpoint],
        key: int | None,
    ) -> Endpoint | None:
        core = self._core(cfg)
        if core is not None and cfg.clusters.get(cluster.name) is cluster:
            ep: Endpoint | None = core.pick(cluster.name, key)
            return ep
        return self.lb.pick(cluster, endpoints, key)

    def _outbound(
        self,
        cfg: CompiledConfig,
        method: str,
        authority: str,
        path: str,
        headers: Headers,
        port: int | None,
        source_ip: str | None,
    ) -> Decision:
        if port is None:
            port = self._ports.get(authority)
            if port is None:
                port = _split_authority(authority)[1] or 80
                if len(self._ports) < 4096:
                    self._ports[authority] = port
        gen = cfg.generation
        # The listener's routes, compiled with its HCM options (normalize_path, ...).
        routes: CompiledRoutes | None = cfg.listener_routes.get(port)
        if routes is None:
            lst = cfg.outbound.get(port)
            if lst is not None and lst.tcp_cluster is not None:
                return self._to_cluster(cfg, "outbound", None, lst.tcp_cluster, None, None, (),
                                        headers, path, source_ip)  # fmt: skip
            return Decision("outbound", True, status=404, response_flags="NR", generation=gen)
        lst = cfg.outbound.get(port)
        seen = lst.normalized_path(path) if lst is not None else path
        if seen is None:  # the connection manager rejects it before routing
            return Decision("outbound", True, status=400, generation=gen)
        m = routes.table.route(authority, path, method, headers)  # normalises as Envoy does
        if m is None:
            return Decision("outbound", True, status=404, response_flags="NR", generation=gen)
        info: RouteInfo = routes.routes[m.route_index]
        if info.kind == "direct_response":
            return Decision("outbound", True, route=info.name, status=info.direct_status,
                            body=info.direct_body, generation=gen)  # fmt: skip
        if info.kind != "route":
            return Decision("outbound", True, route=info.name, status=404, response_flags="NR",
                            generation=gen)  # fmt: skip
        cluster = info.cluster
        if cluster is None and info.weighted:
            # Envoy: a random number modulo the total weight, walked through the clusters.
            pick = self._random.randrange(info.total_weight) if info.total_weight else 0
            for name, weight in info.weighted:
                if pick < weight:
                    cluster = name
                    break
                pick -= weight
        if cluster is None:
            return Decision("outbound", True, route=info.name, status=503, response_flags="NC",
                            generation=gen)  # fmt: skip
        d = self._to_cluster(cfg, "outbound", info, cluster, info.timeout, info.retry_policy,
                             info.hash_policies, headers, path, source_ip)  # fmt: skip
        # The upstream gets the normalised path (with the route's prefix_rewrite, if any).
        if info.rewrite_from is not None and seen.startswith(info.rewrite_from):
            d.path = info.prefix_rewrite + seen[len(info.rewrite_from) :]
        elif seen is not path:
            d.path = seen
        return d

    def _to_cluster(
        self,
        cfg: CompiledConfig,
        direction: str,
        info: RouteInfo | None,
        cluster_name: str,
        timeout: float | None,
        retry: RetryPolicy | None,
        hash_policies: tuple[HashPolicy, ...],
        headers: Headers,
        path: str,
        source_ip: str | None,
        allowed: bool = True,
        policy_id: str | None = None,
    ) -> Decision:
        route = info.name if info is not None else None
        cluster = cfg.clusters.get(cluster_name)
        if cluster is None:
            return Decision(direction, allowed, route=route, cluster=cluster_name, status=503,
                            response_flags="NC", policy_id=policy_id,
                            generation=cfg.generation)  # fmt: skip
        endpoints = cfg.endpoints_of(cluster)
        key, cookies = (
            _hash_key(hash_policies, headers, path, source_ip) if hash_policies else (None, ())
        )
        ep = self._pick(cfg, cluster, endpoints, key)
        if ep is None:
            return Decision(direction, allowed, route=route, cluster=cluster_name, status=503,
                            response_flags="UH", timeout=timeout, retry_policy=retry,
                            policy_id=policy_id, generation=cfg.generation)  # fmt: skip
        up = cluster.tls
        tls = up is not None and (ep.tls or not up.auto)
        # Positional: keyword arguments to a 16-field dataclass cost as much as the route match.
        return Decision(
            direction, allowed, route, cluster_name, ep, timeout, retry, policy_id, None, "-",
            b"", tls, up.sni if tls and up is not None else "",
            info.host_rewrite if info is not None else "", key, cfg.generation, None, cookies,
        )  # fmt: skip

    def _inbound(
        self,
        cfg: CompiledConfig,
        method: str,
        authority: str,
        path: str,
        headers: Headers,
        port: int | None,
        source_ip: str | None,
        principal: str | None,
        tls: bool | None,
    ) -> Decision:
        gen = cfg.generation
        lst: InboundListener | None
        if port is None and len(cfg.inbound) == 1:
            lst = next(iter(cfg.inbound.values()))
        else:
            lst = cfg.inbound.get(port) if port is not None else None
        if lst is None:  # fail closed: no listener, no admission
            return Decision("inbound", False, status=403, response_flags="NR", generation=gen)
        if tls is None:
            tls = principal is not None
        if lst.mtls_mode == "STRICT" and not tls:
            return Decision("inbound", False, status=403, generation=gen)  # plaintext on STRICT
        if lst.authz is None:
            return Decision("inbound", False, status=403, generation=gen)
        seen = lst.normalized_path(path)
        if seen is None:  # the connection manager rejects it before any filter
            return Decision("inbound", False, status=400, generation=gen)
        path = seen
        request: dict[str, Any] = {
            "method": method, "path": path, "authority": authority, "headers": headers,
            "destination_port": lst.port, "destination_ip": lst.address, "tls": tls,
        }  # fmt: skip
        if principal is not None:
            request["principal"] = principal
            request["uri_sans"] = [principal]
        if source_ip is not None:
            request["source_ip"] = request["remote_ip"] = request["direct_remote_ip"] = source_ip
        authz = lst.authz.evaluate(**request)
        if not authz.allowed:
            return Decision("inbound", False, cluster=lst.cluster, policy_id=authz.policy_id,
                            status=403, response_flags="RBAC", generation=gen)  # fmt: skip
        if lst.cluster is None:
            return Decision("inbound", True, policy_id=authz.policy_id, status=503,
                            response_flags="NC", generation=gen)  # fmt: skip
        d = self._to_cluster(cfg, "inbound", None, lst.cluster, None, None, (), headers,
                             path, source_ip, True, authz.policy_id)  # fmt: skip
        d.path = path
        return d

    def repick(self, decision: Decision, tried: Sequence[Endpoint] = ()) -> Decision | None:
        """The same decision with another endpoint of its cluster, for a retry (the route and
        cluster stay, as in Envoy); None when the cluster is gone or has no endpoint. With the
        retry policy's previous_hosts predicate, hosts in ``tried`` are re-picked (up to
        host_selection_retry_max_attempts times, as Envoy does)."""
        if decision.cluster is None or decision.endpoint is None:
            return None
        cfg = self.ads.config
        cluster = cfg.clusters.get(decision.cluster)
        if cluster is None:
            return None
        endpoints = cfg.endpoints_of(cluster)
        ep = self._pick(cfg, cluster, endpoints, decision.hash_key)
        retry = decision.retry_policy
        if retry is not None and retry.previous_hosts:
            for _ in range(retry.host_selection_attempts):
                if ep is None or ep not in tried:
                    break
                ep = self._pick(cfg, cluster, endpoints, decision.hash_key)
        if ep is None:
            return None
        tls = cluster.tls is not None and (ep.tls or not cluster.tls.auto)
        sni = cluster.tls.sni if tls and cluster.tls is not None else ""
        return replace(decision, endpoint=ep, tls=tls, sni=sni, response_flags="-")

    # --- feedback ------------------------------------------------------------------------------

    def started(self, decision: Decision) -> None:
        """Counts an active request to the decision's endpoint (least request)."""
        if decision.endpoint is not None and decision.cluster is not None:
            self.lb.started(decision.cluster, decision.endpoint)

    def report(self, decision: Decision, status: int | None, *, started: bool = False) -> bool:
        """The upstream's answer to a decided request (None: the connection failed): feeds
        outlier detection (and least request, with ``started=True`` after :meth:`started`).
        True when this ejected the endpoint."""
        if decision.endpoint is None or decision.cluster is None:
            return False
        cfg = self.ads.config
        cluster = cfg.clusters.get(decision.cluster)
        endpoints = cfg.endpoints_of(cluster) if cluster is not None else ()
        return self.lb.finished(cluster, decision.endpoint, status, endpoints, started=started)

    # --- TLS -----------------------------------------------------------------------------------

    def client_ssl_context(self, cluster: str | ClusterConfig | None) -> ssl.SSLContext:
        """A client context for ``cluster``'s endpoints: presents the SVID; verifies the
        server's SPIFFE id against the cluster's SANs (or the trust domain when none)."""
        secret = self.secret
        cc = cluster if isinstance(cluster, ClusterConfig) else (
            self.ads.config.clusters.get(cluster) if cluster else None)  # fmt: skip
        sans = cc.tls.sans if cc is not None and cc.tls is not None else ()
        key = (secret.serial, cc.name if cc is not None else "")
        ctx = self._client_contexts.get(key)
        if ctx is None:
            if len(self._client_contexts) > 1024 or any(
                s != secret.serial for s, _ in self._client_contexts
            ):
                self._client_contexts.clear()
            ctx = self._client_contexts[key] = client_context(
                secret, sans=sans, trust_domain=self.trust_domain
            )
        return ctx

    def server_ssl_context(self) -> ssl.SSLContext:
        """A server context presenting the SVID (following rotation) and requiring a client
        certificate from the trust domain (RBAC then decides on the peer's SPIFFE id)."""
        self.secret  # noqa: B018  (raises without a certificate)
        if self._server_context is None:
            self._server_context = server_context(
                lambda: self.secret, trust_domain=self.trust_domain
            )
        return self._server_context


def _cell(col: Any, i: int) -> Any:
    """Row ``i`` of a batch column (one value for every row when a str or int)."""
    if col is None or isinstance(col, str | int):
        return col
    v = col[i]
    if isinstance(v, bytes):  # numpy 'S'
        return v.decode()
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return v


def _rows(cols: Mapping[str, Any]) -> int:
    lengths = {len(v) for v in cols.values() if v is not None and not isinstance(v, str | int)}
    if len(lengths) != 1:
        raise ValueError("batch columns must have one length (and at least one be a column)")
    return lengths.pop()


def _hash_key(
    policies: tuple[HashPolicy, ...], headers: Headers, path: str, source_ip: str | None
) -> tuple[int | None, tuple[str, ...]]:
    """Envoy's hash: policies in order, combined; a terminal policy that yields stops. A cookie
    policy with a ttl whose cookie the request lacks generates one (returned as Set-Cookie
    values for the response) and hashes on it, as Envoy's router does."""
    key: int | None = None
    generated: list[str] = []
    for hp in policies:
        value: str | None = None
        if hp.kind == "header":
            value = _header(headers, hp.name)
        elif hp.kind == "source_ip":
            value = source_ip
        elif hp.kind == "query_parameter":
            query = urllib.parse.urlsplit(path).query
            values = urllib.parse.parse_qs(query).get(hp.name)
            value = values[0] if values else None
        elif hp.kind == "cookie":
            value = _cookie(headers, hp.name)
            if value is None and hp.cookie_ttl is not None:
                value, set_cookie = _generate_cookie(hp, source_ip)
                generated.append(set_cookie)
        if value is None:
            continue
        h = hash64(value.encode())
        key = h if key is None else (((key << 1) | (key >> 63)) & (2**64 - 1)) ^ h
        if hp.terminal:
            break
    return key, tuple(generated)


def _cookie(headers: Headers, name: str) -> str | None:
    """A request cookie's value (Envoy's parseCookieValue: the first of that name, without its
    surrounding double quotes); None when absent or empty."""
    for part in (_header(headers, "cookie") or "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            return v or None
    return None


def _generate_cookie(hp: HashPolicy, source_ip: str | None) -> tuple[str, str]:
    """The cookie Envoy generates for a policy with a ttl: a hex hash of the downstream address
    (the same for every request of a client, so racing requests get the same cookie), and its
    Set-Cookie value (quoted value, Max-Age unless the ttl is 0, Path, attributes, HttpOnly)."""
    value = f"{hash64((source_ip or '').encode()):016x}"
    parts = [f'{hp.name}="{value}"']
    if hp.cookie_ttl:
        parts.append(f"Max-Age={hp.cookie_ttl}")
    if hp.cookie_path:
        parts.append(f"Path={hp.cookie_path}")
    parts.extend(f"{n}={v}" if v else n for n, v in hp.cookie_attributes)
    parts.append("HttpOnly")
    return value, "; ".join(parts)
