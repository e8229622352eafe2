"""Validation of Gateways (Istio's ValidateGateway, validateServer, validateServerPort,
validateServerBind and validateTLSOptions) and of the Secrets their ``credentialName`` names.

Fields Istio accepts and meshcore does not carry to Envoy are warnings naming the field, never
silently dropped.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from meshcore.config.validate import _DNS1123_LABEL, Checker, Path, _d, _is_ip, _l, host_problem

# Istio's protocol.Parse (case-insensitive); anything else is "unsupported".
GATEWAY_PROTOCOLS = frozenset(
    {"HTTP", "HTTPS", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB", "TCP", "TLS", "UDP", "MONGO",
     "REDIS", "MYSQL"}
)  # fmt: skip
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB"})
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})
PASSTHROUGH_MODES = ("PASSTHROUGH", "AUTO_PASSTHROUGH")
UNIX_PREFIX = "unix://"
# Envoy's (BoringSSL's) cipher suite names, as Istio's security.ValidCipherSuites lists them.
CIPHER_SUITES = frozenset(
    {
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-PSK-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA",
        "ECDHE-PSK-AES128-CBC-SHA", "AES128-GCM-SHA256", "AES128-SHA", "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-RSA-AES256-SHA", "ECDHE-PSK-AES256-CBC-SHA", "AES256-GCM-SHA384", "AES256-SHA",
        "PSK-AES128-CBC-SHA", "PSK-AES256-CBC-SHA", "DES-CBC3-SHA",
    }
)  # fmt: skip
# The keys of a TLS Secret meshcore reads (Kubernetes' kubernetes.io/tls keys, and Istio's
# generic-secret keys), the CA bundle for MUTUAL servers included.
CERT_KEYS = ("tls.crt", "cert")
KEY_KEYS = ("tls.key", "key")
CA_KEYS = ("ca.crt", "cacert")


def protocol_of(server: Any) -> str:
    return str(_d(_d(server).get("port")).get("protocol", "")).upper()


def is_http(protocol: str) -> bool:
    return protocol.upper() in HTTP_PROTOCOLS


def is_passthrough(tls: Any) -> bool:
    """Istio's IsPassThroughServer: TLS settings whose mode is PASSTHROUGH (the default) or
    AUTO_PASSTHROUGH."""
    return isinstance(tls, dict) and tls.get("mode", "PASSTHROUGH") in PASSTHROUGH_MODES


def check_gateway(c: Checker, spec: dict[str, Any], name: str) -> None:
    if name and not _DNS1123_LABEL.match(name):
        c.error(("metadata", "name"), f"invalid gateway name {name!r}: a DNS-1123 label (no dots)")
    servers = _l(spec.get("servers"))
    if not servers:
        c.error(("spec", "servers"), "a gateway needs at least one server")
    port_names: set[str] = set()
    for i, raw in enumerate(servers):
        path: Path = ("spec", "servers", i)
        server = _d(raw)
        _server(c, server, path)
        port = server.get("port")
        if not isinstance(port, dict):
            continue
        pname = port.get("name")
        if isinstance(pname, str) and pname:
            if pname in port_names:
                c.error(
                    path + ("port", "name"),
                    f"port names in servers must be unique: duplicate name {pname!r}",
                )
            port_names.add(pname)
        if not is_http(protocol_of(server)) and _d(server.get("tls")).get("httpsRedirect"):
            c.warn(
                path + ("tls", "httpsRedirect"),
                "tls.httpsRedirect should only be used with http servers (it has no effect here)",
            )
    c.labels(spec.get("selector"), ("spec", "selector"))


def _server(c: Checker, server: dict[str, Any], path: Path) -> None:
    hosts = _l(server.get("hosts"))
    if not hosts:
        c.error(path + ("hosts",), "a server needs at least one host")
    for j, host in enumerate(hosts):
        if isinstance(host, str):
            _server_host(c, host, path + ("hosts", j))
    port = server.get("port")
    bind = str(server["bind"]) if isinstance(server.get("bind"), str) else ""
    port_ok = _server_port(c, port, bind, path + ("port",))
    if isinstance(port, dict):
        number = port.get("number") or 0
        if bind.startswith(UNIX_PREFIX):
            if number:
                c.error(path + ("port", "number"), "port number must be 0 for unix domain socket")
        elif bind and not _is_ip(bind):
            c.error(path + ("bind",), f"{bind} is not a valid IP")
    if server.get("defaultEndpoint"):
        c.warn(
            path + ("defaultEndpoint",), "not translated by meshcore: traffic follows the routes"
        )
    tls = server.get("tls")
    if isinstance(tls, dict):
        check_server_tls(c, tls, path + ("tls",))
    if not port_ok:
        return
    proto = protocol_of(server)
    if proto in TLS_PROTOCOLS and tls is None:
        c.error(path + ("tls",), "server must have TLS settings for HTTPS/TLS protocols")
    elif proto not in TLS_PROTOCOLS and isinstance(tls, dict):
        if not is_http(proto):
            c.error(path + ("tls",), "server cannot have TLS settings for non HTTPS/TLS ports")
        elif not is_passthrough(tls) or any(
            tls.get(k) for k in ("caCertificates", "privateKey", "serverCertificate")
        ):
            # only httpsRedirect is allowed on a plain-text HTTP server
            c.error(path + ("tls",), "server cannot have TLS settings for plain text HTTP ports")


def _server_port(c: Checker, port: Any, bind: str, path: Path) -> bool:
    """Istio's validateServerPort; False when the port is missing or has an error."""
    if not isinstance(port, dict):
        c.error(path, "port is required")
        return False
    before = len(c.problems)
    proto = str(port.get("protocol", ""))
    if proto.upper() not in GATEWAY_PROTOCOLS:
        c.error(
            path + ("protocol",),
            f"invalid protocol {proto!r}, supported protocols are HTTP, HTTPS, HTTP2, GRPC,"
            " GRPC-WEB, TCP, TLS, MONGO, REDIS, MYSQL",
        )
    number = port.get("number") or 0
    if (
        isinstance(number, int)
        and (number or not bind.startswith(UNIX_PREFIX))
        and not 1 <= number <= 65535
    ):
        c.error(path + ("number",), f"port number {number} must be in the range 1..65535")
    target = port.get("targetPort")
    if isinstance(target, int) and target:
        if not 1 <= target <= 65535:
            c.error(path + ("targetPort",), f"port number {target} must be in the range 1..65535")
        c.warn(
            path + ("targetPort",),
            "targetPort is deprecated and not used: the gateway listens on port.number",
        )
    if not port.get("name"):
        c.error(path + ("name",), "port name must be set")
    return len([p for p in c.problems[before:] if p[0] == "error"]) == 0


