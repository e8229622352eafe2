# Hand-written stubs for the Rust extension (ext/py); checked by mypy.stubtest in the tests.

from collections.abc import Mapping, Sequence
from typing import Any, final

import numpy.typing as npt

from meshcore._core import _Headers, _SerializableMessage

__all__ = ["RbacDecision", "RbacEngine"]

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
