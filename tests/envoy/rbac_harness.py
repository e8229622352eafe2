"""A real Envoy 1.40 with RBAC filters under test, and a keep-alive HTTP/1.1 client.

Envoy is started the one way tests start it (``_sidecar.envoy_process``). One Envoy serves many RBAC configs at once: each config is the RBACPerRoute override of one
route, selected by the ``x-meshcore-case`` header, so a single start runs thousands of cases.
Listeners sit on several 127.0.0.x addresses and ports (destination attributes); the client
binds its socket to 127.x.y.z (source attributes). Every request gets a local reply whose
body carries the status, the response code details (the denying policy) and the RBAC
filter's dynamic metadata (the shadow decision).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _sidecar import envoy_binary, envoy_process, free_ports
from google.protobuf import json_format
from google.protobuf.message import Message

CASE_HEADER = "x-meshcore-case"
SEQ_HEADER = "x-meshcore-seq"
RBAC_FILTER = "envoy.filters.http.rbac"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
# The access log has every decision: RBAC sets its dynamic metadata (enforced and shadow
# results) after a denial's local reply is rendered, but before the stream is logged.
LOG_FORMAT = {
    "seq": "%REQ(x-meshcore-seq)%",
    "status": "%RESPONSE_CODE%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "md": "%DYNAMIC_METADATA(envoy.filters.http.rbac)%",
}


@dataclass(frozen=True)
class Outcome:
    """What Envoy did with one request."""

    status: int
    details: str
    metadata: dict[str, Any]

    @property
    def allowed(self) -> bool:
        return self.status == 200

    @property
    def policy_id(self) -> str | None:
        # rbac_access_denied_matched_policy[ID]; "none" when no policy matched.
        prefix = "rbac_access_denied_matched_policy["
        if self.details.startswith(prefix) and self.details.endswith("]"):
            pid = self.details[len(prefix) : -1]
            return None if pid == "none" else pid
        return None


def _listener(
    name: str,
    address: str,
    port: int,
    routes: list[dict[str, Any]],
    log_path: str,
    tls: TlsFiles | None = None,
    filters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One listener; with `filters`, those HTTP filters run before the router instead of the
    per-route RBAC arrangement."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "HTTP1",
        "route_config": {
            "name": "rbac",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            # No rules at the filter level (allow); each route carries the config under test.
            *(
                filters
                if filters is not None
                else [{"name": RBAC_FILTER, "typed_config": {"@type": FILTER_TYPE}}]
            ),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                    "FileAccessLog",
                    "path": log_path,
                    "log_format": {"json_format": LOG_FORMAT},
                },
            }
        ],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
                **({"transport_socket": _tls_socket(tls)} if tls else {}),
            }
        ],
        # The TLS inspector is what gives Envoy the requested server name (Istio's inbound
        # listeners always have it); without it requested_server_name sees "".
        **(
            {
                "listener_filters": [
                    {
                        "name": "envoy.filters.listener.tls_inspector",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                            "tls_inspector.v3.TlsInspector"
                        },
                    }
                ]
            }
            if tls
            else {}
        ),
    }


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener: its certificate and key, and the CA that client
    certificates must chain to (a client certificate is asked for, not required)."""

    cert: str
    key: str
    ca: str


def _tls_socket(tls: TlsFiles) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
            "DownstreamTlsContext",
            "require_client_certificate": False,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": tls.cert},
                        "private_key": {"filename": tls.key},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": tls.ca}},
            },
        },
    }


def _routes(configs: Sequence[Message]) -> list[dict[str, Any]]:
    routes = []
    for i, cfg in enumerate(configs):
        rbac = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
        routes.append(
            {
                "match": {
                    "prefix": "",
                    "headers": [{"name": CASE_HEADER, "string_match": {"exact": str(i)}}],
                },
                "direct_response": {"status": 200},
                "typed_per_filter_config": {RBAC_FILTER: {"@type": PER_ROUTE_TYPE, "rbac": rbac}},
            }
        )
    return routes


class Envoy:
    """A running Envoy; use :func:`running_envoy` so that it is always stopped."""

    def __init__(self, proc: subprocess.Popen[bytes], listeners: list[tuple[str, int]]):
        self.proc = proc
        self.listeners = listeners


@contextlib.contextmanager
def running_envoy(
    configs: Sequence[Message],
    workdir: Path,
    listeners: Sequence[tuple[str, int]],
    tls_listeners: Sequence[tuple[str, int]] = (),
    tls: TlsFiles | None = None,
    chains: Sequence[tuple[tuple[str, int], list[dict[str, Any]]]] = (),
    before_rbac: Sequence[dict[str, Any]] = (),
) -> Iterator[Envoy]:
    """Starts Envoy serving `configs` (HTTP RBAC filter messages) on every (address, port)
    listener; stops it on exit, after which :func:`read_outcomes` reads what it decided (the
    access log is complete once Envoy has exited)."""
    routes = _routes(configs)
    where = list(listeners)
    taken = [p for _, p in [*where, *tls_listeners, *(w for w, _ in chains)]]
    admin = free_ports(1, avoid=taken)[0]
    bootstrap = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                _listener(
                    f"l{i}",
                    a,
                    p,
                    routes,
                    str(workdir / "access.log"),
                    filters=[
                        *before_rbac,
                        {"name": RBAC_FILTER, "typed_config": {"@type": FILTER_TYPE}},
                    ]
                    if before_rbac
                    else None,
                )
                for i, (a, p) in enumerate(where)
            ]
            + [
                _listener(f"t{i}", a, p, routes, str(workdir / "access.log"), tls)
                for i, (a, p) in enumerate(tls_listeners)
            ]
            + [
                # Whole filter chains (e.g. an Authorizer's), every request answered 200.
                _listener(
                    f"c{i}",
                    a,
                    p,
                    [{"match": {"prefix": ""}, "direct_response": {"status": 200}}],
                    str(workdir / "access.log"),
                    tls,
                    filters,
                )
                for i, ((a, p), filters) in enumerate(chains)
            ]
        },
    }
    (workdir / "access.log").unlink(missing_ok=True)
    cfg = workdir / "envoy.json"
    cfg.write_text(json.dumps(bootstrap))
    with envoy_process(
        cfg, admin, workdir / "envoy.log", log_level="error", cwd=workdir, timeout=30
    ) as proc:
        yield Envoy(proc, where)


