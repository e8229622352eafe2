# Hand-written stubs for the Rust extension (ext/py); checked by mypy.stubtest in the tests.

from collections.abc import Iterable
from typing import Any, final

__all__ = ["YAML_MAX_DEPTH", "YamlDocument", "parse_yaml"]

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
