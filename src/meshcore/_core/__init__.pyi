# Hand-written stubs for the Rust extension (ext/py); checked by mypy.stubtest in the tests.

from collections.abc import Iterable, Mapping
from typing import Protocol

from meshcore._core import ads as ads
from meshcore._core import decide as decide
from meshcore._core import lb as lb
from meshcore._core import rbac as rbac
from meshcore._core import route as route
from meshcore._core import xds as xds
from meshcore._core import yaml as yaml

__version__: str
__all__ = [
    "__version__",
    "ads",
    "check_regex",
    "decide",
    "lb",
    "rbac",
    "regex_full_match",
    "route",
    "xds",
    "yaml",
]

def check_regex(pattern: str) -> None: ...
def regex_full_match(pattern: str, text: str) -> bool: ...

# Shared by the route and rbac stubs (no runtime names).
class _SerializableMessage(Protocol):
    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...

_Headers = Mapping[str, str] | Iterable[tuple[str, str]] | None
