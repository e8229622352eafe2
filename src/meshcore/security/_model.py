"""One AuthorizationPolicy rule -> one Envoy RBAC policy, as Istio's authz model builds it.

Everything here builds plain dictionaries keyed by proto field names: the generated message
constructors take them directly (the walk happens in C, ten times faster than json_format), and
:mod:`meshcore.security.authz` builds each filter message once, at the end.
The input has already been validated by :mod:`meshcore.security._validate`, so the only
"errors" left at generation time are the ones Istio also produces on purpose: HTTP-only
attributes on a TCP filter chain.
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshcore.names import JWT_AUTHN_NAME, JWT_PAYLOAD_KEY

Json = dict[str, Any]

SPIFFE_PREFIX = "spiffe://"
JWT_FILTER = JWT_AUTHN_NAME
JWT_PAYLOAD = JWT_PAYLOAD_KEY
URI_TEMPLATE_TYPE = (
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
)


def _uri_template_config() -> Any:
    # Imported on use: validation (no protos needed) shares this module with the translation.
    return importlib.import_module(
        "envoy.extensions.path.match.uri_template.v3.uri_template_match_pb2"
    ).UriTemplateMatchConfig


MATCH_ONE_TEMPLATE = "{*}"
MATCH_ANY_TEMPLATE = "{**}"

# Condition keys (the `when` attributes) and the internal keys of `from`/`to` fields.
ATTR_REQUEST_HEADER = "request.headers"
ATTR_REQUEST_INLINE_HEADER = "request.experimental.inline.headers"
ATTR_SRC_IP = "source.ip"
ATTR_REMOTE_IP = "remote.ip"
ATTR_SRC_NAMESPACE = "source.namespace"
ATTR_SRC_SERVICE_ACCOUNT = "source.serviceAccount"
ATTR_SRC_PRINCIPAL = "source.principal"
ATTR_REQUEST_PRINCIPAL = "request.auth.principal"
ATTR_REQUEST_AUDIENCES = "request.auth.audiences"
ATTR_REQUEST_PRESENTER = "request.auth.presenter"
ATTR_REQUEST_CLAIMS = "request.auth.claims"
ATTR_DEST_IP = "destination.ip"
ATTR_DEST_PORT = "destination.port"
ATTR_CONN_SNI = "connection.sni"
ATTR_ENVOY_FILTER = "experimental.envoy.filters."
ATTR_SRC_TRUST_DOMAIN = "source.trustDomain"  # internal: `from.source.trustDomains`
METHOD_HEADER = ":method"
HOST_HEADER = ":authority"
PATH_MATCHER = "path-matcher"

# The characters Go's regexp.QuoteMeta escapes: Istio quotes with it, so must we, or the
# regexes we emit would differ from Istio's (and from its goldens) on `.` and brackets.
_GO_REGEX_SPECIAL = frozenset("\\.+*?()|[]{}^$")


class HttpOnlyError(Exception):
    """An HTTP-only attribute met on a TCP filter chain (Istio drops it, see `checkError`)."""


def go_quote_meta(text: str) -> str:
    return "".join("\\" + c if c in _GO_REGEX_SPECIAL else c for c in text)


# --- matchers (envoy.type.matcher.v3) -------------------------------------------------------


def sm_regex(regex: str) -> Json:
    return {"safe_regex": {"regex": regex}}


def string_matcher(value: str, prefix: str = "") -> Json:
    """Istio's wildcard convention: `*` any non-empty, `*x` suffix, `x*` prefix, else exact."""
    if value == "*":
        return sm_regex(".+")
    if value.startswith("*"):
        if not prefix:
            return {"suffix": value[1:]}
        return sm_regex(go_quote_meta(prefix) + ".*" + go_quote_meta(value[1:]))
    if value.endswith("*"):
        return {"prefix": prefix + value[:-1]}
    return {"exact": prefix + value}


def header_matcher(name: str, value: str, ignore_case: bool = False) -> Json:
    if value == "*":
        return {"name": name, "present_match": True}
    if value.startswith("*"):
        sm: Json = {"suffix": value[1:]}
    elif value.endswith("*"):
        sm = {"prefix": value[:-1]}
    else:
        sm = {"exact": value}
    if ignore_case:
        sm["ignore_case"] = True
    return {"name": name, "string_match": sm}


