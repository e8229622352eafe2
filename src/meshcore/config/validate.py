"""Validation as Istio's webhook does it: every problem at once, each at its field path.

Two passes per resource: a generic walk against :mod:`meshcore.config.schema` (unknown fields,
types and ranges, enums), here in :class:`Checker`, and the semantic rules of each kind
(:mod:`meshcore.config.rules`), which use the shared rules here (hosts, ports, labels,
durations, regexes compiled by the Rust core so validation and runtime agree).
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any

from meshcore import _core
from meshcore._text import unknown_field
from meshcore.config import schema as s
from meshcore.errors import ConfigProblem

Path = tuple[str | int, ...]

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1123_SUBDOMAIN = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z"
)
# Hostname labels: Istio accepts upper case here (DNS is case-insensitive).
_HOST_LABEL = re.compile(r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?\Z")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+\Z")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}


# Go's time.Duration (int64 nanoseconds, about 292 years): Istio refuses longer durations.
MAX_DURATION_NS = 2**63 - 1
MAX_DURATION_TEXT = "2562047h47m16.854775807s"
# Integer kinds of the schema and their ranges (the protos' int32, int64 and uint32).
INT_RANGES = {
    "int": (-(2**31), 2**31 - 1, "a 32-bit integer"),
    "int64": (-(2**63), 2**63 - 1, "a 64-bit integer"),
    "uint32": (0, 2**32 - 1, "an unsigned 32-bit integer"),
}


def is_header_name(name: str) -> bool:
    """The one header-name rule: an HTTP token (RFC 9110), or a pseudo-header (``:path``)."""
    bare = name[1:] if name.startswith(":") else name
    return bool(bare) and _HEADER_NAME.match(bare) is not None


def parse_duration(text: str) -> int | None:
    """Go/Istio duration syntax (``1h2m``, ``2s``, ``500ms``, ``0.5s``) in nanoseconds, exactly
    (fractions below a nanosecond are dropped); None when malformed or longer than
    :data:`MAX_DURATION_NS`."""
    if not _DURATION.match(text):
        return None
    total = 0
    for number, unit in _DURATION_PART.findall(text):
        whole, _, frac = number.partition(".")
        whole = whole.lstrip("0")
        if len(whole) > 20:  # beyond any duration (and Python's int() of long text)
            return None
        frac = frac[:24]  # more digits cannot change the nanoseconds
        scale = 10 ** len(frac)
        total += (int(whole or "0") * scale + int(frac or "0")) * _UNIT_NS[unit] // scale
        if total > MAX_DURATION_NS:
            return None
    return total


_PATH_TOKEN = re.compile(r"\[(\d+)\]|\['((?:[^'\\]|\\.)*)'\]|([^.\[\]]+)")


# The deepest nesting of mappings and lists a config may have: the YAML reader's limit, also
# applied to manifests given as Python values (load_objects, validate_object: the webhook's
# JSON), so that every walk of a tree (the schema walk, freeze) stays far from Python's
# recursion limit.
MAX_DEPTH: int = _core.yaml.YAML_MAX_DEPTH


def too_deep(value: Any) -> Path | None:
    """The path of the first mapping or list nested deeper than :data:`MAX_DEPTH` in
    ``value`` (without recursion), or None."""
    stack: list[tuple[Any, Path]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            return path
        items = node.items() if isinstance(node, dict) else enumerate(node)
        stack.extend((v, (*path, k)) for k, v in items if isinstance(v, (dict, list)))
    return None


def parse_path(text: str) -> Path:
    """The inverse of :func:`format_path` (for paths other validators report as text)."""
    out: list[str | int] = []
    for index, quoted, plain in _PATH_TOKEN.findall(text):
        out.append(int(index) if index else quoted or plain)
    return tuple(out)


def format_path(path: Path) -> str:
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$-]*", part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{part!r}]")
    return "".join(out)


class Checker:
    """Collects the problems of one resource; rules call ``error``/``warn`` with a path."""

    def __init__(self, namespace: str = "") -> None:
        self.problems: list[tuple[str, Path, str]] = []  # (severity, path, message)
        self.namespace = namespace  # the resource's (rules comparing references read it)
        # Typed values a kind's rules computed while checking, kept on the resource (fields of
        # its class) so that readers trust them instead of checking or parsing again.
        self.typed: dict[str, Any] = {}
        # What the checks parsed, by text: duration -> ns, regexes that compiled (the loader
        # carries them as a ``Checked`` on VirtualServices and DestinationRules).
        self.durations: dict[str, int] = {}
        self.regexes: set[str] = set()

    def error(self, path: Path, message: str) -> None:
        self.problems.append(("error", path, message))

    def warn(self, path: Path, message: str) -> None:
        self.problems.append(("warning", path, message))

    # --- the generic walk ---------------------------------------------------------------------

    def shape(self, value: Any, ftype: s.FieldType, path: Path) -> bool:
        """Checks ``value`` against ``ftype``; False when it is unusable for the semantic rules."""
        if value is None:
            return True  # null means "not set", as in Kubernetes JSON
        if isinstance(ftype, s.Message):
            if not isinstance(value, dict):
                self.error(path, f"expected a mapping ({ftype.name}), got {_describe(value)}")
                return False
            fields = ftype.fields
            ok = True
            for key, sub in value.items():
                sub_type = fields.get(key)
                if sub_type is None:
                    if not ftype.open:
                        self.error(path + (str(key),), unknown_field(str(key), fields))
                        ok = False
                    continue
                ok = self.shape(sub, sub_type, path + (key,)) and ok
            return ok
        if isinstance(ftype, s.Scalar):
            return self._scalar(value, ftype.kind, path)
        if isinstance(ftype, s.Enum):
            if not isinstance(value, str) or value not in ftype.values:
                self.error(
                    path,
                    f"{_describe(value)} is not one of {', '.join(ftype.values)}",
                )
                return False
            return True
        if isinstance(ftype, s.ListOf):
            if not isinstance(value, list):
                self.error(path, f"expected a list, got {_describe(value)}")
                return False
            ok = True
            for i, item in enumerate(value):
                if item is None:
                    self.error(path + (i,), "a list item must not be null")
                    ok = False
                    continue
                ok = self.shape(item, ftype.item, path + (i,)) and ok
            return ok
        if isinstance(ftype, s.MapOf):
            if not isinstance(value, dict):
                self.error(path, f"expected a mapping, got {_describe(value)}")
                return False
            ok = True
            for key, sub in value.items():
                if ftype.key == "uint32" and not (
                    (isinstance(key, int) and not isinstance(key, bool))
                    or (isinstance(key, str) and _is_decimal(key))
                ):
                    self.error(path + (str(key),), f"key {key!r} must be a port number")
                    ok = False
                    continue
                if ftype.key == "string" and not isinstance(key, str):
                    self.error(path + (str(key),), f"key {key!r} must be a string (quote it)")
                    ok = False
                    continue
                if ftype.key == "uint32" and not self._scalar(int(key), "uint32", path + (key,)):
                    ok = False
                    continue
                ok = self.shape(sub, ftype.value, path + (key,)) and ok
            return ok
        return True  # AnyValue

    def _scalar(self, value: Any, kind: str, path: Path) -> bool:
        if kind in ("string", "duration"):
            if not isinstance(value, str):
                hint = " (quote it)" if isinstance(value, (int, float, bool)) else ""
                self.error(path, f"expected a string, got {_describe(value)}{hint}")
                return False
            if kind == "duration":
                ns = parse_duration(value)
                if ns is None:
                    if _DURATION.match(value):
                        self.error(
                            path,
                            f"duration {_abbreviate(value)} is out of range "
                            f"(at most {MAX_DURATION_TEXT})",
                        )
                    else:
                        self.error(
                            path,
                            f"invalid duration {_abbreviate(value)}: use a number and a unit, "
                            "e.g. 2s, 500ms, 1m30s",
                        )
                    return False
                self.durations[value] = ns
            return True
        if kind in INT_RANGES:
            if isinstance(value, bool) or not isinstance(value, int):
                self.error(path, f"expected an integer, got {_describe(value)}")
                return False
            low, high, what = INT_RANGES[kind]
            if not low <= value <= high:
                self.error(path, f"{_number(value)} is out of range for {what}")
                return False
            return True
        if kind == "bool":
            if not isinstance(value, bool):
                self.error(path, f"expected true or false, got {_describe(value)}")
                return False
            return True
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.error(path, f"expected a number, got {_describe(value)}")
                return False
            if abs(value) > 2**53 or (isinstance(value, float) and not math.isfinite(value)):
                self.error(path, f"{_describe(value)} is not a usable number")
                return False
            return True
        if kind == "int_or_string":
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                self.error(path, f"expected a port number or name, got {_describe(value)}")
                return False
            if isinstance(value, int):
                return self._scalar(value, "int", path)
            return True
        raise AssertionError(kind)  # pragma: no cover

    # --- shared semantic rules -------------------------------------------------------------------

    def port(self, value: Any, path: Path) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= 65535:
            self.error(path, f"port number {value} must be in the range 1..65535")

    def host(self, host: Any, path: Path, *, allow_ip: bool = True) -> None:
        """Istio's ValidateWildcardDomain: ``*``, ``*.suffix`` or DNS labels; IPs if allowed."""
        if not isinstance(host, str):
            return
        problem = host_problem(host)
        if problem is None:
            return
        if allow_ip and _is_ip(host):
            return
        self.error(path, problem)

    def labels(self, labels: Any, path: Path, *, selector: bool = False) -> None:
        if not isinstance(labels, dict):
            return
        for key, value in labels.items():
            key_problem = label_key_problem(str(key))
            if key_problem:
                self.error(path + (str(key),), key_problem)
            if not isinstance(value, str):
                continue
            if selector and ("*" in value or "*" in str(key)):
                self.error(path + (str(key),), "wildcard '*' is not supported in selector labels")
            elif len(value) > 63 or (value and not _LABEL_NAME.match(value)):
                self.error(
                    path + (str(key),),
                    f"invalid label value {value!r}: at most 63 characters, alphanumerics, "
                    "'-', '_' or '.', starting and ending with an alphanumeric",
                )

    def duration(self, value: Any, path: Path, *, min_ms: int = 0) -> None:
        if not isinstance(value, str):
            return
        ns = parse_duration(value)
        if ns is None:
            return  # reported by the shape walk
        if ns % 1_000_000:
            self.error(path, f"duration {value!r} must be a whole number of milliseconds")
        elif ns < min_ms * 1_000_000:
            self.error(path, f"duration {value!r} must be at least {min_ms}ms")

    def percentage(self, value: Any, path: Path) -> None:
        if isinstance(value, dict):
            v = value.get("value")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not 0 <= v <= 100:
                self.error(path + ("value",), f"percentage {v} must be in the range 0..100")

    def regex(self, pattern: Any, path: Path) -> None:
        if not isinstance(pattern, str):
            return
        try:
            _core.check_regex(pattern)
        except ValueError as exc:
            self.error(path, str(exc))
        else:
            self.regexes.add(pattern)

    def header_name(self, name: Any, path: Path, *, lowercase: bool = False) -> None:
        if not isinstance(name, str):
            return
        if not is_header_name(name):
            self.error(path, f"invalid header name {name!r}")
        elif lowercase and name != name.lower():
            self.error(path, f"header name {name!r} must be lowercase")

    def selector(self, spec: Mapping[str, Any], path: Path) -> None:
        sel = spec.get("selector")
        if isinstance(sel, dict):
            self.labels(sel.get("matchLabels"), path + ("selector", "matchLabels"), selector=True)

    def target_kinds(self, spec: Mapping[str, Any]) -> None:
        """Istio's allowed policy targets: a Service, a ServiceEntry, a Gateway or GatewayClass."""
        refs: list[tuple[Path, Any]] = [(("spec", "targetRef"), spec.get("targetRef"))]
        refs += [(("spec", "targetRefs", i), r) for i, r in enumerate(_l(spec.get("targetRefs")))]
        for ref_path, raw in refs:
            ref = _d(raw)
            if not ref:
                continue
            group, kind = ref.get("group") or "core", ref.get("kind")
            well_formed = (
                isinstance(kind, str)
                and _KIND.match(kind)
                and isinstance(group, str)
                and _DNS1123_SUBDOMAIN.match(group)
            )  # a malformed group or kind is reported by the shared policy checks
            if well_formed and (group, kind) not in POLICY_TARGETS:
                allowed = ", ".join(f"{g}/{k}" for g, k in POLICY_TARGETS)
                self.error(
                    ref_path, f"a policy can target only one of {allowed}, not {group}/{kind}"
                )

    def export_to(self, spec: Mapping[str, Any]) -> None:
        values = spec.get("exportTo")
        if not isinstance(values, list):
            return
        seen: set[str] = set()
        for i, v in enumerate(values):
            if not isinstance(v, str):
                continue
            if v in seen:
                self.error(("spec", "exportTo", i), f"duplicate entry {v!r}")
            seen.add(v)
            if v not in (".", "*", "~") and not _DNS1123_LABEL.match(v):
                self.error(
                    ("spec", "exportTo", i), f"{v!r} is not '.', '*', '~' or a namespace name"
                )
        if "*" in seen and "." in seen:
            self.error(
                ("spec", "exportTo"),
                "cannot export both to all namespaces ('*') and privately ('.')",
            )