def _server_host(c: Checker, host: str, path: Path) -> None:
    """Istio's validateNamespaceSlashWildcardHostname for gateways: ``[ns/]host`` where ns is
    ``*``, ``.`` or a namespace name, and host a FQDN, ``*``, a wildcard domain or an IP."""
    ns, sep, name = host.partition("/")
    if not sep:
        name = host
    else:
        if not ns or not name:
            c.error(path, "config namespace and dnsName in host entry cannot be empty")
            return
        if ns not in ("*", ".") and not _DNS1123_LABEL.match(ns):
            c.error(path, f"invalid namespace value {ns!r} in gateway")
    if name != "*" and "." not in name:
        c.error(path, f"short names (non FQDN) are not allowed: {name!r}")
        return
    problem = host_problem(name)
    if problem is not None and not _is_ip(name):
        c.error(path, problem)
    if name.startswith("*") and len(name) > 1 and name[1] != ".":
        c.error(path, f"partial wildcard {name!r} not allowed")


def check_server_tls(c: Checker, tls: dict[str, Any], path: Path) -> None:
    """Istio's validateTLSOptions, and the fields meshcore does not translate."""
    mode = tls.get("mode", "PASSTHROUGH")
    if mode == "ISTIO_MUTUAL":
        for key, what in (
            ("serverCertificate", "server cert"),
            ("privateKey", "private key"),
            ("caCertificates", "CA bundle"),
            ("credentialName", "credentialName"),
        ):
            if tls.get(key):
                c.error(path + (key,), f"ISTIO_MUTUAL TLS cannot have associated {what}")
        return
    certs = [_d(t) for t in _l(tls.get("tlsCertificates"))]
    if mode in PASSTHROUGH_MODES and any(
        tls.get(k)
        for k in ("caCrl", "serverCertificate", "privateKey", "caCertificates", "credentialName")
    ):
        c.warn(path + ("mode",), f"{mode} mode does not use certificates, they will be ignored")
    sources = [
        bool(tls.get("credentialName")),
        bool(_l(tls.get("credentialNames"))),
        bool(tls.get("serverCertificate")) and bool(tls.get("privateKey")),
        bool(certs),
    ]
    if sum(sources) > 1:
        c.error(
            path,
            "only one of credential_name, credential_names, server_certificate/private_key,"
            " tls_certificates should be specified",
        )
    _cipher_suites(c, tls, path)
    if tls.get("caCrl") and mode not in PASSTHROUGH_MODES:
        c.warn(path + ("caCrl",), "not translated by meshcore: revoked clients are not refused")
    if mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and (sources[0] or sources[1]):
        return  # credentials come from the Secrets named (served over SDS)
    if len(certs) > 2 and mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"):
        c.warn(
            path + ("tlsCertificates",),
            f"{'SIMPLE' if mode == 'SIMPLE' else 'MUTUAL'} TLS can support up to 2 server"
            " certificates",
        )
    label = "SIMPLE" if mode == "SIMPLE" else "MUTUAL"
    if mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL"):
        pairs = (
            [(path, tls)]
            if not certs
            else [(path + ("tlsCertificates", k), t) for k, t in enumerate(certs)]
        )
        for ppath, pair in pairs:
            if not pair.get("serverCertificate"):
                c.error(
                    ppath + ("serverCertificate",), f"{label} TLS requires a server certificate"
                )
            if not pair.get("privateKey"):
                c.error(ppath + ("privateKey",), f"{label} TLS requires a private key")
    if mode == "SIMPLE" and tls.get("caCrl"):
        c.error(path + ("caCrl",), "CRL is not supported with SIMPLE TLS")
    no_ca = not tls.get("caCertificates") and not any(t.get("caCertificates") for t in certs)
    if mode in ("MUTUAL", "OPTIONAL_MUTUAL") and no_ca:
        c.error(path + ("caCertificates",), "MUTUAL TLS requires a client CA bundle")