def inline_header_matcher(name: str, value: str) -> Json:
    """Match one element of a comma-joined header value (RFC 7230 lists)."""
    if value == "*":
        return {"name": name, "present_match": True}
    if value.startswith("*"):
        regex = ".*" + go_quote_meta(value[1:])
    elif value.endswith("*"):
        regex = go_quote_meta(value[:-1]) + ".*"
    else:
        regex = go_quote_meta(value)
    full = f"^{regex}$|^{regex},.*|.*,{regex},.*|.*,{regex}$"
    return {"name": name, "safe_regex_match": {"regex": full}}


def value_or(matchers: list[Json]) -> Json:
    if len(matchers) == 1:
        return matchers[0]
    return {"or_match": {"value_matchers": matchers}}


def string_or_value(values: Sequence[str]) -> Json:
    return value_or([{"string_match": string_matcher(v)} for v in values])


def metadata_matcher(filter_name: str, keys: Sequence[str], value: Json) -> Json:
    return {"filter": filter_name, "path": [{"key": k} for k in keys], "value": value}


def jwt_claim_list_matcher(claims: Sequence[str], value: Json) -> Json:
    # A claim may be a string or a list of strings: match either shape.
    either = {"or_match": {"value_matchers": [{"list_match": {"one_of": value}}, value]}}
    return metadata_matcher(JWT_FILTER, [JWT_PAYLOAD, *claims], either)


def jwt_claim_string_matcher(claim: str, sm: Json) -> Json:
    return metadata_matcher(JWT_FILTER, [JWT_PAYLOAD, claim], {"string_match": sm})


def cidr_range(value: str) -> Json:
    """Single IP -> /32 or /128; CIDR kept as written (Istio does not mask host bits)."""
    if "/" in value:
        iface = ipaddress.ip_interface(value)
        return {"address_prefix": str(iface.ip), "prefix_len": {"value": iface.network.prefixlen}}
    addr = ipaddress.ip_address(value)
    return {"address_prefix": str(addr), "prefix_len": {"value": addr.max_prefixlen}}


def path_template(path: str) -> str:
    return path.replace(MATCH_ONE_TEMPLATE, "*").replace(MATCH_ANY_TEMPLATE, "**")


def contains_path_template(path: str) -> bool:
    return MATCH_ONE_TEMPLATE in path or MATCH_ANY_TEMPLATE in path


def service_account_regex(default_namespace: str, value: str) -> str:
    ns, sep, sa = value.partition("/")
    if not sep:
        ns, sa = default_namespace, value
    return f"spiffe://.+/ns/{ns}/(.+/|)sa/{sa}(/.+)?"


def trust_domain_matcher(value: str) -> Json:
    # Only the trust-domain segment of the SPIFFE ID is matched, so wildcards stop at `/`.
    if value == "*":
        return sm_regex("spiffe://[^/]+/.*")
    if value.startswith("*"):
        return sm_regex("spiffe://[^/]*" + go_quote_meta(value[1:]) + "/.*")
    if value.endswith("*"):
        return sm_regex("spiffe://" + go_quote_meta(value[:-1]) + "[^/]*/.*")
    return {"prefix": f"{SPIFFE_PREFIX}{value}/"}


def extract_bracket_names(text: str) -> list[str]:
    """`[a][b]` -> [a, b]; `[a.b]` -> [a.b] (Istio's nested-claim syntax)."""
    names: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos] != "[":
            break
        end = text.find("]", pos + 1)
        inner = text[pos + 1 : end] if end != -1 else ""
        if end == -1 or "[" in inner:
            break
        names.append(inner)
        pos = end + 1
    else:
        return names
    # Not a clean sequence of brackets: the whole thing is one name, as Istio falls back to.
    return [text[1:-1]]


# --- principals and permissions (envoy.config.rbac.v3) --------------------------------------


def authenticated(sm: Json) -> Json:
    return {"authenticated": {"principal_name": sm}}


def p_or(ids: list[Json]) -> Json:
    return {"or_ids": {"ids": ids}}


def p_and(ids: list[Json]) -> Json:
    return {"and_ids": {"ids": ids}}


