"""RequestAuthentication: validation as Istio's webhook, the jwt_authn filter meshcore generates
(Istio's convertToEnvoyJwtConfig), the JWKS fetcher (bounded, fail closed), the RBAC it pairs
with as the Rust RbacEngine decides it, and the data plane refusing what it cannot verify."""

from __future__ import annotations

import contextlib
import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "envoy"))
from _jwt import SigningKey, jwks

from meshcore.config import load_objects, validate_object
from meshcore.dataplane.config import compile_listener
from meshcore.errors import ConfigError, UnsupportedFeatureError
from meshcore.names import HTTP_RBAC, JWT_AUTHN_NAME
from meshcore.security.authz import AuthzChain
from meshcore.xds import types
from meshcore.xds.jwt import FAIL_CLOSED_JWKS, JwksFetcher
from meshcore.xds.translate import Translator, proxy_for_node

ISS = "testing@secure.istio.io"
KEY = SigningKey("k1")
NODE = "sidecar~127.0.70.1~web-1.default~default.svc.cluster.local"


def _m(kind: str, name: str, spec: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    api = {"Service": "v1", "WorkloadEntry": "networking.istio.io/v1"}.get(
        kind, "security.istio.io/v1"
    )
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns},
            "spec": spec}  # fmt: skip


def ra(
    name: str = "jwt", ns: str = "default", api: str = "security.istio.io/v1", **spec: Any
) -> dict[str, Any]:
    obj = _m("RequestAuthentication", name, spec, ns)
    obj["apiVersion"] = api
    return obj


BASE = [
    _m("Service", "web", {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 9080},
                                                                {"name": "tcp", "port": 9000}]}),
    _m("WorkloadEntry", "web-1", {"address": "127.0.70.1", "labels": {"app": "web"}, "serviceAccount": "web"}),
]  # fmt: skip


def problems(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    report = validate_object(obj)
    return [(p.severity, p.path, p.message) for p in report]


def errors(obj: dict[str, Any]) -> dict[str, str]:
    return {path: msg for sev, path, msg in problems(obj) if sev == "error"}


# --- validation ---------------------------------------------------------------------------------


ISTIO_DOC_EXAMPLE = ra(  # istio.io RequestAuthentication reference, first example
    "httpbin", "foo", selector={"matchLabels": {"app": "httpbin"}},
    jwtRules=[{"issuer": "issuer-foo", "jwksUri": "https://example.com/.well-known/jwks.json"}],
)  # fmt: skip


@pytest.mark.parametrize("api", ["security.istio.io/v1", "security.istio.io/v1beta1"])
def test_istio_examples_are_valid(api: str) -> None:
    ok = [
        dict(ISTIO_DOC_EXAMPLE, apiVersion=api),
        ra(api=api, jwtRules=[{"issuer": "issuer-foo", "jwks": jwks(KEY), "audiences": ["a", "b"],
           "fromHeaders": [{"name": "x-jwt-assertion", "prefix": "Bearer "}],
           "fromParams": ["my_token"], "fromCookies": ["session"],
           "outputPayloadToHeader": "x-jwt-payload", "forwardOriginalToken": True,
           "outputClaimToHeaders": [{"header": "x-jwt-sub", "claim": "sub"}], "timeout": "3s"}]),
        ra(api=api, targetRef={"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"},
           jwtRules=[{"jwksUri": "http://idp.example:8080/keys"}]),  # issuer may be omitted with a URI
        ra(api=api),  # no rules: accepted, does nothing
    ]  # fmt: skip
    for obj in ok:
        assert errors(obj) == {}, obj


@pytest.mark.parametrize(
    ("rule", "path", "fragment"),
    [
        ({}, "spec.jwtRules[0].issuer", "issuer or jwksUri"),
        ({"issuer": "i", "audiences": ["a", ""]}, "spec.jwtRules[0].audiences[1]", "audience"),
        ({"issuer": "i", "jwksUri": "ftp://x/keys"}, "spec.jwtRules[0].jwksUri", "scheme"),
        ({"issuer": "i", "jwksUri": "https:///keys"}, "spec.jwtRules[0].jwksUri", "host"),
        ({"issuer": "i", "jwksUri": "http://h:99999/k"}, "spec.jwtRules[0].jwksUri", "Port out of range"),
        ({"issuer": "i", "jwks": "{not json"}, "spec.jwtRules[0].jwks", "jwks parse error"),
        ({"issuer": "i", "jwks": '{"keys": []}'}, "spec.jwtRules[0].jwks", "jwks parse error"),
        ({"issuer": "i", "jwks": '{"keys": [{"kty": "RSA", "e": "AQAB"}]}'}, "spec.jwtRules[0].jwks", "'n'"),
        ({"issuer": "i", "fromHeaders": [{"prefix": "x"}]}, "spec.jwtRules[0].fromHeaders[0].name", "non-empty"),
        ({"issuer": "i", "fromParams": [""]}, "spec.jwtRules[0].fromParams[0]", "query"),
        ({"issuer": "i", "fromCookies": [""]}, "spec.jwtRules[0].fromCookies[0]", "cookie"),
        ({"issuer": "i", "outputClaimToHeaders": [{"header": "x-a"}]}, "spec.jwtRules[0].outputClaimToHeaders[0]", "non-empty"),
        ({"issuer": "i", "outputClaimToHeaders": [{"header": "bad header", "claim": "c"}]},
         "spec.jwtRules[0].outputClaimToHeaders[0].header", "invalid header name"),
        ({"issuer": "i", "timeout": "0s"}, "spec.jwtRules[0].timeout", "at least 1ms"),
        ({"issuer": "i", "issuerr": "x"}, "spec.jwtRules[0].issuerr", "unknown field"),
    ],
)  # fmt: skip
def test_invalid_rules_are_rejected_at_their_path(
    rule: dict[str, Any], path: str, fragment: str
) -> None:
    got = errors(ra(jwtRules=[rule]))
    assert path in got, got
    assert fragment in got[path], got


ISTIO_INVALID = (
    Path(__file__).resolve().parents[1] / "conformance/config/invalid/istio-reqauth-invalid.yaml"
)


def _istio_invalid_docs() -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(ISTIO_INVALID.read_text()) if d]


