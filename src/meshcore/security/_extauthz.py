"""MeshConfig extension providers (envoyExtAuthzHttp / envoyExtAuthzGrpc) -> ext_authz configs.

A provider with problems is kept, with its problems: Istio turns a CUSTOM policy that uses a
bad provider into DENY rules rather than failing the push, and so do we (fail closed).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshcore.config.validate import parse_duration as parse_go_duration
from meshcore.errors import ConfigProblem, UnsupportedFeatureError
from meshcore.names import OUTBOUND, cluster_name
from meshcore.security._model import Json

EXT_AUTHZ_MATCH_PREFIX = "istio-ext-authz"
EXT_AUTHZ_SHADOW_PREFIX = "istio_ext_authz_"
SHADOW_EFFECTIVE_POLICY_ID = "shadow_effective_policy_id"
# Istio's default: the real timeout is expected from a DestinationRule.
DEFAULT_TIMEOUT: Json = {"seconds": 600}

HTTP_FIELDS = frozenset(
    {
        "service",
        "port",
        "timeout",
        "pathPrefix",
        "failOpen",
        "statusOnError",
        "includeHeadersInCheck",
        "includeRequestHeadersInCheck",
        "includeAdditionalHeadersInCheck",
        "includeRequestBodyInCheck",
        "headersToUpstreamOnAllow",
        "headersToDownstreamOnDeny",
        "headersToDownstreamOnAllow",
        "clearRouteCache",
    }
)
GRPC_FIELDS = frozenset(
    {
        "service",
        "port",
        "timeout",
        "failOpen",
        "statusOnError",
        "includeRequestBodyInCheck",
        "clearRouteCache",
    }
)
BODY_FIELDS = frozenset({"maxRequestBytes", "allowPartialMessage", "packAsBytes"})


def parse_duration(text: str) -> Json:
    """A Go (`2ms`, `1m30s`) or proto-JSON (`0.002s`) duration -> a Duration dict (the
    config's one duration parser, :func:`meshcore.config.validate.parse_duration`)."""
    nanos = parse_go_duration(text)
    if nanos is None:
        raise ValueError(f"invalid duration {text!r}")
    seconds, rem = divmod(nanos, 1_000_000_000)
    return {"seconds": seconds, "nanos": rem}


def _status_codes() -> frozenset[int]:
    status = importlib.import_module("envoy.type.v3.http_status_pb2")
    return frozenset(int(v) for v in status.StatusCode.values())


@dataclass(slots=True)
class BuiltExtAuthz:
    http: Json | None = None
    tcp: Json | None = None
    problems: list[str] = field(default_factory=list)


def normalize_providers(providers: Any) -> list[Mapping[str, Any]]:
    """Accept MeshConfig's `extensionProviders` list, a MeshConfig mapping holding it, or a
    mapping of provider name -> provider body."""
    if providers is None:
        return []
    if isinstance(providers, Mapping):
        if "extensionProviders" in providers:
            return normalize_providers(providers["extensionProviders"])
        out: list[Mapping[str, Any]] = []
        for name, body in providers.items():
            if not isinstance(body, Mapping):
                raise UnsupportedFeatureError(
                    [ConfigProblem("must be a mapping", f"extensionProviders[{name}]")]
                )
            out.append({"name": name, **body})
        return out
    if isinstance(providers, Sequence) and not isinstance(providers, str):
        for i, entry in enumerate(providers):
            if not isinstance(entry, Mapping):
                raise UnsupportedFeatureError(
                    [ConfigProblem("must be a mapping", f"extensionProviders[{i}]")]
                )
        return list(providers)
    raise UnsupportedFeatureError(
        [ConfigProblem("providers must be a list or a mapping", "extensionProviders")]
    )


def process_providers(providers: Any, services: Iterable[str] | None) -> dict[str, BuiltExtAuthz]:
    """Every ext_authz provider by name, each with its config or its problems."""
    registry = _ServiceRegistry(services)
    resolved: dict[str, BuiltExtAuthz] = {}
    for i, config in enumerate(normalize_providers(providers)):
        name = str(config.get("name") or "")
        problems: list[str] = []
        if not name:
            problems.append(f"extension provider name must not be empty, found at index {i}")
        elif name in resolved:
            problems.append(f"extension provider name must be unique, found duplicate {name!r}")
        if "envoyExtAuthzHttp" in config:
            built = _build_http(config["envoyExtAuthzHttp"], registry, f"[{i}]", problems)
        elif "envoyExtAuthzGrpc" in config:
            built = _build_grpc(config["envoyExtAuthzGrpc"], registry, f"[{i}]", problems)
        else:
            # Tracing, logging and other provider kinds are not authorization providers.
            continue
        built.problems = problems
        resolved[name] = built
    return resolved


class _ServiceRegistry:
    """`namespace/hostname` entries; with none given, any well-formed service is accepted."""

    def __init__(self, services: Iterable[str] | None) -> None:
        self.known: dict[str, set[str]] | None = None
        if services is not None:
            self.known = {}
            for entry in services:
                ns, _, host = entry.rpartition("/")
                self.known.setdefault(host, set()).add(ns)

    def lookup(self, service: str, port: int) -> tuple[str, str]:
        """(hostname, outbound cluster name) or raises ValueError."""
        if not service:
            raise ValueError("service must not be empty")
        namespace, sep, host = service.partition("/")
        if not sep:
            namespace, host = "", service
        if self.known is not None:
            namespaces = self.known.get(host, set())
            if sep and namespace not in namespaces:
                raise ValueError(f"could not find service {service} in the service registry")
            if not sep and len(namespaces) != 1:
                if not namespaces:
                    raise ValueError(f"could not find service {service} in the service registry")
                raise ValueError(
                    f"found {service} in multiple namespaces {sorted(namespaces)}, specify the "
                    "namespace explicitly in the format of <Namespace>/<Hostname>"
                )
        return host, cluster_name(OUTBOUND, port, "", host)


def _port(value: Any, problems: list[str]) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    problems.append(f"port must be in the range [1, 65535], found: {value}")
    return 0


def _status(value: Any, problems: list[str]) -> int | None:
    if value in (None, ""):
        return None
    try:
        code = int(str(value))
    except ValueError:
        problems.append(f"invalid statusOnError {value!r}")
        return None
    if code not in _status_codes():
        problems.append(f"unsupported statusOnError {value}")
        return None
    return code


def _timeout(value: Any, problems: list[str]) -> Json:
    if value in (None, ""):
        return DEFAULT_TIMEOUT
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        problems.append(f"invalid timeout: {exc}")
        return DEFAULT_TIMEOUT


def _unknown(body: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    unknown = [k for k in body if k not in allowed]
    if unknown:
        raise UnsupportedFeatureError(
            [ConfigProblem("unsupported extension provider field", f"{path}.{k}") for k in unknown]
        )


def _body(value: Any, path: str) -> Json | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise UnsupportedFeatureError([ConfigProblem("must be a mapping", path)])
    _unknown(value, BODY_FIELDS, path)
    out: Json = {}
    if value.get("maxRequestBytes"):
        out["max_request_bytes"] = int(value["maxRequestBytes"])
    if value.get("allowPartialMessage"):
        out["allow_partial_message"] = True
    if value.get("packAsBytes"):
        out["pack_as_bytes"] = True
    return out


def _headers(values: Any) -> Json | None:
    if not values:
        return None
    patterns: list[Json] = []
    for header in values:
        if header.startswith("*"):
            patterns.append({"suffix": header[1:], "ignore_case": True})
        elif header.endswith("*"):
            patterns.append({"prefix": header[:-1], "ignore_case": True})
        else:
            patterns.append({"exact": header, "ignore_case": True})
    return {"patterns": patterns}


def _provider(
    body: Any, registry: _ServiceRegistry, path: str, fields: frozenset[str], problems: list[str]
) -> tuple[str, str, int | None, Json]:
    """What both ext_authz providers (HTTP and gRPC) share: the service, its port, the
    status on error and the timeout (each problem in ``problems``)."""
    if not isinstance(body, Mapping):
        raise UnsupportedFeatureError([ConfigProblem("must be a mapping", path)])
    _unknown(body, fields, path)
    port = _port(body.get("port"), problems)
    try:
        hostname, cluster = registry.lookup(str(body.get("service") or ""), port)
    except ValueError as exc:
        problems.append(str(exc))
        hostname = cluster = ""
    status = _status(body.get("statusOnError"), problems)
    timeout = _timeout(body.get("timeout"), problems)
    return hostname, cluster, status, timeout


def _build_http(
    body: Any, registry: _ServiceRegistry, where: str, problems: list[str]
) -> BuiltExtAuthz:
    path = f"extensionProviders{where}.envoyExtAuthzHttp"
    hostname, cluster, status, timeout = _provider(body, registry, path, HTTP_FIELDS, problems)
    prefix = str(body.get("pathPrefix") or "")
    if prefix and not prefix.startswith("/"):
        problems.append(f"pathPrefix must begin with `/`, found: {prefix!r}")
    for name in (
        "includeRequestHeadersInCheck",
        "includeHeadersInCheck",
        "headersToDownstreamOnDeny",
        "headersToDownstreamOnAllow",
        "headersToUpstreamOnAllow",
    ):
        if "*" in (body.get(name) or ()):
            problems.append(
                'a single wildcard ("*") is not supported, change it to either prefix or '
                f"suffix match: {name}"
            )
    if problems:
        return BuiltExtAuthz()

    service: Json = {
        "server_uri": {"uri": f"http://{hostname}", "cluster": cluster, "timeout": timeout}
    }
    if prefix:
        service["path_prefix"] = prefix
    # includeHeadersInCheck is deprecated: used only when its successor is not set.
    allowed = _headers(body.get("includeRequestHeadersInCheck")) or _headers(
        body.get("includeHeadersInCheck")
    )
    additional = body.get("includeAdditionalHeadersInCheck") or {}
    headers_to_add = [{"key": k, "value": str(additional[k])} for k in sorted(additional)]
    if headers_to_add:
        service["authorization_request"] = {"headers_to_add": headers_to_add}
    response: Json = {}
    for src, dst in (
        ("headersToUpstreamOnAllow", "allowed_upstream_headers"),
        ("headersToDownstreamOnDeny", "allowed_client_headers"),
        ("headersToDownstreamOnAllow", "allowed_client_headers_on_success"),
    ):
        generated = _headers(body.get(src))
        if generated:
            response[dst] = generated
    if response:
        service["authorization_response"] = response
    http: Json = {
        "failure_mode_allow": bool(body.get("failOpen")),
        "transport_api_version": "V3",
        "http_service": service,
    }
    if allowed:
        http["allowed_headers"] = allowed
    if status is not None:
        http["status_on_error"] = {"code": status}
    request_body = _body(body.get("includeRequestBodyInCheck"), f"{path}.includeRequestBodyInCheck")
    if request_body is not None:
        http["with_request_body"] = request_body
    if body.get("clearRouteCache"):
        http["clear_route_cache"] = True
    return BuiltExtAuthz(http=http)


def _build_grpc(
    body: Any, registry: _ServiceRegistry, where: str, problems: list[str]
) -> BuiltExtAuthz:
    path = f"extensionProviders{where}.envoyExtAuthzGrpc"
    hostname, cluster, status, timeout = _provider(body, registry, path, GRPC_FIELDS, problems)
    if problems:
        return BuiltExtAuthz()
    grpc: Json = {
        "envoy_grpc": {"cluster_name": cluster, "authority": hostname},
        "timeout": timeout,
    }
    fail_open = bool(body.get("failOpen"))
    http: Json = {
        "failure_mode_allow": fail_open,
        "transport_api_version": "V3",
        "grpc_service": grpc,
    }
    if status is not None:
        http["status_on_error"] = {"code": status}
    request_body = _body(body.get("includeRequestBodyInCheck"), f"{path}.includeRequestBodyInCheck")
    if request_body is not None:
        http["with_request_body"] = request_body
    if body.get("clearRouteCache"):
        http["clear_route_cache"] = True
    tcp: Json = {
        "stat_prefix": "tcp.",
        "failure_mode_allow": fail_open,
        "transport_api_version": "V3",
        "grpc_service": grpc,
    }
    return BuiltExtAuthz(http=http, tcp=tcp)


def filter_enabled_metadata(rbac_filter_name: str, provider: str) -> Json:
    """ext_authz runs only when the shadow RBAC matched a policy of *this* provider."""
    return {
        "filter": rbac_filter_name,
        "path": [{"key": EXT_AUTHZ_SHADOW_PREFIX + SHADOW_EFFECTIVE_POLICY_ID}],
        "value": {"string_match": {"prefix": f"{EXT_AUTHZ_MATCH_PREFIX}-{provider}"}},
    }
