"""The exceptions meshcore raises. Every user-facing problem names where it is."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass


class MeshcoreError(Exception):
    """Base class of every error meshcore raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem (or warning) in one resource, at one field path.

    ``path`` uses the resource's own vocabulary: ``spec.http[0].route[1].weight`` for Istio
    YAML, ``virtual_hosts[2].routes[0].match.safe_regex.regex`` for Envoy protos.
    """

    message: str
    path: str = ""
    kind: str = ""
    namespace: str = ""
    name: str = ""
    file: str = ""
    line: int = 0
    severity: str = "error"  # "error" or "warning"

    @property
    def resource(self) -> str:
        """``Kind namespace/name`` (or what is known of it)."""
        ident = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return " ".join(part for part in (self.kind, ident) if part)

    @property
    def location(self) -> str:
        """``file:line`` (or what is known of it)."""
        if not self.file:
            return ""
        return f"{self.file}:{self.line}" if self.line else self.file

    def __str__(self) -> str:
        head = ": ".join(part for part in (self.location, self.resource) if part)
        body = f"{self.path}: {self.message}" if self.path else self.message
        return f"{head}: {body}" if head else body

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class ConfigError(MeshcoreError, ValueError):
    """Bad configuration: carries every problem found, each with its field path."""

    def __init__(self, problems: Iterable[ConfigProblem] | str) -> None:
        if isinstance(problems, str):
            problems = [ConfigProblem(problems)]
        self._problems: tuple[ConfigProblem, ...] = tuple(problems)
        count = len(self._problems)
        head = f"{count} configuration error{'s' if count != 1 else ''}"
        super().__init__(head + "".join(f"\n  {p}" for p in self._problems))

    def errors(self) -> Sequence[ConfigProblem]:
        """Every problem, in the order found."""
        return self._problems


class UnsupportedFeatureError(ConfigError):
    """A valid Envoy or Istio feature that meshcore does not implement, named by its field path.

    Never ignored silently: ignoring an authorization rule could let someone in.
    """