def _is_ip(text: str) -> bool:
    # inet_pton is the C parser (ipaddress.ip_address costs ~20x more per call); it accepts
    # exactly the dotted-quad and RFC 4291 forms, and no zone ids, like Istio's net.ParseIP.
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        return True
    return False


def host_problem(host: str) -> str | None:
    """Why ``host`` is not a valid (wildcard) domain, or None."""
    if not host:
        return "host must not be empty"
    if len(host) > 255:
        return f"host {host!r} is longer than 255 characters"
    rest = host
    if host.startswith("*"):
        rest = host[1:]
        if not rest:
            return None
        if not rest.startswith("."):
            return f"invalid host {host!r}: a wildcard must be a whole leftmost label ('*.example.com')"
        rest = rest[1:]
    rest = rest.removesuffix(".")
    for label in rest.split("."):
        if "*" in label:
            return f"invalid host {host!r}: a wildcard is only allowed as the leftmost label"
        if len(label) > 63 or not _HOST_LABEL.match(label):
            return f"invalid host {host!r}: label {label!r} is not a valid DNS label"
    return None


def label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return f"invalid label key {key!r}: the prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        return (
            f"invalid label key {key!r}: the name must be at most 63 characters, alphanumerics, "
            "'-', '_' or '.', starting and ending with an alphanumeric"
        )
    return None


