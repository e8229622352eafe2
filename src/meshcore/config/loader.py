"""Kubernetes-style multi-document YAML in, plain values out, with the line of every field.

PyYAML's C parser composes the node graph; we build the values ourselves from the nodes so that
duplicate keys are reported instead of silently dropped, and we keep each document's root node
so that any field path can later be turned into a line number (only when a problem needs one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshcore.errors import ConfigProblem

try:
    _Loader: type[Any] = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml: slower, same results
    _Loader = yaml.SafeLoader

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML_SUFFIXES = (".yaml", ".yml", ".json")

PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document: its value, where it came from, and its node graph for line lookups."""

    value: Any
    file: str
    line: int  # 1-based line where the document starts
    index: int  # 0-based position of the document in its file
    node: yaml.Node | None = field(default=None, repr=False, compare=False)

    def line_of(self, path: PathKey) -> int:
        """The 1-based line of the deepest node along ``path`` (the document start if none)."""
        node = self.node
        line = self.line
        for key in path:
            if isinstance(node, yaml.MappingNode):
                # A field is reported on its key's line; a missing one on its parent's.
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                        line = k.start_mark.line + 1
                        node = v
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
                if not 0 <= key < len(node.value):
                    return line
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                return line
        return line


class _Builder:
    """Turns composed nodes into plain values, reporting what YAML would silently lose."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []
        self._constructor = yaml.SafeLoader("")  # only for YAML 1.1 scalar forms we rarely see

    def build(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item) for item in node.value]
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    self._problem(
                        key_node, "YAML merge keys (<<) are not supported; write the fields out"
                    )
                    continue
                key = self.build(key_node)
                if isinstance(key, (list, dict)):
                    self._problem(key_node, "a mapping key must be a scalar")
                    continue
                if key in out:
                    self._problem(
                        key_node,
                        f"duplicate key {key!r} (YAML would keep only the last value)",
                    )
                    continue
                out[key] = self.build(value_node)
            return out
        raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        value: str = node.value
        if tag == _STR_TAG:
            return value
        if tag == _INT_TAG:
            try:
                return int(value)
            except ValueError:
                return self._constructor.construct_yaml_int(node)
        if tag == _BOOL_TAG:
            return value.lower() in ("yes", "true", "on", "y")
        if tag == _NULL_TAG:
            return None
        if tag == _FLOAT_TAG:
            return self._constructor.construct_yaml_float(node)
        # Timestamps, binary and custom tags: Kubernetes reads these fields as strings.
        return value

    def _problem(self, node: yaml.Node, message: str) -> None:
        self.problems.append(ConfigProblem(message, file=self.file, line=node.start_mark.line + 1))


def parse_yaml(text: str, file: str) -> tuple[list[Document], list[ConfigProblem]]:
    """Parses a multi-document YAML stream; a syntax error names the file and line."""
    docs: list[Document] = []
    builder = _Builder(file)
    loader = _Loader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there is one
                break
            value = builder.build(node)
            docs.append(Document(value, file, node.start_mark.line + 1, index, node))
            index += 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        column = mark.column + 1 if mark is not None else 0
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        builder.problems.append(
            ConfigProblem(f"YAML syntax error: {what} (column {column})", file=file, line=line)
        )
    except yaml.YAMLError as exc:
        builder.problems.append(ConfigProblem(f"YAML error: {exc}", file=file))
    finally:
        loader.dispose()
    return docs, builder.problems


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


def read_documents(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[Document], list[ConfigProblem]]:
    """Every document of every file; unreadable files and YAML errors become problems."""
    docs: list[Document] = []
    problems: list[ConfigProblem] = []
    for path in iter_config_files(paths):
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(ConfigProblem("no such file or directory", file=name))
            continue
        except UnicodeDecodeError as exc:
            problems.append(ConfigProblem(f"not UTF-8 text: {exc.reason}", file=name))
            continue
        except OSError as exc:
            problems.append(ConfigProblem(f"cannot read: {exc.strerror}", file=name))
            continue
        file_docs, file_problems = parse_yaml(text, name)
        docs.extend(file_docs)
        problems.extend(file_problems)
    return docs, problems
