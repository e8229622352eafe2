"""The semantic rules of each kind, as Istio's webhook checks them (hosts, ports, weights,
regexes compiled by the Rust core, durations, selectors, policies...): the second pass of
validation, after the generic walk of :class:`meshcore.config.validate.Checker`."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from meshcore.config.destinationrule import check_destination_rule
from meshcore.config.gateway import check_gateway, check_secret
from meshcore.config.requestauthn import check_request_authentication
from meshcore.config.sidecar import check_sidecar
from meshcore.config.telemetry import check_telemetry
from meshcore.config.validate import (
    _DNS1123_LABEL,
    _DNS1123_SUBDOMAIN,
    Checker,
    Path,
    _d,
    _is_decimal,
    _is_ip,
    _l,
    host_problem,
    parse_duration,
    parse_path,
)
from meshcore.config.values import freeze, thaw
from meshcore.config.vsanalysis import check_unreachable_rules
from meshcore.config.workloadgroup import check_workload_group
from meshcore.security import _validate as authz_validate

_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")
RETRY_ON = frozenset(
    {
        "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
        "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
        "retriable-headers", "http3-post-connect-failure", "cancelled", "deadline-exceeded",
        "internal", "resource-exhausted", "unavailable",
    }
)  # fmt: skip
REDIRECT_CODES = (301, 302, 303, 307, 308)  # the ones Envoy can send
# gRPC status names in code order (0..16), as Istio accepts them for fault.abort.grpcStatus.
GRPC_STATUS = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
CORS_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"}
)
PROTOCOLS = frozenset(
    {"HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "REDIS", "MYSQL", "TCP", "TLS", "UDP"}
)


def _is_ip_or_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def check_service(c: Checker, spec: dict[str, Any], name: str) -> None:
    if not _DNS1035_LABEL.match(name) or len(name) > 63:
        c.error(
            ("metadata", "name"),
            f"invalid Service name {name!r}: a DNS-1035 label (lowercase, starting with a letter, at most 63 characters)",
        )
    ports = _l(spec.get("ports"))
    if not spec.get("ports") and spec.get("type") != "ExternalName":
        c.error(("spec", "ports"), "a Service needs at least one port")
    names: set[str] = set()
    numbers: set[tuple[int, str]] = set()
    for i, p in enumerate(ports):
        p = _d(p)
        path: Path = ("spec", "ports", i)
        number = p.get("port")
        if number is None:
            c.error(path + ("port",), "port is required")
        c.port(number, path + ("port",))
        target = p.get("targetPort")
        if isinstance(target, int):
            c.port(target, path + ("targetPort",))
        elif isinstance(target, str) and (
            len(target) > 15 or not _IANA_SVC_NAME.match(target) or not re.search("[a-z]", target)
        ):
            c.error(
                path + ("targetPort",),
                f"invalid port name {target!r}: at most 15 lowercase alphanumerics or '-', with a letter",
            )
        pname = p.get("name")
        if isinstance(pname, str):
            if not _DNS1123_LABEL.match(pname):
                c.error(path + ("name",), f"invalid port name {pname!r}: a DNS-1123 label")
            if pname in names:
                c.error(path + ("name",), f"duplicate port name {pname!r}")
            names.add(pname)
        elif len(ports) > 1:
            c.error(path + ("name",), "port name is required when a Service has several ports")
        if isinstance(number, int):
            key = (number, str(p.get("protocol", "TCP")))
            if key in numbers:
                c.error(path + ("port",), f"duplicate port {number}/{key[1]}")
            numbers.add(key)
    c.labels(spec.get("selector"), ("spec", "selector"), selector=True)


def _check_workload_entry(
    c: Checker, spec: dict[str, Any], path: Path, *, in_service_entry: bool
) -> None:
    address = spec.get("address")
    if not address and not in_service_entry and not spec.get("network"):
        c.error(path + ("address",), "address is required")
    if isinstance(address, str) and address:
        if address.startswith("unix://"):
            if len(address) == len("unix://"):
                c.error(path + ("address",), "unix address must name a socket path")
        elif not _is_ip(address) and host_problem(address) is not None:
            c.error(
                path + ("address",),
                f"address {address!r} is not an IP address, a host name or unix://PATH",
            )
    for pname, number in _d(spec.get("ports")).items():
        c.port(number, path + ("ports", pname))
    c.labels(spec.get("labels"), path + ("labels",))
    sa = spec.get("serviceAccount")
    if isinstance(sa, str) and sa and not _DNS1123_SUBDOMAIN.match(sa):
        c.error(path + ("serviceAccount",), f"invalid service account {sa!r}")


def check_workload_entry(c: Checker, spec: dict[str, Any], name: str) -> None:
    _check_workload_entry(c, spec, ("spec",), in_service_entry=False)


def check_service_entry(c: Checker, spec: dict[str, Any], name: str) -> None:
    hosts = _l(spec.get("hosts"))
    if not spec.get("hosts"):
        c.error(("spec", "hosts"), "a ServiceEntry needs at least one host")
    resolution = spec.get("resolution", "NONE")
    for i, h in enumerate(hosts):
        if h == "*":
            c.error(("spec", "hosts", i), "host '*' is not allowed in a ServiceEntry")
            continue
        c.host(h, ("spec", "hosts", i), allow_ip=False)
        if isinstance(h, str) and h.startswith("*") and resolution in ("DNS", "DNS_ROUND_ROBIN"):
            c.error(
                ("spec", "hosts", i),
                f"wildcard host {h!r} cannot be used with resolution {resolution}",
            )
    for i, a in enumerate(_l(spec.get("addresses"))):
        if isinstance(a, str) and not _is_ip_or_cidr(a):
            c.error(("spec", "addresses", i), f"{a!r} is not an IP address or CIDR block")
    names: set[str] = set()
    numbers: set[int] = set()
    for i, p in enumerate(_l(spec.get("ports"))):
        p = _d(p)
        path: Path = ("spec", "ports", i)
        number = p.get("number")
        if number is None:
            c.error(path + ("number",), "port number is required")
        c.port(number, path + ("number",))
        c.port(p.get("targetPort"), path + ("targetPort",))
        proto = p.get("protocol")
        if isinstance(proto, str) and proto.upper() not in PROTOCOLS:
            c.error(
                path + ("protocol",),
                f"unknown protocol {proto!r} (one of {', '.join(sorted(PROTOCOLS))})",
            )
        pname = p.get("name")
        if isinstance(pname, str):
            if pname in names:
                c.error(path + ("name",), f"duplicate port name {pname!r}")
            names.add(pname)
        if isinstance(number, int):
            if number in numbers:
                c.error(path + ("number",), f"duplicate port number {number}")
            numbers.add(number)
    endpoints = _l(spec.get("endpoints"))
    if endpoints and spec.get("workloadSelector") is not None:
        c.error(("spec", "workloadSelector"), "workloadSelector and endpoints cannot both be set")
    for i, ep in enumerate(endpoints):
        ep = _d(ep)
        _check_workload_entry(c, ep, ("spec", "endpoints", i), in_service_entry=True)
        addr = ep.get("address")
        if (
            resolution == "STATIC"
            and isinstance(addr, str)
            and not (_is_ip(addr) or addr.startswith("unix://"))
        ):
            c.error(
                ("spec", "endpoints", i, "address"),
                f"resolution STATIC needs IP (or unix://) endpoint addresses, got {addr!r}",
            )
        for pname in _d(ep.get("ports")):
            if names and pname not in names:
                c.error(
                    ("spec", "endpoints", i, "ports", pname),
                    f"endpoint port {pname!r} names no port of this ServiceEntry",
                )
    if resolution == "STATIC" and not endpoints and spec.get("workloadSelector") is None:
        c.warn(
            ("spec", "endpoints"),
            "resolution STATIC without endpoints or workloadSelector: the service has no endpoints",
        )
    c.labels(
        _d(spec.get("workloadSelector")).get("labels"),
        ("spec", "workloadSelector", "labels"),
        selector=True,
    )
    c.export_to(spec)


def _string_match(
    c: Checker, m: Any, path: Path, *, allow_prefix: bool = True, empty_prefix: bool = False
) -> None:
    if not isinstance(m, dict):
        return
    set_fields = [k for k in ("exact", "prefix", "regex") if m.get(k) is not None]
    if len(set_fields) != 1:
        c.error(path, "exactly one of exact, prefix or regex must be set")
        return
    if set_fields[0] == "prefix" and not allow_prefix:
        c.error(path + ("prefix",), "only exact and regex matches are supported here")
    elif set_fields[0] == "prefix" and m["prefix"] == "" and not empty_prefix:
        # Istio (and Envoy's StringMatcher): only the URI may match an empty prefix.
        c.error(path + ("prefix",), "a prefix match must not be empty here")
    if set_fields[0] == "regex":
        c.regex(m["regex"], path + ("regex",))


# A first DNS label with a leading '*' or '*-' (Istio's wildcardPrefix, without the whole-label
# '*' that host_problem already takes).
_PARTIAL_WILDCARD = re.compile(r"\*-?[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?\Z")


def _destination(c: Checker, d: Any, path: Path) -> None:
    if not isinstance(d, dict):
        c.error(path, "destination is required")
        return
    host = d.get("host")
    if not host:
        c.error(path + ("host",), "destination host is required")
    elif host == "*":
        c.error(path + ("host",), "a destination host cannot be the wildcard '*'")
    elif isinstance(host, str) and _PARTIAL_WILDCARD.match(host.partition(".")[0]):
        # Istio's ValidateWildcardDomain takes a leading '*' or '*-' on the first label
        # ('*foo.bar'): a destination host is only a cluster name, no host resolution.
        c.host("x" + host[1:].lstrip("-") if host[1:2] != "." else host, path + ("host",))
    else:
        c.host(host, path + ("host",))
    subset = d.get("subset")
    if isinstance(subset, str) and subset and not _DNS1123_LABEL.match(subset):
        c.error(path + ("subset",), f"invalid subset name {subset!r}: a DNS-1123 label")
    if isinstance(d.get("port"), dict) and d["port"].get("number") is None:
        c.error(path + ("port", "number"), "a destination port needs a number")
    c.port(_d(d.get("port")).get("number"), path + ("port", "number"))


def header_value_problem(value: str) -> str | None:
    """Envoy's header value formatter: text, ``%%`` (a literal %), ``%VAR%`` or
    ``%VAR(arg)%`` / ``%VAR(["a", "b"])%``; what Istio's ValidateHTTPHeaderValue accepts."""
    i, n = 0, len(value)
    while i < n:
        if value[i] != "%":
            i += 1
        elif value.startswith("%%", i):
            i += 2
        else:
            end = _variable_end(value, i + 1)
            if end is None:
                return f"unescaped or unterminated '%' at {i} (write %% for a literal %)"
            i = end
    return None


