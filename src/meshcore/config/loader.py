"""Kubernetes-style multi-document YAML in, plain values out, with the line of every field.

The Rust core parses the stream (YAML 1.1 scalars, as PyYAML resolves them) and reports what
plain loaders silently lose: duplicate keys, merge keys, non-scalar keys, alias bombs. Each
document keeps a handle to its node tree so that a field path becomes a line number only when
a problem needs one.
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import dataclasses
import gc
import itertools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcore._core import yaml as core_yaml
from meshcore.config.validate import format_path
from meshcore.errors import ConfigProblem

_YAML_SUFFIXES = (".yaml", ".yml", ".json")

# The largest config file read (``--max-file-bytes``): far above any real mesh's file (a
# 50 MB file holds 170,000 resources and validates in about 30 s, BENCHMARKS.md), and a bound
# on the memory and time one runaway or hostile file can take.
MAX_FILE_BYTES = 64 * 2**20

PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document: its value, where it came from, and its lines."""

    value: Any
    file: str
    line: int  # 1-based line where the document starts (0 when not from a file)
    index: int  # 0-based position of the document in its file
    lines: core_yaml.YamlDocument | None = field(default=None, repr=False, compare=False)
    # Lines before the text ``lines`` was parsed from (a document parsed apart from its file).
    line_offset: int = field(default=0, repr=False, compare=False)

    def line_of(self, path: PathKey) -> int:
        """The 1-based line of the field at ``path`` (its nearest existing ancestor's if absent)."""
        if self.lines is None:
            return self.line
        return self.lines.line_of(path) + self.line_offset


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (as it was, after): reading a config makes
    millions of objects and no cycles, and with the collector on, its passes over a growing
    heap make reading superlinear (a 50 MB file took twice as long per MB as a 1 MB one)
    and stop every thread for seconds (the control plane's event loop too)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_yaml(text: str, file: str) -> tuple[list[Document], list[ConfigProblem]]:
    """Parses a multi-document YAML stream; a syntax error names the file and line."""
    parsed, raw_problems = core_yaml.parse_yaml(text)
    docs = [Document(value, file, lines.line, i, lines) for i, (value, lines) in enumerate(parsed)]
    problems = []
    for line, column, message, index, path in raw_problems:
        owner = docs[index].value if index is not None and index < len(docs) else None
        kind, namespace, name = _identity(owner)
        problems.append(
            ConfigProblem(
                message + (f" (column {column})" if column else ""),
                path=format_path(tuple(path)),
                kind=kind,
                namespace=namespace,
                name=name,
                file=file,
                line=line,
            )
        )
    return docs, problems


def _identity(value: Any) -> tuple[str, str, str]:
    """(kind, namespace, name) of a manifest, as far as it tells."""
    if not isinstance(value, dict):
        return "", "", ""
    meta = value.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    kind, name, namespace = value.get("kind"), meta.get("name"), meta.get("namespace")
    return (
        kind if isinstance(kind, str) else "",
        namespace if isinstance(namespace, str) and namespace else "default",
        name if isinstance(name, str) else "",
    )


def iter_config_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files named directly, and the YAML/JSON files under directories, in a stable order."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in _YAML_SUFFIXES
            )
        else:
            yield path


def read_text(
    path: Path, max_bytes: int = MAX_FILE_BYTES
) -> tuple[str | None, list[ConfigProblem]]:
    """A config file's text (line breaks made ``\\n``, as text mode reads them), or None and
    the problem that kept it from being read: missing, unreadable, larger than ``max_bytes``,
    not UTF-8 (nor UTF-16/32 with a byte order mark), at the line and column of the first bad
    byte."""
    name = str(path)
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None, [ConfigProblem("no such file or directory", file=name)]
    except OSError as exc:
        return None, [ConfigProblem(f"cannot read: {exc.strerror}", file=name)]
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    if len(data) > max_bytes:
        line, _ = byte_position(data, max_bytes, encoding)
        return None, [
            ConfigProblem(
                f"the file is larger than the limit of {max_bytes:,} bytes (passed on this line);"
                " split it into smaller files or raise the limit (--max-file-bytes)",
                file=name,
                line=line,
            )
        ]
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line, column = byte_position(data, exc.start, encoding)
        return None, [
            ConfigProblem(
                f"not {encoding.upper()} text: {exc.reason} (byte 0x{data[exc.start]:02x},"
                f" column {column})",
                file=name,
                line=line,
            )
        ]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, []


