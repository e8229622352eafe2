"""YAML loading: values, lines, and what plain YAML would silently lose."""

from __future__ import annotations

from pathlib import Path

from meshcore.config.loader import parse_yaml, read_documents


def test_multi_document_values_and_lines() -> None:
    docs, problems = parse_yaml(
        "a: 1\nb:\n  c: [x, y]\n---\n---\nk: yes\nn: ~\nf: 1.5\nh: 0x10\n", "f"
    )
    assert problems == []
    assert [d.value for d in docs] == [
        {"a": 1, "b": {"c": ["x", "y"]}},
        None,
        {"k": True, "n": None, "f": 1.5, "h": 16},
    ]
    assert [d.line for d in docs] == [1, 5, 6]
    assert docs[0].line_of(("b", "c", 1)) == 3
    assert docs[0].line_of(("b", "missing")) == 2
    assert docs[0].line_of(()) == 1


def test_duplicate_keys_are_reported_not_dropped() -> None:
    _, problems = parse_yaml("spec:\n  host: a\n  host: b\n", "dup.yaml")
    assert [(p.line, p.message) for p in problems] == [
        (3, "duplicate key 'host' (YAML would keep only the last value)")
    ]


def test_syntax_error_names_file_and_line() -> None:
    docs, problems = parse_yaml("ok: 1\n---\nspec:\n  hosts: [a\n  x: 1\n", "broken.yaml")
    assert [d.value for d in docs] == [{"ok": 1}]
    [p] = problems
    assert (p.file, p.line) == ("broken.yaml", 5)
    assert p.message.startswith("YAML syntax error")


def test_merge_keys_and_complex_keys_are_errors() -> None:
    _, problems = parse_yaml("base: &b {x: 1}\nobj:\n  <<: *b\n  ? [1, 2]\n  : v\n", "m.yaml")
    assert [p.line for p in problems] == [3, 4]
    assert "merge keys" in problems[0].message


def test_directories_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.yaml").write_text("x: 1\n")
    (tmp_path / "sub" / "a.yml").write_text("y: 2\n")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "latin1.yaml").write_bytes(b"x: \xe9\n")
    docs, problems = read_documents([tmp_path, tmp_path / "missing.yaml"])
    assert sorted(Path(d.file).name for d in docs) == ["a.yml", "b.yaml"]
    messages = sorted(p.message.split(":")[0] for p in problems)
    assert messages == ["no such file or directory", "not UTF-8 text"]