def _variable_end(value: str, i: int) -> int | None:
    """The index after the ``%VAR...%`` that starts at ``value[i]`` (just after its %)."""
    n = len(value)
    while i < n and value[i] not in "%(":
        i += 1
    if i >= n:
        return None
    if value[i] == "%":
        return i + 1
    i += 1  # inside (...)
    while i < n and value[i] == " ":
        i += 1
    if i < n and value[i] == "[":  # a JSON array of strings
        i += 1
        while True:
            while i < n and value[i] == " ":
                i += 1
            if i >= n or value[i] != '"':
                return None
            i += 1
            while i < n and value[i] != '"':
                if value[i] == ")":
                    return _after_close(value, i + 1)
                i += 2 if value[i] == "\\" else 1
            i += 1
            while i < n and value[i] == " ":
                i += 1
            if i < n and value[i] == ",":
                i += 1
                continue
            if i < n and value[i] == "]":
                i += 1
                while i < n and value[i] == " ":
                    i += 1
                return _after_close(value, i + 1) if i < n and value[i] == ")" else None
            return None
    while i < n and value[i] != ")":  # one bare argument
        i += 2 if value[i] == "\\" else 1
    return _after_close(value, i + 1) if i < n else None


def _after_close(value: str, i: int) -> int | None:
    """After ``%VAR(...)``: optional spaces, then the closing %."""
    while i < len(value) and value[i] == " ":
        i += 1
    return i + 1 if i < len(value) and value[i] == "%" else None


