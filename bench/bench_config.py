"""Load and validate a 1,000-service mesh (1,000 Services, 5,000 WorkloadEntries,
1,000 VirtualServices, 1,000 DestinationRules, 500 AuthorizationPolicies; 8,500 documents).

Peers in the same run: parsing the same files with PyYAML alone (libyaml's C parser and the
pure-Python one). They only parse: no validation, no model, no line numbers; a Python tool
that validates pays at least that much first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from meshcore.config import validate

GOAL_S = 1.0


def _texts(mesh_dir: Path) -> list[str]:
    return [f.read_text() for f in sorted(mesh_dir.glob("*.yaml"))]


def test_meshcore_load_and_validate(benchmark: Any, mesh_dir: Path) -> None:
    report = benchmark.pedantic(validate, args=([mesh_dir],), rounds=5, iterations=1)
    assert report.ok, report.errors[:3]
    assert report.model is not None
    assert len(report.model) == 8500
    if not benchmark.disabled:  # make test runs each body once, unmeasured
        assert benchmark.stats.stats.median < GOAL_S


def test_peer_pyyaml_c_parse_only(benchmark: Any, mesh_dir: Path) -> None:
    texts = _texts(mesh_dir)

    def parse() -> int:
        return sum(len(list(yaml.load_all(t, Loader=yaml.CSafeLoader))) for t in texts)

    assert benchmark.pedantic(parse, rounds=3, iterations=1) == 8500


def test_peer_pyyaml_pure_python_parse_only(benchmark: Any, mesh_dir: Path) -> None:
    texts = _texts(mesh_dir)

    def parse() -> int:
        return sum(len(list(yaml.load_all(t, Loader=yaml.SafeLoader))) for t in texts)

    assert benchmark.pedantic(parse, rounds=1, iterations=1) == 8500
