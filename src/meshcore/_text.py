"""Wording shared by every validator, so the same mistake reads the same everywhere; and
:func:`shown`, the one way a client-supplied string reaches a log line or an error message."""

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


# What a client sends may reach a log line, /debug/syncz or an error message: no more than this
# many characters of it are shown.
SHOWN_CHARS = 200
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def is_control(ch: str) -> bool:
    """C0, DEL, C1, and the Unicode line and paragraph separators: what ends or rewrites a line
    on a terminal or in a log."""
    code = ord(ch)
    return code < 0x20 or 0x7F <= code < 0xA0 or code in (0x2028, 0x2029)


def shown(text: object, limit: int = SHOWN_CHARS) -> str:
    """A client-supplied string made safe to log: control characters (C0, DEL, C1, the Unicode
    line and paragraph separators) and backslashes escaped, so that a newline cannot forge a
    log line, and at most ``limit`` characters kept, the rest counted (``a\\nb… (+7 chars)``).
    """
    s = text if isinstance(text, str) else str(text)
    out: list[str] = []
    width = 0
    for i, ch in enumerate(s):
        piece = _ESCAPES.get(ch, ch)
        if ch not in _ESCAPES and is_control(ch):
            code = ord(ch)
            piece = f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
        if width + len(piece) > limit:
            return "".join(out) + f"… (+{len(s) - i} chars)"
        out.append(piece)
        width += len(piece)
    return "".join(out)