# YAML streams are UTF-8, or UTF-16/UTF-32 with a byte order mark (YAML 1.2, 5.2): what
# Windows editors and PowerShell's ``>`` write. UTF-32 first: its LE mark starts with UTF-16's.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def byte_position(data: bytes, offset: int, encoding: str = "utf-8") -> tuple[int, int]:
    """1-based line and column (in characters) of a byte offset; line breaks are LF, CR LF
    and CR, as YAML and text mode count them."""
    head = data[:offset].decode(encoding, "replace")
    line = head.count("\n") + head.count("\r") - head.count("\r\n") + 1
    start = max(head.rfind("\n"), head.rfind("\r")) + 1
    return line, len(head) - start + 1


def read_documents(
    paths: Iterable[str | os.PathLike[str]], *, max_file_bytes: int = MAX_FILE_BYTES
) -> tuple[list[Document], list[ConfigProblem]]:
    """Every document of every file; unreadable files and YAML errors become problems."""
    docs: list[Document] = []
    problems: list[ConfigProblem] = []
    for path in iter_config_files(paths):
        text, unreadable = read_text(path, max_file_bytes)
        if text is None:
            problems.extend(unreadable)
            continue
        file_docs, file_problems = parse_yaml(text, str(path))
        docs.extend(file_docs)
        problems.extend(file_problems)
    return docs, problems


# A document marker starts a line: "---" then a blank or the end of the line. YAML forbids it
# inside quoted scalars, and block scalars are indented, so cutting there cuts between
# documents; directives (%YAML, %TAG) would apply across the cut, so with them nothing is cut.
_DOC_MARKER = re.compile(r"^---(?=[ \t\r]|$)", re.M)


@dataclass(frozen=True, slots=True)
class Piece:
    """A stretch of a file holding whole documents, parsed: the unit of re-parsing."""

    line: int  # where it starts in the file
    text: str
    docs: tuple[Document, ...]
    problems: tuple[ConfigProblem, ...]


def parse_pieces(
    text: str, file: str, previous: Sequence[Piece] = ()
) -> tuple[list[Document], list[ConfigProblem], list[Piece]]:
    """:func:`parse_yaml`, re-parsing only the stretches between document markers that are
    not in ``previous`` (the same text at the same line): a change to one document of a long
    file parses that document. Documents, lines and problems are those of ``parse_yaml``."""
    directives = text.startswith("%") or "\n%" in text  # a directive starts a line
    if previous and not directives:
        pieces = _reparsed(text, file, previous)
        docs, problems = _flat(pieces)
        # A YAML problem may end the parse of a whole text (what follows it is not read):
        # then the whole text, as a first parse.
        if not problems:
            return docs, problems, pieces
    if directives:
        cuts = [0, len(text)]
    else:
        cuts = [0, *(a for m in _DOC_MARKER.finditer(text) if (a := m.start()) > 0)]
        cuts.append(len(text))
    # Nothing to reuse: the whole text at once, then shared out between the pieces by line
    # (each document and problem to the piece it starts in).
    docs, problems = parse_yaml(text, file)
    return docs, problems, _share_out(text, cuts, docs, problems)


def _reparsed(text: str, file: str, previous: Sequence[Piece]) -> list[Piece]:
    """The pieces of ``text``: those of ``previous`` not around what changed, the others
    cut and parsed again (each on its own)."""
    old = "".join(p.text for p in previous)
    if old == text:
        return list(previous)
    # Only the pieces around what changed are cut and parsed again: those before it (ending,
    # with the marker after them, where both texts are equal from the start) and those after
    # it (starting where both are equal from the end) are kept.
    ends = list(itertools.accumulate(len(p.text) for p in previous))
    same_head = _common_prefix(old, text)
    same_tail = _common_suffix(old, text, min(len(old), len(text)) - same_head)
    head = bisect.bisect_right(ends, same_head - 4)  # "---" and the character after it
    # The first piece starting after the change and the line break before it.
    tail = min(bisect.bisect_right(ends, len(old) - same_tail) + 1, len(previous))
    start = ends[head - 1] if head else 0
    old_end = ends[tail - 1] if tail else 0
    end = old_end + len(text) - len(old)
    line = previous[head].line
    cuts = [start, *(a for m in _DOC_MARKER.finditer(text, start, end) if (a := m.start()) > start)]
    cuts.append(end)
    pieces = list(previous[:head])
    k = _first_index(previous, head)
    for a, b in itertools.pairwise(cuts):
        chunk = text[a:b]
        piece = _parse_piece(chunk, file, line)
        pieces.append(_numbered(piece, k))
        k += len(piece.docs)
        line += chunk.count("\n")
    moved_lines = line - (previous[tail].line if tail < len(previous) else line)
    moved_docs = k - _first_index(previous, tail)
    if not moved_lines and not moved_docs:
        pieces.extend(previous[tail:])
        return pieces
    for piece in previous[tail:]:
        if moved_lines:  # as the pieces of a first parse
            piece = _parse_piece(piece.text, file, piece.line + moved_lines)
        piece = _numbered(piece, k)
        k += len(piece.docs)
        pieces.append(piece)
    return pieces


