"""Admission-time checks of an AuthorizationPolicy, after Istio's validation webhook.

Istio rejects these policies before its builder ever sees them; a library has no webhook in
front of it, so we reject them here, with every problem and its field path. Skipping them the
way the builder would (an unknown `when` key drops the rule) could widen access under DENY.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from meshcore._text import unknown_field
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
        self.warnings: list[ConfigProblem] = []

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(
            ConfigProblem(
                message, path, KIND, self.namespace, self.name, self.file, self.line, "warning"
            )
        )

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
                self.error(
                    f"{path}.{key}",
                    unknown_field(str(key), allowed) + " (ignoring it could widen access)",
                )

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

    def service_accounts(self, values: list[str], path: str) -> None:
        if len(values) > 16:
            self.error(path, "may not have more than 16 values")
        for i, value in enumerate(values):
            problem = _service_account_problem(value)
            if problem:
                self.error(f"{path}[{i}]", problem)

    def paths(self, values: list[str], path: str) -> None:
        for i, v in enumerate(values):
            if not m.contains_path_template(v):
                continue
            problem = _path_template_problem(v)
            if problem:
                self.error(f"{path}[{i}]", f"invalid path template {v!r}: {problem}")


_VALID_LITERAL = re.compile(r"^[a-zA-Z0-9\-._~%!$&'()+,;:@=]+$")


def _path_template_problem(path: str) -> str:
    """Istio's CheckValidPathTemplate: `{*}`/`{**}` whole segments, `{**}` last, pchar literals."""
    found_any = False
    for seg in path.strip("/").split("/"):
        if seg in (m.MATCH_ONE_TEMPLATE, m.MATCH_ANY_TEMPLATE):
            if found_any:
                return "`{**}` must be the last operator"
            found_any = seg == m.MATCH_ANY_TEMPLATE
            continue
        if "{" in seg or "}" in seg:
            return "contains `{` or `}` beyond a supported template (`{*}`, `{**}`)"
        if not _VALID_LITERAL.match(seg):
            return f"segment {seg!r} is not a valid literal"
    return ""


# Keys Istio's validation rejects by name, with its reason.
_RETIRED_KEYS = {
    "destination.namespace": "replaced by metadata.namespace",
    "destination.name": "deprecated: only supported in v1alpha1",
    "destination.user": "deprecated: only supported in v1alpha1",
}


_KNOWN_KEYS = ", ".join(
    [
        *m.WHEN_KEYS,
        f"{m.ATTR_REQUEST_HEADER}[NAME]",
        f"{m.ATTR_REQUEST_CLAIMS}[NAME]",
        f"{m.ATTR_ENVOY_FILTER}FILTER[KEY]",
    ]
)


def _condition_key_problem(key: str) -> str:
    if key in _RETIRED_KEYS:
        return f"attribute {key!r} is {_RETIRED_KEYS[key]}"
    if key.startswith("destination.labels"):
        return f"attribute {key!r} is replaced by the workload selector"
    if not m.is_known_condition_key(key):
        return f"unknown attribute {key!r} (known: {_KNOWN_KEYS})"
    if key.startswith(
        (
            m.ATTR_REQUEST_HEADER,
            m.ATTR_REQUEST_INLINE_HEADER,
            m.ATTR_REQUEST_CLAIMS,
            m.ATTR_ENVOY_FILTER,
        )
    ):
        open_at = key.find("[")
        if not (key.endswith("]") and 0 < open_at < len(key) - 2):
            return f"invalid key {key!r}: should have the format a[b]"
    return ""


def _service_account_problem(value: str) -> str:
    if "*" in value:
        return "wildcards are not allowed in service accounts"
    if value.count("/") > 1 or value.startswith("/") or value.endswith("/"):
        return f"expected 'serviceAccount' or 'namespace/serviceAccount', found {value!r}"
    if len(value) > 320:
        return "a service account cannot exceed 320 characters"
    return ""


# Gateway API's patterns for a reference's group and kind.
_REF_GROUP = re.compile(r"(|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)\Z")
_REF_KIND = re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?\Z")


def check_selection(c: Checker, spec: Mapping[str, Any]) -> None:
    """What must hold before we can tell whether the policy selects a workload (Istio's
    validateOneOfSelectorType and validatePolicyTargetReference(s))."""
    if spec.get("selector") is not None and (spec.get("targetRef") or spec.get("targetRefs")):
        c.error("spec.selector", "selector and targetRef(s) are mutually exclusive")
    if spec.get("targetRef") and spec.get("targetRefs"):
        c.error("spec.targetRef", "only one of targetRef or targetRefs can be set")
    selector = spec.get("selector")
    if selector is not None:
        sel = c.mapping(selector, "spec.selector")
        if sel is not None:
            c.fields(sel, frozenset({"matchLabels"}), "spec.selector")
            labels = c.mapping(sel.get("matchLabels"), "spec.selector.matchLabels")
            for key, value in (labels or {}).items():
                lpath = f"spec.selector.matchLabels.{key}"
                if not isinstance(value, str) or not isinstance(key, str):
                    c.error(lpath, "label keys and values must be strings")
                elif not key:
                    c.error("spec.selector.matchLabels", "empty label keys are not supported")
                elif "*" in key or "*" in value:
                    c.error(lpath, "wildcards are not supported in selectors")
            if not labels:
                c.warn("spec.selector", "workload selector specified without labels")
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
            if ref_map is None:
                continue
            if not (ref_map.get("kind") and ref_map.get("name")):
                c.error(path, "a target reference needs a kind and a name")
            group, kind = ref_map.get("group", ""), ref_map.get("kind", "")
            if not isinstance(group, str) or not _REF_GROUP.match(group):
                c.error(f"{path}.group", f"invalid group {group!r}")
            if kind and (not isinstance(kind, str) or not _REF_KIND.match(kind)):
                c.error(f"{path}.kind", f"invalid kind {kind!r}")
            ns = ref_map.get("namespace")
            if ns and c.namespace and ns != c.namespace:
                c.error(
                    f"{path}.namespace",
                    "cross namespace referencing is not currently supported",
                )


def check_spec(c: Checker, spec: Mapping[str, Any]) -> None:
    """Validate ``spec`` (already known to be a mapping) into ``c.problems``/``c.warnings``."""
    c.fields(spec, SPEC_FIELDS, "spec")
    action = spec.get("action", "ALLOW") or "ALLOW"
    if not isinstance(action, str) or action not in ACTIONS:
        c.error("spec.action", f"unknown action {action!r}; expected one of {sorted(ACTIONS)}")
    rules = spec.get("rules")
    provider = spec.get("provider")
    if action in ("CUSTOM", "DENY") and rules is None:
        c.error(
            "spec.rules",
            f"{action} action without `rules` is meaningless as it will never be triggered; "
            "add an empty rule `{}` to trigger it for every request",
        )
    if action == "CUSTOM":
        prov = c.mapping(provider, "spec.provider")
        if provider is None:
            c.error("spec.provider", "the CUSTOM action requires a provider")
        elif prov is not None and not prov.get("name"):
            c.error("spec.provider.name", "must not be empty")
    elif provider is not None:
        c.error("spec.provider", f"must not be set with the non-CUSTOM action {action}")
    if rules is None:
        return
    if not isinstance(rules, list):
        c.error("spec.rules", "must be a list")
        return
    for i, rule in enumerate(rules):
        if rule is None:
            c.error(f"spec.rules[{i}]", "`rule` must not be null")
            continue
        _check_rule(c, rule, f"spec.rules[{i}]", action)


# Fields that still match on a TCP connection (everything else is HTTP-only).
_TCP_SOURCE_FIELDS = frozenset(
    f
    for base in ("principals", "ipBlocks", "namespaces", "remoteIpBlocks", "serviceAccounts")
    for f in (base, m.not_field(base))
)
# What a CUSTOM policy cannot match on: the ext_authz server sees no peer identity or JWT.
_CUSTOM_UNSUPPORTED_SOURCE = frozenset(
    f
    for base in ("namespaces", "serviceAccounts", "principals", "requestPrincipals")
    for f in (base, m.not_field(base))
)
_CUSTOM_UNSUPPORTED_KEYS = frozenset(
    {m.ATTR_SRC_NAMESPACE, m.ATTR_SRC_SERVICE_ACCOUNT, m.ATTR_SRC_PRINCIPAL}
)