def is_authority_header(name: str) -> bool:
    """Istio's isAuthorityHeader: a request header set or added under this name rewrites the
    authority (the route's host rewrite) instead of being added."""
    return name.lower() in (":authority", "host")


def _header_operations(c: Checker, headers: Any, path: Path) -> None:
    for side in ("request", "response"):
        ops = _d(_d(headers).get(side))
        for op in ("set", "add"):
            for name, value in _d(ops.get(op)).items():
                if side == "request" and isinstance(name, str) and is_authority_header(name):
                    continue
                _header_op_name(c, name, path + (side, op, name))
                problem = header_value_problem(value) if isinstance(value, str) else None
                if problem:
                    c.error(path + (side, op, name), f"invalid header value {value!r}: {problem}")
        for i, name in enumerate(_l(ops.get("remove"))):
            _header_op_name(c, name, path + (side, "remove", i))


def _authority_once(c: Checker, r: dict[str, Any], path: Path) -> None:
    """Istio's validateAuthorityRewrite: the authority is rewritten in one place only."""
    current = _d(r.get("rewrite")).get("authority") or ""
    request = _d(_d(r.get("headers")).get("request"))
    for op in ("set", "add"):
        for name, value in _d(request.get(op)).items():
            if not (isinstance(name, str) and is_authority_header(name)):
                continue
            if current:
                c.error(
                    path + ("headers", "request", op, name),
                    f"authority header cannot be set multiple times: have {current!r},"
                    f" attempting to set {value!r}",
                )
            current = value