def p_not(principal: Json) -> Json:
    return {"not_id": principal}


def r_or(rules: list[Json]) -> Json:
    return {"or_rules": {"rules": rules}}


def r_and(rules: list[Json]) -> Json:
    return {"and_rules": {"rules": rules}}


def r_not(rule: Json) -> Json:
    return {"not_rule": rule}


ANY_PERMISSION: Json = {"any": True}
ANY_PRINCIPAL: Json = {"any": True}
# A policy without rules: an explicit policy that never matches (so ALLOW denies everything).
MATCH_NEVER: Json = {
    "permissions": [{"not_rule": {"any": True}}],
    "principals": [{"not_id": {"any": True}}],
}


def _http_only(key: str, for_tcp: bool) -> None:
    if for_tcp:
        raise HttpOnlyError(f"{key!r} is HTTP only")


def _bracket_name(key: str, prefix: str) -> str:
    return key[len(prefix) + 1 : -1]


# A generator maps one value to one permission or principal; an "extended" generator maps
# the whole value list to one (Istio aggregates request-auth and metadata matchers that way).
Single = Callable[[str, str, bool, str], Json]
Extended = Callable[[str, Sequence[str], bool], Json]


def _g_dest_ip(_key: str, value: str, _tcp: bool, _ns: str) -> Json:
    return {"destination_ip": cidr_range(value)}


def _g_dest_port(_key: str, value: str, _tcp: bool, _ns: str) -> Json:
    return {"destination_port": int(value)}


def _g_sni(_key: str, value: str, _tcp: bool, _ns: str) -> Json:
    return {"requested_server_name": string_matcher(value)}


def _g_host(key: str, value: str, tcp: bool, _ns: str) -> Json:
    _http_only(key, tcp)
    return {"header": header_matcher(HOST_HEADER, value, ignore_case=True)}


def _g_method(key: str, value: str, tcp: bool, _ns: str) -> Json:
    _http_only(key, tcp)
    return {"header": header_matcher(METHOD_HEADER, value)}


def _g_path(key: str, value: str, tcp: bool, _ns: str) -> Json:
    _http_only(key, tcp)
    if contains_path_template(value):
        config = _uri_template_config()(path_template=path_template(value)).SerializeToString()
        any_config = {"type_url": URI_TEMPLATE_TYPE, "value": config}
        return {"uri_template": {"name": "uri-template", "typed_config": any_config}}
    return {"url_path": {"path": string_matcher(value)}}


def _g_src_ip(_key: str, value: str, _tcp: bool, _ns: str) -> Json:
    return {"direct_remote_ip": cidr_range(value)}


def _g_remote_ip(_key: str, value: str, _tcp: bool, _ns: str) -> Json:
    return {"remote_ip": cidr_range(value)}


def _g_namespace(_key: str, value: str, _tcp: bool, _ns: str) -> Json:
    return authenticated(sm_regex(".*/ns/" + go_quote_meta(value).replace("\\*", ".*") + "/.*"))


def _g_service_account(_key: str, value: str, _tcp: bool, ns: str) -> Json:
    return authenticated(sm_regex(service_account_regex(ns, value)))


def _g_principal(_key: str, value: str, _tcp: bool, _ns: str) -> Json:
    return authenticated(string_matcher(value, SPIFFE_PREFIX))


def _g_trust_domain(_key: str, value: str, _tcp: bool, _ns: str) -> Json:
    return authenticated(trust_domain_matcher(value))


def _g_header(key: str, value: str, tcp: bool, _ns: str) -> Json:
    _http_only(key, tcp)
    return {"header": header_matcher(_bracket_name(key, ATTR_REQUEST_HEADER), value)}


def _g_inline_header(key: str, value: str, tcp: bool, _ns: str) -> Json:
    _http_only(key, tcp)
    name = _bracket_name(key, ATTR_REQUEST_INLINE_HEADER)
    return {"header": inline_header_matcher(name, value)}


_MATCH_ANY = sm_regex(".+")


