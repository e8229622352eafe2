# Hand-written stubs for the Rust extension (ext/py); checked by mypy.stubtest in the tests.

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, final

import numpy as np
import numpy.typing as npt

__version__: str
__all__ = [
    "YAML_MAX_DEPTH",
    "Fleet",
    "RbacDecision",
    "RbacEngine",
    "ResourceStore",
    "RouteMatch",
    "RouteTable",
    "Snapshot",
    "YamlDocument",
    "__version__",
    "check_regex",
    "parse_yaml",
    "regex_full_match",
]

def check_regex(pattern: str) -> None: ...
def regex_full_match(pattern: str, text: str) -> bool: ...

YAML_MAX_DEPTH: int

@final
class YamlDocument:
    """The node tree of one YAML document, for field-path to line lookups."""

    @property
    def line(self) -> int: ...
    def line_of(self, path: Iterable[str | int]) -> int: ...

def parse_yaml(
    text: str,
) -> tuple[
    list[tuple[Any, YamlDocument]],
    list[tuple[int, int, str, int | None, list[str | int]]],
]: ...

@final
class ResourceStore:
    """Interns xDS resources: identical (name, bytes) pairs are held once across snapshots."""

    def __init__(self) -> None: ...
    def snapshot(self, resources: Mapping[str, Mapping[str, bytes]]) -> Snapshot: ...
    def __len__(self) -> int: ...

@final
class Snapshot:
    """One proxy's xDS resources by type URL; immutable."""

    def with_changes(
        self, type_url: str, changes: Mapping[str, bytes | None]
    ) -> tuple[Snapshot, list[str]]: ...
    def with_type_from(self, other: Snapshot, type_url: str) -> Snapshot: ...
    def version(self, type_url: str) -> str: ...
    def names(self, type_url: str) -> list[str]: ...
    def type_urls(self) -> list[str]: ...
    def count(self, type_url: str) -> int: ...
    def resource(self, type_url: str, name: str) -> tuple[str, bytes] | None: ...
    def diff(
        self,
        type_url: str,
        known: Mapping[str, str],
        subscribed: Iterable[str] | None = None,
    ) -> tuple[list[tuple[str, str, bytes]], list[str]]: ...
    def changed_since(self, older: Snapshot, type_url: str) -> tuple[list[str], list[str]]: ...
    def sotw_response(
        self,
        type_url: str,
        version: str,
        nonce: str,
        names: list[str] | None = None,
        ttl: float | None = None,
    ) -> tuple[bytes, int]: ...
    def sotw_heartbeat(
        self, type_url: str, version: str, nonce: str, names: list[str], ttl: float
    ) -> bytes: ...
    def delta_heartbeat(
        self, type_url: str, nonce: str, known: Mapping[str, str], ttl: float
    ) -> bytes | None: ...
    def delta_response(
        self,
        type_url: str,
        nonce: str,
        known: Mapping[str, str],
        subscribed: Iterable[str] | None = None,
        report_missing: Iterable[str] | None = None,
        extra_removed: list[str] | None = None,
        ttl: float | None = None,
    ) -> tuple[bytes, list[tuple[str, str]], list[str]] | None: ...

