"""Telemetry providers: MeshConfig's ``extensionProviders`` of the tracing, metrics and
access-logging kinds, and ``defaultProviders``, as Istio reads them.

```yaml
extensionProviders:
- name: otel
  opentelemetry: {service: otel-collector.observability.svc.cluster.local, port: 4317}
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
- name: prometheus
  prometheus: {}
- name: envoy
  envoyFileAccessLog: {path: /dev/stdout}
defaultProviders:
  tracing: [otel]
  metrics: [prometheus]
  accessLogging: [envoy]
```

Each sidecar's Envoy sends spans to the tracing provider's collector (``service:port``, an IP
or a DNS name, as the legacy ``defaultConfig.tracing.zipkin.address``). The provider kinds
Istio has and meshcore does not implement are refused with the provider's path, never ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshcore.config import schema as s
from meshcore.config.validate import Checker
from meshcore.config.validate import Path as FieldPath

TRACING_KINDS = ("zipkin", "opentelemetry")
METRICS_KINDS = ("prometheus",)
LOGGING_KINDS = ("envoyFileAccessLog",)
AUTHZ_KINDS = ("envoyExtAuthzHttp", "envoyExtAuthzGrpc")  # read by meshcore.security
# Istio's other provider kinds: refused by name.
UNSUPPORTED_KINDS = ("skywalking", "datadog", "stackdriver", "lightstep", "envoyHttpAls",
                     "envoyTcpAls", "envoyOtelAls", "sds")  # fmt: skip
DEFAULT_MAX_TAG_LENGTH = 256

_TRACER = s.message("TracingProvider", service=s.STRING, port=s.UINT32, maxTagLength=s.UINT32)
_ZIPKIN = s.message(
    "ZipkinTracingProvider",
    service=s.STRING,
    port=s.UINT32,
    maxTagLength=s.UINT32,
    enable64bitTraceId=s.BOOL,
)
_LOG_FORMAT = s.message("LogFormat", text=s.STRING, labels=s.ANY)
PROVIDER = s.message(
    "ExtensionProvider",
    name=s.STRING,
    zipkin=_ZIPKIN,
    opentelemetry=_TRACER,
    prometheus=s.message("PrometheusMetricsProvider"),
    envoyFileAccessLog=s.message(
        "EnvoyFileAccessLogProvider", path=s.STRING, logFormat=_LOG_FORMAT
    ),
    **{kind: s.ANY for kind in (*AUTHZ_KINDS, *UNSUPPORTED_KINDS)},
)
DEFAULT_PROVIDERS = s.message(
    "DefaultProviders", tracing=s.STRINGS, metrics=s.STRINGS, accessLogging=s.STRINGS
)


@dataclass(frozen=True, slots=True)
class TracingProvider:
    """A collector spans go to."""

    name: str
    kind: str  # zipkin | opentelemetry
    service: str
    port: int
    max_tag_length: int = DEFAULT_MAX_TAG_LENGTH
    trace_id_128bit: bool = True
    cluster_name: str = ""  # the legacy Zipkin setting's cluster is Istio's "zipkin"

    @property
    def cluster(self) -> str:
        """The collector's cluster in each sidecar's config."""
        return self.cluster_name or f"{self.kind}|{self.name}"


@dataclass(frozen=True, slots=True)
class FileLogProvider:
    name: str
    path: str
    text_format: str = ""


@dataclass(frozen=True, slots=True)
class Providers:
    """The telemetry providers of a MeshConfig, by name."""

    tracing: Mapping[str, TracingProvider]
    metrics: frozenset[str]
    logging: Mapping[str, FileLogProvider]

    def kind_of(self, name: str) -> str | None:
        if name in self.tracing:
            return "tracing"
        if name in self.metrics:
            return "metrics"
        if name in self.logging:
            return "accessLogging"
        return None


def _kind(entry: Mapping[str, Any]) -> str | None:
    kinds = [k for k in entry if k != "name"]
    return kinds[0] if len(kinds) == 1 else None


def check_providers(c: Checker, value: Mapping[str, Any]) -> None:
    """Istio's rules on ``extensionProviders`` and ``defaultProviders`` (shape already checked)."""
    entries = value.get("extensionProviders")
    names: dict[str, str] = {}
    if isinstance(entries, list):
        for i, entry in enumerate(entries):
            path: FieldPath = ("extensionProviders", i)
            if not isinstance(entry, dict):
                continue
            name = entry.get("name")
            if not name:
                c.error((*path, "name"), "an extension provider needs a name")
            elif name in names:
                c.error((*path, "name"), f"extension provider name {name!r} is used twice")
            kinds = [k for k in entry if k != "name"]
            if len(kinds) != 1:
                c.error(path, "an extension provider has exactly one kind, found "
                        f"{len(kinds)} ({', '.join(kinds) or 'none'})")  # fmt: skip
                continue
            kind = kinds[0]
            if isinstance(name, str) and name:
                names[name] = kind
            if kind in UNSUPPORTED_KINDS:
                c.error((*path, kind), f"the {kind} provider is not supported by meshcore "
                        f"(tracing: {', '.join(TRACING_KINDS)}; metrics: prometheus; access "
                        "logs: envoyFileAccessLog)")  # fmt: skip
            elif kind in TRACING_KINDS:
                body = entry[kind] if isinstance(entry[kind], dict) else {}
                if not body.get("service"):
                    c.error((*path, kind, "service"), "the collector's host is required")
                port = body.get("port")
                if not isinstance(port, int) or not 0 < port < 65536:
                    c.error((*path, kind, "port"), "the collector's port is required (1-65535)")
            elif kind == "envoyFileAccessLog":
                body = entry[kind] if isinstance(entry[kind], dict) else {}
                fmt = body.get("logFormat") or {}
                if isinstance(fmt, dict) and fmt.get("labels") is not None:
                    c.error((*path, kind, "logFormat", "labels"), "JSON access-log labels are "
                            "not supported by meshcore (use logFormat.text)")  # fmt: skip
    defaults = value.get("defaultProviders")
    if isinstance(defaults, dict):
        wanted = {"tracing": TRACING_KINDS, "metrics": METRICS_KINDS,
                  "accessLogging": LOGGING_KINDS}  # fmt: skip
        for field, allowed in wanted.items():
            listed = defaults.get(field)
            if not isinstance(listed, list):
                continue
            for j, name in enumerate(listed):
                kind = names.get(str(name))
                if kind is None:
                    c.error(("defaultProviders", field, j),
                            f"no extension provider named {name!r}")  # fmt: skip
                elif kind not in allowed:
                    c.error(("defaultProviders", field, j),
                            f"provider {name!r} is a {kind} provider, not a {field} one")  # fmt: skip
            if field == "tracing" and isinstance(listed, list) and len(listed) > 1:
                c.error(("defaultProviders", "tracing"),
                        "Envoy sends spans to one tracing provider; list one")  # fmt: skip


def read_providers(value: Mapping[str, Any]) -> Providers:
    """The providers of a validated MeshConfig mapping."""
    tracing: dict[str, TracingProvider] = {}
    metrics: set[str] = set()
    logging: dict[str, FileLogProvider] = {}
    for entry in value.get("extensionProviders") or ():
        name, kind = str(entry.get("name") or ""), _kind(entry)
        body = entry.get(kind) or {} if kind else {}
        if kind in TRACING_KINDS:
            tracing[name] = TracingProvider(
                name=name,
                kind=str(kind),
                service=str(body["service"]),
                port=int(body["port"]),
                max_tag_length=int(body.get("maxTagLength") or DEFAULT_MAX_TAG_LENGTH),
                trace_id_128bit=not body.get("enable64bitTraceId", False),
            )
        elif kind in METRICS_KINDS:
            metrics.add(name)
        elif kind in LOGGING_KINDS:
            fmt = body.get("logFormat") or {}
            logging[name] = FileLogProvider(
                name, str(body.get("path") or ""), str(fmt.get("text") or "")
            )
    return Providers(tracing, frozenset(metrics), logging)