@pytest.mark.parametrize("doc", _istio_invalid_docs(), ids=lambda d: d["metadata"]["name"])
def test_each_of_istios_invalid_cases_is_rejected_alone(doc: dict[str, Any]) -> None:
    """Istio's reqauth-invalid.yaml (vendored in tests/conformance): every document on its own
    gets at least one error (the corpus test pins the exact messages of the whole file)."""
    assert errors(doc), doc


def test_selector_and_target_ref_exclude_each_other() -> None:
    got = errors(
        ra(selector={"matchLabels": {"app": "a"}}, targetRef={"kind": "Gateway", "name": "g"})
    )
    assert "spec.selector" in got


def test_errors_carry_file_and_line(tmp_path: Path) -> None:
    from meshcore.config import validate

    (tmp_path / "ra.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        "metadata: {name: jwt, namespace: default}\nspec:\n  jwtRules:\n  - issuer: ''\n"
    )
    report = validate([tmp_path])
    (err,) = report.errors
    assert err.file.endswith("ra.yaml")
    assert err.line > 0
    assert err.path == "spec.jwtRules[0].issuer"


# --- translation --------------------------------------------------------------------------------


def _inbound(
    objects: list[dict[str, Any]], translator: Translator | None = None
) -> tuple[Any, Any]:
    mesh = load_objects(objects)
    result = (translator or Translator()).generate(mesh, proxy_for_node(mesh, NODE))
    return result.resources[types.LISTENER], result.problems


def _http_filters(listeners: Any, port: int = 9080) -> list[Any]:
    lst = listeners[f"127.0.70.1_{port}"]
    out = []
    for chain in lst.filter_chains:
        for f in chain.filters:
            if f.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                hcm = hcm_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                out.append(list(hcm.http_filters))
    assert out
    assert all(o == out[0] for o in out)
    return out[0]


