"""The hand-written stubs of the Rust extension match what it exports (mypy's stubtest)."""

import subprocess
import sys


def test_core_stubs_match_runtime() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "meshcore._core"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