def _x_request_principal(key: str, values: Sequence[str], tcp: bool) -> Json:
    _http_only(key, tcp)
    ors: list[Json] = []
    for value in values:
        # The issuer may itself be a URL: split at the last `/`.
        idx = value.rfind("/")
        found = idx >= 0
        iss, sub = (value[:idx], value[idx + 1 :]) if found else (value, "")
        if value == "*":
            m_iss, m_sub = _MATCH_ANY, _MATCH_ANY
        elif value.startswith("*"):
            if found:
                m_iss = _MATCH_ANY if iss == "*" else {"suffix": iss[1:]}
                m_sub = {"exact": sub}
            else:
                m_iss, m_sub = _MATCH_ANY, {"suffix": value[1:]}
        elif value.endswith("*"):
            if found:
                m_iss = {"exact": iss}
                m_sub = _MATCH_ANY if sub == "*" else {"prefix": sub[:-1]}
            else:
                m_iss, m_sub = {"prefix": value[:-1]}, _MATCH_ANY
        else:
            m_iss, m_sub = {"exact": iss}, {"exact": sub}
        ors.append(
            p_and(
                [
                    {"metadata": jwt_claim_string_matcher("iss", m_iss)},
                    {"metadata": jwt_claim_string_matcher("sub", m_sub)},
                ]
            )
        )
    return ors[0] if len(ors) == 1 else p_or(ors)


def _x_audiences(key: str, values: Sequence[str], tcp: bool) -> Json:
    _http_only(key, tcp)
    return {"metadata": jwt_claim_list_matcher(["aud"], string_or_value(values))}


def _x_presenter(key: str, values: Sequence[str], tcp: bool) -> Json:
    _http_only(key, tcp)
    return {"metadata": jwt_claim_list_matcher(["azp"], string_or_value(values))}


def _x_claims(key: str, values: Sequence[str], tcp: bool) -> Json:
    _http_only(key, tcp)
    claims = extract_bracket_names(key[len(ATTR_REQUEST_CLAIMS) :])
    return {"metadata": jwt_claim_list_matcher(claims, string_or_value(values))}


def _x_envoy_filter(key: str, values: Sequence[str], _tcp: bool) -> Json:
    # "experimental.envoy.filters.a.b[c]" -> filter "envoy.filters.a.b", key "c".
    filter_name, _, sub_key = key.removeprefix("experimental.").removesuffix("]").partition("[")
    matchers: list[Json] = []
    for value in values:
        if value.startswith("[") and value.endswith("]"):
            inner = {"string_match": string_matcher(value.strip("[]"))}
            matchers.append({"list_match": {"one_of": inner}})
        else:
            matchers.append({"string_match": string_matcher(value)})
    return {"metadata": metadata_matcher(filter_name, [sub_key], value_or(matchers))}


@dataclass(slots=True)
class _Rule:
    key: str
    values: Sequence[str]
    not_values: Sequence[str]
    single: Single | None = None
    extended: Extended | None = None


# `when` keys: (exact key or prefix, is_prefix, goes to permission?, generator)
_WHEN_SINGLE: Mapping[str, tuple[bool, Single]] = {
    ATTR_DEST_IP: (True, _g_dest_ip),
    ATTR_DEST_PORT: (True, _g_dest_port),
    ATTR_CONN_SNI: (True, _g_sni),
    ATTR_SRC_IP: (False, _g_src_ip),
    ATTR_REMOTE_IP: (False, _g_remote_ip),
    ATTR_SRC_NAMESPACE: (False, _g_namespace),
    ATTR_SRC_SERVICE_ACCOUNT: (False, _g_service_account),
    ATTR_SRC_PRINCIPAL: (False, _g_principal),
}
_WHEN_EXTENDED: Mapping[str, Extended] = {
    ATTR_REQUEST_PRINCIPAL: _x_request_principal,
    ATTR_REQUEST_AUDIENCES: _x_audiences,
    ATTR_REQUEST_PRESENTER: _x_presenter,
}

