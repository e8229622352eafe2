"""The README, followed to the letter: every code block is run by a test here.

- ``yaml``, ``sh`` and ``python`` blocks run in document order in one workspace (a temporary
  directory with ``examples/``), as a reader would: shell blocks with bash, Python blocks in
  one namespace as in ``python -m asyncio`` (top-level ``await``); a ``text`` block right after
  a shell block is that block's output, compared line by line. Processes a block starts in the
  background (the control plane, a proxy) are stopped at the end.
- ``text`` blocks that start with ``meshcore`` are command synopses: every option they show
  exists, with the default they show.
- ``make`` blocks: ``make test`` is what CI runs (``.ci/run``); ``make demo`` runs here and its
  report has the checks the README's sample shows.
- ``pip install`` blocks: ``tests/packaging/test_wheel.py`` runs them against the built wheel.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import inspect
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshcore.cli._parser import parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# The fixed addresses the README's session uses (Istio's ports for the control plane).
SESSION_ADDRESSES = [("127.0.0.1", p) for p in (15010, 15012, 15013, 15014)] + [
    ("127.0.10.3", 9080), ("127.0.10.3", 15020),  # frontend's proxy
    ("127.0.20.1", 9080), ("127.0.20.101", 9080)]  # reviews-v1-1's Envoy (the demo's too)  # fmt: skip


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence
    after: Block | None  # the block right before it, when only blank lines separate them

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def blocks() -> list[Block]:
    out: list[Block] = []
    text = README.read_text()
    fence = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
    end = 0
    for m in fence.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        adjacent = out[-1] if out and not text[end : m.start()].strip() else None
        out.append(Block(m.group(1), m.group(2), line, adjacent))
        end = m.end()
    return out


def kind(b: Block) -> str:
    """Which test runs the block."""
    lines = [ln for ln in b.text.splitlines() if ln.strip() and not ln.startswith("#")]
    if b.lang == "sh" and all(ln.startswith("make ") for ln in lines):
        return "make"
    if b.lang == "sh" and all(ln.startswith("pip install ") for ln in lines):
        return "pip"
    if b.lang in ("sh", "python", "yaml"):
        return "session"
    if (
        b.lang == "text"
        and b.after is not None
        and kind(b.after) == "session"
        and b.after.lang == "sh"
    ):
        return "session"  # the shell block's output
    if b.lang == "text" and b.text.startswith("meshcore demo: what happened"):
        return "make"
    if b.lang == "text" and b.text.startswith("meshcore "):
        return "synopsis"
    return "unclaimed"


def test_every_block_is_run() -> None:
    found = blocks()
    assert len(found) > 20
    unclaimed = [b.where for b in found if kind(b) == "unclaimed"]
    assert not unclaimed, f"README blocks no test runs: {unclaimed}"


# --- synopses --------------------------------------------------------------------------------


def _commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def synopses() -> Iterator[tuple[Block, str, str]]:
    for b in blocks():
        if kind(b) != "synopsis":
            continue
        current: list[str] = []
        for ln in b.text.splitlines():
            if ln.startswith("meshcore ") and current:
                yield b, current[0].split()[1], " ".join(current)
                current = []
            current.append(ln)
        if current:
            yield b, current[0].split()[1], " ".join(current)


def test_synopses_match_the_command_line() -> None:
    commands = _commands()
    checked = 0
    for b, name, text in synopses():
        assert name in commands, f"{b.where}: no command {name}"
        actions = {s: a for a in commands[name]._actions for s in a.option_strings}
        for m in re.finditer(r"(--[a-z][a-z0-9-]*|-o)(?:[ =]([^\s\]]+))?", text):
            option, value = m.group(1), m.group(2)
            assert option in actions, f"{b.where}: meshcore {name} has no {option}"
            a = actions[option]
            assert a.help != argparse.SUPPRESS, f"{b.where}: {option} is an old spelling"
            if option == "-o" and a.dest == "output":  # (meshcore iptables: Istio's -o PORTS)
                assert value is not None
                assert value.split("|") == list(a.choices or ()), f"{b.where}: -o {value}"
            elif value and re.fullmatch(r"[0-9][0-9.:]*", value):
                same = str(a.default) == value or (
                    isinstance(a.default, int | float) and float(value) == a.default
                )
                assert same, f"{b.where}: {option} defaults to {a.default}"
            checked += 1
    assert checked > 40


# --- make ------------------------------------------------------------------------------------


def test_ci_runs_the_readmes_test_command() -> None:
    make = [b for b in blocks() if kind(b) == "make" and b.lang == "sh"]
    assert any("make test" in b.text for b in make)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == "time make test"


@pytest.mark.envoy
def test_make_demo_prints_the_readmes_checks() -> None:
    make = next(b for b in blocks() if kind(b) == "make" and "make demo" in b.text)
    assert "make demo" in make.text
    sample = next(b for b in blocks() if b.text.startswith("meshcore demo: what happened"))
    _wait_for_the_demos_addresses()
    # The README's sample is the loopback layout's (as root, make demo would pick capture).
    env = {**os.environ, "DEMO_LAYOUT": "loopback"}
    r = subprocess.run(["make", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       check=False, env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    # Each line's title (before the first colon); the figures vary from run to run.
    want = [ln.split(":")[0].strip() for ln in sample.text.splitlines()]
    report = r.stdout[r.stdout.index("meshcore demo: what happened") :]
    # (Under `make test`, the inner make announces the directory it leaves.)
    lines = [ln for ln in report.splitlines() if not re.match(r"make(\[\d+\])?: ", ln)]
    got = [ln.split(":")[0].strip() for ln in lines]
    assert want == got, r.stdout


def _wait_for_the_demos_addresses(timeout: float = 30) -> None:
    """The demo's addresses come from examples/; on a machine shared with other runs of the
    demo, wait for them (the demo itself would stop at once, naming them)."""
    from meshcore.config import load
    from meshcore.demo import EXAMPLES
    from meshcore.demo.mesh import check_addresses, workloads_of

    mesh = load(EXAMPLES)
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_addresses(mesh, workloads_of(mesh))
            return
        except ValueError as exc:
            if time.monotonic() > deadline:
                pytest.skip(f"another demo holds the demo's addresses: {exc}")
            time.sleep(0.5)


# --- the session -----------------------------------------------------------------------------


class Session:
    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.namespace: dict[str, Any] = {"__name__": "__readme__"}
        self.groups: list[int] = []
        self.last_output: str | None = None
        self.loop = asyncio.new_event_loop()
        bin_dir = ROOT / ".venv" / "bin"
        self.env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(self, b: Block) -> None:
        if b.lang == "yaml":
            name = b.text.splitlines()[0].lstrip("# ").strip()
            (self.workspace / name).write_text(b.text)
        elif b.lang == "sh":
            expects_output = any(
                x.after is not None and x.after.line == b.line for x in blocks() if x.lang == "text"
            )
            proc = subprocess.Popen(
                ["bash", "-c" if expects_output else "-ec", b.text], cwd=self.workspace,
                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )  # fmt: skip
            self.groups.append(proc.pid)
            out, _ = proc.communicate(timeout=120)
            if not expects_output:
                assert proc.returncode == 0, f"{b.where}: exit {proc.returncode}\n{out}"
            self.last_output = out
        elif b.lang == "text":
            assert self.last_output is not None
            got = [ln.rstrip() for ln in self.last_output.strip("\n").splitlines()]
            want = [ln.rstrip() for ln in b.text.strip("\n").splitlines()]
            assert got == want, f"{b.where}: the output differs"
        elif b.lang == "python":
            code = compile(b.text, b.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, self.namespace)  # the README's own code
            if inspect.iscoroutine(result):
                self.loop.run_until_complete(result)

    def close(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = False
            for pgid in self.groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, sig)
                    alive = True
            if not alive:
                break
            time.sleep(1.0)
        self.loop.close()


def _taken() -> list[str]:
    taken = []
    for host, port in SESSION_ADDRESSES:
        with socket.socket() as s:
            # As the servers bind (SO_REUSEADDR): a previous run's TIME_WAIT does not count.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                taken.append(f"{host}:{port}")
    return taken


@pytest.mark.envoy
def test_readme_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deadline = time.monotonic() + 30  # a demo (here, or another run's) may still be stopping
    while (taken := _taken()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if taken:
        pytest.skip(f"the README's fixed addresses are in use on this machine: {taken}")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    session = Session(tmp_path)
    try:
        for b in blocks():
            if kind(b) == "session":
                try:
                    session.run(b)
                except Exception as exc:
                    logs = "".join(f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
                                   for p in sorted(tmp_path.glob("*.log")))  # fmt: skip
                    raise AssertionError(f"{b.where}: {type(exc).__name__}: {exc}{logs}") from exc
    finally:
        session.close()


def test_links_stay_in_the_repository() -> None:
    for doc in (README, ROOT / "docs" / "DESIGN.md"):
        text = doc.read_text()
        assert "../" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if "://" in target:
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT), (doc, target)
            assert path.exists(), (doc, target)
