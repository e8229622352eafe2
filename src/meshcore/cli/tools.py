"""``meshcore analyze``, ``meshcore x explain`` and ``meshcore proxy-config``: thin layers over
:mod:`meshcore.tools`. Exit codes as istioctl's: 0, 79 (analyze found issues at or above
``--failure-threshold``), 2 usage (meshcore's usage code)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meshcore.tools.messages import LEVELS

EXIT_ANALYZER_FOUND_ISSUES = 79  # istioctl's ExitAnalyzerFoundIssues


def add_parsers(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    def command(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=text, description=text, formatter_class=formatter
        )
        return p

    a = command("analyze", "cross-resource analysis with Istio-style message codes")
    a.add_argument("paths", nargs="*", metavar="FILE|DIR", help="YAML/JSON files or directories")
    a.add_argument("--store", metavar="URL", help="analyze a config store (etcd://...) instead")
    a.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text",
                   help="output format")  # fmt: skip
    a.add_argument("--domain", default="cluster.local", help="the mesh's DNS domain")
    a.add_argument("--failure-threshold", choices=LEVELS, default="Error",
                   help="the lowest level of message that makes the exit code 79")  # fmt: skip
    a.add_argument("--output-threshold", choices=LEVELS, default="Info",
                   help="the lowest level of message shown")  # fmt: skip
    a.add_argument("-S", "--suppress", action="append", default=[], metavar="CODE=RESOURCE",
                   help="suppress messages: CODE=Kind name.namespace ('*' globs), repeatable")  # fmt: skip


def analyze_command(args: argparse.Namespace) -> int:
    from meshcore.cli import emit
    from meshcore.tools.analyze import analyze, parse_suppression

    try:
        for s in args.suppress:
            parse_suppression(s)
    except ValueError as exc:
        print(f"meshcore analyze: {exc}", file=sys.stderr)
        return 2
    if args.store:
        print("meshcore analyze: --store needs a config store backend, which this build does "
              "not have (analyze files or directories)", file=sys.stderr)  # fmt: skip
        return 2
    if not args.paths:
        print("meshcore analyze: name files or directories (or --store)", file=sys.stderr)
        return 2
    result = analyze(args.paths, domain=args.domain, suppress=args.suppress)
    shown = result.at_least(args.output_threshold)
    if args.output == "text":
        for msg in shown:
            print(msg)
        if not shown:
            print(f"\u2714 No validation issues found when analyzing {', '.join(args.paths)}.")
    else:
        emit([x.to_dict() for x in shown], args.output)
    failing = result.at_least(args.failure_threshold)
    if failing:
        print(f"Error: Analyzers found issues when analyzing {', '.join(args.paths)}.",
              file=sys.stderr)  # fmt: skip
        return EXIT_ANALYZER_FOUND_ISSUES
    return 0
