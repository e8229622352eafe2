# Hand-written stubs for the Rust extension (ext/py); checked by mypy.stubtest in the tests.

import weakref
from collections.abc import Callable, Sequence
from dataclasses import Field
from typing import Any, ClassVar, final

from meshcore._core import _Headers
from meshcore._core.rbac import RbacEngine
from meshcore._core.route import RouteTable
from meshcore.dataplane.config import Endpoint
from meshcore.dataplane.routeactions import RetryPolicy

__all__ = ["Balancer", "Decide", "Decider", "Decision", "Random"]

_Outlier = tuple[int, int, int, int, float, float, float]
# (name, lb_policy, outlier detection or None, panic_threshold, ring_size, maglev_table_size)
_ClusterHead = tuple[str, str, _Outlier | None, float, int, int]
# (name, [(cluster, weight)], weighted, total_weight, [(hash kind, header, terminal)],
#  (rewrite_from, prefix_rewrite) or None, timeout, retry_policy, host_rewrite)
_Route = tuple[
    str,
    Sequence[tuple[str, int]],
    bool,
    int,
    Sequence[tuple[str, str, bool]],
    tuple[str, str] | None,
    Any,
    Any,
    str,
]
_Listener = tuple[int, RouteTable, bool, bool, Sequence[_Route | None]]
# (port, address, STRICT, [(engine, Istio layer or "", Istio policy id per policy)],
#  inbound cluster, normalizes, merge_slashes)
_Inbound = tuple[
    int, str, bool, Sequence[tuple[RbacEngine, str, Sequence[str | None]]], str | None, bool, bool
]
_Cluster = tuple[
    str, str, _Outlier | None, float, int, int, Sequence[tuple[Any, str, int, bool]], str
]

@final
class Decision:
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]
    __match_args__: ClassVar[tuple[str, ...]]
    direction: str
    allowed: bool
    route: str | None
    cluster: str | None
    endpoint: Endpoint | None
    timeout: float | None
    retry_policy: RetryPolicy | None
    policy_id: str | None
    status: int | None
    response_flags: str
    body: bytes
    tls: bool
    sni: str
    host_rewrite: str
    hash_key: int | None
    generation: int
    path: str | None
    set_cookies: tuple[str, ...]
    # None for a field with another default takes that default ("-", b"", False, "", 0, ()).
    def __new__(
        cls,
        direction: str,
        allowed: bool,
        route: str | None = None,
        cluster: str | None = None,
        endpoint: Endpoint | None = None,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        policy_id: str | None = None,
        status: int | None = None,
        response_flags: str | None = None,
        body: bytes | None = None,
        tls: bool | None = None,
        sni: str | None = None,
        host_rewrite: str | None = None,
        hash_key: int | None = None,
        generation: int | None = None,
        path: str | None = None,
        set_cookies: tuple[str, ...] | None = None,
    ) -> Decision: ...
    def __eq__(self, other: object, /) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]

@final
class Random:
    def __new__(cls, seed: int | None = None) -> Random: ...
    def seed(self, seed: int | None = None) -> None: ...
    def randrange(self, n: int) -> int: ...
    def random(self) -> float: ...

@final
class Balancer:
    def __new__(cls, seed: int | None = None) -> Balancer: ...
    def set_clock(self, clock: Callable[[], float] | None) -> None: ...
    def now(self) -> float: ...
    def pick(
        self, cluster: _ClusterHead, hosts: Sequence[tuple[str, int]], hash_key: int | None = None
    ) -> int | None: ...
    def started(self, cluster: str, host: str) -> None: ...
    def finished(
        self,
        cluster: str,
        outlier: _Outlier | None,
        host: str,
        status: int | None,
        hosts: Sequence[str],
        started: bool,
    ) -> bool: ...
    def ejected(self, cluster: str) -> list[str]: ...

@final
class Decider:
    def __new__(
        cls,
        listeners: Sequence[_Listener],
        clusters: Sequence[_Cluster],
        inbound: Sequence[tuple[int, _Inbound | None]],
        balancer: Balancer,
        rng: Random,
        decision: Callable[..., Any],
        generation: int,
    ) -> Decider: ...
    def pick(self, cluster: str, hash_key: int | None = None) -> Any | None: ...
    def inbound(
        self,
        authority: str,
        path: str,
        method: str,
        headers: _Headers,
        port: int | None,
        source_ip: str | None,
        principal: str | None,
        tls: bool | None,
    ) -> Any | None: ...
    def outbound_batch(
        self,
        general: Callable[[int], Any],
        authorities: Any,
        paths: Any,
        methods: Any = None,
        headers: Any = None,
        ports: Any = None,
        source_ips: Any = None,
    ) -> list[Any]: ...
    def outbound(
        self,
        authority: str,
        path: str,
        method: str,
        headers: _Headers,
        port: int | None,
        source_ip: str | None,
    ) -> Any | None: ...

@final
class Decide:
    """``DataPlane.decide`` of one data plane, entered without a Python frame."""

    def __new__(cls, source: Any, plane: weakref.ReferenceType[Any]) -> Decide: ...
    def decide(self, *, direction: str = "outbound", method: str = "GET", authority: str,
               path: str, headers: _Headers = None, port: int | None = None,
               source_ip: str | None = None, principal: str | None = None,
               tls: bool | None = None, config: Any = None) -> Decision: ...  # fmt: skip
    @property
    def compiled(self) -> tuple[Any, Decider] | None: ...
