# Hand-written stubs for the Rust extension (ext/py); checked by mypy.stubtest in the tests.

from collections.abc import Iterable, Mapping
from typing import Any, final

__version__: str
__all__ = [
    "Fleet",
    "ResourceStore",
    "Snapshot",
    "YamlDocument",
    "__version__",
    "check_regex",
    "parse_yaml",
    "regex_full_match",
]

def check_regex(pattern: str) -> None: ...
def regex_full_match(pattern: str, text: str) -> bool: ...

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
        self, type_url: str, version: str, nonce: str, names: list[str] | None = None
    ) -> tuple[bytes, int]: ...
    def delta_response(
        self,
        type_url: str,
        nonce: str,
        known: Mapping[str, str],
        subscribed: Iterable[str] | None = None,
        report_missing: Iterable[str] | None = None,
        extra_removed: list[str] | None = None,
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
