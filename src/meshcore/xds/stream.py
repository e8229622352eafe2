"""What both ADS stream kinds (state of the world and delta) share: the node taken from the
first request and checked against the server's limits, the per-type state, nonces, TTLs.

A stream's node is refused (INVALID_ARGUMENT, before anything is kept for it) when its id is
missing, longer than the server's ``max_node_id_chars`` or holds control characters, or when
the whole Node message is larger than ``max_node_bytes``; a stream may name at most
``MAX_TYPES_PER_STREAM`` type URLs and at most the server's ``max_names_per_type`` names of
each (delta subscriptions add up across requests). Whatever a client sent is shown in logs
and errors only through :func:`meshcore._text.shown`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from google.protobuf.json_format import MessageToDict

from meshcore._core.xds import Snapshot
from meshcore._text import is_control, shown
from meshcore.xds import types
from meshcore.xds.cache import NodeInfo

if TYPE_CHECKING:
    from meshcore.xds.server import AdsServer, ProxyState

log = logging.getLogger("meshcore.xds")

WILDCARD_TYPES = frozenset({types.LISTENER, types.CLUSTER})
TTL_FEATURE = "xds.config.supports-resource-ttl"
# Envoy's documentation names the first; the protocol checklist the second.
SOTW_RESOURCE_FEATURES = frozenset(
    {"xds.config.resource-in-sotw", "xds.config.supports-resource-in-sotw"}
)
# Distinct type URLs one stream may name (Envoy uses about ten; each keeps per-stream state).
MAX_TYPES_PER_STREAM = 32


class Lane(Protocol):
    """A transport that takes expected plain ACKs without reporting them (meshcore.xds.transport;
    meshcore_ads's lane.rs): see SotwStream.settle."""

    def expect(self, stream: int, type_url: str, nonce: str, names: bytes) -> None: ...

    def settle(self, stream: int) -> list[tuple[str, str, float, float]]: ...

    def taken(self, stream: int) -> list[tuple[str, str, float, float]]: ...


class Stream:
    """What both stream kinds keep: the server, the node (from the first request) and its
    registry entry, the per-type state, nonces."""

    kind = ""
    label = ""  # for the log

    def __init__(self, server: AdsServer, number: int) -> None:
        self.server = server
        self.number = number
        self.node: NodeInfo | None = None
        self.state: ProxyState | None = None  # this stream's entry in the server's registry
        self.types: dict[str, Any] = {}
        self._nonces = itertools.count(1)
        # The cache's change stamp of the node when a pass found nothing to push (SotW).
        self.quiet_since: float | None = None
        # The transport's ACK lane and this stream's number on it (SotW on meshcore's own
        # transport; None: every ACK is told), whether an ACK is expected there, and with
        # what it would complete the proxy's convergence (see SotwStream.settle).
        self.lane: Lane | None = None
        self.lane_id = 0
        self.lane_pending = False
        self.lane_converges: tuple[float, str | None] | None = None

    def settle(self) -> None:
        """Applies the ACKs the transport took for this stream and has not told yet; what it
        expected is no longer taken (before the stream's state changes)."""

    def taken(self) -> None:
        """Applies the ACKs the transport took for this stream and has not told yet (before
        its status is read)."""

    def hello(self, req: Any) -> str | None:
        """Remembers the node of the stream's first request; why a request is refused."""
        if self.node is None:
            refused = self._refused_node(req)
            if refused is not None:
                return refused
            self.node = node_info(req.node)
            self.state = self.server.connected(self.node, self.kind, self.number)
            if self.lane is not None:
                self.state.settle = self.taken
            log.info(
                "proxy %s connected (ADS %s, stream %d)",
                shown(self.node.id),
                self.label,
                self.number,
            )
        if not req.type_url:
            return "type_url is required on ADS requests"
        if req.type_url not in self.types and len(self.types) >= MAX_TYPES_PER_STREAM:
            return f"a stream may request at most {MAX_TYPES_PER_STREAM} resource types"
        return None

    def _refused_node(self, req: Any) -> str | None:
        if not req.HasField("node") or not req.node.id:
            return "the first request on a stream must carry node.id"
        node_id = req.node.id
        limit = self.server.max_node_id_chars
        if len(node_id) > limit:
            return f"node.id of {len(node_id)} characters exceeds the limit of {limit}"
        if any(map(is_control, node_id)):
            return f"node.id must not contain control characters: '{shown(node_id)}'"
        size = req.node.ByteSize()
        if size > self.server.max_node_bytes:
            return (
                f"node '{shown(node_id)}' of {size} bytes (metadata included) exceeds the limit "
                f"of {self.server.max_node_bytes}"
            )
        return None

    def too_many_names(self) -> str:
        limit = self.server.max_names_per_type
        return f"a stream may subscribe to at most {limit} resource names of one type"

    def receive(self, req: Any) -> str | None:
        raise NotImplementedError

    def pushes(self) -> Iterable[bytes]:
        raise NotImplementedError

    def heartbeats(self) -> Iterable[bytes]:
        raise NotImplementedError

    def may_push(self) -> bool:
        """False when a pass of :meth:`pushes` is known to find nothing due now."""
        return True

    def ttl(self, type_url: str) -> float | None:
        raise NotImplementedError

    def wants_heartbeats(self) -> bool:
        return any(t.requested and self.ttl(u) is not None for u, t in self.types.items())

    def held(self) -> Snapshot | None:
        """The snapshot the stream's node is to hold now (None before the node is known)."""
        return None if self.node is None else self.server.cache.get(self.node)

    def next_nonce(self) -> str:
        return f"{self.number}-{next(self._nonces)}"


def short(type_url: str) -> str:
    return types.SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1]).lower()


def node_info(msg: Any) -> NodeInfo:
    metadata = MessageToDict(msg.metadata) if msg.HasField("metadata") else {}
    return NodeInfo(
        id=msg.id,
        cluster=msg.cluster,
        metadata=metadata,
        user_agent=msg.user_agent_name,
        client_features=frozenset(msg.client_features),
    )