def _check_rule(c: Checker, rule: Any, path: str, action: str) -> None:
    rule_map = c.mapping(rule, path)
    if rule_map is None:
        return
    c.fields(rule_map, RULE_FIELDS, path)
    seen: dict[str, bool] = {"from": False, "to": False, "tcp_from": False, "tcp_to": False}
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
        if not entries:
            c.error(f"{path}.{list_field}", "must not be empty")
        for j, entry in enumerate(entries):
            epath = f"{path}.{list_field}[{j}]"
            emap = c.mapping(entry, epath)
            if emap is None:
                continue
            if entry is None:
                c.error(epath, "must not be null")
                continue
            c.fields(emap, frozenset({inner}), epath)
            if emap.get(inner) is None:
                c.error(f"{epath}.{inner}", "must not be null")
                continue
            body = c.mapping(emap.get(inner), f"{epath}.{inner}")
            if body is None:
                continue
            seen[list_field] = True
            if not body:
                c.error(f"{epath}.{inner}", "must not be empty")
                continue
            c.fields(body, allowed, f"{epath}.{inner}")
            _check_fields(c, body, allowed, f"{epath}.{inner}", action)
            if list_field == "from" and _TCP_SOURCE_FIELDS & body.keys():
                seen["tcp_from"] = True
            if list_field == "to" and {"ports", "notPorts"} & body.keys():
                seen["tcp_to"] = True
    conditions = rule_map.get("when")
    if conditions is not None and not isinstance(conditions, list):
        c.error(f"{path}.when", "must be a list")
    elif conditions:
        for j, cond in enumerate(conditions):
            _check_condition(c, cond, f"{path}.when[{j}]", action)
    http_only_from = seen["from"] and not seen["to"] and not seen["tcp_from"]
    if action == "DENY" and (http_only_from or (seen["to"] and not seen["tcp_to"])):
        c.warn(
            path,
            "this DENY rule uses only HTTP attributes, so it denies all traffic to TCP ports "
            "under its scope; specify the port explicitly",
        )


def _check_fields(
    c: Checker, body: Mapping[str, Any], allowed: frozenset[str], path: str, action: str
) -> None:
    if ({"principals", "notPrincipals", "namespaces", "notNamespaces"} & body.keys()) and (
        {"serviceAccounts", "notServiceAccounts"} & body.keys()
    ):
        c.error(path, "cannot set serviceAccounts with namespaces or principals")
    for field in body:
        if field not in allowed:
            continue
        fpath = f"{path}.{field}"
        if action == "CUSTOM" and field in _CUSTOM_UNSUPPORTED_SOURCE:
            c.error(fpath, "not supported with the CUSTOM action")
        values = c.strings(body[field], fpath)
        if field in _IP_FIELDS:
            c.ips(values, fpath)
        elif field in ("ports", "notPorts"):
            c.ports(values, fpath)
        elif field in ("paths", "notPaths"):
            c.paths(values, fpath)
        elif field in ("serviceAccounts", "notServiceAccounts"):
            c.service_accounts(values, fpath)


def _check_condition(c: Checker, cond: Any, cpath: str, action: str) -> None:
    if cond is None:
        c.error(cpath, "must not be null")
        return
    cmap = c.mapping(cond, cpath)
    if cmap is None:
        return
    c.fields(cmap, CONDITION_FIELDS, cpath)
    key = cmap.get("key")
    if not isinstance(key, str) or not key:
        c.error(f"{cpath}.key", "must be a non-empty string")
        return
    problem = _condition_key_problem(key)
    if problem:
        c.error(f"{cpath}.key", problem)
    if action == "CUSTOM" and (key in _CUSTOM_UNSUPPORTED_KEYS or key.startswith("request.auth.")):
        c.error(f"{cpath}.key", f"{key} is not supported with the CUSTOM action")
    values = c.strings(cmap.get("values"), f"{cpath}.values")
    not_values = c.strings(cmap.get("notValues"), f"{cpath}.notValues")
    if not values and not not_values:
        c.error(cpath, f"at least one of values or notValues must be set for key {key!r}")
    for field, vals in (("values", values), ("notValues", not_values)):
        if key in _IP_KEYS:
            c.ips(vals, f"{cpath}.{field}")
        elif key == m.ATTR_DEST_PORT:
            c.ports(vals, f"{cpath}.{field}")
        elif key == m.ATTR_SRC_SERVICE_ACCOUNT:
            c.service_accounts(vals, f"{cpath}.{field}")
