"""Problems met while translating, kept with what they were found building.

Each cache of a builder keeps the problems met while filling it, so that a proxy is told
exactly the problems of the resources it gets, whatever was translated before it (a cached
virtual host built for another proxy still carries its problems). Builds nest (a route
configuration holds virtual hosts): a problem goes to every build in progress.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import Any, TypeVar

from meshcore.errors import ConfigProblem

K = TypeVar("K")
V = TypeVar("V")


class ProblemLog:
    """The builds in progress of one mesh's translation, and the problems they meet."""

    def __init__(self) -> None:
        self._captures: list[list[ConfigProblem]] = []

    def problem(self, res: Any, path: str, message: str, severity: str = "error") -> ConfigProblem:
        p = ConfigProblem(
            message,
            path=path,
            kind=getattr(res, "kind", ""),
            namespace=getattr(res, "namespace", ""),
            name=getattr(res, "name", ""),
            file=getattr(res, "file", ""),
            line=getattr(res, "line", 0),
            severity=severity,
        )
        self.emit([p])
        return p

    def emit(self, problems: Iterable[ConfigProblem]) -> None:
        """Hand problems to every build in progress (each cache keeps those it met)."""
        problems = list(problems)
        for capture in self._captures:
            capture.extend(problems)

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[ConfigProblem]]:
        """The problems met until the block ends (also handed to enclosing builds)."""
        got: list[ConfigProblem] = []
        self._captures.append(got)
        try:
            yield got
        finally:
            self._captures.pop()

    def cached(
        self,
        cache: MutableMapping[K, V],
        problems: MutableMapping[K, list[ConfigProblem]],
        key: K,
        build: Callable[[], V],
    ) -> V:
        """``cache[key]``, built once (keeping the problems met in ``problems[key]``)."""
        if key not in cache:
            with self.capture() as met:
                cache[key] = build()
            problems[key] = met
        return cache[key]


def problem_key(p: ConfigProblem) -> tuple[str, str, str, str, str]:
    """What makes two problems the same problem (reported once)."""
    return (p.kind, p.namespace, p.name, p.path, p.message)