def read_outcomes(workdir: Path) -> dict[int, Outcome]:
    """Envoy's decision for each request, by sequence number."""
    out: dict[int, Outcome] = {}
    for line in (workdir / "access.log").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("seq") is None:
            continue  # rejected by the codec before our header was read: reported as missing
        md = rec.get("md")
        out[int(rec["seq"])] = Outcome(
            int(rec["status"]), str(rec["details"]), md if isinstance(md, dict) else {}
        )
    return out


class _TlsConnection(http.client.HTTPConnection):
    """HTTPS with a chosen SNI (or none) and client certificate, to an address."""

    def __init__(
        self,
        host: str,
        port: int,
        source: str,
        context: ssl.SSLContext,
        sni: str | None,
    ) -> None:
        super().__init__(host, port, timeout=10, source_address=(source, 0))
        self._context = context
        self._sni = sni

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._sni)


class Client:
    """Keep-alive HTTP/1.1 connections, one per (source, destination, TLS identity) tuple."""

    def __init__(self) -> None:
        self._conns: dict[tuple[Any, ...], http.client.HTTPConnection] = {}

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    def _conn(
        self, key: tuple[Any, ...], tls: tuple[ssl.SSLContext, str | None] | None
    ) -> http.client.HTTPConnection:
        c = self._conns.get(key)
        if c is None:
            source, host, port = key[:3]
            if tls is None:
                c = http.client.HTTPConnection(host, port, timeout=10, source_address=(source, 0))
            else:
                c = _TlsConnection(host, port, source, tls[0], tls[1])
            self._conns[key] = c
        return c

    def send(
        self,
        *,
        case: int,
        seq: int,
        source: str,
        host: str,
        port: int,
        method: str,
        path: str,
        authority: str,
        headers: Sequence[tuple[str, str]],
        tls: tuple[ssl.SSLContext, str | None] | None = None,
    ) -> int:
        """Sends one request; `tls` is (client context, SNI) for TLS listeners."""
        key = (source, host, port, None if tls is None else (id(tls[0]), tls[1]))
        for attempt in range(2):
            c = self._conn(key, tls)
            try:
                c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                c.putheader("Host", authority)
                c.putheader(CASE_HEADER, str(case))
                c.putheader(SEQ_HEADER, str(seq))
                for k, v in headers:
                    c.putheader(k, v)
                c.endheaders()
                r = c.getresponse()
                r.read()
                return r.status
            except (http.client.HTTPException, OSError):
                # Envoy closed an idle keep-alive connection: reconnect once.
                c.close()
                self._conns.pop(key, None)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def shadow_of(outcome: Outcome, prefix: str) -> tuple[bool | None, str | None]:
    """(shadow allowed, shadow policy id) from the RBAC filter's dynamic metadata."""
    result = outcome.metadata.get(prefix + "shadow_engine_result")
    if result is None:
        return None, None
    return result == "allowed", outcome.metadata.get(prefix + "shadow_effective_policy_id")


def have_envoy() -> bool:
    if os.environ.get("MESHCORE_NO_ENVOY") == "1":
        return False
    try:
        envoy_binary()
    except pytest.skip.Exception:
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """A client's TLS identity: its context (with a certificate or none) and what Envoy sees."""

    context: ssl.SSLContext
    uri_sans: tuple[str, ...]
    dns_sans: tuple[str, ...]
    subject: str | None  # RFC 2253, as Envoy prints it; None without a client certificate


def make_pki(
    workdir: Path, clients: Sequence[tuple[Sequence[str], Sequence[str], Sequence[tuple[str, str]]]]
) -> tuple[TlsFiles, list[Identity]]:
    """A CA, a server certificate, and one client identity per (URI SANs, DNS SANs, subject
    attributes) entry, plus a TLS client without a certificate (first in the list)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    names = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME}

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshcore test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        subject: x509.Name, sans: list[x509.GeneralName], k: ec.EllipticCurvePrivateKey
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(ca_key, hashes.SHA256())

    def write(name: str, data: bytes) -> str:
        path = workdir / name
        path.write_bytes(data)
        return str(path)

    pem = serialization.Encoding.PEM
    ca_file = write("ca.pem", ca.public_bytes(pem))
    server_key = key()
    server = leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")]),
        [x509.DNSName("localhost")],
        server_key,
    )
    files = TlsFiles(
        write("server.pem", server.public_bytes(pem)),
        write("server-key.pem", pem_key(server_key)),
        ca_file,
    )

    def context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # The server's identity is not what is under test.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    identities = [Identity(context(), (), (), None)]
    for i, (uris, dnss, attrs) in enumerate(clients):
        k = key()
        subject = x509.Name([x509.NameAttribute(names[t], v) for t, v in attrs])
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.DNSName(d) for d in dnss]
        cert = leaf(subject, sans, k)
        ctx = context()
        ctx.load_cert_chain(
            write(f"client{i}.pem", cert.public_bytes(pem)), write(f"client{i}-key.pem", pem_key(k))
        )
        identities.append(Identity(ctx, tuple(uris), tuple(dnss), subject.rfc4514_string()))
    return files, identities
