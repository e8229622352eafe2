"""IncrementalLoader gives exactly what validate() gives, edit after edit, while re-parsing only
the documents that changed (problems with their lines, models with their objects' places)."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path
from typing import Any

import pytest

from meshcore.config import ChangeSet, IncrementalLoader, MeshModel, Resource, validate
from meshcore.config.loader import parse_pieces, parse_yaml

_stamp = itertools.count(1_700_000_000_000_000_000, 1_000_000_000)


def _service(i: int, port: int = 80, dup: bool = False) -> str:
    extra = "  selector: {app: x}\n" if dup else ""
    return (
        f"# service {i}\napiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\n"
        f"spec:\n  ports: [{{name: http, port: {port}}}]\n{extra}"
        + ("  selector: {app: y}\n" if dup else "")
    )


def _bad(i: int) -> str:
    return f"apiVersion: v1\nkind: Service\nmetadata:\n  name: bad{i}\nspec:\n  ports: [{{port: 99999}}]\n"


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    n = next(_stamp)
    os.utime(path, ns=(n, n))


def _same(loader: IncrementalLoader, paths: list[Path]) -> None:
    before = loader._model
    got, want = loader.validate(), validate(paths)
    _changes_are_the_difference(loader, before, got.model)
    assert [(str(p), p.line, p.path) for p in got.problems] == [
        (str(p), p.line, p.path) for p in want.problems
    ]
    assert (got.model is None) == (want.model is None)
    if got.model is not None and want.model is not None:
        assert [(r.key, r.spec, r.file, r.line) for r in got.model.resources] == [
            (r.key, r.spec, r.file, r.line) for r in want.model.resources
        ]


@pytest.mark.parametrize("seed", range(6))
def test_random_edits_give_what_validate_gives(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    files = {
        "a.yaml": ["---\n" + _service(0), _service(1), "", _service(2)],
        "b.yaml": [_service(10), _service(11, dup=True)],
    }

    def text(docs: list[str]) -> str:
        return "".join(d if d.startswith("---") else "---\n" + d for d in docs)

    for name, docs in files.items():
        _write(tmp_path / name, text(docs))
    loader = IncrementalLoader([tmp_path])
    _same(loader, [tmp_path])
    for step in range(25):
        name = rnd.choice(sorted(files))
        docs = files[name]
        op = rnd.randrange(6)
        i = rnd.randrange(len(docs)) if docs else 0
        if op == 0 and docs:  # an edit in place (same lines)
            docs[i] = _service(100 + step, port=rnd.choice([80, 81, 82]))
        elif op == 1:  # a document inserted: later ones move down
            docs.insert(i, _service(200 + step))
        elif op == 2 and docs:
            del docs[i]
        elif op == 3:  # an invalid one, or a duplicate-key one
            docs.insert(i, _bad(step) if rnd.random() < 0.5 else _service(300 + step, dup=True))
        elif op == 4:  # a comment line added at the top: everything moves
            files[name] = docs = [f"# note {step}\n" + (docs[0] if docs else ""), *docs[1:]]
        else:  # an empty document
            docs.insert(i, "")
        _write(tmp_path / name, text(docs))
        _same(loader, [tmp_path])


def _value_diff(old: MeshModel, new: MeshModel) -> set[tuple[str, str, str]]:
    def value(r: Resource) -> tuple[Any, ...]:
        return (r.api_version, r.spec, r.labels, r.annotations)

    a = {r.key: value(r) for r in old.resources}
    b = {r.key: value(r) for r in new.resources}
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def _changes_are_the_difference(
    loader: IncrementalLoader, before: MeshModel | None, model: MeshModel | None
) -> None:
    """The keys the loader reports cover every resource that differs from the last model it
    gave (through invalid configurations too), and the new model carries them."""
    if before is None:
        assert loader.changes.everything
        return
    if model is None:
        return
    assert not loader.changes.everything
    assert _value_diff(before, model) <= loader.changes.keys
    assert model.changes_since(before) == loader.changes
    assert model.changes_since(model) == ChangeSet()
    assert model.changes_since(MeshModel(())).everything


def test_the_changed_keys_are_those_of_the_changed_documents(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "".join(f"---\n{_service(i)}" for i in range(5)))
    _write(tmp_path / "b.yaml", f"---\n{_service(10)}")
    loader = IncrementalLoader([tmp_path])
    assert loader.poll()
    first = loader.validate().model
    assert first is not None
    assert loader.changes.everything
    assert not loader.poll()  # nothing changed since the look validate() used
    _write(
        tmp_path / "a.yaml",
        "# moved\n" + "".join(f"---\n{_service(i, 81 if i == 3 else 80)}" for i in range(5)),
    )
    assert loader.poll()
    second = loader.validate().model
    assert second is not None
    assert loader.reread == [str(tmp_path / "a.yaml")]
    # Every document moved a line down; only s3 changed in value.
    assert loader.changes == ChangeSet(frozenset({("Service", "default", "s3")}))
    assert second.changes_since(first) == loader.changes
    (tmp_path / "b.yaml").unlink()
    assert loader.poll()
    assert loader.validate().model is not None
    assert loader.changes == ChangeSet(frozenset({("Service", "default", "s10")}))


def test_only_the_changed_document_is_parsed_again() -> None:
    text = "".join(f"---\n{_service(i)}" for i in range(50))
    docs, problems, pieces = parse_pieces(text, "f.yaml")
    whole_docs, whole_problems = parse_yaml(text, "f.yaml")
    assert [(d.value, d.line, d.index) for d in docs] == [
        (d.value, d.line, d.index) for d in whole_docs
    ]
    assert problems == whole_problems
    edited = text.replace("name: s7\n", "name: s7x\n")
    docs2, _, pieces2 = parse_pieces(edited, "f.yaml", pieces)
    reparsed = [i for i, (a, b) in enumerate(zip(pieces, pieces2, strict=True)) if a is not b]
    assert reparsed == [7]
    assert docs2[7].value["metadata"]["name"] == "s7x"
    assert all(docs2[i] is docs[i] for i in range(50) if i != 7)


def test_directives_are_not_cut(tmp_path: Path) -> None:
    text = "%YAML 1.1\n---\na: 1\n---\nb: 2\n"
    docs, _, pieces = parse_pieces(text, "f.yaml")
    assert len(pieces) == 1
    assert [d.value for d in docs] == [d.value for d in parse_yaml(text, "f.yaml")[0]]


def test_reference_warnings_follow_the_hosts_they_check(tmp_path: Path) -> None:
    # A VirtualService's destination warnings are kept per object between loads: a change to
    # the Services and DestinationRules they check against, or to the VirtualService's lines,
    # must still give what validate() gives.
    vs = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n"
        "spec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r, subset: v1}\n"
    )
    dr = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n"
        "spec:\n  host: r\n  subsets:\n  - {name: v1, labels: {version: v1}}\n"
    )
    svc = "apiVersion: v1\nkind: Service\nmetadata: {name: r}\nspec:\n  ports: [{port: 80}]\n"
    loader = IncrementalLoader([tmp_path])
    steps = [
        {"a.yaml": vs},
        {"a.yaml": vs, "b.yaml": svc},
        {"a.yaml": vs, "b.yaml": svc + "---\n" + dr},
        {"a.yaml": "# moved\n" + vs, "b.yaml": svc + "---\n" + dr},
        {"a.yaml": "# moved\n" + vs, "b.yaml": svc},
        {"a.yaml": "# moved\n# again\n" + vs, "b.yaml": svc},
        {"a.yaml": vs},
    ]
    for files in steps:
        for name, text in files.items():
            _write(tmp_path / name, text)
        for path in tmp_path.iterdir():
            if path.name not in files:
                path.unlink()
        _same(loader, [tmp_path])
    warnings = [(p.path, p.line) for p in loader.validate().problems]
    assert ("spec.http[0].route[0].destination.host", 8) in warnings
