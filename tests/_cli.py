"""The ``meshcore`` command as users run it: ``python -m meshcore ...`` in a subprocess (tests
import the library, never ``meshcore.cli``)."""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str], *, timeout: float = 600) -> int:
    """``meshcore argv`` in a subprocess, its output passed on to this process's stdout and
    stderr (where ``capsys`` reads it): an exit code, as ``meshcore.cli.main`` returns it. A
    traceback is never what a user should meet: it fails the test whatever the exit code."""
    done = subprocess.run(
        [sys.executable, "-m", "meshcore", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode
