"""Admission-time checks of an AuthorizationPolicy, after Istio's validation webhook.

Istio rejects these policies before its builder ever sees them; a library has no webhook in
front of it, so we reject them here, with every problem and its field path. Skipping them the
way the builder would (an unknown `when` key drops the rule) could widen access under DENY.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from meshcore.errors import ConfigProblem
from meshcore.security import _model as m

KIND = "AuthorizationPolicy"
API_VERSIONS = frozenset({"security.istio.io/v1", "security.istio.io/v1beta1"})
ACTIONS = frozenset({"ALLOW", "DENY", "AUDIT", "CUSTOM"})
SPEC_FIELDS = frozenset({"selector", "targetRef", "targetRefs", "rules", "action", "provider"})
RULE_FIELDS = frozenset({"from", "to", "when"})
SOURCE_FIELDS = frozenset(
    f
    for base in (
        "principals",
        "requestPrincipals",
        "namespaces",
        "ipBlocks",
        "remoteIpBlocks",
        "serviceAccounts",
        "trustDomains",
    )
    for f in (base, m.not_field(base))
)
OPERATION_FIELDS = frozenset(
    f for base in ("hosts", "ports", "methods", "paths") for f in (base, m.not_field(base))
)
CONDITION_FIELDS = frozenset({"key", "values", "notValues"})
_IP_FIELDS = frozenset({"ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"})
_IP_KEYS = frozenset({m.ATTR_SRC_IP, m.ATTR_REMOTE_IP, m.ATTR_DEST_IP})


class Checker:
    """Collects problems for one policy; ``problems`` is empty when the policy is valid."""

    def __init__(self, namespace: str, name: str, file: str = "", line: int = 0) -> None:
        self.namespace = namespace
        self.name = name
        self.file = file
        self.line = line
        self.problems: list[ConfigProblem] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(
            ConfigProblem(message, path, KIND, self.namespace, self.name, self.file, self.line)
        )

    def mapping(self, value: Any, path: str) -> Mapping[str, Any] | None:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(path, f"must be a mapping, found {type(value).__name__}")
            return None
        return value

    def fields(self, obj: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
        for key in obj:
            if key not in allowed:
                self.error(f"{path}.{key}", "unknown field (ignoring it could widen access)")

    def strings(self, value: Any, path: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(path, "must be a list of strings")
            return []
        out: list[str] = []
        for i, item in enumerate(value):
            # YAML turns `80` into an int; a port written that way still means the port.
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                self.error(f"{path}[{i}]", "must be a string")
            elif isinstance(item, int) or item:
                out.append(str(item))
            else:
                self.error(f"{path}[{i}]", "must not be empty")
        return out

    def ips(self, values: list[str], path: str) -> None:
        for i, v in enumerate(values):
            try:
                if "/" in v:
                    ipaddress.ip_interface(v)
                else:
                    ipaddress.ip_address(v)
            except ValueError:
                self.error(f"{path}[{i}]", f"invalid IP address or CIDR range {v!r}")

    def ports(self, values: list[str], path: str) -> None:
        for i, v in enumerate(values):
            if not (v.isascii() and v.isdigit() and 0 <= int(v) <= 65535):
                self.error(f"{path}[{i}]", f"invalid port {v!r}: must be in [0, 65535]")

    def paths(self, values: list[str], path: str) -> None:
        for i, v in enumerate(values):
            if not m.contains_path_template(v):
                continue
            problem = _path_template_problem(v)
            if problem:
                self.error(f"{path}[{i}]", f"invalid path template {v!r}: {problem}")


def _path_template_problem(path: str) -> str:
    if not path.startswith("/"):
        return "must start with `/`"
    segments = path.split("/")[1:]
    seen_any = False
    for seg in segments:
        if "{" in seg or "}" in seg or "*" in seg:
            if seg not in (m.MATCH_ONE_TEMPLATE, m.MATCH_ANY_TEMPLATE):
                return "an operator must be a whole segment, `{*}` or `{**}`"
            if seen_any:
                return "`{**}` must be the last operator"
            seen_any = seg == m.MATCH_ANY_TEMPLATE
    return ""


def _condition_key_problem(key: str) -> str:
    if not m.is_known_condition_key(key):
        return f"unknown attribute {key!r}"
    for prefix in (m.ATTR_REQUEST_HEADER, m.ATTR_REQUEST_INLINE_HEADER, m.ATTR_REQUEST_CLAIMS):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if not (rest.startswith("[") and rest.endswith("]") and len(rest) > 2):
                return f"invalid key {key!r}: expected {prefix}[<name>]"
            return ""
    if key.startswith(m.ATTR_ENVOY_FILTER):
        rest = key[len(m.ATTR_ENVOY_FILTER) :]
        open_at = rest.find("[")
        if open_at <= 0 or not rest.endswith("]") or open_at >= len(rest) - 2:
            return f"invalid key {key!r}: expected experimental.envoy.filters.<name>[<key>]"
    return ""


def check_selection(c: Checker, spec: Mapping[str, Any]) -> None:
    """What must hold before we can tell whether the policy selects a workload."""
    if spec.get("selector") is not None and (spec.get("targetRef") or spec.get("targetRefs")):
        c.error("spec.selector", "selector and targetRef(s) are mutually exclusive")
    selector = spec.get("selector")
    if selector is not None:
        sel = c.mapping(selector, "spec.selector")
        if sel is not None:
            c.fields(sel, frozenset({"matchLabels"}), "spec.selector")
            labels = c.mapping(sel.get("matchLabels"), "spec.selector.matchLabels")
            for key, value in (labels or {}).items():
                if not isinstance(value, str):
                    c.error(f"spec.selector.matchLabels.{key}", "must be a string")
    for field in ("targetRef", "targetRefs"):
        refs = spec.get(field)
        if refs is None:
            continue
        entries = [refs] if field == "targetRef" else refs
        if not isinstance(entries, list):
            c.error(f"spec.{field}", "must be a list")
            continue
        for i, ref in enumerate(entries):
            path = f"spec.{field}" if field == "targetRef" else f"spec.{field}[{i}]"
            ref_map = c.mapping(ref, path)
            if ref_map is not None and not (ref_map.get("kind") and ref_map.get("name")):
                c.error(path, "a target reference needs a kind and a name")


def check_spec(c: Checker, spec: Mapping[str, Any]) -> None:
    """Validate ``spec`` (already known to be a mapping) into ``c.problems``."""
    c.fields(spec, SPEC_FIELDS, "spec")
    action = spec.get("action", "ALLOW") or "ALLOW"
    if action not in ACTIONS:
        c.error("spec.action", f"unknown action {action!r}; expected one of {sorted(ACTIONS)}")
    provider = spec.get("provider")
    if action == "CUSTOM":
        prov = c.mapping(provider, "spec.provider")
        if provider is None:
            c.error("spec.provider", "the CUSTOM action requires a provider")
        elif prov is not None and not prov.get("name"):
            c.error("spec.provider.name", "CUSTOM action requires a provider name")
    elif provider is not None:
        c.error("spec.provider", "a provider may only be set with the CUSTOM action")
    rules = spec.get("rules")
    if rules is None:
        return
    if not isinstance(rules, list):
        c.error("spec.rules", "must be a list")
        return
    for i, rule in enumerate(rules):
        if rule is None:
            continue  # Istio skips a null rule (and logs it)
        _check_rule(c, rule, f"spec.rules[{i}]")


def _check_rule(c: Checker, rule: Any, path: str) -> None:
    rule_map = c.mapping(rule, path)
    if rule_map is None:
        return
    c.fields(rule_map, RULE_FIELDS, path)
    for list_field, inner, allowed in (
        ("from", "source", SOURCE_FIELDS),
        ("to", "operation", OPERATION_FIELDS),
    ):
        entries = rule_map.get(list_field)
        if entries is None:
            continue
        if not isinstance(entries, list):
            c.error(f"{path}.{list_field}", "must be a list")
            continue
        for j, entry in enumerate(entries):
            epath = f"{path}.{list_field}[{j}]"
            emap = c.mapping(entry, epath)
            if emap is None:
                continue
            c.fields(emap, frozenset({inner}), epath)
            body = c.mapping(emap.get(inner), f"{epath}.{inner}")
            if body is None:
                continue
            if not body:
                c.error(f"{epath}.{inner}", "must not be empty")
                continue
            c.fields(body, allowed, f"{epath}.{inner}")
            for field in body:
                if field not in allowed:
                    continue
                fpath = f"{epath}.{inner}.{field}"
                values = c.strings(body[field], fpath)
                if field in _IP_FIELDS:
                    c.ips(values, fpath)
                elif field in ("ports", "notPorts"):
                    c.ports(values, fpath)
                elif field in ("paths", "notPaths"):
                    c.paths(values, fpath)
    conditions = rule_map.get("when")
    if conditions is None:
        return
    if not isinstance(conditions, list):
        c.error(f"{path}.when", "must be a list")
        return
    for j, cond in enumerate(conditions):
        cpath = f"{path}.when[{j}]"
        cmap = c.mapping(cond, cpath)
        if cmap is None:
            continue
        c.fields(cmap, CONDITION_FIELDS, cpath)
        key = cmap.get("key")
        if not isinstance(key, str) or not key:
            c.error(f"{cpath}.key", "must be a non-empty string")
            continue
        problem = _condition_key_problem(key)
        if problem:
            c.error(f"{cpath}.key", problem)
        values = c.strings(cmap.get("values"), f"{cpath}.values")
        not_values = c.strings(cmap.get("notValues"), f"{cpath}.notValues")
        if not values and not not_values:
            c.error(cpath, f"at least one of values or notValues must be set for key {key!r}")
        for field, vals in (("values", values), ("notValues", not_values)):
            if key in _IP_KEYS:
                c.ips(vals, f"{cpath}.{field}")
            elif key == m.ATTR_DEST_PORT:
                c.ports(vals, f"{cpath}.{field}")
