"""The config read again after an edit equals the config read from scratch: the pieces of a
file cut and parsed again around the edit only (``parse_pieces``), and the model derived from
the last one (documents edited in place: ``MeshModel.replacing``), over random edit sequences.
The etcd source's side of the same property is in ``tests/store/test_store_changes.py``."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcore.config import IncrementalLoader, MeshModel, validate
from meshcore.config.changes import EVERYTHING, changed_keys
from meshcore.config.loader import parse_pieces, parse_yaml

# --- one file's pieces ------------------------------------------------------------------------

# What edits insert: document markers in their forms, directives, broken YAML, plain lines.
SNIPPETS = [
    "---\n", "--- ", "---x\n", "\n---\n", "a: 1\n", "b: [1, 2]\n", "# c\n", "\n", "  - x\n",
    "c: {d: e}\n", ": bad\n", "'open\n", "%YAML 1.1\n", "...\n", "k: |\n  text\n", "x",
]  # fmt: skip
DOCS = st.lists(st.sampled_from(SNIPPETS[4:10]), min_size=1, max_size=3).map("".join)
EDITS = st.lists(
    st.tuples(st.floats(0, 1), st.integers(0, 6), st.sampled_from(["", *SNIPPETS])),
    min_size=1,
    max_size=6,
)


def parsed(docs: list[Any], problems: list[Any]) -> tuple[Any, ...]:
    """What the loader reads of a parse: the documents that hold something, and problems.
    (An empty document, a comment or nothing between two markers, is placed by the core
    parser at the next marker's line, so a piece may hold its neighbour's: which, the loader
    never reads.)"""
    return (
        [(d.value, d.line, d.line_of(()), d.file) for d in docs if d.value is not None],
        [(str(p), p.line, p.path) for p in problems],
    )


@settings(max_examples=150, deadline=None)
@given(docs=st.lists(DOCS, min_size=1, max_size=8), edits=EDITS)
def test_pieces_parsed_again_give_what_a_whole_parse_gives(
    docs: list[str], edits: list[tuple[float, int, str]]
) -> None:
    text = "".join(f"---\n{d}" for d in docs)
    got_docs, got_problems, pieces = parse_pieces(text, "f.yaml")
    assert parsed(got_docs, got_problems) == parsed(*parse_yaml(text, "f.yaml"))
    for where, cut, insert in edits:
        at = int(where * len(text))
        text = text[:at] + insert + text[at + cut :]
        got_docs, got_problems, pieces = parse_pieces(text, "f.yaml", pieces)
        assert parsed(got_docs, got_problems) == parsed(*parse_yaml(text, "f.yaml"))
        # The pieces cover the text (none are kept after a YAML problem: parsed whole again).
        assert "".join(p.text for p in pieces) == (text if not got_problems else "")


# --- the model ------------------------------------------------------------------------------

_stamp = itertools.count(1_800_000_000_000_000_000, 1_000_000_000)
NAMES = ("a", "b", "c")


def workload(name: str, address: str, app: str, locality: str) -> str:
    extra = f"    locality: {locality}\n" if locality else ""
    return (
        f"apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n"
        f"metadata: {{name: {name}, namespace: ns}}\nspec:\n  address: {address}\n"
        f"  labels: {{app: {app}}}\n{extra.replace('    ', '  ')}"
    )


def service(name: str, port: int) -> str:
    return (
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\n"
        f"spec:\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: {port}}}]\n"
    )


def rule(name: str, lb: str) -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: {name}, namespace: ns}}\nspec:\n  host: {name}\n"
        f"  trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}\n"
        f"  subsets: [{{name: v1, labels: {{app: {name}}}}}]\n"
    )


def route(name: str, subset: str) -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        f"metadata: {{name: {name}, namespace: ns}}\nspec:\n  hosts: [{name}]\n"
        f"  http:\n  - route:\n    - destination: {{host: {name}, subset: {subset}}}\n"
    )


# One edit: (what, which, value). Most edit a document in place (the derived model's path);
# some add, remove, move or break documents (the model built again).
OPS = st.one_of(
    st.tuples(st.just("address"), st.integers(0, 5), st.sampled_from(["10.0.0.1", "10.0.0.2"])),
    st.tuples(st.just("app"), st.integers(0, 5), st.sampled_from(NAMES)),
    st.tuples(st.just("locality"), st.integers(0, 5), st.sampled_from(["", "r1/z1"])),
    st.tuples(st.just("port"), st.integers(0, 2), st.sampled_from([80, 81])),
    st.tuples(st.just("lb"), st.integers(0, 2), st.sampled_from(["RANDOM", "ROUND_ROBIN"])),
    st.tuples(st.just("subset"), st.integers(0, 2), st.sampled_from(["v1", "v2"])),
    st.tuples(st.just("toggle"), st.integers(0, 5), st.just("")),
    st.tuples(st.just("swap"), st.integers(0, 5), st.just("")),
    st.tuples(st.just("invalid"), st.integers(0, 5), st.just("")),
    st.tuples(st.just("duplicate"), st.integers(0, 5), st.just("")),
)


def model_view(m: MeshModel) -> tuple[Any, ...]:
    """Everything a model answers, as comparable values (lookups included)."""

    def res(r: Any) -> Any:
        return (r.key, r.api_version, r.spec, r.labels, r.file, r.line)

    def grouped(g: Any) -> Any:
        return sorted((k, [res(r) for r in v]) for k, v in g.items())

    return (
        [res(r) for r in m.resources],
        [[res(r) for r in getattr(m, a)] for a in ("services", "workload_entries",
         "virtual_services", "destination_rules", "service_entries")],
        sorted((k, res(r)) for k, r in m._by_key.items()),
        sorted((k, res(r)) for k, r in m._services.items()),
        grouped(m._workloads_by_ns), grouped(m._vs_by_host), grouped(m._dr_by_host),
        grouped(m._dr_selected), grouped(m._se_by_host),
        [(type(r).__name__, m._places[i]) for i, r in enumerate(m.resources)],
    )  # fmt: skip


class Files:
    """Three files: workloads (several per file), services and rules, routes."""

    def __init__(self) -> None:
        self.workloads = [[f"w{i}", f"10.0.1.{i}", NAMES[i % 3], "", True] for i in range(6)]
        self.services = [[n, 80] for n in NAMES]
        self.rules = [[n, "RANDOM"] for n in NAMES]
        self.routes = [[n, "v1"] for n in NAMES]
        self.broken: int | None = None
        self.duplicate: int | None = None

    def apply(self, op: str, i: int, value: Any) -> None:
        w = self.workloads[i % len(self.workloads)]
        if op == "address":
            w[1] = value
        elif op == "app":
            w[2] = value
        elif op == "locality":
            w[3] = value
        elif op == "port":
            self.services[i % 3][1] = value
        elif op == "lb":
            self.rules[i % 3][1] = value
        elif op == "subset":
            self.routes[i % 3][1] = value
        elif op == "toggle":
            w[4] = not w[4]
        elif op == "swap":
            j = (i + 1) % len(self.workloads)
            self.workloads[i], self.workloads[j] = self.workloads[j], self.workloads[i]
        elif op == "invalid":
            self.broken = None if self.broken is not None else i
        elif op == "duplicate":
            self.duplicate = None if self.duplicate is not None else i

    def write(self, config: Path) -> None:
        wl = [workload(n, a, app, loc) for n, a, app, loc, on in self.workloads if on]
        if self.broken is not None and wl:
            wl[self.broken % len(wl)] = wl[self.broken % len(wl)].replace(
                "address:", "port: x\n  address:"
            )
        if self.duplicate is not None and wl:
            wl.append(wl[self.duplicate % len(wl)])
        texts = {
            "workloads.yaml": "---\n".join(wl),
            "services.yaml": "---\n".join(
                [service(*s) for s in self.services] + [rule(*r) for r in self.rules]
            ),
            "routes.yaml": "---\n".join(route(*r) for r in self.routes),
        }  # fmt: skip
        for name, text in texts.items():
            path = config / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                n = next(_stamp)
                os.utime(path, ns=(n, n))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(OPS, min_size=1, max_size=12))
def test_models_read_again_equal_models_read_from_scratch(
    tmp_path_factory: Any, ops: list[tuple[str, int, Any]]
) -> None:
    config = tmp_path_factory.mktemp("config")
    files = Files()
    files.write(config)
    loader = IncrementalLoader([config])
    first = loader.validate().model
    assert first is not None
    assert loader.changes == EVERYTHING
    given_last: MeshModel = first
    for op, i, value in ops:
        files.apply(op, i, value)
        files.write(config)
        loader.poll()
        got = loader.validate()
        want = validate([config])
        assert [(str(p), p.line) for p in got.problems] == [(str(p), p.line) for p in want.problems]
        assert (got.model is None) == (want.model is None)
        if got.model is None or want.model is None:
            continue
        assert model_view(got.model) == model_view(want.model)
        # The keys reported cover what changed since the last model given (a key defined
        # twice meanwhile is reported too), and the new model carries them.
        diff = changed_keys(given_last.resources, got.model.resources)
        assert not loader.changes.everything
        assert diff <= loader.changes.keys
        assert got.model.changes_since(given_last) == loader.changes
        given_last = got.model