def _header_op_name(c: Checker, name: Any, path: Path) -> None:
    if isinstance(name, str) and (name.startswith(":") or name.lower() == "host"):
        c.error(
            path,
            f"header {name!r} cannot be modified (pseudo-headers and Host are managed by the proxy)",
        )
    else:
        c.header_name(name, path)


def _route_destinations(c: Checker, dests: list[Any], path: Path, *, weights: bool = True) -> None:
    total = 0
    for i, rd in enumerate(dests):
        rd = _d(rd)
        _destination(c, rd.get("destination"), path + (i, "destination"))
        w = rd.get("weight")
        if isinstance(w, int) and not isinstance(w, bool):
            if w < 0:
                c.error(path + (i, "weight"), f"weight {w} must not be negative")
            total += w
        if weights:
            _header_operations(c, rd.get("headers"), path + (i, "headers"))
    if len(dests) > 1:
        if total == 0:
            c.error(
                path,
                "the weights of several destinations must not all be 0 (set weights that add up to 100)",
            )
        elif total != 100:
            c.warn(path, f"weights add up to {total}, not 100: traffic is split in proportion")


JWT_CLAIM_HEADER = "@request.auth.claims"


def is_claim_route(name: str) -> bool:
    """Istio's claim-route form of a header match name: ``@request.auth.claims.a.b`` or
    ``@request.auth.claims[a][b]``, with no empty claim name."""
    if not name.lower().startswith(JWT_CLAIM_HEADER):
        return False
    rest = name[len(JWT_CLAIM_HEADER) :]
    if rest.startswith("[") and rest.endswith("]"):
        claims = rest[1:-1].split("][")
    elif rest.startswith("."):
        claims = rest[1:].split(".")
    else:
        return False
    return all(claims)


