"""Wording shared by every validator, so the same mistake reads the same everywhere."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_field(key: str, known: Iterable[str]) -> str:
    """``unknown field 'retires' (did you mean 'retries'?)``."""
    fields = list(known)
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    if not close:
        lowered = {f.lower(): f for f in fields}
        squashed = key.lower().replace("_", "")
        if squashed in lowered:
            close = [lowered[squashed]]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown field {key!r}{hint}"