def _is_decimal(text: str) -> bool:
    """ASCII digits only, short enough for int() (str.isdigit() admits '²', which int()
    refuses, and int() refuses more than 4,300 digits)."""
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit()


def _abbreviate(text: str, limit: int = 40) -> str:
    """``repr(text)``, shortened in the middle when long (a message stays one readable line)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[: limit // 2]!r}...{text[-8:]!r} ({len(text)} characters)"


def _number(value: int | float) -> str:
    """A number as written, its digits shortened when there are very many."""
    if isinstance(value, int) and not -(10**30) < value < 10**30:
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[:6]}...({len(digits)} digits)"
    return str(value)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {_number(value)}"
    if isinstance(value, str):
        return _abbreviate(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null" if value is None else type(value).__name__


_KIND = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?\Z")
POLICY_TARGETS = (
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
)
# Go's strconv.ParseBool, which Istio uses for boolean annotations.
GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
DRY_RUN = "istio.io/dry-run"


def check_annotations(c: Checker, metadata: Any, kind: str, spec: Mapping[str, Any]) -> None:
    """Istio's checkDryRunAnnotation: only an ALLOW or DENY AuthorizationPolicy may carry
    ``istio.io/dry-run``, and its value is a boolean."""
    annotations = _d(_d(metadata).get("annotations"))
    if DRY_RUN not in annotations:
        return
    path: Path = ("metadata", "annotations", DRY_RUN)
    action = spec.get("action") or "ALLOW"
    if kind != "AuthorizationPolicy":
        c.error(path, f"{DRY_RUN} is supported only on AuthorizationPolicy: remove it")
    elif action not in ("ALLOW", "DENY"):
        c.error(path, f"{DRY_RUN} is supported only with action ALLOW or DENY, not {action}")
    elif str(annotations[DRY_RUN]) not in GO_TRUE | GO_FALSE:
        c.error(path, f"invalid {DRY_RUN} value {annotations[DRY_RUN]!r}: true or false")


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def check_metadata(c: Checker, metadata: Any, kind: s.KindSpec) -> tuple[str, str]:
    """Checks metadata; returns (name, namespace) with the Kubernetes default namespace."""
    meta = _d(metadata)
    name = meta.get("name")
    if not name:
        c.error(("metadata", "name"), "name is required")
        name = ""
    elif (
        isinstance(name, str)
        and kind.kind != "Service"
        and (len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name))
    ):
        c.error(
            ("metadata", "name"),
            f"invalid name {name!r}: lowercase alphanumerics, '-' or '.', at most 253 characters",
        )
    namespace = meta.get("namespace") or "default"
    if isinstance(namespace, str) and (len(namespace) > 63 or not _DNS1123_LABEL.match(namespace)):
        c.error(("metadata", "namespace"), f"invalid namespace {namespace!r}: a DNS-1123 label")
    c.labels(meta.get("labels"), ("metadata", "labels"))
    return str(name), str(namespace)


def problems_of(
    checker: Checker,
    kind: str,
    namespace: str,
    name: str,
    file: str,
    line_of: Callable[[Path], int],
) -> list[ConfigProblem]:
    return [
        ConfigProblem(
            message,
            path=format_path(path),
            kind=kind,
            namespace=namespace,
            name=name,
            file=file,
            line=line_of(path),
            severity=severity,
        )
        for severity, path, message in sorted(
            checker.problems, key=lambda p: (line_of(p[1]), format_path(p[1]))
        )
    ]