@final
class Fleet:
    """The snapshots of a fleet of proxies by node id, held in the core."""

    def __new__(cls, store: ResourceStore) -> Fleet: ...
    def set(self, node_id: str, snapshot: Snapshot) -> None: ...
    def get(self, node_id: str) -> Snapshot | None: ...
    def remove(self, node_id: str) -> bool: ...
    def nodes(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def apply(
        self,
        type_url: str,
        changes: Mapping[str, bytes | None],
        nodes: list[str] | None = None,
    ) -> list[str]: ...

class _SerializableMessage(Protocol):
    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...

_Headers = Mapping[str, str] | Iterable[tuple[str, str]] | None
_EscapedSlashes = str | int | None

@final
class RouteMatch:
    @property
    def name(self) -> str: ...
    @property
    def virtual_host(self) -> str: ...
    @property
    def route_index(self) -> int: ...
    @property
    def virtual_host_index(self) -> int: ...
    @property
    def action(self) -> dict[str, object]: ...
    @property
    def proto(self) -> bytes: ...

@final
class RouteTable:
    @staticmethod
    def from_proto(
        config: bytes | bytearray | memoryview | _SerializableMessage,
        *,
        normalize_path: bool = False,
        merge_slashes: bool = False,
        path_with_escaped_slashes_action: _EscapedSlashes = None,
        strip_matching_host_port: bool = False,
        strip_any_host_port: bool = False,
        listener_port: int | None = None,
        max_program_size: int = 100,
    ) -> RouteTable: ...
    @property
    def routes(self) -> tuple[RouteMatch, ...]: ...
    @property
    def name(self) -> str: ...
    @property
    def virtual_hosts(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def route(
        self,
        authority: str,
        path: str,
        method: str = "GET",
        headers: _Headers = None,
        *,
        scheme: str = "http",
        normalize_path: bool | None = None,
        merge_slashes: bool | None = None,
        path_with_escaped_slashes_action: _EscapedSlashes = None,
        strip_matching_host_port: bool | None = None,
        strip_any_host_port: bool | None = None,
        listener_port: int | None = None,
    ) -> RouteMatch | None: ...
    def route_batch(
        self,
        authorities: str | Sequence[str] | npt.NDArray[np.str_] | npt.NDArray[np.bytes_],
        paths: Sequence[str] | npt.NDArray[np.str_] | npt.NDArray[np.bytes_],
        methods: str | Sequence[str] | npt.NDArray[np.str_] | npt.NDArray[np.bytes_] | None = None,
        headers: Sequence[_Headers] | None = None,
    ) -> npt.NDArray[np.int32]: ...
    def explain(
        self,
        authority: str,
        path: str,
        method: str = "GET",
        headers: _Headers = None,
        *,
        scheme: str = "http",
        normalize_path: bool | None = None,
        merge_slashes: bool | None = None,
        path_with_escaped_slashes_action: _EscapedSlashes = None,
        strip_matching_host_port: bool | None = None,
        strip_any_host_port: bool | None = None,
        listener_port: int | None = None,
    ) -> dict[str, object]: ...

_Column = Sequence[str | None] | npt.NDArray[Any] | str | None

@final
class RbacDecision:
    @property
    def allowed(self) -> bool: ...
    @property
    def policy_id(self) -> str | None: ...
    @property
    def shadow_allowed(self) -> bool | None: ...
    @property
    def shadow_policy_id(self) -> str | None: ...
    def __bool__(self) -> bool: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class RbacEngine:
    @staticmethod
    def from_proto(
        config: bytes | bytearray | memoryview | _SerializableMessage | Any,
        *,
        message_type: str | None = None,
        max_program_size: int = 100,
    ) -> RbacEngine: ...
    @property
    def action(self) -> str | None: ...
    @property
    def shadow_action(self) -> str | None: ...
    @property
    def policy_ids(self) -> tuple[str, ...]: ...
    @property
    def shadow_policy_ids(self) -> tuple[str, ...]: ...
    @property
    def shadow_rules_stat_prefix(self) -> str: ...
    def evaluate(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        authority: str | None = None,
        headers: _Headers = None,
        scheme: str | None = None,
        source_ip: str | None = None,
        remote_ip: str | None = None,
        direct_remote_ip: str | None = None,
        destination_ip: str | None = None,
        destination_port: int | None = None,
        principal: str | None = None,
        uri_sans: Sequence[str] | None = None,
        dns_sans: Sequence[str] | None = None,
        subject: str | None = None,
        tls: bool | None = None,
        sni: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> RbacDecision: ...
    def explain(
        self,
        *,
        method: str | None = None,
        path: str | None = None,
        authority: str | None = None,
        headers: _Headers = None,
        scheme: str | None = None,
        source_ip: str | None = None,
        remote_ip: str | None = None,
        direct_remote_ip: str | None = None,
        destination_ip: str | None = None,
        destination_port: int | None = None,
        principal: str | None = None,
        uri_sans: Sequence[str] | None = None,
        dns_sans: Sequence[str] | None = None,
        subject: str | None = None,
        tls: bool | None = None,
        sni: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]: ...
    def evaluate_batch(
        self,
        *,
        method: _Column = None,
        path: _Column = None,
        authority: _Column = None,
        headers: Sequence[_Headers] | None = None,
        scheme: _Column = None,
        source_ip: _Column = None,
        remote_ip: _Column = None,
        direct_remote_ip: _Column = None,
        destination_ip: _Column = None,
        destination_port: Sequence[int | None] | npt.NDArray[Any] | int | None = None,
        principal: _Column = None,
        uri_sans: Sequence[Sequence[str] | None] | None = None,
        dns_sans: Sequence[Sequence[str] | None] | None = None,
        subject: _Column = None,
        tls: Sequence[bool | None] | npt.NDArray[Any] | bool | None = None,
        sni: _Column = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> dict[str, npt.NDArray[Any]]: ...
