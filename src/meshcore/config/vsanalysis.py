"""VirtualService rules that can never be used, as Istio's validation warns about them
(``analyzeUnreachableHTTPRules`` and its TCP and TLS forms): a rule after a rule without
matches, a match equal to an earlier one, and (HTTP) a prefix match covered by an earlier
prefix match on the same port, method, authority, headers, query parameters and
withoutHeaders. Istio's rules for "covered" are kept as they are, quirks included: a match
without a method counts as ``GET``, and two exact or prefix values cover each other when the
earlier one starts with the later one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from meshcore.config.validate import Checker, _d, _l

_EXACT, _PREFIX = "exact:", "prefix:"


def check_unreachable_rules(c: Checker, spec: dict[str, Any]) -> None:
    for kind in ("http", "tcp", "tls"):
        _analyze(c, kind, [_d(r) for r in _l(spec.get(kind))])


def _str_keys(value: Any) -> Any:
    """``value`` with every mapping key as text, so that sorting never compares ``0`` with
    ``""`` (the shape walk refuses such keys; this analysis runs beside it and must not crash)."""
    if isinstance(value, dict):
        return {str(k): _str_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_str_keys(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class _Prefixed:
    route: str
    match: str
    rule: int
    prefix: str
    port: Any
    method: str
    authority: str
    headers: dict[str, str]
    query: dict[str, str]
    without: dict[str, str]


def _analyze(c: Checker, kind: str, routes: list[dict[str, Any]]) -> None:
    seen: dict[str, int] = {}
    empty_at = -1
    prefixed: list[_Prefixed] = []
    for n, route in enumerate(routes):
        rname = _route_name(kind, route, n)
        matches = _l(route.get("match"))
        if not matches:
            if empty_at >= 0:
                _unused(c, kind, n, rname, "only the last rule can have no matches")
            empty_at = n
            continue
        duplicates = 0
        for k, match in enumerate(matches):
            if empty_at >= 0:
                _unused(c, kind, n, rname, "route without matches defined before")
                continue
            match = _d(match)
            key = json.dumps(_str_keys({f: v for f, v in match.items() if f != "name" or kind != "http"}),
                             sort_keys=True, default=str)  # fmt: skip
            mname = f'"{match["name"]}"' if kind == "http" and match.get("name") else f"#{k}"
            if key in seen:
                _ineffective(
                    c, kind, n, k, rname, mname, _route_name(kind, routes[seen[key]], seen[key])
                )
                duplicates += 1
                continue
            seen[key] = n
            if kind == "http":
                found = _prefixed(match, rname, mname, n)
                if found is not None:
                    prefixed.append(found)
        if duplicates == len(matches):
            _unused(c, kind, n, rname, "all matches used by prior rules")
    for i, a in enumerate(prefixed):
        for b in prefixed[i + 1 :]:
            if b.prefix != a.prefix and _covers(a, b):
                _ineffective(
                    c, kind, b.rule, None, b.route,
                    f"{b.match} of prefix {b.prefix}", f"{a.match} of prefix {a.prefix} on {a.route}",
                )  # fmt: skip


def _route_name(kind: str, route: dict[str, Any], n: int) -> str:
    return f'"{route["name"]}"' if kind == "http" and route.get("name") else f"#{n}"


def _unused(c: Checker, kind: str, n: int, rname: str, reason: str) -> None:
    c.warn(("spec", kind, n), f"virtualService rule {rname} not used ({reason})")


def _ineffective(
    c: Checker, kind: str, n: int, k: int | None, rname: str, mname: str, other: str
) -> None:
    path = ("spec", kind, n) if k is None else ("spec", kind, n, "match", k)
    c.warn(
        path,
        f"virtualService rule {rname} match {mname} is not used (duplicate/overlapping match"
        f" in rule {other})",
    )


def _exact_or_prefix(spec: Any) -> str:
    spec = _d(spec)
    if spec.get("exact"):
        return _EXACT + str(spec["exact"])
    if spec.get("prefix"):
        return _PREFIX + str(spec["prefix"])
    return ""


def _prefixed(match: dict[str, Any], rname: str, mname: str, n: int) -> _Prefixed | None:
    prefix = _d(match.get("uri")).get("prefix")
    if not prefix:
        return None
    return _Prefixed(
        route=rname,
        match=mname,
        rule=n,
        prefix=str(prefix),
        port=match.get("port"),
        method=_exact_or_prefix(match.get("method")) or _EXACT + "GET",
        authority=_exact_or_prefix(match.get("authority")),
        headers={str(k): _exact_or_prefix(v) for k, v in _d(match.get("headers")).items()},
        query={str(k): _exact_or_prefix(v) for k, v in _d(match.get("queryParams")).items()},
        without={str(k): _exact_or_prefix(v) for k, v in _d(match.get("withoutHeaders")).items()},
    )


def _covers(a: _Prefixed, b: _Prefixed) -> bool:
    """Istio's coveredValidation: ``a`` (earlier) takes every request ``b`` would."""
    if not b.prefix.startswith(a.prefix) or a.port != b.port:
        return False
    for x, y in ((a.method, b.method), (a.authority, b.authority)):
        if x != y and not x.startswith(y):
            return False
    for xs, ys in ((a.headers, b.headers), (a.query, b.query), (a.without, b.without)):
        if len(xs) != len(ys):
            return False
        for key, x in xs.items():
            if key not in ys or (x != ys[key] and not x.startswith(ys[key])):
                return False
    return True