def _first_index(pieces: Sequence[Piece], at: int) -> int:
    """The place in the file of the first document from piece ``at`` on."""
    for p in pieces[at:]:
        if p.docs:
            return p.docs[0].index
    for p in reversed(pieces[:at]):
        if p.docs:
            return p.docs[-1].index + 1
    return 0


def _numbered(piece: Piece, first: int) -> Piece:
    """``piece`` with its documents' places in the file from ``first`` on."""
    if not piece.docs or piece.docs[0].index == first:
        return piece
    docs = tuple(dataclasses.replace(d, index=first + j) for j, d in enumerate(piece.docs))
    return dataclasses.replace(piece, docs=docs)


def _flat(pieces: Sequence[Piece]) -> tuple[list[Document], list[ConfigProblem]]:
    return (
        list(itertools.chain.from_iterable(p.docs for p in pieces)),
        list(itertools.chain.from_iterable(p.problems for p in pieces)),
    )


_CHUNK = 4096


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common start of ``a`` and ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a.startswith(b[i : i + _CHUNK], i, i + _CHUNK):
        i += _CHUNK
    while i < n and a[i] == b[i]:
        i += 1
    return min(i, n)


def _common_suffix(a: str, b: str, limit: int) -> int:
    """The length of the longest common end of ``a`` and ``b``, at most ``limit``."""
    i = 0
    la, lb = len(a), len(b)
    while i + _CHUNK <= limit and a.endswith(b[lb - i - _CHUNK : lb - i], 0, la - i):
        i += _CHUNK
    while i < limit and a[la - i - 1] == b[lb - i - 1]:
        i += 1
    return i


def _parse_piece(chunk: str, file: str, line: int) -> Piece:
    """One piece parsed on its own, its lines and problems moved to where it is in the file."""
    docs, problems = parse_yaml(chunk, file)
    off = line - 1
    if off:
        docs = [
            dataclasses.replace(d, line=d.line + off, line_offset=d.line_offset + off) for d in docs
        ]
        problems = [dataclasses.replace(p, line=p.line + off) if p.line else p for p in problems]
    return Piece(line, chunk, tuple(docs), tuple(problems))


def _share_out(
    text: str, cuts: list[int], docs: list[Document], problems: list[ConfigProblem]
) -> list[Piece]:
    """Pieces holding the documents and problems of a whole-text parse (none to reuse when a
    problem was found)."""
    starts = [1]
    for a, b in itertools.pairwise(cuts[:-1]):
        starts.append(starts[-1] + text.count("\n", a, b))
    if problems:
        # A problem may end the parse of the rest of the text, and its line need not be in
        # the piece it comes from: nothing to reuse (the next parse is a whole one again).
        return []
    by_piece_docs: list[list[Document]] = [[] for _ in starts]
    by_piece_problems: list[list[ConfigProblem]] = [[] for _ in starts]
    j = 0
    for d in docs:  # in line order
        while j + 1 < len(starts) and starts[j + 1] <= d.line:
            j += 1
        by_piece_docs[j].append(d)
    for p in problems:
        k = bisect.bisect_right(starts, p.line) - 1
        by_piece_problems[max(k, 0)].append(p)
    return [
        Piece(starts[j], text[a:b], tuple(by_piece_docs[j]), tuple(by_piece_problems[j]))
        for j, (a, b) in enumerate(itertools.pairwise(cuts))
    ]