# `from.source` fields in Istio's insertion order (each goes to the front of the list).
_SOURCE_FIELDS: tuple[tuple[str, str, Single | None, Extended | None], ...] = (
    (ATTR_SRC_IP, "ipBlocks", _g_src_ip, None),
    (ATTR_REMOTE_IP, "remoteIpBlocks", _g_remote_ip, None),
    (ATTR_SRC_NAMESPACE, "namespaces", _g_namespace, None),
    (ATTR_SRC_SERVICE_ACCOUNT, "serviceAccounts", _g_service_account, None),
    (ATTR_REQUEST_PRINCIPAL, "requestPrincipals", None, _x_request_principal),
    (ATTR_SRC_PRINCIPAL, "principals", _g_principal, None),
    (ATTR_SRC_TRUST_DOMAIN, "trustDomains", _g_trust_domain, None),
)
# `to.operation` fields, likewise.
_OPERATION_FIELDS: tuple[tuple[str, str, Single], ...] = (
    (ATTR_DEST_PORT, "ports", _g_dest_port),
    (PATH_MATCHER, "paths", _g_path),
    (METHOD_HEADER, "methods", _g_method),
    (HOST_HEADER, "hosts", _g_host),
)


WHEN_KEYS: tuple[str, ...] = (*_WHEN_SINGLE, *_WHEN_EXTENDED)


def is_known_condition_key(key: str) -> bool:
    return (
        key in _WHEN_SINGLE
        or key in _WHEN_EXTENDED
        or key.startswith(
            (
                ATTR_ENVOY_FILTER,
                ATTR_REQUEST_HEADER,
                ATTR_REQUEST_INLINE_HEADER,
                ATTR_REQUEST_CLAIMS,
            )
        )
    )


def not_field(field: str) -> str:
    """`paths` -> `notPaths`."""
    return "not" + field[0].upper() + field[1:]


def _strs(value: Any) -> list[str]:
    return [str(v) for v in value] if value else []


class TrustDomainBundle:
    """The local trust domain first, then its aliases (Istio's trustdomain.Bundle)."""

    def __init__(self, trust_domain: str, aliases: Sequence[str]) -> None:
        self.trust_domains: list[str] = [trust_domain, *aliases]

    def _match(self, td: str) -> bool:
        def prefix(a: str, pat: str) -> bool:
            return pat.endswith("*") and a.startswith(pat[:-1])

        def suffix(a: str, pat: str) -> bool:
            return pat.startswith("*") and a.endswith(pat[1:])

        return any(
            s in (td, "*") or prefix(td, s) or prefix(s, td) or suffix(td, s) or suffix(s, td)
            for s in self.trust_domains
        )

    def replace_aliases(self, principals: Sequence[str]) -> list[str]:
        """Expand each `<td>/ns/<ns>/sa/<sa>` principal to every trust domain of the bundle."""
        out: list[str] = []
        for principal in principals:
            parts = principal.split("/")
            # Not a 5-part identity, or a `*` trust domain: the trust domain is not enforced.
            if len(parts) != 5 or parts[0] == "*":
                out.append(principal)
                continue
            td_from = parts[0]
            if not (self._match(td_from) or td_from == "cluster.local"):
                out.append(principal)
                continue
            expanded: list[str] = []
            for td in self.trust_domains:
                if td_from.startswith("*") and td.endswith(td_from[1:]):
                    candidate = principal
                else:
                    candidate = "/".join([td, *parts[1:]])
                if candidate not in expanded:
                    expanded.append(candidate)
            out.extend(expanded)
        return out

    def expand_trust_domains(self, values: Sequence[str]) -> list[str]:
        out: list[str] = []
        for value in values:
            for td in self.trust_domains if value in self.trust_domains else [value]:
                if td not in out:
                    out.append(td)
        return out


