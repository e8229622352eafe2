"""The command that runs a simulated fleet of SotW ADS clients (one process): the Rust one,
``meshcore-xds-fleet`` (crate ``ext/fleetsim``, built here with cargo when missing or stale),
or its Python twin ``xds_fleet_client.py`` (grpc's Python client), the client these benchmarks
used before. Both take the same arguments and speak the same lines (see either's docstring).

``MESHCORE_FLEET_CLIENT=python`` picks the Python one; the default is the Rust one: grpc's
Python client spends about as much CPU receiving a push as the control plane sends it, which
on this 2-core machine is CPU the control plane under test cannot use (real proxies run on
other machines). Benchmarks print which client ran beside its CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON_CLIENT = Path(__file__).parent / "xds_fleet_client.py"


def client_kind() -> str:
    kind = os.environ.get("MESHCORE_FLEET_CLIENT", "rust")
    if kind not in ("rust", "python"):
        raise ValueError(f"MESHCORE_FLEET_CLIENT must be rust or python, not {kind!r}")
    return kind


def fleet_command(target: str, nodes: Path, offset: int, stages: int, *, release: bool) -> list[str]:  # fmt: skip
    """The fleet client's command line; ``release``: the Rust one built with the release
    profile (for figures), else the dev profile (the quick form: its dependencies are those
    ``cargo test`` already built)."""
    args = [target, str(nodes), str(offset), str(stages)]
    if client_kind() == "python":
        return [sys.executable, str(PYTHON_CLIENT), *args]
    profile = ["--release"] if release else []
    subprocess.run(
        ["cargo", "build", "--quiet", "-p", "meshcore-fleetsim", *profile],
        cwd=ROOT / "ext",
        check=True,
    )
    binary = ROOT / "ext" / "target" / ("release" if release else "debug") / "meshcore-xds-fleet"
    return [str(binary), *args]