def _http_route(c: Checker, r: dict[str, Any], path: Path, *, mesh_bound: bool = True) -> None:
    actions = [k for k in ("route", "redirect", "directResponse", "delegate") if r.get(k)]
    if not actions:
        c.error(path, "an HTTP route needs one of route, redirect, directResponse or delegate")
    elif len(actions) > 1:
        c.error(path, f"{' and '.join(actions)} are mutually exclusive")
    for i, m in enumerate(_l(r.get("match"))):
        m = _d(m)
        mp = path + ("match", i)
        for field in ("uri", "scheme", "method", "authority"):
            _string_match(c, m.get(field), mp + (field,), empty_prefix=field == "uri")
        for group in ("headers", "withoutHeaders"):
            for hname, hm in _d(m.get(group)).items():
                if isinstance(hname, str) and is_claim_route(hname):
                    # on gateways: matched on the verified JWT (meshcore.xds.virtualservice)
                    if mesh_bound:
                        c.error(
                            mp + (group, hname),
                            "JWT claim routing (@request.auth.claims) is for gateways:"
                            " sidecars have no JWT filter to read the claims from",
                        )
                else:
                    c.header_name(hname, mp + (group, hname), lowercase=True)
                if hm == {} and group == "headers":
                    continue  # presence match
                _string_match(c, hm, mp + (group, hname))
        for qname, qm in _d(m.get("queryParams")).items():
            _string_match(c, qm, mp + ("queryParams", qname), allow_prefix=False)
        c.port(m.get("port"), mp + ("port",))
        c.labels(m.get("sourceLabels"), mp + ("sourceLabels",), selector=True)
    _route_destinations(c, _l(r.get("route")), path + ("route",))
    redirect = r.get("redirect")
    if isinstance(redirect, dict):
        code = redirect.get("redirectCode")
        if isinstance(code, int) and code and code not in REDIRECT_CODES:
            c.error(
                path + ("redirect", "redirectCode"),
                f"redirect code {code} is not one of {', '.join(map(str, REDIRECT_CODES))}",
            )
        redirects_to = ("uri", "prefixRewrite", "authority", "scheme", "port", "derivePort")
        if not any(redirect.get(k) not in (None, "") for k in redirects_to):
            c.error(path + ("redirect",), f"a redirect needs one of {', '.join(redirects_to)}")
        if redirect.get("uri") is not None and redirect.get("prefixRewrite") is not None:
            c.error(path + ("redirect",), "uri and prefixRewrite are mutually exclusive")
        if redirect.get("prefixRewrite"):
            for i, m in enumerate(_l(r.get("match"))):
                uri = _d(m).get("uri")
                if isinstance(uri, dict) and uri.get("prefix") is None:
                    c.error(
                        path + ("match", i, "uri"),
                        "redirect.prefixRewrite needs every URI match to be a prefix match",
                    )
        if redirect.get("port") is not None and redirect.get("derivePort") is not None:
            c.error(path + ("redirect",), "port and derivePort are mutually exclusive")
        c.port(redirect.get("port"), path + ("redirect", "port"))
        if r.get("rewrite"):
            c.error(path + ("rewrite",), "rewrite cannot be used with redirect")
    direct = r.get("directResponse")
    if isinstance(direct, dict):
        status = direct.get("status")
        if status is None:
            c.error(path + ("directResponse", "status"), "status is required")
        elif isinstance(status, int) and not 200 <= status <= 599:
            c.error(
                path + ("directResponse", "status"),
                f"status {status} must be in the range 200..599",
            )
        body = _d(direct.get("body"))
        if body.get("string") is not None and body.get("bytes") is not None:
            c.error(path + ("directResponse", "body"), "string and bytes are mutually exclusive")
    rewrite = _d(r.get("rewrite"))
    if isinstance(r.get("rewrite"), dict) and not any(
        rewrite.get(k) for k in ("uri", "uriRegexRewrite", "authority")
    ):
        c.error(path + ("rewrite",), "a rewrite needs uri, uriRegexRewrite or authority")
    if rewrite.get("uri") is not None and rewrite.get("uriRegexRewrite") is not None:
        c.error(path + ("rewrite",), "uri and uriRegexRewrite are mutually exclusive")
    rrw = rewrite.get("uriRegexRewrite")
    if isinstance(rrw, dict):
        if not rrw.get("match"):
            c.error(path + ("rewrite", "uriRegexRewrite", "match"), "match is required")
        if rrw.get("rewrite") in (None, ""):
            c.error(path + ("rewrite", "uriRegexRewrite", "rewrite"), "rewrite is required")
        c.regex(rrw.get("match"), path + ("rewrite", "uriRegexRewrite", "match"))
    if "timeout" in r:
        c.duration(r["timeout"], path + ("timeout",))
    retries = _d(r.get("retries"))
    attempts = retries.get("attempts")
    if isinstance(attempts, int) and attempts < 0:
        c.error(path + ("retries", "attempts"), "attempts must not be negative")
    if isinstance(r.get("retries"), dict) and not attempts:
        # Istio: attempts 0 (or unset) disables retries, so retry settings would be ignored.
        for f in ("perTryTimeout", "retryOn", "retryRemoteLocalities"):
            if retries.get(f) not in (None, ""):
                c.error(
                    path + ("retries", f), f"{f} needs attempts > 0 (attempts 0 disables retries)"
                )
    if "perTryTimeout" in retries:
        c.duration(retries["perTryTimeout"], path + ("retries", "perTryTimeout"), min_ms=1)
    if "backoff" in retries:
        c.duration(retries["backoff"], path + ("retries", "backoff"), min_ms=1)
    retry_on = retries.get("retryOn")
    if isinstance(retry_on, str):
        for policy in retry_on.split(","):
            policy = policy.strip()
            if policy in RETRY_ON:
                continue
            if _is_decimal(policy) and 100 <= int(policy) <= 599:
                continue
            c.error(
                path + ("retries", "retryOn"),
                f"unknown retry policy {policy!r} (one of {', '.join(sorted(RETRY_ON))}, or an HTTP status code)",
            )
    fault = _d(r.get("fault"))
    delay, abort = fault.get("delay"), fault.get("abort")
    if isinstance(delay, dict):
        if delay.get("exponentialDelay") is not None:
            c.error(
                path + ("fault", "delay", "exponentialDelay"),
                "exponentialDelay is not supported (as in Istio); use fixedDelay",
            )
        elif delay.get("fixedDelay") is None:
            c.error(path + ("fault", "delay", "fixedDelay"), "fixedDelay is required")
        else:
            c.duration(delay["fixedDelay"], path + ("fault", "delay", "fixedDelay"), min_ms=1)
        c.percentage(delay.get("percentage"), path + ("fault", "delay", "percentage"))
        pct = delay.get("percent")
        if isinstance(pct, int) and not 0 <= pct <= 100:
            c.error(
                path + ("fault", "delay", "percent"), f"percent {pct} must be in the range 0..100"
            )
    if isinstance(abort, dict):
        kinds = [k for k in ("httpStatus", "grpcStatus", "http2Error") if abort.get(k) is not None]
        if len(kinds) != 1:
            c.error(
                path + ("fault", "abort"),
                "exactly one of httpStatus, grpcStatus or http2Error must be set",
            )
        grpc = abort.get("grpcStatus")
        if isinstance(grpc, str) and grpc not in GRPC_STATUS:
            c.error(
                path + ("fault", "abort", "grpcStatus"),
                f"unknown gRPC status {grpc!r} (a status code name such as NOT_FOUND)",
            )
        status = abort.get("httpStatus")
        if isinstance(status, int) and not 200 <= status <= 599:
            c.error(
                path + ("fault", "abort", "httpStatus"),
                f"abort status {status} must be in the range 200..599",
            )
        c.percentage(abort.get("percentage"), path + ("fault", "abort", "percentage"))
    if fault and delay is None and abort is None:
        c.error(path + ("fault",), "fault needs delay or abort")
    if r.get("mirror") is not None and r.get("mirrors"):
        c.error(path + ("mirrors",), "mirror and mirrors are mutually exclusive")
    mirror_percent = r.get("mirrorPercent")
    if isinstance(mirror_percent, int) and mirror_percent > 100:
        c.error(path + ("mirrorPercent",), f"mirrorPercent {mirror_percent} must be at most 100")
    elif mirror_percent is not None:
        c.warn(path + ("mirrorPercent",), "mirrorPercent is deprecated: use mirrorPercentage")
    if r.get("mirror") is not None:
        _destination(c, r.get("mirror"), path + ("mirror",))
    for i, m in enumerate(_l(r.get("mirrors"))):
        _destination(c, _d(m).get("destination"), path + ("mirrors", i, "destination"))
        c.percentage(_d(m).get("percentage"), path + ("mirrors", i, "percentage"))
    c.percentage(r.get("mirrorPercentage"), path + ("mirrorPercentage",))
    cors = _d(r.get("corsPolicy"))
    cpath = path + ("corsPolicy",)
    for i, origin in enumerate(_l(cors.get("allowOrigins"))):
        _string_match(c, origin, cpath + ("allowOrigins", i))
        if isinstance(origin, dict) and not any(
            origin.get(k) for k in ("exact", "prefix", "regex")
        ):
            c.error(cpath + ("allowOrigins", i), "an allowed origin must not be empty")
    for i, method in enumerate(_l(cors.get("allowMethods"))):
        if isinstance(method, str) and method not in CORS_METHODS:
            c.error(cpath + ("allowMethods", i), f"{method!r} is not an HTTP method")
    for field in ("allowHeaders", "exposeHeaders"):
        for i, name in enumerate(_l(cors.get(field))):
            if name != "*":
                c.header_name(name, cpath + (field, i))
    if "maxAge" in cors:
        c.duration(cors["maxAge"], cpath + ("maxAge",))
        ns = parse_duration(cors["maxAge"]) if isinstance(cors["maxAge"], str) else None
        if ns is not None and ns % 1_000_000_000:
            c.error(cpath + ("maxAge",), "maxAge is accurate only to whole seconds")
    _header_operations(c, r.get("headers"), path + ("headers",))
    _authority_once(c, r, path)
    if r.get("delegate"):
        c.warn(
            path + ("delegate",),
            "delegate (gateway route delegation) is not translated by meshcore",
        )


