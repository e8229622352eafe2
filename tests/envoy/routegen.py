"""Random RouteConfigurations and near-miss requests for the Envoy differential test.

Every route answers with a direct_response whose body is ``r<index>`` (its index in
``RouteTable.routes``), so Envoy's answer names the route it chose.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

# Registers UriTemplateMatchConfig so that json_format can parse path_match_policy.
import envoy.extensions.path.match.uri_template.v3.uri_template_match_pb2  # noqa: F401

SEGMENTS = ["api", "API", "v1", "v2", "users", "u", "a", "b", "static", "x.y", "~t", "12"]
EXACT_DOMAINS = [
    "a.com",
    "b.a.com",
    "x.b.a.com",
    "foo",
    "foo.bar",
    "a.com:8080",
    "Mixed.Case.org",
    "[::1]",
    "10.0.0.1:80",
]
SUFFIX_DOMAINS = ["*.a.com", "*a.com", "*.com", "*-b.a.com", "*.bar"]
PREFIX_DOMAINS = ["foo.*", "b.*", "a.com:*", "x.*"]
REGEXES = [
    r"/api/v[0-9]+",
    r"/users/\d+",
    r"/[a-z]+/x",
    r"(?i)/API/.*",
    r"/a/.*",
    r"/b/[^/]+/c",
    r"/static/.+\.y",
    r"/u(/.*)?",
]
TEMPLATES = [
    "/api/{x}",
    "/api/**",
    "/users/{id}/b",
    "/{a}/{b=**}",
    "/v1/*/x.y",
    "/a/{f}.y",
    "/static/{rest=**}",
    "/u/",
    "/**/b",
    "/a/{x=**}/b",
    "/",
    "/{v=api/*}/users",
]
URI_TEMPLATE_TYPE = (
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
)
HEADER_NAMES = ["x-a", "x-b"]
HEADER_VALUES = ["v", "V", "val", "value", "10", "42", "-3", "abc", "a,b", ""]


@dataclass
class Case:
    """One request: authority, path, method, headers (repeated names allowed)."""

    authority: str
    path: str
    method: str = "GET"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class GeneratedConfig:
    route_config: dict[str, Any]
    hcm_options: dict[str, Any]
    cases: list[Case]


def _path(rng: random.Random, max_segs: int = 3) -> str:
    return "/" + "/".join(rng.choice(SEGMENTS) for _ in range(rng.randint(0, max_segs)))


def _string_match(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["exact", "prefix", "suffix", "contains", "safe_regex"])
    if kind == "safe_regex":
        return {"safe_regex": {"regex": rng.choice(["v.*", "[0-9]+", "a|b", "(?i)VAL"])}}
    value = rng.choice([v for v in HEADER_VALUES if v])
    m: dict[str, Any] = {kind: value}
    if rng.random() < 0.3:
        m["ignore_case"] = True
    return m


def _header_matcher(rng: random.Random) -> dict[str, Any]:
    h: dict[str, Any] = {"name": rng.choice(HEADER_NAMES)}
    kind = rng.choice(
        [
            "string_match",
            "string_match",
            "exact_match",
            "prefix_match",
            "present",
            "range",
            "none",
            "safe_regex_match",
            "contains_match",
            "suffix_match",
        ]
    )
    if kind == "string_match":
        h["string_match"] = _string_match(rng)
    elif kind == "exact_match":
        h["exact_match"] = rng.choice(HEADER_VALUES)
    elif kind in ("prefix_match", "suffix_match", "contains_match"):
        h[kind] = rng.choice([v for v in HEADER_VALUES if v])
    elif kind == "safe_regex_match":
        h["safe_regex_match"] = {"regex": rng.choice(["v.*", "[0-9]+", ".*,.*"])}
    elif kind == "present":
        h["present_match"] = rng.random() < 0.6
    elif kind == "range":
        lo = rng.randint(-5, 40)
        h["range_match"] = {"start": str(lo), "end": str(lo + rng.randint(0, 20))}
    if rng.random() < 0.25:
        h["invert_match"] = True
    if rng.random() < 0.2:
        h["treat_missing_header_as_empty"] = True
    return h


def _route_match(rng: random.Random) -> dict[str, Any]:
    m: dict[str, Any] = {}
    kind = rng.choices(
        ["prefix", "path", "path_separated_prefix", "safe_regex", "template"], [35, 25, 15, 15, 8]
    )[0]
    if kind == "prefix":
        p = _path(rng)
        r = rng.random()
        if r < 0.2 and p != "/":
            p = p[: rng.randint(1, len(p))]
        elif r < 0.4 and not p.endswith("/"):
            p += "/"
        m["prefix"] = p if rng.random() > 0.03 else ""
    elif kind == "path":
        p = _path(rng)
        m["path"] = p + "/" if rng.random() < 0.2 and p != "/" else p
    elif kind == "path_separated_prefix":
        m["path_separated_prefix"] = "/" + "/".join(
            rng.choice(SEGMENTS) for _ in range(rng.randint(1, 3))
        )
    elif kind == "template":
        m["path_match_policy"] = {
            "name": "envoy.path.match.uri_template.uri_template_matcher",
            "typed_config": {"@type": URI_TEMPLATE_TYPE, "path_template": rng.choice(TEMPLATES)},
        }
    else:
        m["safe_regex"] = {"regex": rng.choice(REGEXES)}
    if rng.random() < 0.2:
        m["case_sensitive"] = False
    if rng.random() < 0.35:
        m["headers"] = [_header_matcher(rng) for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.15:
        q: dict[str, Any] = {"name": rng.choice(["q", "p"])}
        r = rng.random()
        if r < 0.3:
            q["present_match"] = rng.random() < 0.5
        elif r < 0.8:
            q["string_match"] = _string_match(rng)
        m["query_parameters"] = [q]
    if rng.random() < 0.05:
        m["grpc"] = {}
    if rng.random() < 0.05:
        m["runtime_fraction"] = {
            "default_value": {"numerator": rng.choice([0, 100]), "denominator": "HUNDRED"},
            "runtime_key": "meshcore.test.absent",
        }
    return m


def _domains(rng: random.Random, count: int) -> list[list[str]]:
    pool = EXACT_DOMAINS + SUFFIX_DOMAINS + PREFIX_DOMAINS
    rng.shuffle(pool)
    out: list[list[str]] = []
    seen: set[str] = set()
    for _ in range(count):
        ds = []
        for d in pool[: rng.randint(1, 3)]:
            if d.lower() not in seen:
                seen.add(d.lower())
                ds.append(d)
        pool = pool[len(ds) + 1 :] or [f"h{len(out)}.example"]
        out.append(ds or [f"only{len(out)}.example"])
    if rng.random() < 0.7:
        out[rng.randrange(count)].append("*")
    return out


def _authority_near(rng: random.Random, domain: str) -> str:
    if domain == "*":
        return rng.choice(["anything", "z.org:81", "FOO.BAR"])
    d = domain.strip("*")
    r = rng.random()
    if domain.startswith("*"):
        host = rng.choice(["x", "x.y", "b", "-", ""]) + d
    elif domain.endswith("*"):
        host = d + rng.choice(["x", "com", "a.com", "", ":80"])
    else:
        host = d
    if r < 0.2:
        host = host.upper()
    elif r < 0.35:
        host += rng.choice([":80", ":8080", ":{LPORT}", ":"])
    elif r < 0.45:
        host = "w" + host
    elif r < 0.5 and len(host) > 1:
        host = host[1:]
    return host or "empty"


def _path_near(rng: random.Random, match: dict[str, Any]) -> str:
    if "safe_regex" in match:
        base = rng.choice(
            [
                "/api/v12",
                "/api/v",
                "/users/42",
                "/users/4x",
                "/abc/x",
                "/API/z",
                "/a/b/c",
                "/b/q/c",
                "/b//c",
                "/static/q.y",
                "/u",
                "/u/",
                "/ux",
            ]
        )
    elif "path_match_policy" in match:
        template = match["path_match_policy"]["typed_config"]["path_template"]
        base = re.sub(
            r"\{[^}]*\}|\*\*|\*",
            lambda _: "/".join(rng.choice(SEGMENTS) for _ in range(rng.choice([1, 1, 2, 0]))),
            template,
        )
    else:
        base = (
            next((match[k] for k in ("prefix", "path", "path_separated_prefix") if k in match), "/")
            or "/"
        )
    r = rng.random()
    p = base
    if r < 0.1:
        p = base + "/"
    elif r < 0.2:
        p = base + rng.choice(SEGMENTS)
    elif r < 0.3:
        p = base + "/" + rng.choice(SEGMENTS)
    elif r < 0.38 and len(base) > 1:
        p = base[:-1]
    elif r < 0.46:
        p = base.swapcase()
    elif r < 0.54:
        p = "/" + base
    elif r < 0.6:
        p = base.replace("/", "//", 1)
    elif r < 0.66:
        p = "/z/.." + base
    elif r < 0.7:
        p = base.replace("/", "/./", 1)
    elif r < 0.76:
        i = rng.randrange(len(base))
        c = base[i]
        if c.isalnum() or c in "-._~/":
            p = base[:i] + f"%{ord(c):02{rng.choice('xX')}}" + base[i + 1 :]
    elif r < 0.79:
        p = base + rng.choice(["\\x", "%5Cx", "%2Fx", "%2fx", "|", "%00", "#frag", "%zz"])
    elif r < 0.85:
        # Path parameters, in the middle or at the end.
        cut = rng.randrange(1, len(base) + 1)
        p = base[:cut] + rng.choice([";x=1", ";", ";a;b", ";v=/z"]) + base[cut:]
    if not p.startswith("/"):
        p = "/" + p
    if rng.random() < 0.3:
        p += rng.choice(["?q=1", "?q=v&p=val", "?p=&q", "?q=VAL", "?x=1&q=10&q=abc", "?q", "?"])
    return p


def _headers_near(rng: random.Random, match: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for h in match.get("headers", []):
        r = rng.random()
        if r < 0.2:
            continue  # missing
        value = rng.choice(HEADER_VALUES)
        for k in ("exact_match", "prefix_match", "suffix_match", "contains_match"):
            if k in h and rng.random() < 0.6:
                value = h[k]
        sm = h.get("string_match", {})
        for k in ("exact", "prefix", "suffix", "contains"):
            if k in sm and rng.random() < 0.6:
                value = sm[k] if rng.random() < 0.7 else sm[k].swapcase()
        if "range_match" in h and rng.random() < 0.6:
            value = str(int(h["range_match"]["start"]) + rng.randint(-1, 3))
        name = h["name"] if rng.random() < 0.8 else h["name"].upper()
        out.append((name, value))
        if rng.random() < 0.15:
            out.append((h["name"], rng.choice(HEADER_VALUES)))  # repeated header
    if rng.random() < 0.1:
        out.append((rng.choice(HEADER_NAMES), rng.choice(HEADER_VALUES)))
    if match.get("grpc") is not None or rng.random() < 0.03:
        out.append(
            (
                "content-type",
                rng.choice(
                    [
                        "application/grpc",
                        "application/grpc+proto",
                        "application/grpc-web",
                        "application/grpc;x",
                        "text/plain",
                    ]
                ),
            )
        )
    return [(k, v) for k, v in out if v != "" or rng.random() < 0.5]


def generate(rng: random.Random, cases: int, index: int) -> GeneratedConfig:
    """One random RouteConfiguration (named ``rc<index>``) with ``cases`` requests aimed at it."""
    vh_count = rng.randint(1, 4)
    vhosts: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    serial = 0
    for vi, domains in enumerate(_domains(rng, vh_count)):
        vroutes = []
        for _ in range(rng.randint(2, 12)):
            match = _route_match(rng)
            vroutes.append(
                {
                    "name": f"r{serial}",
                    "match": match,
                    "direct_response": {"status": 200, "body": {"inline_string": f"r{serial}"}},
                }
            )
            serial += 1
        routes.extend(vroutes)
        vhosts.append({"name": f"vh{vi}", "domains": domains, "routes": vroutes})
    rc: dict[str, Any] = {"name": f"rc{index}", "virtual_hosts": vhosts}
    if rng.random() < 0.1:
        rc["ignore_port_in_host_matching"] = True
    if rng.random() < 0.15:
        rc["ignore_path_parameters_in_path_matching"] = True
    vhost_header = rng.random() < 0.1
    if vhost_header:
        rc["vhost_header"] = "x-vh"
    opts: dict[str, Any] = {}
    if rng.random() < 0.5:
        opts["normalize_path"] = True
    if rng.random() < 0.5:
        opts["merge_slashes"] = True
    if rng.random() < 0.3:
        opts["path_with_escaped_slashes_action"] = rng.choice(
            ["KEEP_UNCHANGED", "UNESCAPE_AND_FORWARD", "REJECT_REQUEST"]
        )
    r = rng.random()
    if r < 0.2:
        opts["strip_any_host_port"] = True
    elif r < 0.4:
        opts["strip_matching_host_port"] = True
    all_domains = [d for vh in vhosts for d in vh["domains"]]
    out: list[Case] = []
    for _ in range(cases):
        route = rng.choice(routes)
        domain = (
            rng.choice(all_domains)
            if rng.random() < 0.85
            else rng.choice(EXACT_DOMAINS + SUFFIX_DOMAINS + PREFIX_DOMAINS)
        )
        out.append(
            Case(
                authority=_authority_near(rng, domain),
                path=_path_near(rng, route["match"]),
                method=rng.choice(["GET", "GET", "POST"]),
                headers=_headers_near(rng, route["match"]),
            )
        )
        if vhost_header and rng.random() < 0.75:
            name = "x-vh" if rng.random() < 0.8 else "X-VH"
            out[-1].headers.append((name, _authority_near(rng, rng.choice(all_domains))))
    return GeneratedConfig(rc, opts, out)
