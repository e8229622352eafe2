"""The ``meshcore`` command as users run it: ``python -m meshcore ...`` in a subprocess (tests
import the library, never ``meshcore.cli``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping


def meshcore(
    *args: str,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m meshcore *args``; its exit code, stdout and stderr. A traceback is never
    what a user should meet: it fails the test whatever the exit code."""
    run_env = {**os.environ, **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "meshcore", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=run_env,
        input=stdin,
        cwd=cwd,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def main(argv: list[str], **kw: object) -> int:
    """``meshcore argv`` in a subprocess, its output passed on to this process's stdout and
    stderr (where ``capsys`` reads it): an exit code, as ``meshcore.cli.main`` returns it."""
    done = meshcore(*argv, **kw)  # type: ignore[arg-type]
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode
