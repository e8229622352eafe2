"""MeshConfig: the mesh-wide settings istiod reads from its ``--meshConfig`` file (Istio's
``istio`` ConfigMap, key ``mesh``), the part meshcore uses.

```yaml
accessLogFile: /dev/stdout          # every sidecar writes access logs here ("" = off)
accessLogEncoding: JSON             # TEXT (default) or JSON
accessLogFormat: ""                 # an Envoy format string; "" = Istio's default format
enableTracing: true
defaultConfig:
  tracing:
    sampling: 100.0                 # percent of requests traced (Istio's default is 1.0)
    zipkin: {address: 127.0.0.1:9411}
trustDomain: cluster.local
rootNamespace: istio-system
extensionProviders: [...]           # ext_authz providers for CUSTOM AuthorizationPolicies;
                                    # tracing (zipkin, opentelemetry), metrics (prometheus),
                                    # access-log (envoyFileAccessLog) providers
defaultProviders: {tracing: [otel], metrics: [prometheus], accessLogging: [envoy]}
outboundTrafficPolicy:
  mode: ALLOW_ANY                   # or REGISTRY_ONLY: what capture-mode sidecars do with
                                    # traffic to hosts outside the registry
```

The telemetry providers are read by :mod:`meshcore.config.telemetry`.

Unknown fields are errors with "did you mean", as everywhere else, each with file and line;
fields Istio has and meshcore does not interpret are rejected the same way (never ignored
silently).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcore.config import schema as s
from meshcore.config.loader import parse_yaml, read_text
from meshcore.config.telemetry import (
    DEFAULT_PROVIDERS,
    PROVIDER,
    Providers,
    TracingProvider,
    check_providers,
    read_providers,
)
from meshcore.config.validate import Checker, problems_of
from meshcore.config.validate import Path as FieldPath
from meshcore.errors import ConfigError, ConfigProblem
from meshcore.names import ZIPKIN_CLUSTER

KIND = "MeshConfig"

ZIPKIN = s.message("Zipkin", address=s.STRING)
TRACING = s.message("Tracing", sampling=s.NUMBER, zipkin=ZIPKIN)
PROXY_CONFIG = s.message("ProxyConfig", tracing=TRACING)
MESH_CONFIG = s.message(
    "MeshConfig",
    accessLogFile=s.STRING,
    accessLogEncoding=s.Enum(("TEXT", "JSON")),
    accessLogFormat=s.STRING,
    enableTracing=s.BOOL,
    defaultConfig=PROXY_CONFIG,
    trustDomain=s.STRING,
    rootNamespace=s.STRING,
    extensionProviders=s.ListOf(PROVIDER),
    defaultProviders=DEFAULT_PROVIDERS,
    outboundTrafficPolicy=s.message(
        "OutboundTrafficPolicy", mode=s.Enum(("ALLOW_ANY", "REGISTRY_ONLY"))
    ),
)

# Istio's default access log format (TEXT), with the fields that say why a request ended as it
# did: %RESPONSE_CODE_DETAILS% carries ``rbac_access_denied_matched_policy[ID]`` on RBAC denials.
DEFAULT_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)
# The same fields as JSON keys (Istio's JSON encoding).
DEFAULT_JSON_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    # the peer's identity on mTLS (what authorization replay decides with; not Istio's)
    "downstream_peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "route_name": "%ROUTE_NAME%",
}
DEFAULT_SAMPLING = 1.0  # percent, as Istio's ProxyConfig


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The mesh-wide settings (defaults are Istio's)."""

    access_log_file: str = ""
    access_log_encoding: str = "TEXT"
    access_log_format: str = ""
    enable_tracing: bool = False
    zipkin_address: str = ""  # HOST:PORT of a Zipkin-compatible collector
    tracing_sampling: float = DEFAULT_SAMPLING
    trust_domain: str = "cluster.local"
    root_namespace: str = "istio-system"
    extension_providers: tuple[Any, ...] = ()
    # ALLOW_ANY or REGISTRY_ONLY: where a capture-mode sidecar sends traffic to a destination
    # the registry does not know (PassthroughCluster or BlackHoleCluster).
    outbound_traffic_policy: str = "ALLOW_ANY"
    providers: Providers = field(default_factory=lambda: Providers({}, frozenset(), {}))
    # defaultProviders; None: not set (Istio's defaults: Prometheus metrics, no others)
    default_tracing: tuple[str, ...] = ()
    default_metrics: tuple[str, ...] | None = None
    default_logging: tuple[str, ...] = ()
    # What was worth a warning when it was read (errors raise ConfigError instead).
    warnings: tuple[ConfigProblem, ...] = field(default=(), compare=False)

    @property
    def tracing(self) -> bool:
        """Whether sidecars trace: a default tracing provider, or (legacy) tracing enabled
        and a Zipkin collector to send spans to."""
        return self.tracer() is not None

    def tracer(self) -> TracingProvider | None:
        """Where spans go: ``defaultProviders.tracing``, else ``enableTracing`` with
        ``defaultConfig.tracing.zipkin`` (Istio's legacy setting)."""
        if self.default_tracing:
            return self.providers.tracing[self.default_tracing[0]]
        if self.enable_tracing and self.zipkin_address:
            host, _, port = self.zipkin_address.rpartition(":")
            return TracingProvider(
                "zipkin", "zipkin", host.strip("[]"), int(port), cluster_name=ZIPKIN_CLUSTER
            )
        return None

    def zipkin_endpoint(self) -> tuple[str, int]:
        host, _, port = self.zipkin_address.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def istio_metrics(self) -> bool:
        """Whether sidecars report Istio's standard metrics (a Prometheus provider, the
        default)."""
        if self.default_metrics is None:
            return True
        return any(name in self.providers.metrics for name in self.default_metrics)

    @classmethod
    def from_dict(cls, value: Any, *, file: str = "<mesh config>") -> MeshConfig:
        """Validates and reads a MeshConfig mapping; raises ConfigError with every problem."""
        return _read(value, file, lambda _path: 0)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MeshConfig:
        """Reads a MeshConfig YAML file (one document); ConfigError names file, line, field."""
        file = str(path)
        text, unreadable = read_text(Path(path))
        if text is None:
            raise ConfigError(unreadable)
        docs, problems = parse_yaml(text, file)
        if problems:
            raise ConfigError(problems)
        docs = [d for d in docs if d.value is not None]
        if len(docs) > 1:
            raise ConfigError(
                [
                    ConfigProblem(
                        "expected one YAML document", kind=KIND, file=file, line=docs[1].line
                    )
                ]
            )
        if not docs:
            return cls()
        return _read(docs[0].value, file, docs[0].line_of)


