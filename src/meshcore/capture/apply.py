"""Apply Istio's capture rules to the current network namespace, or take them away.

Rules go in with one ``iptables-restore --noflush`` per IP family (atomic: all or nothing),
after ``iptables-save`` shows no ISTIO_* chains already there. Cleanup removes exactly what
the same options add: our rules in built-in chains (checked with ``iptables -C`` first), then
our chains; nothing else in the namespace is touched.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from meshcore.capture.config import CaptureConfig, split
from meshcore.capture.generate import build_rules
from meshcore.capture.rules import (
    ISTIO_PREFIX,
    Rule,
    RuleBuilder,
    check_args,
    cleanup_text,
    created_chains,
    restore_text,
)
from meshcore.errors import MeshcoreError

log = logging.getLogger("meshcore.capture")


class CaptureError(MeshcoreError):
    """iptables (or ip) refused, or is missing, or the namespace holds someone else's rules."""


@dataclass(frozen=True, slots=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


# Runs argv with optional stdin; the default runs the real binaries.
Runner = Callable[[Sequence[str], str | None], Result]


def run_command(argv: Sequence[str], stdin: str | None = None) -> Result:
    if shutil.which(argv[0]) is None:
        raise CaptureError(f"{argv[0]} not found (Debian: apt-get install iptables iproute2)")
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


_FAMILIES = ((4, "iptables"), (6, "ip6tables"))


def dry_run_lines(cfg: CaptureConfig) -> list[str]:
    """What a run does, in the form of Istio's golden files: each command, with the
    iptables-restore input in place of its command line."""
    b = build_rules(cfg)
    lines = ["iptables-save", "ip6tables-save"]
    for version, _ in _FAMILIES:
        if version == 4 or cfg.enable_ipv6:
            lines += restore_text(b.family(version)).splitlines()
    lines.append("iptables-save")
    if cfg.enable_ipv6:
        lines.append("ip6tables-save")
    return lines


def istio_chains(save_output: str) -> dict[tuple[str, str], int]:
    """(table, chain) of every ISTIO_* chain in ``iptables-save`` output, with its number
    of rules."""
    found: dict[tuple[str, str], int] = {}
    table = ""
    for line in save_output.splitlines():
        words = line.split()
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":" + ISTIO_PREFIX):
            found.setdefault((table, words[0][1:]), 0)
        elif len(words) >= 2 and words[0] == "-A" and words[1].startswith(ISTIO_PREFIX):
            found[(table, words[1])] = found.get((table, words[1]), 0) + 1
    return found


def _planned(rules: Sequence[Rule]) -> dict[tuple[str, str], int]:
    out = {(t, c): 0 for t, cs in created_chains(rules).items() for c in cs}
    for r in rules:
        if r.chain.startswith(ISTIO_PREFIX):
            out[(r.table, r.chain)] += 1
    return out


def _families(cfg: CaptureConfig) -> list[tuple[int, str]]:
    return [(v, binary) for v, binary in _FAMILIES if v == 4 or cfg.enable_ipv6]


def _checked(run: Runner, argv: Sequence[str], stdin: str | None = None) -> str:
    res = run(argv, stdin)
    if res.returncode != 0:
        raise CaptureError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _present(run: Runner, binary: str, rules: Sequence[Rule]) -> set[Rule]:
    return {r for r in rules if run([binary, "-w", *check_args(r)], None).returncode == 0}


def apply(cfg: CaptureConfig, run: Runner = run_command) -> str:
    """Install the rules; returns what was done. Idempotent: the same rules already present
    are left alone; other ISTIO_* chains are an error (run ``cleanup`` first)."""
    b = build_rules(cfg)
    todo: list[tuple[str, str]] = []
    for version, binary in _families(cfg):
        rules = b.family(version)
        existing = istio_chains(_checked(run, [f"{binary}-save"]))
        if not existing:
            todo.append((binary, restore_text(rules)))
            continue
        # Istio's test of "the same rules": the same ISTIO_* chains with as many rules each,
        # and every planned rule present (iptables -C).
        if existing == _planned(rules) and _present(run, binary, rules) == set(rules):
            log.info("%s: the capture rules are already in place", binary)
            continue
        names = ", ".join(f"{t}/{c}" for t, c in sorted(existing))
        raise CaptureError(
            f"{binary}: ISTIO_* chains already exist ({names}) and differ from these options; "
            "run `meshcore iptables --cleanup` with the options they were made with first"
        )
    try:
        for binary, text in todo:
            if text:
                _checked(run, [f"{binary}-restore", "-w", "--noflush"], text)
        _tproxy_routes(cfg, run, add=True)
    except CaptureError:
        # All or nothing across families too: take back what went in (when none of it was
        # there before this run, so that nobody's earlier rules are removed).
        if len(todo) == len(_families(cfg)):
            cleanup(cfg, run)
        raise
    done = [binary for binary, _ in todo]
    return f"applied ({', '.join(done)})" if done else "already in place"


def cleanup(cfg: CaptureConfig, run: Runner = run_command) -> str:
    """Remove what ``apply(cfg)`` adds, as far as it is present, atomically per family."""
    b: RuleBuilder = build_rules(cfg)
    rules_removed = chains_removed = 0
    for version, binary in _families(cfg):
        rules = b.family(version)
        chains = set(istio_chains(_checked(run, [f"{binary}-save"])))
        present = _present(run, binary, rules)
        text = cleanup_text(rules, present, chains)
        if text:
            _checked(run, [f"{binary}-restore", "-w", "--noflush"], text)
            rules_removed += sum(1 for line in text.splitlines() if line.startswith("-D "))
            chains_removed += sum(1 for line in text.splitlines() if line.startswith("-X "))
    _tproxy_routes(cfg, run, add=False)
    return f"removed {rules_removed} rules and {chains_removed} chains"


def _tproxy_routes(cfg: CaptureConfig, run: Runner, *, add: bool) -> None:
    """TPROXY needs marked packets routed to lo (Istio's tproxy.ConfigureRoutes)."""
    if not (cfg.tproxy and split(cfg.inbound_ports_include)):
        return
    table, mark = cfg.inbound_tproxy_route_table, cfg.inbound_tproxy_mark
    for version, _ in _families(cfg):
        fam = f"-{version}"
        everything = "0.0.0.0/0" if version == 4 else "::/0"
        route = ["local", everything, "dev", "lo", "table", table]
        rule = ["fwmark", mark, "lookup", table]
        if add:
            _checked(run, ["ip", fam, "rule", "add", *rule])
            res = run(["ip", fam, "route", "add", *route], None)
            if res.returncode != 0 and "File exists" not in res.stderr:
                raise CaptureError(f"ip route add failed: {res.stderr.strip()}")
        else:
            # Absent already is fine: cleanup takes away what is there.
            run(["ip", fam, "rule", "del", *rule], None)
            run(["ip", fam, "route", "del", *route], None)
