# Hand-written stubs for the Rust extension (ext/py); checked by mypy.stubtest in the tests.

from typing import Any, Final, final

__all__ = ["ACK", "CANCELLED", "HALF_CLOSED", "MESSAGE", "OPENED", "AdsTransport"]

OPENED: Final[int]
MESSAGE: Final[int]
HALF_CLOSED: Final[int]
CANCELLED: Final[int]
ACK: Final[int]

@final
class AdsTransport:
    def __new__(
        cls,
        address: str,
        *,
        max_receive_bytes: int,
        max_send_bytes: int,
        keepalive_time: float | None = None,
        keepalive_timeout: float = 20.0,
    ) -> AdsTransport: ...
    @property
    def port(self) -> int: ...
    def fileno(self) -> int: ...
    def events(self) -> list[tuple[Any, ...]]: ...
    def send(self, stream: int, data: bytes) -> bool: ...
    def send_many(self, items: list[tuple[int, bytes]]) -> int: ...
    def close(self, stream: int, code: int = 0, message: str = "") -> bool: ...
    def streams(self) -> int: ...
    def shutdown(self, grace: float) -> None: ...