def check_virtual_service(c: Checker, spec: dict[str, Any], name: str) -> None:
    hosts = _l(spec.get("hosts"))
    gateways = _l(spec.get("gateways"))
    mesh_bound = not gateways or "mesh" in gateways
    if not spec.get("hosts"):
        # Istio: a VirtualService without hosts is a delegate, used only through another
        # VirtualService's delegate (which meshcore does not translate).
        c.warn(
            ("spec", "hosts"),
            "a VirtualService without hosts is a delegate: it takes effect only through"
            " another VirtualService's delegate, which meshcore does not translate",
        )
        if spec.get("gateways"):
            c.error(("spec", "gateways"), "a delegate VirtualService must have no gateways")
        for key in ("tls", "tcp"):
            if spec.get(key):
                c.error(("spec", key), f"a delegate VirtualService must have no {key} routes")
    _gateway_names(c, gateways)
    sni = any(
        _l(_d(m).get("sniHosts")) for r in _l(spec.get("tls")) for m in _l(_d(r).get("match"))
    )
    hosts_ok = True
    for i, h in enumerate(hosts):
        if h == "*" and mesh_bound:
            c.error(
                ("spec", "hosts", i),
                "wildcard host '*' is not allowed for VirtualServices bound to the mesh gateway",
            )
            hosts_ok = False
            continue
        if not mesh_bound and sni and is_auto_sni_domain(h):
            continue
        hosts_ok = hosts_ok and (not isinstance(h, str) or host_problem(h) is None or _is_ip(h))
        c.host(h, ("spec", "hosts", i))
    if hosts_ok:
        for i, h in enumerate(hosts):
            for j in range(i + 1, len(hosts)):
                if isinstance(h, str) and isinstance(hosts[j], str) and hosts_overlap(h, hosts[j]):
                    c.error(
                        ("spec", "hosts", j),
                        f"duplicate hosts: {h!r} and {hosts[j]!r} overlap",
                    )
    if not (spec.get("http") or spec.get("tcp") or spec.get("tls")):
        c.error(("spec",), "a VirtualService needs at least one of http, tcp or tls")
    check_unreachable_rules(c, spec)
    names: set[str] = set()
    for i, r in enumerate(_l(spec.get("http"))):
        r = _d(r)
        rname = r.get("name")
        if isinstance(rname, str):
            if rname in names:
                c.warn(("spec", "http", i, "name"), f"route name {rname!r} is used more than once")
            names.add(rname)
        _http_route(c, r, ("spec", "http", i), mesh_bound=mesh_bound)
    for i, r in enumerate(_l(spec.get("tls"))):
        r = _d(r)
        matches = _l(r.get("match"))
        if not matches:
            c.error(("spec", "tls", i, "match"), "a TLS route needs at least one match")
        for j, m in enumerate(matches):
            m = _d(m)
            if not _l(m.get("sniHosts")):
                c.error(("spec", "tls", i, "match", j, "sniHosts"), "sniHosts is required")
            for k, h in enumerate(_l(m.get("sniHosts"))):
                hpath = ("spec", "tls", i, "match", j, "sniHosts", k)
                if isinstance(h, str) and _is_ip(h):
                    c.warn(
                        hpath, f"SNI host {h!r} is an IP address: clients do not send IPs as SNI"
                    )
                elif not (isinstance(h, str) and not mesh_bound and is_auto_sni_domain(h)):
                    c.host(h, hpath, allow_ip=False)
            _l4_match(c, m, ("spec", "tls", i, "match", j))
        if not _l(r.get("route")):
            c.error(("spec", "tls", i, "route"), "a TLS route needs at least one destination")
        _route_destinations(c, _l(r.get("route")), ("spec", "tls", i, "route"), weights=False)
    for i, r in enumerate(_l(spec.get("tcp"))):
        r = _d(r)
        for j, m in enumerate(_l(r.get("match"))):
            _l4_match(c, _d(m), ("spec", "tcp", i, "match", j))
            sub = _d(m).get("sourceSubnet")
            if isinstance(sub, str) and not _is_ip_or_cidr(sub):
                c.error(
                    ("spec", "tcp", i, "match", j, "sourceSubnet"),
                    f"{sub!r} is not an IP address or CIDR block",
                )
        if not _l(r.get("route")):
            c.error(("spec", "tcp", i, "route"), "a TCP route needs at least one destination")
        _route_destinations(c, _l(r.get("route")), ("spec", "tcp", i, "route"), weights=False)
    c.export_to(spec)


