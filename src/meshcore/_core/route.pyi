# Hand-written stubs for the Rust extension (ext/py); checked by mypy.stubtest in the tests.

from collections.abc import Sequence
from typing import final

import numpy as np
import numpy.typing as npt

from meshcore._core import _Headers, _SerializableMessage

__all__ = ["RouteMatch", "RouteTable"]

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
    def path_match(self) -> tuple[str, str]: ...
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
