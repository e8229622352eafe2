"""A delta (incremental) ADS client, as Envoy's: the data plane's view of the control plane.

It subscribes to clusters and listeners by wildcard, then to the endpoints and route
configurations they name; each response is compiled together with everything else held
(:class:`~meshcore.dataplane.config.Compiler`) and the result replaces the current
:class:`~meshcore.dataplane.config.CompiledConfig` by reference, then ACKed. A response that
does not compile is NACKed with the compile error in ``error_detail`` and the previous config
stays. When the stream breaks, the last good config keeps serving and the client reconnects
with capped exponential backoff, telling the server what it holds in
``initial_resource_versions`` so that only changes are sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format, struct_pb2

from meshcore.dataplane.config import EMPTY, CompiledConfig, Compiler, describe
from meshcore.errors import ConfigError
from meshcore.xds import types

log = logging.getLogger("meshcore.dataplane.ads")

METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
INVALID_ARGUMENT = 3  # google.rpc.Code


class AdsClient:
    """One delta ADS stream (re-established on failure) feeding a compiled config."""

    def __init__(
        self,
        address: str,
        node_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        cluster: str = "",
        on_update: Callable[[CompiledConfig], None] | None = None,
        backoff_initial: float = BACKOFF_INITIAL_S,
        backoff_max: float = BACKOFF_MAX_S,
    ) -> None:
        self.address = address
        self.node_id = node_id
        self.node_cluster = cluster
        self.metadata = dict(metadata or {})
        self.on_update = on_update
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.config: CompiledConfig = EMPTY
        # What is held (and compiled): type URL -> name -> (version, bytes).
        self.resources: dict[str, dict[str, tuple[str, bytes]]] = {
            t: {} for t in (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE)
        }
        self.subscribed: dict[str, set[str]] = {types.ENDPOINT: set(), types.ROUTE: set()}
        self.received: set[str] = set()  # types that got at least one response
        # Names the server answered for (sent, or reported missing): warming ends on these.
        self.answered: dict[str, set[str]] = {types.ENDPOINT: set(), types.ROUTE: set()}
        self.acks = 0
        self.nacks: list[tuple[str, str]] = []  # (type URL, error message)
        self.connects = 0
        self.connected = False
        self.last_initial_versions: dict[str, dict[str, str]] = {}
        self.synced = asyncio.Event()
        self._compiler = Compiler()
        self._outgoing: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] | None = None

    # --- the stream --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Keeps a stream open until ``stop`` is set."""
        delay = self.backoff_initial
        # "a:p,b:p,c:p": control-plane replicas; a broken stream moves on to the next one.
        addresses = [a.strip() for a in self.address.split(",") if a.strip()]
        at = 0
        while not stop.is_set():
            try:
                async with grpc.aio.insecure_channel(addresses[at]) as channel:
                    await self._stream(channel, stop)
                delay = self.backoff_initial
            except (grpc.aio.AioRpcError, OSError) as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                if self.connected or self.connects == 0:
                    log.warning("ADS stream to %s ended: %s", addresses[at], detail)
                self.connected = False
            except Exception:  # a bug of ours must not end the stream for good: log, reconnect
                log.exception("ADS client error; reconnecting")
                self.connected = False
            if stop.is_set():
                break
            at = (at + 1) % len(addresses)
            if len(addresses) > 1 and at != 0:
                # Another replica is there: try it at once (backing off once per round).
                continue
            wait = delay * random.uniform(0.8, 1.2)
            delay = min(delay * 2, self.backoff_max)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def _stream(self, channel: grpc.aio.Channel, stop: asyncio.Event) -> None:
        outgoing: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
        self._outgoing = outgoing

        async def requests() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
            while True:
                item = await outgoing.get()
                if item is None:
                    return
                yield item

        call = channel.stream_stream(
            METHOD,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )(requests())
        self._subscribe_initial(outgoing)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            reader = call.__aiter__()
            while True:
                nxt = asyncio.ensure_future(reader.__anext__())
                done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    nxt.cancel()
                    call.cancel()
                    return
                try:
                    response = nxt.result()
                except StopAsyncIteration:
                    raise OSError("the server closed the stream") from None
                if not self.connected:
                    self.connected = True
                    self.connects += 1
                    log.info("ADS stream to %s established", self.address)
                self._handle(response, outgoing)
        finally:
            stopper.cancel()
            outgoing.put_nowait(None)
            self._outgoing = None

    def _node_request(self, type_url: str) -> discovery_pb2.DeltaDiscoveryRequest:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
        held = {n: v for n, (v, _) in self.resources[type_url].items()}
        req.initial_resource_versions.update(held)
        self.last_initial_versions[type_url] = held
        return req

    def _subscribe_initial(
        self, outgoing: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None]
    ) -> None:
        first = True
        for type_url in (types.CLUSTER, types.LISTENER):
            req = self._node_request(type_url)  # legacy wildcard: no names at all
            if first:
                self._set_node(req)
                first = False
            outgoing.put_nowait(req)
        for type_url in (types.ENDPOINT, types.ROUTE):
            names = self.subscribed[type_url]
            if names:
                req = self._node_request(type_url)
                req.resource_names_subscribe.extend(sorted(names))
                outgoing.put_nowait(req)

    def _set_node(self, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        req.node.id = self.node_id
        req.node.cluster = self.node_cluster
        req.node.user_agent_name = "meshcore-dataplane"
        if self.metadata:
            json_format.ParseDict(self.metadata, req.node.metadata)
        else:
            req.node.metadata.CopyFrom(struct_pb2.Struct())

    # --- responses ---------------------------------------------------------------------------

    def _handle(
        self,
        response: discovery_pb2.DeltaDiscoveryResponse,
        outgoing: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None],
    ) -> None:
        type_url = response.type_url
        if type_url not in self.resources:
            # A type we never asked for: refuse it (NACK), as Envoy does with unknown types.
            outgoing.put_nowait(self._nack(type_url, response.nonce, "unexpected type"))
            return
        answered = self.answered.get(type_url)
        if answered is not None:
            answered.update(r.name for r in response.resources)
            answered.update(response.removed_resources)
        held = dict(self.resources[type_url])
        for r in response.resources:
            held[r.name] = (r.version, r.resource.value)
        for name in response.removed_resources:
            held.pop(name, None)
        candidate = dict(self.resources)
        candidate[type_url] = held
        try:
            config = self._compiler.compile(candidate)
        except ConfigError as exc:
            message = describe(exc.errors())
            log.warning("NACK %s: %s", types.SHORT_NAMES.get(type_url, type_url), message)
            self.nacks.append((type_url, message))
            outgoing.put_nowait(self._nack(type_url, response.nonce, message))
            return
        self.resources[type_url] = held
        self.received.add(type_url)
        self.config = config  # the swap: one reference, read whole by decisions
        self.acks += 1
        outgoing.put_nowait(
            discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        )
        self._resubscribe(config, outgoing)
        if self.on_update is not None:
            self.on_update(config)
        if self._complete(config):
            self.synced.set()

    def _nack(self, type_url: str, nonce: str, message: str) -> discovery_pb2.DeltaDiscoveryRequest:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
        req.error_detail.code = INVALID_ARGUMENT
        req.error_detail.message = message
        return req

    def _resubscribe(
        self,
        config: CompiledConfig,
        outgoing: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None],
    ) -> None:
        """Follows what clusters and listeners name: EDS and RDS subscriptions."""
        for type_url, wanted in ((types.ENDPOINT, config.eds_names()),
                                 (types.ROUTE, config.rds_names())):  # fmt: skip
            have = self.subscribed[type_url]
            add, drop = sorted(wanted - have), sorted(have - wanted)
            if not add and not drop:
                continue
            self.subscribed[type_url] = set(wanted)
            for name in drop:
                self.resources[type_url].pop(name, None)
            outgoing.put_nowait(
                discovery_pb2.DeltaDiscoveryRequest(
                    type_url=type_url, resource_names_subscribe=add, resource_names_unsubscribe=drop
                )
            )

    def _complete(self, config: CompiledConfig) -> bool:
        """Every wildcard type answered, and every name referenced answered (sent, or reported
        missing by the server: a cluster without endpoints is still a config)."""
        if not {types.CLUSTER, types.LISTENER} <= self.received:
            return False
        return config.eds_names() <= self.answered[types.ENDPOINT] and (
            config.rds_names() <= self.answered[types.ROUTE]
        )