class Model:
    """One rule: a list of permission rule-lists (one per `to`) and principal rule-lists."""

    __slots__ = ("permissions", "policy_namespace", "principals")

    def __init__(self, rule: Mapping[str, Any], policy_namespace: str) -> None:
        self.policy_namespace = policy_namespace
        base_perm: list[_Rule] = []
        base_prin: list[_Rule] = []
        for cond in rule.get("when") or ():
            key = str(cond["key"])
            values, not_values = _strs(cond.get("values")), _strs(cond.get("notValues"))
            if not values and not not_values:
                continue
            if key in _WHEN_SINGLE:
                is_perm, gen = _WHEN_SINGLE[key]
                (base_perm if is_perm else base_prin).append(_Rule(key, values, not_values, gen))
            elif key in _WHEN_EXTENDED:
                base_prin.append(_Rule(key, values, not_values, extended=_WHEN_EXTENDED[key]))
            elif key.startswith(ATTR_ENVOY_FILTER):
                base_perm.append(_Rule(key, values, not_values, extended=_x_envoy_filter))
            elif key.startswith(ATTR_REQUEST_INLINE_HEADER):
                base_prin.append(_Rule(key, values, not_values, _g_inline_header))
            elif key.startswith(ATTR_REQUEST_HEADER):
                base_prin.append(_Rule(key, values, not_values, _g_header))
            elif key.startswith(ATTR_REQUEST_CLAIMS):
                base_prin.append(_Rule(key, values, not_values, extended=_x_claims))
            else:  # pragma: no cover - rejected by validation first
                raise ValueError(f"unknown attribute {key}")

        self.principals: list[list[_Rule]] = []
        for src_entry in rule.get("from") or ():
            merged = list(base_prin)
            src = src_entry.get("source") or {}

            for key, field, single, ext in _SOURCE_FIELDS:
                vals, nots = _strs(src.get(field)), _strs(src.get(not_field(field)))
                if vals or nots:
                    # Istio inserts each field at the front: the last listed comes first.
                    merged.insert(0, _Rule(key, vals, nots, single, ext))
            self.principals.append(merged)
        if not rule.get("from"):
            self.principals.append(base_prin)

        self.permissions: list[list[_Rule]] = []
        for to_entry in rule.get("to") or ():
            merged_p = list(base_perm)
            op = to_entry.get("operation") or {}
            for key, field, op_gen in _OPERATION_FIELDS:
                vals, nots = _strs(op.get(field)), _strs(op.get(not_field(field)))
                if vals or nots:
                    merged_p.insert(0, _Rule(key, vals, nots, op_gen))
            self.permissions.append(merged_p)
        if not rule.get("to"):
            self.permissions.append(base_perm)

    def migrate_trust_domain(self, bundle: TrustDomainBundle) -> None:
        for rules in self.principals:
            for i, r in enumerate(rules):
                if r.key == ATTR_SRC_PRINCIPAL:
                    rules[i] = _Rule(
                        r.key,
                        bundle.replace_aliases(r.values) if r.values else r.values,
                        bundle.replace_aliases(r.not_values) if r.not_values else r.not_values,
                        r.single,
                        r.extended,
                    )
                elif r.key == ATTR_SRC_TRUST_DOMAIN:
                    rules[i] = _Rule(
                        r.key,
                        bundle.expand_trust_domains(r.values),
                        bundle.expand_trust_domains(r.not_values),
                        r.single,
                        r.extended,
                    )

    def generate(self, for_tcp: bool, strict: bool) -> Json:
        """The Envoy RBAC policy. ``strict`` (ALLOW) turns an HTTP-only value on TCP into
        dropping the whole rule (raises HttpOnlyError); otherwise only that value is dropped,
        which widens a DENY or AUDIT rule: both fail closed, as in Istio."""
        permissions = [
            r_and(self._list(rl, for_tcp, strict, True) or [ANY_PERMISSION])
            for rl in self.permissions
        ]
        principals = [
            p_and(self._list(rl, for_tcp, strict, False) or [ANY_PRINCIPAL])
            for rl in self.principals
        ]
        return {"permissions": permissions, "principals": principals}

    def _list(self, rules: list[_Rule], for_tcp: bool, strict: bool, perm: bool) -> list[Json]:
        out: list[Json] = []
        both = (p_or, p_not) if not perm else (r_or, r_not)
        or_fn, not_fn = both
        for r in rules:
            for negate, vals in ((False, r.values), (True, r.not_values)):
                if not vals:
                    continue
                if r.extended is not None:
                    try:
                        item = r.extended(r.key, vals, for_tcp)
                    except HttpOnlyError:
                        if strict:
                            raise
                        continue
                    out.append(not_fn(item) if negate else item)
                    continue
                assert r.single is not None
                ors: list[Json] = []
                for v in vals:
                    try:
                        ors.append(r.single(r.key, v, for_tcp, self.policy_namespace))
                    except HttpOnlyError:
                        if strict:
                            raise
                if ors:
                    out.append(not_fn(or_fn(ors)) if negate else or_fn(ors))
        return out
