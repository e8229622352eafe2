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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
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


# --- the Telemetry kind (telemetry.istio.io/v1) ----------------------------------------------

MODES = {"CLIENT_AND_SERVER": ("outbound", "inbound"), "CLIENT": ("outbound",),
         "SERVER": ("inbound",)}  # fmt: skip
_NOT_SUPPORTED = "is not supported by meshcore"


def check_telemetry(c: Checker, spec: dict[str, Any], name: str) -> None:
    """Istio's rules for a Telemetry, and what meshcore does not implement, refused at its
    path (providers are looked up in the MeshConfig when sidecars get their config)."""
    c.selector(spec, ("spec",))
    for field in ("targetRef", "targetRefs"):
        if spec.get(field):
            c.error(("spec", field), f"{field} {_NOT_SUPPORTED} (use selector)")
    for field, unsupported in (
        ("tracing", ("customTags", "useRequestIdForTraceSampling", "enableIstioTags")),
        ("metrics", ("reportingInterval",)),
        ("accessLogging", ("filter",)),
    ):
        entries = spec.get(field)
        if not isinstance(entries, list):
            continue
        if len(entries) > 1:
            c.error(("spec", field), f"more than one {field} entry {_NOT_SUPPORTED} (one each)")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                continue
            path: FieldPath = ("spec", field, i)
            for key in unsupported:
                if entry.get(key) is not None:
                    c.error((*path, key), f"{key} {_NOT_SUPPORTED}")
            providers = entry.get("providers")
            if field == "tracing" and isinstance(providers, list) and len(providers) > 1:
                c.error((*path, "providers"), "Envoy sends spans to one tracing provider")
            pct = entry.get("randomSamplingPercentage")
            if isinstance(pct, (int, float)) and not isinstance(pct, bool) and not 0 <= pct <= 100:
                c.error((*path, "randomSamplingPercentage"), f"must be in [0, 100], got {pct}")
            for j, o in enumerate(entry.get("overrides") or ()):
                if not isinstance(o, dict):
                    continue
                if o.get("tagOverrides") is not None:
                    c.error(
                        (*path, "overrides", j, "tagOverrides"), f"tagOverrides {_NOT_SUPPORTED}"
                    )
                match = o.get("match") or {}
                if isinstance(match, dict) and match.get("customMetric") is not None:
                    c.error((*path, "overrides", j, "match", "customMetric"),
                            f"custom metrics are {_NOT_SUPPORTED[3:]}")  # fmt: skip
                if isinstance(match, dict) and str(match.get("metric", "")).startswith("GRPC_"):
                    c.error((*path, "overrides", j, "match", "metric"),
                            f"{match['metric']} (a gRPC message count) {_NOT_SUPPORTED}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class TelemetryPolicy:
    """The Telemetry resources of one workload, merged as Istio does (the root namespace's,
    then its namespace's, then those selecting it; each sets what it names). None: not set,
    the MeshConfig decides."""

    tracing_provider: str | None = None
    sampling: float | None = None
    disable_span_reporting: bool = False
    metrics_providers: tuple[str, ...] | None = None
    # (metric, direction) pairs turned off: ALL_METRICS or one of Istio's metric names
    metrics_disabled: frozenset[tuple[str, str]] = frozenset()
    logging_providers: tuple[str, ...] | None = None
    logging_disabled: frozenset[str] = frozenset()  # directions
    sources: tuple[str, ...] = ()  # "namespace/name" of the Telemetries applied

    @classmethod
    def resolve(
        cls, telemetries: Iterable[Any], root_namespace: str, namespace: str,
        labels: Mapping[str, str],
    ) -> TelemetryPolicy:  # fmt: skip
        """The policy of a workload from all the mesh's Telemetry resources."""
        applying = []
        for t in telemetries:
            sel = t.spec.get("selector")
            rank = (0 if t.namespace == root_namespace and t.namespace != namespace
                    else 1 if sel is None else 2)  # fmt: skip
            if t.namespace not in (namespace, root_namespace):
                continue
            if sel is not None and (t.namespace != namespace or not _selects(sel, labels)):
                continue
            applying.append((rank, t.namespace, t.name, t))
        policy = cls()
        for _, _, _, t in sorted(applying, key=lambda a: a[:3]):
            policy = policy._with(t.spec, f"{t.namespace}/{t.name}")
        return policy

    def _with(self, spec: Mapping[str, Any], source: str) -> TelemetryPolicy:
        out: dict[str, Any] = {"sources": (*self.sources, source)}
        for entry in spec.get("tracing") or ():
            names = [str(p.get("name")) for p in entry.get("providers") or ()]
            if names:
                out["tracing_provider"] = names[0]
            if entry.get("randomSamplingPercentage") is not None:
                out["sampling"] = float(entry["randomSamplingPercentage"])
            if entry.get("disableSpanReporting") is not None:
                out["disable_span_reporting"] = bool(entry["disableSpanReporting"])
        for entry in spec.get("metrics") or ():
            if entry.get("providers"):
                out["metrics_providers"] = tuple(str(p.get("name")) for p in entry["providers"])
            disabled = set(self.metrics_disabled)
            for o in entry.get("overrides") or ():
                match = o.get("match") or {}
                metric = str(match.get("metric") or "ALL_METRICS")
                for direction in MODES[str(match.get("mode") or "CLIENT_AND_SERVER")]:
                    if o.get("disabled"):
                        disabled.add((metric, direction))
                    else:
                        disabled.discard((metric, direction))
            out["metrics_disabled"] = frozenset(disabled)
        for entry in spec.get("accessLogging") or ():
            if entry.get("providers"):
                out["logging_providers"] = tuple(str(p.get("name")) for p in entry["providers"])
            if entry.get("disabled") is not None:
                mode = str((entry.get("match") or {}).get("mode") or "CLIENT_AND_SERVER")
                off = set(self.logging_disabled)
                for direction in MODES[mode]:
                    (off.add if entry["disabled"] else off.discard)(direction)
                out["logging_disabled"] = frozenset(off)
        return replace(self, **out)

    def unknown_providers(self, providers: Providers) -> list[tuple[str, str]]:
        """(field, name) of the providers this policy names that the MeshConfig lacks (or has
        of another kind)."""
        out = []
        if self.tracing_provider is not None and self.tracing_provider not in providers.tracing:
            out.append(("tracing", self.tracing_provider))
        for name in self.metrics_providers or ():
            if name not in providers.metrics:
                out.append(("metrics", name))
        for name in self.logging_providers or ():
            if name not in providers.logging:
                out.append(("accessLogging", name))
        return out


def _selects(selector: Any, labels: Mapping[str, str]) -> bool:
    wanted = (selector or {}).get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())