def _gateway_names(c: Checker, gateways: list[Any]) -> None:
    """Istio's validateGatewayNames: ``namespace/name`` (DNS-1123 labels), or a bare name."""
    for i, g in enumerate(gateways):
        if not isinstance(g, str):
            continue
        path: Path = ("spec", "gateways", i)
        ns, sep, name = g.partition("/")
        if not sep:
            if "." in g:
                parts = g.split(".")
                c.warn(
                    path,
                    f"legacy gateway name format {g!r}: prefer namespace/name ({parts[1]}/{parts[0]})",
                )
            if host_problem(g) is not None or g.startswith("*"):
                c.error(path, f"invalid gateway name {g!r}: a DNS name, or namespace/name")
            continue
        for part, what in ((ns, "namespace"), (name, "gateway name")):
            if not _DNS1123_LABEL.match(part):
                c.error(path, f"invalid {what} {part!r} in {g!r}: a DNS-1123 label")


def is_auto_sni_domain(host: str) -> bool:
    """Istio's auto-generated SNI form on gateways (AUTO_PASSTHROUGH): ``outbound_.PORT_._.HOST``."""
    parts = host.split("_")
    if not host.startswith("outbound_") or len(parts) < 4 or len(host) > 255:
        return False
    return any(ch.isdigit() for ch in parts[1]) and any(ch.isalpha() for ch in parts[3])


