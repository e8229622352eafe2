"""Differential: the same config, served by ``meshcore serve`` over ADS, to a real Envoy sidecar
and to ``DataPlane``: the cluster Envoy routes each request to (per-cluster echo backends say
which) equals ``dp.decide``'s, and inbound RBAC allow/deny agree."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from _sidecar import (
    LoopThread,
    free_port,
    http_get,
    running_envoy,
    serve_echo,
    serve_process,
    workload_secret,
)

from meshcore.ca import CertificateAuthority
from meshcore.ca.sds import start_sds_server
from meshcore.dataplane import DataPlane
from meshcore.dataplane.bootstrap import ads_bootstrap

pytestmark = pytest.mark.envoy

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: reviews}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ratings}}
spec:
  selector: {{app: ratings}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: guarded}}
spec:
  selector: {{app: guarded}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-1}}
spec: {{address: 127.0.80.1, labels: {{app: web}}, serviceAccount: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1}}
spec: {{address: 127.0.81.1, labels: {{app: reviews, version: v1}}, serviceAccount: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v2}}
spec: {{address: 127.0.82.1, labels: {{app: reviews, version: v2}}, serviceAccount: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v3}}
spec: {{address: 127.0.83.1, labels: {{app: reviews, version: v3}}, serviceAccount: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-1}}
spec: {{address: 127.0.84.1, labels: {{app: ratings}}, serviceAccount: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: guarded-1}}
spec: {{address: 127.0.86.1, labels: {{app: guarded}}, serviceAccount: guarded}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: DISABLE}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{x-user: {{exact: tester}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - match: [{{uri: {{prefix: /v3}}}}, {{method: {{exact: POST}}}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - match: [{{uri: {{regex: "/items/[0-9]+"}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - match: [{{headers: {{x-env: {{prefix: canary}}}}, uri: {{prefix: /api}}}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - match: [{{queryParams: {{debug: {{exact: "1"}}}}}}]
    route: [{{destination: {{host: ratings}}}}]
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 100}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 0}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  http:
  - match: [{{uri: {{exact: /ping}}}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - route: [{{destination: {{host: ratings}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin}}
spec:
  selector: {{matchLabels: {{app: guarded}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin", "/admin/*"]}}}}]
  - when: [{{key: "request.headers[x-block]", values: ["*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-api}}
spec:
  selector: {{matchLabels: {{app: guarded}}}}
  action: ALLOW
  rules:
  - to: [{{operation: {{methods: [GET], paths: ["/api/*"]}}}}]
  - from: [{{source: {{ipBlocks: ["127.0.0.0/8"]}}}}]
    to: [{{operation: {{methods: [POST], paths: ["/submit"]}}}}]
  - to: [{{operation: {{notPaths: ["/private*"], methods: [DELETE]}}}}]
"""

HOSTS = ["reviews", "reviews.default.svc.cluster.local", "ratings", "nowhere"]
REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/", {}),
    ("GET", "/v3/x", {}),
    ("POST", "/anything", {}),
    ("GET", "/items/42", {}),
    ("GET", "/items/4x", {}),
    ("GET", "/api/a", {"x-env": "canary-7"}),
    ("GET", "/api/a", {"x-env": "prod"}),
    ("GET", "/other", {"x-env": "canary"}),
    ("GET", "/", {"x-user": "tester"}),
    ("GET", "/?debug=1", {}),
    ("GET", "/?debug=2", {}),
    ("GET", "/ping", {}),
    ("GET", "/ping/", {}),
    ("GET", "/V3/x", {}),
]
INBOUND: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/api/x", {}),
    ("POST", "/api/x", {}),
    ("GET", "/admin", {}),
    ("GET", "/api/admin", {}),
    ("GET", "/admin/x", {}),
    ("GET", "/api/x", {"x-block": "1"}),
    ("POST", "/submit", {}),
    ("POST", "/submit/", {}),
    ("DELETE", "/thing", {}),
    ("DELETE", "/private/thing", {}),
    ("GET", "/", {}),
    # What the RBAC filter sees is the normalised path (normalize_path on the inbound HCM).
    ("GET", "/api/../admin", {}),
    ("GET", "/api/%2e%2e/admin/x", {}),
    ("GET", "/api/x/./y", {}),
    ("GET", "/%61pi/x", {}),
    ("DELETE", "/x/../private/thing", {}),
]
NAMES = {"127.0.81.1": "v1", "127.0.82.1": "v2", "127.0.83.1": "v3", "127.0.84.1": "ratings"}


