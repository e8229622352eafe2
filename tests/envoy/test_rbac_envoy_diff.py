"""Differential test: RbacEngine.evaluate() against a real Envoy 1.40 RBAC filter.

Random RBAC filter configs (enforced and shadow rules, every permission and principal that a
plaintext HTTP/1.1 connection can exercise) and random requests (methods, paths with queries,
Host, repeated and mixed-case headers, source addresses bound on 127.x.y.z, several
destination addresses and ports) go through Envoy and through the engine; the allowed bit,
the effective policy and the shadow result must agree on every case. The Istio corpus outputs
(tests/conformance/istio-authz/http) get the same treatment with requests built from the
values they mention.

MESHCORE_DIFF_CASES sets the number of random cases (10,000 by default, fixed seed).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("envoy.extensions.filters.http.rbac.v3.rbac_pb2")

from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.path.match.uri_template.v3 import (  # noqa: F401 (registers the type)
    uri_template_match_pb2,
)
from google.protobuf import json_format

from meshcore import RbacEngine, UnsupportedFeatureError

sys.path.insert(0, str(Path(__file__).parent))
from _sidecar import free_port, free_ports
from rbac_harness import (
    Client,
    Identity,
    TlsFiles,
    have_envoy,
    make_pki,
    read_outcomes,
    running_envoy,
)

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(not have_envoy(), reason="no envoy binary"),
]

CASES = int(os.environ.get("MESHCORE_DIFF_CASES", "10000"))
SEED = int(os.environ.get("MESHCORE_DIFF_SEED", "20261125"))
CORPUS = Path(__file__).resolve().parents[1] / "conformance" / "istio-authz" / "http"

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
PATHS = [
    "/",
    "/api",
    "/api/",
    "/api/v1/users",
    "/API/v1/users",
    "/api/v2/items?x=1",
    "/api/v1/users?q=/admin",
    "/admin",
    "/admin/x/y",
    "/static/a.css",
    "/health",
    "/a/b/c?",
]
HOSTS = ["svc", "svc:8080", "Svc.Example.com", "api.example.com", "api.example.com:80", "x"]
HEADER_NAMES = ["x-a", "x-b", "X-C"]
HEADER_VALUES = ["1", "10", "-3", "42", "abc", "ABC", "", "a,b", "v1.2", "spiffe://x/ns/a"]
SOURCES = ["127.0.0.1", "127.0.0.2", "127.1.2.3", "127.10.0.5"]
LISTEN = ["127.0.0.1", "127.0.0.2"]
SOURCE_CIDRS = [
    ("127.0.0.1", 32),
    ("127.0.0.0", 24),
    ("127.1.0.0", 16),
    ("127.0.0.0", 8),
    ("127.10.0.5", 32),
    ("10.0.0.0", 8),
    ("0.0.0.0", 0),
    ("127.0.0.3", 31),
    ("::1", 128),
]
DEST_CIDRS = [
    ("127.0.0.1", 32),
    ("127.0.0.2", 32),
    ("127.0.0.0", 8),
    ("127.0.0.0", 31),
    ("10.0.0.0", 8),
    ("::", 0),
]
REGEXES = ["/api/.*", "[a-z]+", "GET|POST", ".*v1.*", "/admin(/.*)?", "\\d+", "-?\\d+", ".*"]
# TLS clients: (URI SANs, DNS SANs, subject attributes); a client without a certificate too.
CLIENTS = [
    (["spiffe://cluster.local/ns/foo/sa/web"], [], [("CN", "web")]),
    (
        ["spiffe://cluster.local/ns/bar/sa/db", "spiffe://other.td/x"],
        ["db.bar.svc"],
        [("O", "mesh"), ("CN", "db")],
    ),
    ([], ["api.example.com", "*.example.com"], [("CN", "api")]),
    ([], [], [("CN", "legacy"), ("O", "Acme")]),
]
PRINCIPAL_NAMES = [
    "spiffe://cluster.local/ns/foo/sa/web",
    "spiffe://cluster.local/ns/bar/sa/db",
    "spiffe://other.td/x",
    "db.bar.svc",
    "api.example.com",
    "*.example.com",
    "CN=web",
    "CN=db,O=mesh",
    "O=Acme,CN=legacy",
    "CN=api",
    "",
]
SNIS = ["svc.foo", "api.example.com", "outbound_.8080_._.svc.foo.svc.cluster.local", ""]
URI_TEMPLATE_TYPE = (
    "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
)
TEMPLATES = [
    "/api/*",
    "/api/**",
    "/api/*/users",
    "/**/users",
    "/admin/{id}",
    "/static/{file}.css",
    "/a/b/c",
    "/",
    "/api/v1/{rest=**}",
    "/API/*",
    "/*/v1/*",
]
POLICY_NAMES = ["a", "b", "B", "p01", "p1", "p10", "ns[foo]-policy[x]-rule[0]", "z", "_", "a-b"]


def _string_matcher(rng: random.Random, pool: list[str]) -> dict[str, Any]:
    kind = rng.choice(["exact", "prefix", "suffix", "contains", "safe_regex"])
    if kind == "safe_regex":
        return {"safe_regex": {"regex": rng.choice(REGEXES)}}
    s = rng.choice(pool)
    if kind == "prefix" and s:
        s = s[: rng.randint(1, len(s))]
    elif kind == "suffix" and s:
        s = s[rng.randint(0, len(s) - 1) :]
    elif kind == "contains" and s:
        i = rng.randint(0, len(s) - 1)
        s = s[i : rng.randint(i + 1, len(s))]
    if kind != "exact" and not s:
        s = "a"  # Envoy requires non-empty prefix/suffix/contains
    out: dict[str, Any] = {kind: s}
    if rng.random() < 0.3:
        out["ignore_case"] = True
    return out


def _header(rng: random.Random) -> dict[str, Any]:
    name = rng.choice([":method", ":path", ":authority", ":scheme", *HEADER_NAMES])
    pool = {
        ":method": METHODS,
        ":path": PATHS,
        ":authority": HOSTS,
        ":scheme": ["http", "https"],
    }.get(name, HEADER_VALUES)
    h: dict[str, Any] = {"name": name}
    kind = rng.random()
    if kind < 0.55:
        h["string_match"] = _string_matcher(rng, pool)
    elif kind < 0.65:
        h["present_match"] = rng.random() < 0.8
    elif kind < 0.75:
        start = rng.randint(-5, 20)
        h["range_match"] = {"start": str(start), "end": str(start + rng.randint(1, 40))}
    elif kind < 0.85:
        h["exact_match"] = rng.choice(pool)
    elif kind < 0.92:
        h["prefix_match"] = rng.choice([p for p in pool if p] or ["a"])[:2] or "a"
    else:
        h["safe_regex_match"] = {"regex": rng.choice(REGEXES)}
    if rng.random() < 0.2:
        h["invert_match"] = True
    if rng.random() < 0.15:
        h["treat_missing_header_as_empty"] = True
    return {"header": h}


def _cidr(rng: random.Random, pool: list[tuple[str, int]]) -> dict[str, Any]:
    addr, plen = rng.choice(pool)
    return {"address_prefix": addr, "prefix_len": plen}


JWT = "envoy.filters.http.jwt_authn"
CLAIMS: dict[str, list[Any]] = {
    "sub": ["alice", "bob", ""],
    "aud": [["api", "web"], ["web"], [], "api"],
    "admin": [True, False, "true"],
    "level": [0, 2, 3.5, 10, "3"],
    "nested": [{"k": "v"}, {"k": ["v", "w"]}, {}],
    "none": [None],
}


def _payload(rng: random.Random) -> dict[str, Any]:
    keys = rng.sample(sorted(CLAIMS), rng.randint(0, len(CLAIMS)))
    return {k: rng.choice(CLAIMS[k]) for k in keys}


def _value_matcher(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    kind = rng.choice(
        ["string", "bool", "double", "present", "null", "list", "or"][: 7 if depth == 0 else 5]
    )
    if kind == "string":
        return {
            "string_match": _string_matcher(rng, ["alice", "bob", "api", "web", "v", "true", "3"])
        }
    if kind == "bool":
        return {"bool_match": rng.random() < 0.5}
    if kind == "double":
        if rng.random() < 0.5:
            return {"double_match": {"exact": rng.choice([0, 2, 3.5, 10])}}
        start = rng.choice([-1, 0, 2, 3.5])
        return {
            "double_match": {"range": {"start": start, "end": start + rng.choice([1, 2.5, 10])}}
        }
    if kind == "present":
        return {"present_match": rng.random() < 0.8}
    if kind == "null":
        return {"null_match": {}}
    if kind == "list":
        return {"list_match": {"one_of": _value_matcher(rng, depth + 1)}}
    return {"or_match": {"value_matchers": [_value_matcher(rng, depth + 1) for _ in range(2)]}}


def _metadata_matcher(rng: random.Random) -> dict[str, Any]:
    path = rng.choice(
        [["payload", k] for k in sorted(CLAIMS)]
        + [["payload"], ["payload", "nested", "k"], ["other"]]
    )
    out: dict[str, Any] = {
        "filter": rng.choice([JWT, JWT, "istio_authn"]),
        "path": [{"key": k} for k in path],
        "value": _value_matcher(rng),
    }
    if rng.random() < 0.25:
        out["invert"] = True
    return out


@dataclass
class Gen:
    rng: random.Random
    ports: list[int]
    tls: bool = False  # draw principal names and SNI matchers from the TLS pools
    headers: bool = True  # header rules (the network filter refuses them)
    metadata: bool = False  # metadata rules over the JWT payload the request carries
    depth: int = 0
    stats: dict[str, int] = field(default_factory=dict)

    def permission(self) -> dict[str, Any]:
        r = self.rng
        if self.metadata and self.depth == 0 and r.random() < 0.6:
            return {"any": True}
        kinds = ["any", "header", "header", "url_path", "url_path", "dip", "dport", "drange"]
        kinds += ["sni", "and", "or", "not", "tmpl"] if self.depth < 3 else ["sni", "tmpl"]
        if not self.headers:
            kinds = [k for k in kinds if k != "header"]
        kind = r.choice(kinds)
        self.stats[f"permission.{kind}"] = self.stats.get(f"permission.{kind}", 0) + 1
        if kind == "any":
            return {"any": True}
        if kind == "header":
            return _header(r)
        if kind == "url_path":
            return {"url_path": {"path": _string_matcher(r, PATHS)}}
        if kind == "tmpl":
            return {
                "uri_template": {
                    "name": "uri-template",
                    "typed_config": {
                        "@type": URI_TEMPLATE_TYPE,
                        "path_template": r.choice(TEMPLATES),
                    },
                }
            }
        if kind == "dip":
            return {"destination_ip": _cidr(r, DEST_CIDRS)}
        if kind == "dport":
            return {"destination_port": r.choice([*self.ports, 80])}
        if kind == "drange":
            p = r.choice(self.ports)
            lo = p - r.randint(0, 3)
            return {"destination_port_range": {"start": lo, "end": lo + r.randint(1, 5)}}
        if kind == "sni":
            if self.tls:
                return {"requested_server_name": _string_matcher(r, SNIS)}
            # Plaintext: Envoy matches the empty requested server name.
            return {"requested_server_name": r.choice([{"exact": ""}, {"prefix": "a"}])}
        self.depth += 1
        try:
            if kind == "not":
                return {"not_rule": self.permission()}
            rules = [self.permission() for _ in range(r.randint(1, 3))]
            return {f"{kind}_rules": {"rules": rules}}
        finally:
            self.depth -= 1

    def principal(self) -> dict[str, Any]:
        r = self.rng
        kinds = ["any", "auth", "sip", "drip", "rip", "rip", "header", "url_path"]
        kinds += ["and", "or", "not"] if self.depth < 3 else []
        if not self.headers:
            kinds = [k for k in kinds if k != "header"]
        if self.metadata:
            # Mostly metadata, so that most decisions depend on the payload.
            kinds = ["meta"] * 24 + kinds
        kind = r.choice(kinds)
        self.stats[f"principal.{kind}"] = self.stats.get(f"principal.{kind}", 0) + 1
        if kind == "any":
            return {"any": True}
        if kind == "meta":
            return {"metadata": _metadata_matcher(r)}
        if kind == "auth":
            if r.random() < 0.5:
                return {"authenticated": {}}
            pool = PRINCIPAL_NAMES if self.tls else ["spiffe://x"]
            return {"authenticated": {"principal_name": _string_matcher(r, pool)}}
        if kind == "sip":
            return {"source_ip": _cidr(r, SOURCE_CIDRS)}
        if kind == "drip":
            return {"direct_remote_ip": _cidr(r, SOURCE_CIDRS)}
        if kind == "rip":
            return {"remote_ip": _cidr(r, SOURCE_CIDRS)}
        if kind == "header":
            return _header(r)
        if kind == "url_path":
            return {"url_path": {"path": _string_matcher(r, PATHS)}}
        self.depth += 1
        try:
            if kind == "not":
                return {"not_id": self.principal()}
            ids = [self.principal() for _ in range(r.randint(1, 3))]
            return {f"{kind}_ids": {"ids": ids}}
        finally:
            self.depth -= 1

    def rbac(self) -> dict[str, Any]:
        r = self.rng
        names = r.sample(POLICY_NAMES, r.randint(0, 6))
        return {
            "action": r.choice(["ALLOW", "DENY", "LOG", "ALLOW", "DENY"]),
            "policies": {
                n: {
                    "permissions": [self.permission() for _ in range(r.randint(1, 3))],
                    "principals": [self.principal() for _ in range(r.randint(1, 3))],
                }
                for n in names
            },
        }

    def config(self) -> rbac_pb2.RBAC:
        r = self.rng
        d: dict[str, Any] = {}
        if r.random() < 0.9:
            d["rules"] = self.rbac()
        if r.random() < 0.6:
            d["shadow_rules"] = self.rbac()
            d["shadow_rules_stat_prefix"] = r.choice(["", "istio_dry_run_allow_", "p_"])
        return json_format.ParseDict(d, rbac_pb2.RBAC())


@dataclass(frozen=True)
class Request:
    case: int
    method: str
    path: str
    authority: str
    headers: tuple[tuple[str, str], ...]
    source: str
    dest: tuple[str, int]
    identity: Identity | None = None  # TLS: the client's identity
    sni: str | None = None
    payload: dict[str, Any] | None = None  # a JWT payload, as dynamic metadata

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "path": self.path,
            "authority": self.authority,
            "scheme": "http",
            "headers": list(self.headers),
            "source_ip": self.source,
            "remote_ip": self.source,
            "direct_remote_ip": self.source,
            "destination_ip": self.dest[0],
            "destination_port": self.dest[1],
        }
        if self.payload is not None:
            out["metadata"] = {JWT: {"payload": self.payload}}
        if self.identity is not None:
            out.update(
                tls=True,
                scheme="https",
                uri_sans=list(self.identity.uri_sans),
                dns_sans=list(self.identity.dns_sans),
                subject=self.identity.subject,
                sni=self.sni,
            )
        return out


def _request(
    rng: random.Random,
    case: int,
    listeners: list[tuple[str, int]],
    extra: dict[str, list[str]] | None = None,
) -> Request:
    extra = extra or {}
    # Only what an HTTP/1.1 client can send and Envoy's codec accepts.
    methods = METHODS + [m for m in extra.get("methods", []) if m in METHODS]
    paths = PATHS + [p for p in extra.get("paths", []) if re.fullmatch(r"/[!-~]*", p)]
    paths = [p for p in paths if "#" not in p]
    hosts = HOSTS + [h for h in extra.get("hosts", []) if re.fullmatch(r"[A-Za-z0-9.:-]+", h)]
    names = HEADER_NAMES + [
        n for n in extra.get("header_names", []) if re.fullmatch(r"[A-Za-z0-9-]+", n)
    ]
    values = HEADER_VALUES + [v for v in extra.get("values", []) if re.fullmatch(r"[ -~]*", v)]
    values = [v for v in values if v == v.strip()]
    headers: list[tuple[str, str]] = []
    for _ in range(rng.randint(0, 3)):
        headers.append((rng.choice(names), rng.choice(values)))
    return Request(
        case=case,
        method=rng.choice(methods),
        path=rng.choice(paths),
        authority=rng.choice(hosts),
        headers=tuple(headers),
        source=rng.choice(SOURCES),
        dest=rng.choice(listeners),
    )


def _compare(engine: RbacEngine, prefix: str, req: Request, outcome: Any) -> str | None:
    got = engine.evaluate(**req.kwargs())
    md = outcome.metadata
    envoy_allowed = outcome.status == 200
    envoy_policy = md.get("enforced_effective_policy_id") or outcome.policy_id
    shadow_result = md.get(prefix + "shadow_engine_result")
    envoy_shadow = None if shadow_result is None else shadow_result == "allowed"
    envoy_shadow_policy = md.get(prefix + "shadow_effective_policy_id")
    mine = (got.allowed, got.policy_id, got.shadow_allowed, got.shadow_policy_id)
    theirs = (envoy_allowed, envoy_policy, envoy_shadow, envoy_shadow_policy)
    if mine != theirs:
        return f"engine {mine} != envoy {theirs} (status {outcome.status} {outcome.details})"
    return None


def _run(
    tmp_path: Path,
    configs: list[rbac_pb2.RBAC],
    requests: list[Request],
    listeners: list[tuple[str, int]],
    tls_listeners: list[tuple[str, int]] | None = None,
    tls: TlsFiles | None = None,
    before_rbac: list[dict[str, Any]] | None = None,
) -> tuple[int, list[str]]:
    engines = [RbacEngine.from_proto(c) for c in configs]
    prefixes = [c.shadow_rules_stat_prefix for c in configs]
    with running_envoy(
        configs, tmp_path, listeners, tls_listeners or [], tls, before_rbac=before_rbac or []
    ):
        client = Client()
        try:
            for seq, req in enumerate(requests):
                client.send(
                    case=req.case,
                    seq=seq,
                    source=req.source,
                    host=req.dest[0],
                    port=req.dest[1],
                    method=req.method,
                    path=req.path,
                    authority=req.authority,
                    headers=req.headers + _payload_header(req.payload),
                    tls=None if req.identity is None else (req.identity.context, req.sni),
                )
        finally:
            client.close()
    outcomes = read_outcomes(tmp_path)
    problems: list[str] = []
    for seq, req in enumerate(requests):
        outcome = outcomes.get(seq)
        if outcome is None:
            problems.append(f"request {seq}: no access log entry")
            continue
        diff = _compare(engines[req.case], prefixes[req.case], req, outcome)
        if diff is not None:
            cfg = json_format.MessageToDict(configs[req.case], preserving_proto_field_name=True)
            problems.append(f"request {req}: {diff}\nconfig: {cfg}")
    return len(requests), problems


def _listeners() -> list[tuple[str, int]]:
    # Two addresses, two ports each: destination_ip and destination_port(_range) both vary.
    return [(a, p) for a in LISTEN for p in free_ports(2, a)]


def test_random_configs_agree_with_envoy(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    n_configs = max(1, min(200, CASES // 50))
    per_config = max(1, CASES // n_configs)
    listeners = _listeners()
    gen = Gen(rng, [p for _, p in listeners])
    configs = [gen.config() for _ in range(n_configs)]
    requests = [_request(rng, i, listeners) for i in range(n_configs) for _ in range(per_config)]
    rng.shuffle(requests)
    total, problems = _run(tmp_path, configs, requests, listeners)
    assert total >= CASES - n_configs
    assert not problems, f"{len(problems)} of {total} disagree:\n" + "\n".join(problems[:5])
    # The generator reached every kind of permission and principal.
    kinds = {k.split(".")[1] for k in gen.stats}
    assert {"drange", "dport", "dip", "rip", "sip", "drip", "auth", "sni", "not", "tmpl"} <= kinds


TLS_CASES = max(200, CASES // 5)


def test_tls_principals_and_sni_agree_with_envoy(tmp_path: Path) -> None:
    """mTLS: URI SANs, then DNS SANs, then the subject; `authenticated: {}` for any TLS
    connection, with or without a client certificate; requested_server_name from SNI."""
    rng = random.Random(SEED + 2)
    tls_files, identities = make_pki(tmp_path, CLIENTS)
    tls_listeners = [(a, free_port(a)) for a in LISTEN]
    gen = Gen(rng, [p for _, p in tls_listeners], tls=True)
    n_configs = max(1, TLS_CASES // 50)
    configs = [gen.config() for _ in range(n_configs)]
    requests = []
    for i in range(n_configs):
        for _ in range(TLS_CASES // n_configs):
            base = _request(rng, i, tls_listeners)
            sni = rng.choice([None, *[s for s in SNIS if s]])
            requests.append(dataclasses.replace(base, identity=rng.choice(identities), sni=sni))
    rng.shuffle(requests)
    total, problems = _run(tmp_path, configs, requests, [], tls_listeners, tls_files)
    assert total >= TLS_CASES - n_configs
    assert not problems, f"{len(problems)} of {total} disagree:\n" + "\n".join(problems[:5])
    assert gen.stats.get("principal.auth", 0) > 20


# Envoy's header_to_metadata filter turns the x-md header (a base64 google.protobuf.Value)
# into the dynamic metadata the RBAC filter's metadata matchers read, as jwt_authn would.
HEADER_TO_METADATA = {
    "name": "envoy.filters.http.header_to_metadata",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config",
        "request_rules": [
            {
                "header": "x-md",
                "on_header_present": {
                    "metadata_namespace": JWT,
                    "key": "payload",
                    "type": "PROTOBUF_VALUE",
                    "encode": "BASE64",
                },
                "remove": True,
            }
        ],
    },
}


def _payload_header(payload: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    if payload is None:
        return ()
    from google.protobuf import struct_pb2

    value = json_format.ParseDict(payload, struct_pb2.Value())
    return (("x-md", base64.b64encode(value.SerializeToString()).decode()),)


def test_metadata_matchers_agree_with_envoy(tmp_path: Path) -> None:
    rng = random.Random(SEED + 4)
    listeners = _listeners()
    gen = Gen(rng, [p for _, p in listeners], metadata=True)
    n_configs = max(1, TLS_CASES // 50)
    configs = [gen.config() for _ in range(n_configs)]
    requests = [
        dataclasses.replace(
            _request(rng, i, listeners),
            payload=_payload(rng) if rng.random() < 0.85 else None,
        )
        for i in range(n_configs)
        for _ in range(TLS_CASES // n_configs)
    ]
    rng.shuffle(requests)
    total, problems = _run(tmp_path, configs, requests, listeners, before_rbac=[HEADER_TO_METADATA])
    assert total >= TLS_CASES - n_configs
    assert not problems, f"{len(problems)} of {total} disagree:\n" + "\n".join(problems[:5])
    assert gen.stats.get("principal.meta", 0) > 50
    # Not vacuous: many decisions change when the payload is taken away.
    engines = [RbacEngine.from_proto(c) for c in configs]
    depends = 0
    for req in requests:
        kw = req.kwargs()
        with_md = engines[req.case].evaluate(**kw)
        kw.pop("metadata", None)
        depends += with_md != engines[req.case].evaluate(**kw)
    assert depends > 50, depends


def _corpus_configs() -> list[tuple[str, rbac_pb2.RBAC]]:
    out = []
    for path in sorted(CORPUS.glob("*-out*.yaml")):
        doc = yaml.safe_load(path.read_text())
        tc = doc.get("typedConfig", {})
        if doc.get("name") != "envoy.filters.http.rbac" or not tc.get("@type", "").endswith(
            "http.rbac.v3.RBAC"
        ):
            continue
        body = {k: v for k, v in tc.items() if k != "@type"}
        out.append((path.name, json_format.ParseDict(body, rbac_pb2.RBAC())))
    return out


def _values(d: Any, out: dict[str, list[str]], key: str = "") -> None:
    if isinstance(d, dict):
        name = d.get("name")
        if isinstance(name, str) and name.startswith(("x-", "X-")):
            out["header_names"].append(name)
        for k, v in d.items():
            _values(v, out, k if k not in ("exact", "prefix", "suffix", "contains") else key)
            if k in ("exact", "prefix", "suffix", "contains") and isinstance(v, str):
                bucket = {
                    "path": "paths",
                    "urlPath": "paths",
                    "url_path": "paths",
                }.get(key, "values")
                out[bucket].append(v if bucket != "paths" or v.startswith("/") else "/" + v)
                out["hosts"].append(v)
                out["methods"].append(v)
    elif isinstance(d, list):
        for v in d:
            _values(v, out, key)


def test_istio_corpus_outputs_agree_with_envoy(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    usable: list[rbac_pb2.RBAC] = []
    pools: list[dict[str, list[str]]] = []
    skipped = []
    for name, cfg in _corpus_configs():
        try:
            RbacEngine.from_proto(cfg)
        except UnsupportedFeatureError:
            skipped.append(name)
            continue
        usable.append(cfg)
        pool: dict[str, list[str]] = {
            k: [] for k in ("paths", "hosts", "methods", "values", "header_names")
        }
        _values(json_format.MessageToDict(cfg), pool)
        pools.append(pool)
    # Every HTTP RBAC output of the corpus compiles (JWT claims as metadata, path templates).
    assert not skipped, skipped
    assert len(usable) >= 50
    per = 40
    listeners = _listeners()
    requests = [
        _request(rng, i, listeners, pools[i]) for i in range(len(usable)) for _ in range(per)
    ]
    total, problems = _run(tmp_path, usable, requests, listeners)
    assert total == per * len(usable)
    assert not problems, f"{len(problems)} of {total} disagree:\n" + "\n".join(problems[:5])
