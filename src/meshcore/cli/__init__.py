"""The ``meshcore`` command. Exit codes: 0 ok, 1 invalid config, 2 usage error."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from meshcore import __version__

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshcore",
        description="meshcore: Istio-style config, Envoy xDS and Envoy's decisions from a Rust core.",
    )
    parser.add_argument("--version", action="version", version=f"meshcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    v = sub.add_parser("validate", help="validate Istio-style YAML files and directories")
    v.add_argument("paths", nargs="+", metavar="FILE|DIR")
    v.add_argument("-o", "--output", choices=("text", "json"), default="text")
    v.add_argument("--domain", default="cluster.local", help="the mesh's DNS domain")

    d = sub.add_parser("describe", help="validate, then summarise the loaded mesh")
    d.add_argument("paths", nargs="+", metavar="FILE|DIR")
    d.add_argument("--domain", default="cluster.local")

    s = sub.add_parser("serve", help="run the control plane: watch config, serve ADS to proxies")
    s.add_argument(
        "--config",
        required=True,
        action="append",
        metavar="DIR",
        help="config directory (repeatable)",
    )
    s.add_argument("--xds-port", type=int, default=15010)
    s.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus /metrics and /debug/syncz"
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument(
        "--mesh-config",
        metavar="FILE",
        help="MeshConfig YAML (as istiod's --meshConfig): access logs, tracing, providers",
    )
    s.add_argument(
        "--ca-port",
        type=int,
        default=None,
        help="run the CA: CreateCertificate with bootstrap tokens (TLS) on this port",
    )
    s.add_argument(
        "--ca-mtls-port",
        type=int,
        default=0,
        help="the CA's renewal port (mTLS with the current certificate; 0 picks one)",
    )
    s.add_argument(
        "--cacerts",
        metavar="DIR",
        default=None,
        help="CA key and certificates in Istio's plug-in layout (else a generated root)",
    )
    s.add_argument(
        "--state-dir",
        metavar="DIR",
        default=None,
        help="where a generated root is kept (key 0600) and reused; also root-cert.pem for agents",
    )
    s.add_argument(
        "--tokens",
        metavar="FILE",
        default=None,
        help="bootstrap tokens: 'TOKEN SPIFFE-ID' per line",
    )

    a = sub.add_parser("agent", help="run an Envoy sidecar: certificate, SDS, bootstrap, Envoy")
    a.add_argument("--node-id", required=True, help="sidecar~IP~NAME.NS~NS.svc.cluster.local")
    a.add_argument("--identity", required=True, help="the workload's SPIFFE ID")
    a.add_argument("--xds-address", required=True, metavar="HOST:PORT")
    a.add_argument("--ca-address", required=True, metavar="HOST:PORT")
    a.add_argument("--ca-mtls-address", default=None, metavar="HOST:PORT")
    a.add_argument("--ca-root", required=True, metavar="FILE", help="the CA's root-cert.pem")
    a.add_argument("--token-file", required=True, metavar="FILE", help="the bootstrap token")
    a.add_argument("--workdir", required=True, metavar="DIR")
    a.add_argument("--admin-port", type=int, default=0)
    a.add_argument("--status-port", type=int, default=15021, help="/healthz/ready (0 picks one)")
    a.add_argument("--envoy", default=None, metavar="PATH")
    a.add_argument("--delta", action="store_true", help="delta ADS instead of state of the world")
    a.add_argument("--cert-ttl", type=float, default=None, metavar="SECONDS")
    a.add_argument("--drain-seconds", type=float, default=0.0)
    a.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Envoy node metadata, e.g. MESHCORE_APP_ADDRESS=127.0.10.2 (repeatable)",
    )

    p = sub.add_parser(
        "proxy-status", help="xDS sync status of the proxies of a running control plane"
    )
    p.add_argument(
        "--control-plane", default="127.0.0.1:15014", metavar="HOST:PORT", help="its metrics port"
    )

    m = sub.add_parser(
        "demo",
        help="run the demo mesh: control plane, CA, three services behind Envoy sidecars",
    )
    m.add_argument("--config", metavar="DIR", help="mesh config (default: the examples/ mesh)")
    m.add_argument("--serve", action="store_true", help="keep running after the tour")
    m.add_argument(
        "--proxy",
        choices=("envoy", "reference"),
        default="envoy",
        help="the sidecars: real Envoy through meshcore's agent, or meshcore's reference proxy",
    )
    m.add_argument(
        "--workdir", metavar="DIR", help="keep logs and bootstraps here (default: a temporary dir)"
    )
    x = sub.add_parser(
        "proxy", help="run the reference proxy (meshcore.dataplane) for one workload"
    )
    x.add_argument(
        "--xds",
        "--xds-address",
        dest="xds",
        default="127.0.0.1:15010",
        metavar="HOST:PORT",
        help="ADS server",
    )
    x.add_argument("--node-id", required=True, help="TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN")
    x.add_argument(
        "--ca",
        "--ca-address",
        dest="ca",
        metavar="HOST:PORT",
        help="meshcore's CA (bootstrap-token port)",
    )
    x.add_argument(
        "--ca-mtls",
        "--ca-mtls-address",
        dest="ca_mtls",
        metavar="HOST:PORT",
        help="the CA's mTLS port (renewals)",
    )
    x.add_argument("--trust-bundle", metavar="FILE", help="the mesh's root certificates (PEM)")
    x.add_argument(
        "--token", help="bootstrap token for the first certificate (or $MESHCORE_BOOTSTRAP_TOKEN)"
    )
    x.add_argument("--service-account", default=None)
    x.add_argument("--outbound", default="127.0.0.1:15001", metavar="HOST:PORT")
    x.add_argument("--no-outbound", action="store_true")
    x.add_argument("--no-inbound", action="store_true", help="do not serve inbound listeners")
    x.add_argument("--metrics", default="127.0.0.1:15020", metavar="HOST:PORT")
    x.add_argument("--app-address", help="where the app listens (inbound clusters' address)")
    x.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")

    w = sub.add_parser("webhook", help="serve the validating admission webhook over HTTPS")
    w.add_argument("--cert", required=True, help="PEM certificate (chain) file")
    w.add_argument("--key", required=True, help="PEM private key file")
    w.add_argument("--port", type=int, default=15017)
    w.add_argument("--host", default="127.0.0.1")
    return parser


def _missing(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if not Path(p).exists()]


def _validate(args: argparse.Namespace) -> int:
    from meshcore.config import validate

    report = validate(args.paths, domain=args.domain)
    count = len(report.model) if report.model is not None else 0
    if args.output == "json":
        print(
            json.dumps(
                {
                    "valid": report.ok,
                    "resources": count,
                    "errors": [p.to_dict() for p in report.errors],
                    "warnings": [p.to_dict() for p in report.warnings],
                },
                indent=2,
            )
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

    return describe(args.paths, domain=args.domain)


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

    from meshcore.cli.serve import serve

    missing = _missing(args.config)
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
        )
    elif args.cacerts or args.tokens:
        print("meshcore serve: --cacerts and --tokens need --ca-port", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(
        serve(
            args.config,
            xds_port=args.xds_port,
            metrics_port=args.metrics_port,
            host=args.host,
            mesh_config=mesh_config,
            ca=ca,
        )
    )


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from meshcore.demo import run_demo

    if args.config is not None and not Path(args.config).is_dir():
        print(f"meshcore demo: no such directory: {args.config}", file=sys.stderr)
        return EXIT_USAGE
    config = Path(args.config) if args.config else None
    workdir = Path(args.workdir) if args.workdir else None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(
            run_demo(serve=args.serve, config=config, workdir=workdir, proxy=args.proxy)
        )
    except ValueError as exc:  # the config (validated first) or the options
        print(f"meshcore demo: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _agent(args: argparse.Namespace) -> int:
    import asyncio

    from meshcore.dataplane.agent import run_agent

    return asyncio.run(run_agent(args))


def _proxy(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from meshcore.dataplane.plane import DataPlaneError
    from meshcore.dataplane.proxy import run_proxy

    bundle = None
    if args.trust_bundle:
        if not Path(args.trust_bundle).is_file():
            print(f"meshcore proxy: no such file: {args.trust_bundle}", file=sys.stderr)
            return EXIT_USAGE
        bundle = Path(args.trust_bundle).read_text()
    metadata: dict[str, object] = {}
    if args.app_address:
        metadata["MESHCORE_APP_ADDRESS"] = args.app_address
    labels = dict(item.partition("=")[::2] for item in args.label)
    if labels:
        metadata["LABELS"] = labels
    try:
        return asyncio.run(
            run_proxy(
                xds=args.xds, node_id=args.node_id, ca=args.ca, ca_mtls=args.ca_mtls,
                trust_bundle=bundle, token=args.token or os.environ.get("MESHCORE_BOOTSTRAP_TOKEN"),
                service_account=args.service_account,
                outbound=None if args.no_outbound else args.outbound,
                inbound=not args.no_inbound, metrics=args.metrics or None, metadata=metadata,
            )
        )  # fmt: skip
    except (DataPlaneError, ValueError, OSError) as exc:
        print(f"meshcore proxy: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _proxy_status(args: argparse.Namespace) -> int:
    from meshcore.cli.serve import proxy_status

    return proxy_status(args.control_plane)


COMMANDS = {
    "validate": _validate,
    "describe": _describe,
    "webhook": _webhook,
    "serve": _serve,
    "agent": _agent,
    "proxy-status": _proxy_status,
    "demo": _demo,
    "proxy": _proxy,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    paths = getattr(args, "paths", None)
    if paths:
        missing = _missing(paths)
        if missing:
            for m in missing:
                print(f"meshcore {args.command}: no such file or directory: {m}", file=sys.stderr)
            return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
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
        import os

        if os.environ.get("MESHCORE_DEBUG"):
            raise
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