def _jwt(filters: list[Any]) -> jwt_pb2.JwtAuthentication:
    (f,) = [f for f in filters if f.name == JWT_AUTHN_NAME]
    cfg = jwt_pb2.JwtAuthentication()
    f.typed_config.Unpack(cfg)
    return cfg


POLICY = _m("AuthorizationPolicy", "require", {
    "selector": {"matchLabels": {"app": "web"}},
    "rules": [{"from": [{"source": {"requestPrincipals": [f"{ISS}/alice"]}}]}],
})  # fmt: skip


def test_one_rule_is_one_provider_or_allow_missing_before_rbac() -> None:
    rule = {"issuer": ISS, "jwks": jwks(KEY), "audiences": ["web"],
            "fromHeaders": [{"name": "x-token", "prefix": "Tok "}], "fromParams": ["t"],
            "fromCookies": ["c"], "outputPayloadToHeader": "x-payload", "forwardOriginalToken": True,
            "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]}  # fmt: skip
    listeners, probs = _inbound(
        [*BASE, POLICY, ra(selector={"matchLabels": {"app": "web"}}, jwtRules=[rule])]
    )
    assert probs == []
    filters = _http_filters(listeners)
    names = [f.name for f in filters]
    assert names.index(JWT_AUTHN_NAME) < names.index(HTTP_RBAC)
    cfg = _jwt(filters)
    assert cfg.bypass_cors_preflight
    p = cfg.providers["origins-0"]
    assert (p.issuer, list(p.audiences), p.forward, p.forward_payload_header) == (
        ISS,
        ["web"],
        True,
        "x-payload",
    )
    assert p.payload_in_metadata == "payload"
    assert [(h.name, h.value_prefix) for h in p.from_headers] == [("x-token", "Tok ")]
    assert (list(p.from_params), list(p.from_cookies)) == (["t"], ["c"])
    assert [(c.header_name, c.claim_name) for c in p.claim_to_headers] == [("x-sub", "sub")]
    assert list(p.normalize_payload_in_metadata.space_delimited_claims) == ["permission", "scope"]
    assert json.loads(p.local_jwks.inline_string) == json.loads(jwks(KEY))
    (r,) = cfg.rules
    assert r.match.prefix == "/"
    either = r.requires.requires_any.requirements
    assert [e.WhichOneof("requires_type") for e in either] == ["provider_name", "allow_missing"]
    # TCP ports get no JWT filter (HTTP only)
    tcp = listeners["127.0.70.1_9000"]
    assert all(f.name != JWT_AUTHN_NAME for c in tcp.filter_chains for f in c.filters)


def test_rules_of_every_applying_policy_sorted_by_issuer() -> None:
    # a workload-selecting one, a namespace-wide one, a mesh-wide one (root namespace), and
    # one of another namespace (not applied)
    objs = [
        *BASE,
        ra("w", selector={"matchLabels": {"app": "web"}}, jwtRules=[{"issuer": "c-iss", "jwks": jwks(KEY)}]),
        ra("ns", jwtRules=[{"issuer": "b-iss", "jwks": jwks(KEY)}]),
        ra("mesh", ns="istio-system", jwtRules=[{"issuer": "a-iss", "jwks": jwks(KEY)}]),
        ra("other", ns="other", jwtRules=[{"issuer": "z-iss", "jwks": jwks(KEY)}]),
        ra("nomatch", selector={"matchLabels": {"app": "db"}}, jwtRules=[{"issuer": "y", "jwks": jwks(KEY)}]),
    ]  # fmt: skip
    cfg = _jwt(_http_filters(_inbound(objs)[0]))
    assert {k: v.issuer for k, v in cfg.providers.items()} == {
        "origins-0": "a-iss", "origins-1": "b-iss", "origins-2": "c-iss"
    }  # fmt: skip
    # {P0 OR P1 OR P2 OR AND(P0|missing, P1|missing, P2|missing)}
    outer = cfg.rules[0].requires.requires_any.requirements
    assert [o.provider_name for o in outer[:3]] == ["origins-0", "origins-1", "origins-2"]
    inner = outer[3].requires_all.requirements
    assert [
        [x.WhichOneof("requires_type") for x in i.requires_any.requirements] for i in inner
    ] == [["provider_name", "allow_missing"]] * 3


def test_no_request_authentication_no_filter_and_policy_denies_tokens() -> None:
    filters = _http_filters(_inbound([*BASE, POLICY])[0])
    assert JWT_AUTHN_NAME not in [f.name for f in filters]
    # without the JWT filter no payload metadata can exist: the ALLOW never matches
    chain = AuthzChain.from_filters(filters)
    assert not chain.evaluate(path="/", method="GET").allowed


def test_target_ref_policies_do_not_select_sidecars() -> None:
    objs = [
        *BASE,
        ra(
            targetRef={"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
            jwtRules=[{"issuer": "i", "jwks": jwks(KEY)}],
        ),
    ]
    assert JWT_AUTHN_NAME not in [f.name for f in _http_filters(_inbound(objs)[0])]


def test_rbac_reads_the_payload_the_jwt_filter_writes() -> None:
    """The RBAC meshcore generates, run by the Rust RbacEngine on the metadata Envoy's jwt_authn
    writes (``payload_in_metadata: payload``): principals split as Istio splits them."""
    policy = _m("AuthorizationPolicy", "p", {
        "selector": {"matchLabels": {"app": "web"}},
        "rules": [
            {"from": [{"source": {"requestPrincipals": ["https://idp.example/tenant/alice", "*@corp"]}}]},
            {"when": [{"key": "request.auth.claims[groups]", "values": ["admins"]},
                      {"key": "request.auth.audiences", "values": ["web"]}]},
            {"when": [{"key": "request.auth.claims[org][team]", "values": ["core"]}]},
        ],
    })  # fmt: skip
    filters = _http_filters(_inbound([*BASE, policy])[0])
    chain = AuthzChain.from_filters(filters)

    def allowed(payload: dict[str, Any] | None) -> bool:
        md = None if payload is None else {JWT_AUTHN_NAME: {"payload": payload}}
        return chain.evaluate(path="/", method="GET", metadata=md).allowed

    assert allowed({"iss": "https://idp.example/tenant", "sub": "alice"})
    assert not allowed({"iss": "https://idp.example", "sub": "tenant/alice"})  # Istio: last "/"
    assert not allowed({"iss": "https://idp.example/tenant", "sub": "bob"})
    assert allowed({"iss": "anything", "sub": "bob@corp"})  # "*@corp": suffix on the subject
    assert allowed({"iss": "i", "sub": "s", "groups": ["dev", "admins"], "aud": "web"})
    assert allowed({"iss": "i", "sub": "s", "groups": "admins", "aud": ["web"]})
    assert not allowed({"iss": "i", "sub": "s", "groups": ["dev"], "aud": "web"})
    assert allowed({"org": {"team": "core"}})
    assert not allowed(None)


# --- JWKS fetching ------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes]
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = self.bodies[0] if len(self.bodies) == 1 else self.bodies.pop(0)
        status = 500 if body == b"500" else 200
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def served(*bodies: bytes) -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    handler = type("H", (_Handler,), {"bodies": list(bodies), "hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_fetcher_caches_refreshes_and_keeps_last_keys_on_failure() -> None:
    clock = Clock()
    k2 = SigningKey("k2")
    with served(jwks(KEY).encode(), b"500", jwks(k2).encode()) as (base, hits):
        f = JwksFetcher(refresh_interval=60, retry_interval=5, clock=clock)
        uri = f"{base}/jwks"
        assert f.jwks(uri, "i", 2) == (jwks(KEY), None)
        assert f.jwks(uri, "i", 2) == (jwks(KEY), None)
        assert len(hits) == 1
        clock.now = 61
        assert f.jwks(uri, "i", 2) == (jwks(KEY), None)  # refresh failed: last keys kept
        clock.now = 200
        assert f.jwks(uri, "i", 2) == (jwks(k2), None)  # refreshed: rotated keys
        assert len(hits) == 3


def test_fetcher_bounds_and_errors() -> None:
    with served(b"x" * 2000) as (base, _):
        text, err = JwksFetcher(max_bytes=1000).jwks(f"{base}/big", "i", 2)
        assert text is None
        assert err is not None
        assert "larger than 1000" in err
    with served(b"not a jwks") as (base, _):
        text, err = JwksFetcher().jwks(f"{base}/bad", "i", 2)
        assert text is None
        assert err is not None
        assert "did not return a JWKS" in err
    with served(b"500") as (base, _):
        text, err = JwksFetcher().jwks(f"{base}/err", "i", 2)
        assert text is None
        assert err is not None
        assert "500" in err


def test_openid_discovery_when_only_the_issuer_is_given() -> None:
    # Istio: no jwksUri and no jwks -> the issuer's OpenID discovery document names the keys
    with _two_step_server() as (base, hits):
        text, err = JwksFetcher().jwks("", base, 2)
    assert err is None
    assert text == jwks(KEY)
    assert hits == ["/.well-known/openid-configuration", "/keys"]
    text, err = JwksFetcher().jwks("", ISS, 2)  # not a URL: nothing to discover
    assert text is None
    assert err is not None
    assert "not a URL" in err


@contextlib.contextmanager
def _two_step_server() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []
    holder: dict[str, str] = {}

    class H(_Handler):
        def do_GET(self) -> None:
            hits.append(self.path)
            if self.path.endswith("openid-configuration"):
                body = json.dumps({"jwks_uri": holder["base"] + "/keys"}).encode()
            else:
                body = jwks(KEY).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    holder["base"] = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield holder["base"], hits
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_failure_fails_closed_and_is_reported() -> None:
    with served(b"500") as (base, _):
        objs = [*BASE, ra(jwtRules=[{"issuer": ISS, "jwksUri": f"{base}/jwks"}])]
        listeners, probs = _inbound(objs)
    p = _jwt(_http_filters(listeners)).providers["origins-0"]
    assert p.local_jwks.inline_string == FAIL_CLOSED_JWKS
    (problem,) = probs
    assert (problem.kind, problem.name, problem.path, problem.severity) == (
        "RequestAuthentication", "jwt", "spec.jwtRules[0].jwksUri", "warning"
    )  # fmt: skip
    assert "rejected" in problem.message


def test_fetched_keys_are_inlined() -> None:
    with served(jwks(KEY).encode()) as (base, hits):
        objs = [*BASE, ra(jwtRules=[{"issuer": ISS, "jwksUri": f"{base}/jwks"}])]
        translator = Translator()
        listeners, probs = _inbound(objs, translator)
        _inbound(objs, translator)  # a second proxy translation: no second fetch
    assert probs == []
    assert len(hits) == 1
    p = _jwt(_http_filters(listeners)).providers["origins-0"]
    assert json.loads(p.local_jwks.inline_string) == json.loads(jwks(KEY))


# --- the data plane -----------------------------------------------------------------------------


def test_data_plane_refuses_listeners_it_cannot_verify() -> None:
    objs = [*BASE, POLICY, ra(jwtRules=[{"issuer": ISS, "jwks": jwks(KEY)}])]
    listeners, _ = _inbound(objs)
    lst = listeners["127.0.70.1_9080"]
    with pytest.raises(UnsupportedFeatureError, match="JWT authentication") as info:
        compile_listener(lst.name, "1", lst)
    assert isinstance(info.value, ConfigError)
    assert "http_filters[0]" in info.value.errors()[0].path
    # without a RequestAuthentication the same listener compiles
    plain, _ = _inbound([*BASE, POLICY])
    assert compile_listener("x", "1", plain["127.0.70.1_9080"]) is not None


def test_refresh_replaces_fail_closed_keys_once_fetchable() -> None:
    """A fetch that failed is retried (istiod's JwksResolver refreshes too): once the keys can
    be had, the translator says so and the next translation inlines them."""
    clock = Clock()
    with served(b"500", jwks(KEY).encode()) as (base, _):
        translator = Translator(jwks=JwksFetcher(retry_interval=5, clock=clock))
        objs = [*BASE, ra(jwtRules=[{"issuer": ISS, "jwksUri": f"{base}/jwks"}])]
        mesh = load_objects(objs)
        first = translator.generate(mesh, proxy_for_node(mesh, NODE))
        p = _jwt(_http_filters(first.resources[types.LISTENER])).providers["origins-0"]
        assert p.local_jwks.inline_string == FAIL_CLOSED_JWKS
        assert not translator.refresh_jwks()  # not yet due
        clock.now = 6
        assert translator.refresh_jwks()  # fetched: changed
        again = translator.generate(mesh, proxy_for_node(mesh, NODE))
        assert not translator.refresh_jwks()  # nothing due any more
    p = _jwt(_http_filters(again.resources[types.LISTENER])).providers["origins-0"]
    assert json.loads(p.local_jwks.inline_string) == json.loads(jwks(KEY))
    assert again.problems == []


def test_control_plane_pushes_refreshed_keys(tmp_path: Path) -> None:
    """meshcore serve's loop: the refresh runs in a worker thread, and keys that changed reach
    the proxies (their listener with the JWT filter is translated and pushed again)."""
    import asyncio

    import yaml

    from meshcore.xds.cache import NodeInfo
    from meshcore.xds.controlplane import ControlPlane
    from meshcore.xds.deps import DependencyIndex

    clock = Clock()
    name = "127.0.70.1_9080"

    def provider_jwks(plane: ControlPlane, node: NodeInfo) -> str:
        snap = plane.cache.get(node)
        assert snap is not None
        found = snap.resource(types.LISTENER, name)
        assert found is not None
        from envoy.config.listener.v3 import listener_pb2

        lst = listener_pb2.Listener.FromString(found[1])
        return _jwt(_http_filters({name: lst})).providers["origins-0"].local_jwks.inline_string

    with served(b"500", jwks(KEY).encode()) as (base, _):
        objs = [*BASE, ra(jwtRules=[{"issuer": ISS, "jwksUri": f"{base}/jwks"}])]
        (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(objs))
        translator = Translator(jwks=JwksFetcher(retry_interval=5, clock=clock))
        plane = ControlPlane(
            [tmp_path], translator.resources_for, dependencies=DependencyIndex(),
            refresh=translator.refresh_jwks, refresh_interval=0.0,
        )  # fmt: skip
        assert plane.load()
        node = NodeInfo(NODE)
        assert provider_jwks(plane, node) == FAIL_CLOSED_JWKS
        clock.now = 6

        async def run_until_pushed() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(plane.run(lambda: [node], stop))
            for _ in range(250):  # bounded: 5 s
                await asyncio.sleep(0.02)
                if provider_jwks(plane, node) != FAIL_CLOSED_JWKS:
                    break
            stop.set()
            await task

        asyncio.run(run_until_pushed())
    assert json.loads(provider_jwks(plane, node)) == json.loads(jwks(KEY))


def test_translation_never_fetches_when_told_not_to() -> None:
    """meshcore serve's fetcher (fetch_on_miss=False): a translation, which runs in the event
    loop, never waits for a JWKS server; a jwksUri not fetched yet fails closed, then the
    refresh (a worker thread in serve) fetches it and says the keys changed."""
    with served(jwks(KEY).encode()) as (base, hits):
        translator = Translator(jwks=JwksFetcher(fetch_on_miss=False))
        objs = [*BASE, ra(jwtRules=[{"issuer": ISS, "jwksUri": f"{base}/jwks"}])]
        mesh = load_objects(objs)
        first = translator.generate(mesh, proxy_for_node(mesh, NODE))
        assert hits == []
        p = _jwt(_http_filters(first.resources[types.LISTENER])).providers["origins-0"]
        assert p.local_jwks.inline_string == FAIL_CLOSED_JWKS
        assert "not fetched yet" in first.problems[0].message
        assert translator.refresh_jwks()
        assert len(hits) == 1
        again = translator.generate(mesh, proxy_for_node(mesh, NODE))
        assert not translator.refresh_jwks()  # fetched: not due again before the interval
    p = _jwt(_http_filters(again.resources[types.LISTENER])).providers["origins-0"]
    assert json.loads(p.local_jwks.inline_string) == json.loads(jwks(KEY))
    assert again.problems == []
