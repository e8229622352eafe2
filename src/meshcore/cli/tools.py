"""``meshcore analyze``, ``meshcore x explain`` and ``meshcore proxy-config``: thin layers over
:mod:`meshcore.tools`. Exit codes as istioctl's: 0, 79 (analyze found issues at or above
``--failure-threshold``), 2 usage (meshcore's usage code)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from meshcore.cli.store import add_tls_flags, quiet_grpc, tls_option
from meshcore.tools.messages import LEVELS

if TYPE_CHECKING:
    from meshcore.config import ValidationReport

EXIT_ANALYZER_FOUND_ISSUES = 79  # istioctl's ExitAnalyzerFoundIssues


def _read_store(
    command: str, address: str, domain: str, args: argparse.Namespace
) -> ValidationReport | None:
    """The config of an etcd store (``--store``, over TLS with ``args``' ``--etcd-*`` flags),
    or None after saying why it cannot be read."""
    from meshcore._extras import require

    require("etcd", f"{command} --store")
    quiet_grpc()
    from meshcore.store import StoreURLError
    from meshcore.store.etcd import StoreUnavailable
    from meshcore.store.source import read_store

    try:
        return read_store(address, domain=domain, tls=tls_option(args, address))
    except (StoreURLError, StoreUnavailable) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None


def add_parsers(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    def command(name: str, text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=text, description=text, formatter_class=formatter
        )
        return p

    a = command("analyze", "cross-resource analysis with Istio-style message codes")
    a.add_argument("paths", nargs="*", metavar="FILE|DIR", help="YAML/JSON files or directories")
    a.add_argument("--store", metavar="URL", help="analyze a config store (etcd://...) instead")
    add_tls_flags(a)
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
    from meshcore.tools.analyze import analyze, analyze_report, parse_suppression

    try:
        for s in args.suppress:
            parse_suppression(s)
    except ValueError as exc:
        print(f"meshcore analyze: {exc}", file=sys.stderr)
        return 2
    if bool(args.store) == bool(args.paths):
        print("meshcore analyze: name files or directories, or --store", file=sys.stderr)
        return 2
    tls_option(args, args.store)  # the --etcd-* flags only with --store
    if args.store:
        report = _read_store("meshcore analyze", args.store, args.domain, args)
        if report is None:
            return 2
        target = args.store
        result = analyze_report(report, suppress=args.suppress)
    else:
        target = ", ".join(args.paths)
        result = analyze(args.paths, domain=args.domain, suppress=args.suppress)
    shown = result.at_least(args.output_threshold)
    if args.output == "text":
        for msg in shown:
            print(msg)
        if not shown:
            print(f"\u2714 No validation issues found when analyzing {target}.")
    else:
        emit([x.to_dict() for x in shown], args.output)
    failing = result.at_least(args.failure_threshold)
    if failing:
        print(f"Error: Analyzers found issues when analyzing {target}.",
              file=sys.stderr)  # fmt: skip
        return EXIT_ANALYZER_FOUND_ISSUES
    return 0


def add_x_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    x = sub.add_parser("x", help="experimental commands (explain)", formatter_class=formatter)
    xs = x.add_subparsers(dest="x_command", metavar="COMMAND")
    xs.required = True
    text = "the path Envoy takes for one request and the destination's authorization decision"
    e = xs.add_parser("explain", help=text, description=text, formatter_class=formatter)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", metavar="DIR", action="append",
                     help="Istio YAML files or directories (translated here, no control plane)")  # fmt: skip
    src.add_argument("--xds", metavar="HOST:PORT", help="a running control plane's ADS address")
    src.add_argument("--store", metavar="URL", help="a config store (etcd://...)")
    add_tls_flags(e)
    e.add_argument("--proxy", required=True, metavar="NODE_ID|WORKLOAD",
                   help="the source: an xDS node id or a WorkloadEntry name[.namespace]")  # fmt: skip
    e.add_argument("--request", required=True, metavar="'METHOD URL'",
                   help="e.g. 'GET http://reviews:9080/api?x=1'")  # fmt: skip
    e.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="a request header (repeatable)")  # fmt: skip
    e.add_argument("--from", dest="principal", metavar="SPIFFE-ID",
                   help="the caller's identity (default: the source workload's)")  # fmt: skip
    e.add_argument("--domain", default="cluster.local", help="the mesh's DNS domain")
    e.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for --xds config")
    e.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text",
                   help="output format")  # fmt: skip


def x_command(args: argparse.Namespace) -> int:
    from meshcore.cli import emit
    from meshcore.config import validate
    from meshcore.dataplane.plane import DataPlaneError
    from meshcore.errors import ConfigError
    from meshcore.tools.explain import Request, explain, planes_from_mesh, planes_from_xds, render

    try:
        request = Request.parse(args.request, args.header)
    except ValueError as exc:
        print(f"meshcore x explain: {exc}", file=sys.stderr)
        return 2
    tls_option(args, args.store)  # the --etcd-* flags only with --store
    try:
        if args.config or args.store:
            if args.store:
                found = _read_store("meshcore x explain", args.store, args.domain, args)
                if found is None:
                    return 2
                report = found
            else:
                report = validate(args.config, domain=args.domain)
            if report.model is None:
                for p in report.errors:
                    print(f"error: {p}", file=sys.stderr)
                return 1
            result = explain(planes_from_mesh(report.model), proxy=args.proxy, request=request,
                             principal=args.principal, domain=args.domain, mesh=report.model)  # fmt: skip
        else:
            with planes_from_xds(args.xds, timeout=args.timeout) as planes:
                result = explain(planes, proxy=args.proxy, request=request,
                                 principal=args.principal, domain=args.domain)  # fmt: skip
    except (ValueError, DataPlaneError, ConfigError) as exc:
        print(f"meshcore x explain: {exc}", file=sys.stderr)
        return 2
    if args.output == "text":
        print(render(result))
    else:
        emit(result, args.output)
    return 0


def add_proxy_config_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    from meshcore.cli._parser import XDS_PORT
    from meshcore.tools.constants import KINDS

    text = "a proxy's clusters, listeners, routes, endpoints or secrets (istioctl's columns)"
    p = sub.add_parser("proxy-config", help=text, description=text, formatter_class=formatter)
    p.add_argument("kind", choices=KINDS, help="the resource type")
    p.add_argument("node", metavar="NODE_ID|WORKLOAD", nargs="?",
                   help="an xDS node id or a WorkloadEntry name[.namespace] (not with --file)")  # fmt: skip
    src = p.add_mutually_exclusive_group()
    src.add_argument("--xds", metavar="HOST:PORT", default=f"127.0.0.1:{XDS_PORT}",
                     help="a running control plane's ADS address (the proxy's view)")  # fmt: skip
    src.add_argument("--config", metavar="DIR", action="append",
                     help="Istio YAML files or directories (translated here)")  # fmt: skip
    src.add_argument("-f", "--file", metavar="CONFIG_DUMP",
                     help="an Envoy admin /config_dump JSON file (?include_eds for endpoints)")  # fmt: skip
    p.add_argument("--domain", default="cluster.local", help="the mesh's DNS domain")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for --xds config")
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text",
                   help="output format")  # fmt: skip


def proxy_config_command(args: argparse.Namespace) -> int:
    from meshcore.cli import emit
    from meshcore.config import validate
    from meshcore.dataplane.plane import DataPlaneError
    from meshcore.tools import proxyconfig as pc
    from meshcore.tools.explain import node_id_for

    try:
        if args.file:
            config = pc.from_config_dump(args.file)
        elif not args.node:
            print("meshcore proxy-config: name the proxy (or --file)", file=sys.stderr)
            return 2
        elif args.config:
            report = validate(args.config, domain=args.domain)
            if report.model is None:
                for problem in report.errors:
                    print(f"error: {problem}", file=sys.stderr)
                return 1
            node = node_id_for(report.model, args.node, args.domain)
            config = pc.from_mesh(report.model, node)
        else:
            node = node_id_for(None, args.node, args.domain)
            config = pc.from_xds(args.xds, node, timeout=args.timeout)
    except (OSError, ValueError, DataPlaneError) as exc:
        print(f"meshcore proxy-config: {exc}", file=sys.stderr)
        return 2
    if args.output == "text":
        print(pc.render(config, args.kind))
    else:
        emit(list(config.resources[args.kind]), args.output)
    return 0


def add_diff_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    from meshcore.tools.constants import PUSH_COST_SECONDS

    text = (
        "push-impact preview: what each proxy would be sent if OLD became NEW (or, with"
        " --store, if the files were applied to the store)"
    )
    p = sub.add_parser("diff", help=text, description=text, formatter_class=formatter)
    p.add_argument(
        "paths",
        nargs="+",
        metavar="OLD NEW | FILE",
        help="the current and the changed config (files or directories); with --store, the"
        " files or directories that would be applied",
    )
    p.add_argument("--store", metavar="URL", help="the current config: an etcd store (etcd://...)")
    add_tls_flags(p)
    p.add_argument("--domain", default="cluster.local", help="the mesh's DNS domain")
    p.add_argument("--push-cost-ms", type=float, default=round(PUSH_COST_SECONDS * 1000, 9),
                   help="control-plane CPU per proxy push (measured: BENCHMARKS.md)")  # fmt: skip
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text",
                   help="output format")  # fmt: skip


def diff_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meshcore.cli import emit
    from meshcore.config import ValidationReport, validate
    from meshcore.tools.diff import applied, preview, render

    tls_option(args, args.store)  # the --etcd-* flags only with --store
    if not args.store and len(args.paths) != 2:
        print(
            "meshcore diff: give OLD and NEW (or --store and the files to apply)", file=sys.stderr
        )
        return 2
    for path in args.paths:
        if not Path(path).exists():
            print(f"meshcore diff: no such file or directory: {path}", file=sys.stderr)
            return 2
    if args.store:
        stored = _read_store("meshcore diff", args.store, args.domain, args)
        if stored is None:
            return 2
        for problem in stored.errors:  # keys the replicas refuse (they serve the rest)
            print(f"warning: {problem}", file=sys.stderr)
        reports = [ValidationReport((), stored.model), validate(args.paths, domain=args.domain)]
    else:
        reports = [validate([path], domain=args.domain) for path in args.paths]
    meshes = []
    for report in reports:
        if report.model is None or report.errors:
            for problem in report.errors:
                print(f"error: {problem}", file=sys.stderr)
            return 1
        meshes.append(report.model)
    if args.store:  # apply --dry-run: the files applied over what the store holds
        meshes[1] = applied(meshes[0], meshes[1])
    result = preview(meshes[0], meshes[1], push_cost=args.push_cost_ms / 1000)
    if args.output == "text":
        print(render(result))
    else:
        emit(result.to_dict(), args.output)
    return 0


def add_authz_parser(sub: Any, formatter: type[argparse.HelpFormatter]) -> None:
    a = sub.add_parser("authz", help="authorization tools (replay)", formatter_class=formatter)
    s = a.add_subparsers(dest="authz_command", metavar="COMMAND")
    s.required = True
    text = "replay access logs through the current and new AuthorizationPolicies"
    r = s.add_parser("replay", help=text, description=text, formatter_class=formatter)
    r.add_argument("--config", required=True, metavar="DIR", action="append",
                   help="the current mesh (files or directories)")  # fmt: skip
    r.add_argument("--policies", required=True, metavar="DIR", action="append",
                   help="the new AuthorizationPolicies (they replace the current ones)")  # fmt: skip
    r.add_argument("--log", required=True, metavar="ACCESS_LOG", action="append",
                   help="sidecar access logs: Envoy JSON lines or Istio's text format")  # fmt: skip
    r.add_argument("--since", metavar="TIME", help="only lines from this start_time (ISO 8601)")
    r.add_argument("--domain", default="cluster.local", help="the mesh's DNS domain")
    r.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text",
                   help="output format")  # fmt: skip


def authz_command(args: argparse.Namespace) -> int:
    from meshcore.cli import emit
    from meshcore.config import validate
    from meshcore.tools import replay as rp

    models = []
    for paths in (args.config, args.policies):
        report = validate(paths, domain=args.domain)
        if report.model is None:
            for problem in report.errors:
                print(f"error: {problem}", file=sys.stderr)
            return 1
        models.append(report.model)
    try:
        lines = rp.read_lines(args.log)
    except OSError as exc:
        print(f"meshcore authz replay: {exc}", file=sys.stderr)
        return 2
    old = models[0]
    source = rp.with_progress(lines, sys.stderr) if sys.stderr.isatty() else lines
    requests = rp.parse_log(source, since=args.since)
    result = rp.replay(old, rp.with_policies(old, models[1]), requests)
    if args.output == "text":
        print(rp.render(result))
    else:
        emit(result.to_dict(), args.output)
    return 0
