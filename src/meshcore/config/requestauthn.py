"""RequestAuthentication's rules, as Istio's webhook checks them (``ValidateRequestAuthentication``
and ``validateJwtRule`` in Istio's pkg/config/validation): the selection (selector or
targetRef(s), shared with AuthorizationPolicy), and per JWT rule the issuer (or jwksUri), the
audiences, the JWKS URL and inline JWKS, the token locations, the claim headers and the timeout.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from meshcore.config.validate import Checker, Path, _d, parse_path
from meshcore.security import _validate as authz_validate

# The key types Envoy's JWT verifier reads (jwt_verify_lib), with the members each needs.
JWK_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "RSA": ("n", "e"),
    "EC": ("crv", "x", "y"),
    "oct": ("k",),
    "OKP": ("crv", "x"),
}


def jwks_uri_problem(uri: str) -> str | None:
    """Why ``uri`` is not a JWKS URL Istio accepts (``security.ParseJwksURI``): http or https,
    with a host and a valid port."""
    try:
        parsed = urllib.parse.urlsplit(uri)
        port = parsed.port
    except ValueError as exc:
        return f"invalid jwksUri {uri!r}: {exc}"
    if parsed.scheme not in ("http", "https"):
        return f"jwksUri {uri!r}: URI scheme {parsed.scheme!r} is not supported (http or https)"
    if not parsed.hostname:
        return f"jwksUri {uri!r} has no host"
    if port == 0:
        return f"jwksUri {uri!r}: port 0 is not valid"
    return None


def jwks_problem(text: str) -> str | None:
    """Why ``text`` is not a JWKS (a JSON key set, or one key) Envoy can verify tokens with."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return f"jwks parse error: {exc}"
    if isinstance(doc, dict) and "keys" not in doc and "kty" in doc:
        doc = {"keys": [doc]}
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        return "jwks parse error: expected a JSON object with a non-empty 'keys' list"
    for i, key in enumerate(doc["keys"]):
        if not isinstance(key, dict):
            return f"jwks parse error: keys[{i}] is not an object"
        kty = key.get("kty")
        if not isinstance(kty, str) or kty not in JWK_MEMBERS:
            return f"jwks parse error: keys[{i}].kty {kty!r} is not one of {sorted(JWK_MEMBERS)}"
        for member in JWK_MEMBERS[kty]:
            if not isinstance(key.get(member), str) or not key[member]:
                return f"jwks parse error: keys[{i}] ({kty}) needs the member {member!r}"
    return None


def check_request_authentication(c: Checker, spec: dict[str, Any], name: str) -> None:
    selection = authz_validate.Checker(namespace=c.namespace, name=name)
    authz_validate.check_selection(selection, spec)
    c.target_kinds(spec)
    for p in selection.problems:
        c.error(parse_path(p.path), p.message)
    for p in selection.warnings:
        c.warn(parse_path(p.path), p.message)
    rules = spec.get("jwtRules")
    for i, rule in enumerate(rules if isinstance(rules, list) else ()):
        if isinstance(rule, dict):
            _jwt_rule(c, rule, ("spec", "jwtRules", i))


def _jwt_rule(c: Checker, rule: dict[str, Any], path: Path) -> None:
    issuer, uri = rule.get("issuer") or "", rule.get("jwksUri") or ""
    if not issuer and not uri:
        c.error(path + ("issuer",), "issuer or jwksUri must be non-empty string")
    for j, aud in enumerate(_list(rule.get("audiences"))):
        if aud == "":
            c.error(path + ("audiences", j), "audience must be non-empty string")
    if isinstance(uri, str) and uri:
        problem = jwks_uri_problem(uri)
        if problem:
            c.error(path + ("jwksUri",), problem)
    jwks = rule.get("jwks")
    if isinstance(jwks, str) and jwks:
        problem = jwks_problem(jwks)
        if problem:
            c.error(path + ("jwks",), problem)
    for j, loc in enumerate(_list(rule.get("fromHeaders"))):
        if loc is None:
            continue  # a null list item: reported by the shape walk
        if not _d(loc).get("name"):
            c.error(
                path + ("fromHeaders", j, "name"), "location header name must be non-empty string"
            )
        else:
            c.header_name(_d(loc)["name"], path + ("fromHeaders", j, "name"))
    for j, param in enumerate(_list(rule.get("fromParams"))):
        if param == "":
            c.error(path + ("fromParams", j), "location query must be non-empty string")
    for j, cookie in enumerate(_list(rule.get("fromCookies"))):
        if cookie == "":
            c.error(path + ("fromCookies", j), "cookie name must be non-empty string")
    for j, out in enumerate(_list(rule.get("outputClaimToHeaders"))):
        at = path + ("outputClaimToHeaders", j)
        if out is None:
            continue  # a null list item: reported by the shape walk
        header, claim = _d(out).get("header"), _d(out).get("claim")
        if not header or not claim:
            c.error(at, "outputClaimToHeaders header and claim value must be non-empty string")
        elif isinstance(header, str):
            if header.startswith(":"):
                c.error(at + ("header",), f"invalid header name {header!r}")
            else:
                c.header_name(header, at + ("header",))
    for j, claim in enumerate(_list(rule.get("spaceDelimitedClaims"))):
        if claim == "":
            c.error(path + ("spaceDelimitedClaims", j), "claim name must be non-empty string")
    header = rule.get("outputPayloadToHeader")
    if isinstance(header, str) and header:
        c.header_name(header, path + ("outputPayloadToHeader",))
    c.duration(rule.get("timeout"), path + ("timeout",), min_ms=1)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
