# Hand-written stubs for the Rust extension (ext/py); checked by mypy.stubtest in the tests.

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, final

import numpy as np
import numpy.typing as npt

__version__: str
__all__ = [
    "RouteMatch",
    "RouteTable",
    "YamlDocument",
    "__version__",
    "check_regex",
    "parse_yaml",
    "regex_full_match",
]

def check_regex(pattern: str) -> None: ...
def regex_full_match(pattern: str, text: str) -> bool: ...

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
        authorities: Sequence[str] | npt.NDArray[np.str_],
        paths: Sequence[str] | npt.NDArray[np.str_],
        methods: str | Sequence[str] | npt.NDArray[np.str_] | None = None,
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
