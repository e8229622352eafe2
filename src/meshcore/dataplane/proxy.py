"""``meshcore proxy``: a reference HTTP/1.1 and HTTP/2 proxy built on :class:`DataPlane`
(asyncio, h11 and h2; uvloop's event loop when installed).

It shows how to embed the data plane in a proxy of one's own:

- outbound (the app sends plain HTTP to ``--outbound``, Host naming the service and port):
  ``decide`` picks the route, cluster and endpoint; the request goes to the endpoint over mTLS
  with the SVID when the cluster says so (verifying the server's SPIFFE id), within the
  route's timeout, retried per its retry policy on another pick; results feed outlier detection;
- inbound (one server per inbound listener of the config, at its address, following config
  changes): mTLS with the SVID
  (STRICT and PERMISSIVE listeners take TLS; DISABLE ones plaintext), the listener's RBAC on the
  peer's SPIFFE id (403 on deny, the policy id in the access log), then the local app;
- Istio's standard metrics (``istio_requests_total``, ``istio_request_duration_milliseconds``
  with Istio's labels) on ``/metrics``, and an access log line per request.

The listeners' codec is Envoy's AUTO (a sidecar's): a connection that opens with the HTTP/2
preface speaks HTTP/2 (:mod:`meshcore.dataplane.http2`: gRPC with its trailers, bodies streamed
under flow control, the request carried upstream as HTTP/2), any other HTTP/1.1
(``http2=False``, ``--codec http1``: HTTP/1 only). HTTP/1.1 bodies up to 64 KiB are read whole
(which is what lets a request be retried); longer ones stream through in both directions, each
chunk written and drained before the next is read (a streamed request is not retried: its body
is gone, as with Envoy's past its buffer limit). What reaches a decision is what Envoy's codecs
and connection manager let through (:mod:`meshcore.dataplane.http1`; plain requests read on
its fast path, :mod:`meshcore.dataplane.wire`): the others get Envoy's local replies. Istio's
metrics and the access log are written after the response, off the request's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import Any

import h2.exceptions
import h11
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshcore.dataplane.accounting import REQUEST_ID, Accounting, IstioMetrics
from meshcore.dataplane.config import ClusterConfig, Endpoint, InboundListener
from meshcore.dataplane.http1 import (
    DEFAULT_LIMITS,
    HOP_BY_HOP,
    Body,
    Downstream,
    Limits,
    Refusal,
    Request,
    Response,
    UpstreamError,
    UpstreamPool,
    end_to_end,
    send,
)
from meshcore.dataplane.http2 import (
    PREFACE,
    ClientPool,
    Exchange,
    Server,
    StreamReset,
    forwarded,
    relay,
)
from meshcore.dataplane.plane import DataPlane, DataPlaneError, Decision
from meshcore.dataplane.tls import uri_sans
from meshcore.xds.node import parse_node_id

log = logging.getLogger("meshcore.proxy")
access_log = logging.getLogger("meshcore.proxy.access")

INBOUND_RECHECK_S = 0.2  # how often the inbound listeners are compared with the config
RETRY_BASE_S = 0.025  # Envoy's default base retry interval
ATTEMPTS = "x-envoy-attempt-count"
PEER_HEADER = "x-meshcore-peer-workload"  # "name.namespace" of the calling workload (over mTLS)
_NOT_FORWARDED_IN = HOP_BY_HOP | {PEER_HEADER}
_NOT_FORWARDED_OUT = _NOT_FORWARDED_IN | {ATTEMPTS}


# --- the proxy --------------------------------------------------------------------------------


class ReferenceProxy:
    """Outbound and inbound HTTP/1.1 and HTTP/2 proxying on a :class:`DataPlane` (see the module doc)."""

    def __init__(
        self,
        dp: DataPlane,
        *,
        outbound: tuple[str, int] | None = ("127.0.0.1", 15001),
        inbound: bool = True,
        metrics: tuple[str, int] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        http2: bool = True,
    ) -> None:
        self.dp = dp
        self.http2 = http2  # the listeners' codec: AUTO (HTTP/2 on its preface) or HTTP/1 only
        self.limits = limits  # downstream timeouts (the request head, idle connections)
        self.outbound_address = outbound
        self.serve_inbound = inbound
        self.metrics_address = metrics
        _, _, name, namespace, _ = parse_node_id(dp.ads.node_id)
        self.workload, self.namespace = name, namespace
        labels = dp.ads.metadata.get("LABELS")
        self.labels: dict[str, str] = dict(labels) if isinstance(labels, dict) else {}
        self.metrics = IstioMetrics()
        self.accounting = Accounting(dp, self.metrics, name, namespace, self.labels,
                                     lambda: self.principal)  # fmt: skip
        self._registry = self.metrics.registry()
        self._pool = UpstreamPool()
        self._h2pool = ClientPool()
        self._servers: list[asyncio.Server] = []
        self._random = random.Random()
        self.outbound_port: int | None = None
        self.inbound_ports: dict[int, int] = {}  # listener port -> bound port
        self._inbound: dict[int, tuple[tuple[str, str], asyncio.Server]] = {}
        self._inbound_generation = -1
        self._watcher: asyncio.Future[None] | None = None
        self.metrics_port: int | None = None
        self._connections: set[asyncio.StreamWriter] = set()  # downstream, open now

    @property
    def principal(self) -> str:
        return self.dp.secret.identity.uri if self.dp.certs is not None else "unknown"

    async def start(self) -> None:
        if self.outbound_address is not None:
            host, port = self.outbound_address
            srv = await asyncio.start_server(self._outbound_conn, host, port)
            self.outbound_port = srv.sockets[0].getsockname()[1]
            self._servers.append(srv)
        if self.serve_inbound:
            await self._reconcile_inbound()
            self._watcher = asyncio.ensure_future(self._watch_inbound())
        if self.metrics_address is not None:
            host, port = self.metrics_address
            srv = await asyncio.start_server(self._metrics_conn, host, port)
            self.metrics_port = srv.sockets[0].getsockname()[1]
            self._servers.append(srv)

    async def _watch_inbound(self) -> None:
        """Follows the config: inbound listeners that appear are bound, those that go away (or
        change address or mTLS mode) are closed; connections already open finish normally."""
        while True:
            await asyncio.sleep(INBOUND_RECHECK_S)
            try:
                await self._reconcile_inbound()
            except OSError as exc:  # e.g. the address is taken: keep serving the others
                log.error("cannot bind an inbound listener: %s", exc)

    async def _reconcile_inbound(self) -> None:
        cfg = self.dp.config
        if cfg.generation == self._inbound_generation:
            return
        wanted = {lst.port: lst for lst in cfg.inbound.values()}
        for port, (key, srv) in list(self._inbound.items()):
            lst = wanted.get(port)
            if lst is None or (lst.address, lst.mtls_mode) != key:
                srv.close()
                del self._inbound[port]
                self.inbound_ports.pop(port, None)
                log.info("inbound listener on port %d closed", port)
        for port, lst in wanted.items():
            if port not in self._inbound:
                await self._bind_inbound(lst)
        self._inbound_generation = cfg.generation

    async def _bind_inbound(self, lst: InboundListener) -> None:
        tls = lst.mtls_mode != "DISABLE"
        ctx = self.dp.server_ssl_context() if tls else None
        port = lst.port

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(reader, writer, inbound_port=port)

        srv = await asyncio.start_server(handle, lst.address, port, ssl=ctx)
        self.inbound_ports[port] = srv.sockets[0].getsockname()[1]
        self._inbound[port] = ((lst.address, lst.mtls_mode), srv)
        log.info("inbound %s on %s:%d (%s)", lst.name, lst.address, port, lst.mtls_mode)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        servers = [*self._servers, *(srv for _, srv in self._inbound.values())]
        for srv in servers:
            srv.close()
        for srv in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 2)
        self._servers.clear()
        self._inbound.clear()
        # Kept-alive downstream connections end too: their handlers see EOF and return.
        for writer in list(self._connections):
            writer.close()
        for _ in range(100):
            if not self._connections:
                break
            await asyncio.sleep(0.01)
        self._pool.close()
        self._h2pool.close()

    # --- downstream connections --------------------------------------------------------------

    async def _outbound_conn(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._serve(reader, writer, inbound_port=None)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        inbound_port: int | None,
    ) -> None:
        down = Downstream(reader, writer, self.limits)
        self._connections.add(writer)
        peer = writer.get_extra_info("peername")
        source_ip = peer[0] if peer else None
        peer_uris = uri_sans(writer.get_extra_info("peercert"))
        tls = writer.get_extra_info("ssl_object") is not None
        principal = peer_uris[0] if peer_uris else None
        try:
            if self.http2 and (first := await down.sniff(PREFACE)) is not None:
                down.close()

                async def exchange(ex: Exchange) -> None:
                    await self._h2_exchange(ex, inbound_port, source_ip, principal, tls)

                await Server(reader, writer, self.limits, exchange).run(first)
                return
            while True:
                try:
                    request = await down.next_request()
                except Refusal as refused:  # answered as Envoy's codec and HCM answer it
                    log.debug("refused a request from %s: %s", peer, refused)
                    if refused.connect is not None and inbound_port is not None:
                        refused = self._connect(refused, inbound_port, source_ip, principal, tls)
                    if refused.close:
                        send(writer, refused.reply())
                        await writer.drain()
                        return
                    send(writer, down.respond(refused.response()))
                    await writer.drain()
                    if not down.next_cycle():
                        return
                    continue
                if request is None:
                    return
                if request.header(REQUEST_ID) is None:
                    # Envoy's generate_request_id: one id follows the request through the mesh.
                    request.headers.append((REQUEST_ID, str(uuid.uuid4())))
                if inbound_port is None:
                    response = await self.outbound(request, source_ip)
                else:
                    response = await self.inbound(request, inbound_port, source_ip,
                                                  principal, tls)  # fmt: skip
                if response.streamed is not None:
                    await down.respond_streamed(response, response.streamed)
                else:
                    send(writer, down.respond(response))  # one write, one TLS record
                await writer.drain()
                if not down.next_cycle():
                    return
        except (h11.ProtocolError, ConnectionError, TimeoutError, ssl.SSLError, UpstreamError):
            return  # a peer broke the exchange (a streamed body cut) or hung up
        except Exception:  # a bug of ours: this connection ends, the proxy goes on
            log.exception("error serving a connection from %s", peer)
            return
        finally:
            down.close()
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _connect(
        self,
        refused: Refusal,
        port: int,
        source_ip: str | None,
        principal: str | None,
        tls: bool,
    ) -> Refusal:
        """A CONNECT no route takes: the inbound RBAC filter sees it first (403 on deny)."""
        request = refused.connect
        assert request is not None
        d = self.dp.decide(direction="inbound", method=request.method,
                           authority=request.header("host") or "", path=request.target,
                           headers=request.headers, port=port, source_ip=source_ip,
                           principal=principal, tls=tls)  # fmt: skip
        if d.allowed or d.status != 403:
            return refused
        log.info("denied CONNECT %s from %s: policy %s", request.header("host"),
                 principal or "-", d.policy_id or "(no ALLOW policy matched)")  # fmt: skip
        return Refusal(403, b"RBAC: access denied", "RBAC")

    async def _h2_exchange(
        self,
        ex: Exchange,
        inbound_port: int | None,
        source_ip: str | None,
        principal: str | None,
        tls: bool,
    ) -> None:
        """One HTTP/2 request stream: decided as an HTTP/1 request is, the bodies streamed."""
        headers = [("host", ex.authority), *ex.headers] if ex.authority else ex.headers
        if ex.method == "CONNECT" or not ex.path.startswith("/"):
            ex.local_reply(404, [], b"")  # no route takes it (as over HTTP/1)
            return
        if not any(k == REQUEST_ID for k, _ in headers):
            headers.append((REQUEST_ID, str(uuid.uuid4())))
        request = Request(ex.method, ex.path, headers, b"", ex)
        if inbound_port is None:
            response = await self.outbound(request, source_ip)
        else:
            response = await self.inbound(request, inbound_port, source_ip, principal, tls)
        call = response.stream
        if ex.body.timed_out:  # the client stalled mid-body: Envoy's 408
            if call is not None:
                call.close()
            ex.local_reply(408, [("content-type", "text/plain")], b"stream timeout")
            return
        if call is None:
            ex.local_reply(response.status, response.headers, response.body)
            return
        done = call.body.done and not call.body.length and not call.body.trailers
        ex.send_headers([(":status", str(response.status)), *forwarded(response.headers)],
                        end=done)  # fmt: skip
        if done:
            call.close()
        else:
            await relay(call, ex, self.limits.stream_idle_timeout)

    # --- outbound ------------------------------------------------------------------------------

    async def outbound(self, request: Request, source_ip: str | None) -> Response:
        started = time.perf_counter()
        authority = request.header("host") or ""
        d = self.dp.decide(direction="outbound", method=request.method, authority=authority,
                           path=request.target, headers=request.headers,
                           source_ip=source_ip)  # fmt: skip
        self.metrics.decided(time.perf_counter() - started)
        response, d, attempts, peer = await self._forward(request, d, source_ip)
        millis = (time.perf_counter() - started) * 1000
        # Metrics and the access log once the response is on its way (the next loop turn).
        asyncio.get_running_loop().call_soon(self.accounting.outbound, request, response, d,
                                             attempts, peer, millis)  # fmt: skip
        return response

    async def _forward(
        self, request: Request, d: Decision, source_ip: str | None
    ) -> tuple[Response, Decision, int, str | None]:
        if d.status is not None:
            return self._local(d), d, 0, None
        assert d.endpoint is not None
        deadline = time.monotonic() + d.timeout if d.timeout is not None else None
        retry = d.retry_policy
        attempts = 0
        last: Response | None = None
        tried: list[Endpoint] = []
        while True:
            attempts += 1
            tried.append(d.endpoint)
            per_try = retry.per_try_timeout if retry is not None else None
            remaining = deadline - time.monotonic() if deadline is not None else None
            budget = min(x for x in (per_try, remaining, 3600.0) if x is not None)
            status: int | None = None
            peer: str | None = None
            self.dp.started(d)
            try:
                async with asyncio.timeout(budget):  # no task per attempt (wait_for makes one)
                    response, peer = await self._attempt(request, d, attempts)
                status = response.status
                last = response
            except (UpstreamError, TimeoutError, ConnectionError, OSError, ssl.SSLError,
                    h11.ProtocolError, DataPlaneError) as exc:  # fmt: skip
                timed_out = isinstance(exc, TimeoutError)
                log.debug("attempt %d to %s failed: %s", attempts, d.endpoint, exc)
                flags = "UT" if timed_out else "UF"
                last = Response(504 if timed_out else 503, [("content-type", "text/plain")],
                                b"upstream request timeout" if timed_out else
                                b"upstream connect error or disconnect/reset before headers")  # fmt: skip
                d = replace(d, response_flags=flags)
            self.dp.report(d, status, started=True)
            retriable = (
                retry is not None and attempts <= retry.num_retries and retry.retriable(status)
            )
            if deadline is not None and time.monotonic() >= deadline:
                if status is None and d.response_flags == "UT":
                    return last, d, attempts, peer
                retriable = False
            if request.streamed is not None:
                retriable = False  # its body is gone upstream (as Envoy's past its buffer)
            if retriable and last.stream is not None:
                last.stream.close()  # its body is not wanted
            if retriable and last.streamed is not None:
                await last.streamed.chunks.aclose()
            if not retriable:
                if status is not None and attempts > 1:
                    d = replace(d, response_flags="URX" if status >= 500 else "-")
                return last, d, attempts, peer
            # Envoy's backoff: random in [0, base * 2^(n-1)], then another host.
            await asyncio.sleep(self._random.uniform(0, RETRY_BASE_S * 2 ** (attempts - 1)))
            again = self.dp.repick(d, tried)
            if again is None:
                return last, d, attempts, peer
            d = again

    async def _attempt(
        self, request: Request, d: Decision, attempt: int = 1
    ) -> tuple[Response, str | None]:
        assert d.endpoint is not None
        ctx = self.dp.client_ssl_context(d.cluster) if d.tls else None
        cluster: ClusterConfig | None = self.dp.config.clusters.get(d.cluster or "")
        connect_timeout = cluster.connect_timeout if cluster is not None else 5.0
        target = d.path or request.target  # the route's prefix_rewrite, if any
        host = d.host_rewrite or request.header("host") or str(d.endpoint)
        outbound = d.direction == "outbound"
        # Hop-by-hop headers go; so do ours: set outbound, and the peer header stops at the
        # callee's proxy (not for the app).
        drop = _NOT_FORWARDED_OUT if outbound else _NOT_FORWARDED_IN
        headers = [(k, v) for k, v in request.headers if k not in drop]
        if ctx is not None:
            headers.append((PEER_HEADER, f"{self.workload}.{self.namespace}"))
        if outbound:
            headers.append((ATTEMPTS, str(attempt)))  # as Envoy's include_attempt_count_in_request
        if request.stream is not None:
            return await self._attempt_h2(request, d, ctx, target, host, headers,
                                          connect_timeout)  # fmt: skip
        up = await self._pool.get(d.endpoint, ctx, d.sni, connect_timeout)
        try:
            response = await up.exchange(Request(request.method, target, headers, request.body,
                                                 streamed=request.streamed), host,
                                         self.limits.stream_idle_timeout)  # fmt: skip
        except BaseException:
            up.close()
            raise
        body = response.streamed
        if body is None:
            self._pool.put(d.endpoint, ctx, d.sni, up)
        else:  # the connection goes back to the pool once the body is read to its end
            body = Body(body.length, self._pooled(body.chunks, d, ctx, up))
        headers_out = end_to_end(response.headers)
        # Envoy adds the cookies a hash policy generated to the upstream's response.
        headers_out.extend(("set-cookie", c) for c in d.set_cookies)
        return Response(response.status, headers_out, response.body, streamed=body), (
            up.peer_uris[0] if up.peer_uris else None
        )

    async def _pooled(
        self,
        chunks: AsyncGenerator[bytes, None],
        d: Decision,
        ctx: ssl.SSLContext | None,
        up: Any,
    ) -> AsyncGenerator[bytes, None]:
        """A streamed response body; its upstream connection pooled again after its end (closed
        if it is cut or not read to its end)."""
        assert d.endpoint is not None
        done = False
        try:
            async for chunk in chunks:
                yield chunk
            done = True
        finally:
            if done:
                self._pool.put(d.endpoint, ctx, d.sni, up)
            else:
                up.close()

    async def _attempt_h2(
        self,
        request: Request,
        d: Decision,
        ctx: ssl.SSLContext | None,
        target: str,
        host: str,
        headers: list[tuple[str, str]],
        connect_timeout: float,
    ) -> tuple[Response, str | None]:
        """An attempt over HTTP/2 (the downstream's protocol): the request body streams from
        the downstream stream; the response's body follows in the returned call."""
        assert d.endpoint is not None
        try:
            client = await self._h2pool.get(d.endpoint.address, d.endpoint.port, ctx, d.sni,
                                            connect_timeout)  # fmt: skip
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamError(f"connect to {d.endpoint} failed: {exc}") from None
        if any(k == "te" and v.strip().lower() == "trailers" for k, v in request.headers):
            headers.append(("te", "trailers"))
        head = [(":method", request.method), (":scheme", "https" if ctx else "http"),
                (":authority", host), (":path", target), *forwarded(headers)]  # fmt: skip
        try:
            call = await client.request(head, request.stream.body,
                                        self.limits.stream_idle_timeout)  # fmt: skip
        except h2.exceptions.H2Error as exc:  # the connection went away under us
            client.stop()
            raise UpstreamError(f"upstream HTTP/2 connection: {exc}") from None
        try:
            status, response_headers = await call.head
        except (StreamReset, h2.exceptions.H2Error) as exc:
            call.close()
            raise UpstreamError(str(exc)) from None
        except BaseException:
            call.close()
            raise
        peer = client.peer_uris[0] if client.peer_uris else None
        return Response(status, end_to_end(response_headers), b"", call), peer

    def _local(self, d: Decision) -> Response:
        status = d.status or 500
        if status == 400 and d.route is None:
            # The connection manager refused the path (a fragment, %00, an escaped slash under
            # REJECT_REQUEST): no body, and Envoy closes the connection.
            return Response(400, [("connection", "close")], b"")
        body = d.body or {403: b"RBAC: access denied", 503: b"no healthy upstream"}.get(status, b"")
        return Response(status, [("content-type", "text/plain")] if body else [], body)

    # --- inbound -------------------------------------------------------------------------------

    async def inbound(
        self,
        request: Request,
        port: int,
        source_ip: str | None,
        principal: str | None,
        tls: bool,
    ) -> Response:
        started = time.perf_counter()
        d = self.dp.decide(direction="inbound", method=request.method,
                           authority=request.header("host") or "", path=request.target,
                           headers=request.headers, port=port, source_ip=source_ip,
                           principal=principal, tls=tls)  # fmt: skip
        self.metrics.decided(time.perf_counter() - started)
        peer_workload = (request.header(PEER_HEADER) or "") if tls else ""
        if d.allowed and d.status is None:
            if d.path is not None and d.path != request.target:
                request = replace(request, target=d.path)  # what RBAC decided on
            response, d, attempts, _ = await self._forward(request, d, source_ip)
        else:
            response, attempts = self._local(d), 0
        millis = (time.perf_counter() - started) * 1000
        # Metrics and the access log once the response is on its way (the next loop turn).
        asyncio.get_running_loop().call_soon(self.accounting.inbound, request, response, d,
                                             attempts, millis, peer_workload, principal,
                                             tls)  # fmt: skip
        return response

    async def _metrics_conn(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        down = Downstream(reader, writer, self.limits)
        try:
            try:
                request = await down.next_request()
            except Refusal as refused:
                send(writer, refused.reply())
                await writer.drain()
                return
            if request is not None:
                if request.target == "/metrics":
                    status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
                elif request.target in ("/healthz", "/ready"):
                    status, ctype, body = 200, "text/plain", b"ok\n"
                else:
                    status, ctype, body = 404, "text/plain", b"try /metrics\n"
                response = Response(status, [("content-type", ctype)], body)
                send(writer, down.respond(response, close=True))
                await writer.drain()
        except (h11.ProtocolError, ConnectionError, TimeoutError):
            pass
        finally:
            down.close()
            writer.close()


# --- the command ------------------------------------------------------------------------------


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host or "127.0.0.1", int(port)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (the ``all`` extra), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def run_proxy(
    *,
    xds: str,
    node_id: str,
    ca: str | None,
    ca_mtls: str | None,
    trust_bundle: str | None,
    token: str | None,
    service_account: str | None,
    outbound: str | None,
    inbound: bool,
    metrics: str | None,
    metadata: dict[str, Any],
    stop: asyncio.Event | None = None,
    http2: bool = True,
) -> int:
    """``meshcore proxy``: connects, serves until SIGINT/SIGTERM (or ``stop``)."""
    import signal

    dp = await DataPlane.aconnect(
        xds, node_id=node_id, bootstrap_token=token, ca_address=ca, ca_mtls_address=ca_mtls,
        trust_bundle=trust_bundle, service_account=service_account, metadata=metadata,
    )  # fmt: skip
    proxy = ReferenceProxy(
        dp,
        outbound=_host_port(outbound) if outbound else None,
        inbound=inbound,
        metrics=_host_port(metrics) if metrics else None,
        http2=http2,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await proxy.start()
        parts = []
        if proxy.outbound_port is not None and proxy.outbound_address is not None:
            parts.append(f"outbound on {proxy.outbound_address[0]}:{proxy.outbound_port}")
        for lst in dp.config.inbound.values():
            if lst.port in proxy.inbound_ports:
                parts.append(f"inbound on {lst.address}:{lst.port} ({lst.mtls_mode})")
        if proxy.metrics_port is not None and proxy.metrics_address is not None:
            parts.append(
                f"metrics on http://{proxy.metrics_address[0]}:{proxy.metrics_port}/metrics"
            )
        print(f"meshcore proxy: {node_id}: " + ", ".join(parts), flush=True)
        await stop.wait()
    finally:
        await proxy.stop()
        await dp.aclose()
    return 0