def _read(value: Any, file: str, line_of: Any) -> MeshConfig:
    c = Checker()
    path: FieldPath = ()
    if not isinstance(value, dict):
        c.error(path, "a MeshConfig must be a mapping")
    else:
        c.shape(value, MESH_CONFIG, path)
        _check(c, value)
    problems = problems_of(c, KIND, "", "", file, line_of)
    if any(p.severity == "error" for p in problems):
        raise ConfigError([p for p in problems if p.severity == "error"])
    assert isinstance(value, dict)
    tracing = (value.get("defaultConfig") or {}).get("tracing") or {}
    defaults = value.get("defaultProviders") or {}
    return MeshConfig(
        access_log_file=str(value.get("accessLogFile") or ""),
        access_log_encoding=str(value.get("accessLogEncoding") or "TEXT"),
        access_log_format=str(value.get("accessLogFormat") or ""),
        enable_tracing=bool(value.get("enableTracing", False)),
        zipkin_address=str((tracing.get("zipkin") or {}).get("address") or ""),
        tracing_sampling=float(tracing.get("sampling", DEFAULT_SAMPLING)),
        trust_domain=str(value.get("trustDomain") or "cluster.local"),
        root_namespace=str(value.get("rootNamespace") or "istio-system"),
        extension_providers=tuple(value.get("extensionProviders") or ()),
        outbound_traffic_policy=str(
            (value.get("outboundTrafficPolicy") or {}).get("mode") or "ALLOW_ANY"
        ),
        providers=read_providers(value),
        default_tracing=tuple(map(str, defaults.get("tracing") or ())),
        default_metrics=None
        if defaults.get("metrics") is None
        else tuple(map(str, defaults["metrics"])),
        default_logging=tuple(map(str, defaults.get("accessLogging") or ())),
        warnings=tuple(problems),
    )


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _check(c: Checker, value: dict[str, Any]) -> None:
    """The rules beyond shape (which has already reported wrong types, so skip those here)."""
    tracing = _mapping(_mapping(value.get("defaultConfig")).get("tracing"))
    tpath: FieldPath = ("defaultConfig", "tracing")
    sampling = tracing.get("sampling")
    if (
        isinstance(sampling, (int, float))
        and not isinstance(sampling, bool)
        and not 0 <= sampling <= 100
    ):
        c.error((*tpath, "sampling"), f"must be a percentage in [0, 100], got {sampling}")
    address = _mapping(tracing.get("zipkin")).get("address")
    if isinstance(address, str):
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            c.error((*tpath, "zipkin", "address"), f"expected HOST:PORT, got {address!r}")
    check_providers(c, value)
    if value.get("enableTracing") and not address and not value.get("defaultProviders"):
        c.warn(("enableTracing",), "tracing is enabled but no collector is set "
               "(defaultConfig.tracing.zipkin.address): sidecars will not trace")  # fmt: skip
    fmt = value.get("accessLogFormat")
    if fmt and value.get("accessLogEncoding") == "JSON":
        c.error(("accessLogFormat",), "with accessLogEncoding JSON the format is Istio's JSON "
                "fields; a text format cannot be combined with it")  # fmt: skip
