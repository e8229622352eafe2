"""Shared fixtures for the benchmarks: the generated mesh, and machine notes for the report."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import pytest

# numpy's OpenBLAS starts one spinning thread per core at import; on this 2-core machine they
# compete with the code under test (no benchmark here uses BLAS). Must precede numpy's import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))

from meshgen import write_mesh


@pytest.fixture(scope="session")
def mesh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mesh1k")
    write_mesh(d)
    return d


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    machine_info["cores"] = os.cpu_count()
    machine_info["python"] = platform.python_version()
    machine_info["meshcore_build"] = os.environ.get("MESHCORE_BUILD", "release (make bench)")