def node(name: str, address: str) -> str:
    return f"sidecar~{address}~{name}.default~default.svc.cluster.local"


def test_envoy_and_dataplane_decide_alike(tmp_path: Path) -> None:
    port = free_port("127.0.81.1")
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    xds = free_port()
    backends = [serve_echo(address, port, name) for address, name in NAMES.items()]
    backends.append(serve_echo("127.0.86.2", port, "guarded-app"))
    stack = contextlib.ExitStack()
    try:
        # The mesh is plaintext, but translated clusters reference the agent's SDS for auto mTLS
        # (as Istio's do), and Envoy warms them only once the secrets arrive: serve some.
        loop = LoopThread()
        sds_server, secrets, sds = loop.run(start_sds_server(port=0))
        secret = workload_secret(
            CertificateAuthority.generate(), "spiffe://cluster.local/ns/default/sa/web"
        )
        loop.loop.call_soon_threadsafe(secrets.update, secret)
        stack.callback(loop.close)
        stack.callback(lambda: loop.run(sds_server.stop(None)))
        with serve_process(tmp_path, config, {"xds": xds}):
            (log,) = tmp_path.glob("serve-*.log")
            assert "error" not in log.read_text()
            web = ads_bootstrap(node("web-1", "127.0.80.1"), "127.0.0.1", xds,
                                admin_port=free_port(), delta=True, sds_address=sds,
                                metadata={"MESHCORE_OUTBOUND_ADDRESS": "127.0.80.2"})  # fmt: skip
            guarded = ads_bootstrap(node("guarded-1", "127.0.86.1"), "127.0.0.1", xds,
                                    admin_port=free_port(), delta=True, sds_address=sds,
                                    metadata={"MESHCORE_APP_ADDRESS": "127.0.86.2",
                                              "MESHCORE_OUTBOUND_ADDRESS": "127.0.86.3"})  # fmt: skip
            # The data planes: other node names, the same workloads (found by address).
            dp_web = DataPlane.connect(f"127.0.0.1:{xds}", node_id=node("dp-web", "127.0.80.1"))
            dp_guarded = DataPlane.connect(f"127.0.0.1:{xds}",
                                           node_id=node("dp-guarded", "127.0.86.1"))  # fmt: skip
            try:
                with running_envoy(web, tmp_path, "web"), running_envoy(guarded, tmp_path, "g"):
                    compare_routes(dp_web, port)
                    compare_rbac(dp_guarded, port)
            finally:
                dp_web.close()
                dp_guarded.close()
    finally:
        stack.close()
        for b in backends:
            b.shutdown()
            b.server_close()


def compare_routes(dp: DataPlane, port: int) -> None:
    mismatches = []
    routed = set()
    for host in HOSTS:
        for method, path, headers in REQUESTS:
            status, body = http_get(f"http://127.0.80.2:{port}{path}", f"{host}:{port}",
                                    method, **headers)  # fmt: skip
            envoy = body if status == 200 else status
            d = dp.decide(direction="outbound", method=method, authority=f"{host}:{port}",
                          path=path, headers=headers)  # fmt: skip
            ours = NAMES[d.endpoint.address] if d.endpoint is not None else d.status
            if envoy != ours:
                mismatches.append((host, method, path, headers, envoy, ours, d.route))
            routed.add(envoy)
    assert not mismatches, mismatches
    # The corpus exercises every cluster and the no-route case.
    assert routed == {"v1", "v2", "v3", "ratings", 404}, routed


def compare_rbac(dp: DataPlane, port: int) -> None:
    mismatches = []
    outcomes = set()
    for method, path, headers in INBOUND:
        status, body = http_get(f"http://127.0.86.1:{port}{path}", f"guarded:{port}",
                                method, **headers)  # fmt: skip
        envoy_allowed = status == 200 and body == "guarded-app"
        assert status in (200, 403), (status, body)
        d = dp.decide(direction="inbound", method=method, authority=f"guarded:{port}",
                      path=path, headers=headers, port=port, source_ip="127.0.0.1",
                      tls=False)  # fmt: skip
        if envoy_allowed != d.allowed:
            mismatches.append((method, path, headers, status, d.allowed, d.policy_id))
        outcomes.add((d.allowed, d.policy_id))
    assert not mismatches, mismatches
    assert (False, "ns[default]-policy[deny-admin]-rule[0]") in outcomes
    assert (False, "ns[default]-policy[deny-admin]-rule[1]") in outcomes
    assert (True, "ns[default]-policy[allow-api]-rule[1]") in outcomes
    assert (False, None) in outcomes  # ALLOW policies, none matched