def hosts_overlap(a: str, b: str) -> bool:
    """Istio's host.Name.Matches: equal, or one wildcard covers the other (``*.bar`` and ``*.foo.bar``)."""
    if a == b or "*" in (a, b):
        return True
    return (a.startswith("*") and b.endswith(a[1:])) or (b.startswith("*") and a.endswith(b[1:]))


def _l4_match(c: Checker, m: dict[str, Any], path: Path) -> None:
    for k, sub in enumerate(_l(m.get("destinationSubnets"))):
        if isinstance(sub, str) and not _is_ip_or_cidr(sub):
            c.error(path + ("destinationSubnets", k), f"{sub!r} is not an IP address or CIDR block")
    c.port(m.get("port"), path + ("port",))
    c.labels(m.get("sourceLabels"), path + ("sourceLabels",), selector=True)


def check_authorization_policy(c: Checker, spec: dict[str, Any], name: str) -> None:
    # One validator for AuthorizationPolicy, shared with the Authorizer (which validates the
    # manifests it is given directly): Istio's webhook rules, in meshcore.security._validate.
    checker = authz_validate.Checker(namespace=c.namespace, name=name)
    # Checked as the model holds it (a null field is not set), so that what the Authorizer
    # trusts is what was checked: `source: {principals: null}` is an empty source.
    spec = thaw(freeze(spec))
    authz_validate.check_selection(checker, spec)
    authz_validate.check_spec(checker, spec)
    c.target_kinds(spec)
    for p in checker.problems:
        c.error(parse_path(p.path), p.message)
    for p in checker.warnings:
        c.warn(parse_path(p.path), p.message)
    # The Authorizer reports these per workload the policy selects, without checking again.
    c.typed["checked_warnings"] = tuple((p.path, p.message) for p in checker.warnings)


def check_peer_authentication(c: Checker, spec: dict[str, Any], name: str) -> None:
    c.selector(spec, ("spec",))
    port_level = _d(spec.get("portLevelMtls"))
    if isinstance(spec.get("selector"), dict) and not spec["selector"].get("matchLabels"):
        c.warn(
            ("spec", "selector"),
            "a selector without matchLabels selects every workload of the namespace",
        )
    if spec.get("portLevelMtls") == {}:
        c.error(("spec", "portLevelMtls"), "portLevelMtls must not be empty when set")
    if port_level and not _d(spec.get("selector")).get("matchLabels"):
        c.error(
            ("spec", "portLevelMtls"),
            "portLevelMtls requires a selector (it applies to one workload's ports)",
        )
    for port in port_level:
        if isinstance(port, int) or (isinstance(port, str) and _is_decimal(port)):
            c.port(int(port), ("spec", "portLevelMtls", str(port)))


RULES: Mapping[str, Callable[[Checker, dict[str, Any], str], None]] = {
    "Service": check_service,
    "WorkloadEntry": check_workload_entry,
    "ServiceEntry": check_service_entry,
    "VirtualService": check_virtual_service,
    "DestinationRule": check_destination_rule,
    "AuthorizationPolicy": check_authorization_policy,
    "PeerAuthentication": check_peer_authentication,
    "RequestAuthentication": check_request_authentication,
    "Gateway": check_gateway,
    "Secret": check_secret,
    "Telemetry": check_telemetry,
    "Sidecar": check_sidecar,
    "WorkloadGroup": check_workload_group,
}
