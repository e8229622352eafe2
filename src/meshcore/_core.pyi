# Hand-written stubs for the Rust extension (ext/py); checked by mypy.stubtest in the tests.

from collections.abc import Iterable
from typing import Any, final

__version__: str
__all__ = ["YamlDocument", "__version__", "check_regex", "parse_yaml", "regex_full_match"]

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
