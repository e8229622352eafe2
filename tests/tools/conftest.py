from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture
def mesh_dir(tmp_path: Path) -> Callable[[str], Path]:
    """The examples plus one extra YAML document set, in a fresh directory."""

    def make(extra: str) -> Path:
        for f in EXAMPLES.glob("*.yaml"):
            (tmp_path / f.name).write_text(f.read_text())
        (tmp_path / "zz-extra.yaml").write_text(extra)
        return tmp_path

    return make