def _cipher_suites(c: Checker, tls: dict[str, Any], path: Path) -> None:
    seen: set[str] = set()
    for k, suite in enumerate(_l(tls.get("cipherSuites"))):
        if not isinstance(suite, str):
            continue
        spath = path + ("cipherSuites", k)
        if suite in seen:
            c.warn(spath, f"duplicate cipher suite {suite!r}")
        seen.add(suite)
        # Istio's IsValidCipherSuite: operators and groups (``-X``, ``[A|B]``) pass unchecked.
        if suite and suite != "ALL" and suite[0].isalnum() and suite not in CIPHER_SUITES:
            c.warn(spath, f"unsupported cipher suite {suite!r}: left out")


def check_secret(c: Checker, spec: dict[str, Any], name: str) -> None:
    """A Secret's values: ``data`` base64, and a TLS Secret's certificate and key in PEM (what
    a Gateway's credentialName can use). Values are never quoted in messages."""
    data = _d(spec.get("data"))
    for key, value in data.items():
        if isinstance(value, str):
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                c.error(
                    ("data", str(key)), "not base64 (data values are base64; or use stringData)"
                )
    kind = spec.get("type", "Opaque")
    if kind == "kubernetes.io/tls":
        present = set(data) | set(_d(spec.get("stringData")))
        for key in ("tls.crt", "tls.key"):
            if key not in present:
                c.error(("data",), f"a kubernetes.io/tls Secret needs {key}")
