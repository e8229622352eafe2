"""Differential, with mTLS: one workload's translated listeners in a real Envoy (static
bootstrap, SVIDs from meshcore's CA) and compiled by the data plane; clients present SPIFFE
certificates of several service accounts (or none): Envoy's answer (200 from the app, 403 from
RBAC, or a refused handshake under STRICT) must match ``DataPlane.decide(direction="inbound")``
given the same peer principal."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path

import pytest
from _sidecar import bootstrap_for, free_port, running_envoy, serve_echo, workload_secret

from meshcore.ca import CertificateAuthority
from meshcore.config import validate
from meshcore.dataplane import DataPlane
from meshcore.dataplane.ads import AdsClient
from meshcore.dataplane.config import Compiler
from meshcore.xds.translate import generate, proxy_for_node

pytestmark = pytest.mark.envoy

MESH = """
apiVersion: v1
kind: Service
metadata: {{name: vault, namespace: bank}}
spec:
  selector: {{app: vault}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: vault-1, namespace: bank}}
spec: {{address: 127.0.97.1, labels: {{app: vault}}, serviceAccount: vault}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-ops-writes, namespace: bank}}
spec:
  selector: {{matchLabels: {{app: vault}}}}
  action: DENY
  rules:
  - from: [{{source: {{namespaces: [ops]}}}}]
    to: [{{operation: {{methods: [POST, DELETE]}}}}]
  - to: [{{operation: {{paths: ["/secrets/root*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-tellers, namespace: bank}}
spec:
  selector: {{matchLabels: {{app: vault}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/bank/sa/teller"]}}}}]
  - from: [{{source: {{namespaces: [ops]}}}}]
    to: [{{operation: {{paths: ["/secrets/*", "/health"]}}}}]
  - from: [{{source: {{notPrincipals: ["*/sa/intern"], namespaces: [audit]}}}}]
    to: [{{operation: {{methods: [GET]}}}}]
"""

SAS = [("bank", "teller"), ("ops", "admin"), ("audit", "reader"), ("audit", "intern"),
       ("bank", "other")]  # fmt: skip
REQUESTS = [("GET", "/secrets/a"), ("POST", "/secrets/a"), ("DELETE", "/x"), ("GET", "/health"),
            ("GET", "/secrets/root/key"), ("GET", "/other"), ("POST", "/other"),
            ("GET", "/secrets/../secrets/root")]  # fmt: skip
NODE = "sidecar~127.0.97.1~vault-1.bank~bank.svc.cluster.local"


def client_context(ca: CertificateAuthority, spiffe: str | None, tmp: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.trust_bundle_pem())
    if spiffe is not None:
        secret = workload_secret(ca, spiffe)
        path = tmp / f"{spiffe.rsplit('/', 1)[1]}-{abs(hash(spiffe))}.pem"
        path.write_bytes(secret.private_key_pem + secret.cert_chain_pem.encode())
        ctx.load_cert_chain(path)
    return ctx


def envoy_status(port: int, ctx: ssl.SSLContext, method: str, path: str) -> int | None:
    """Envoy's status, or None when it refused the TLS handshake (or closed)."""
    conn = http.client.HTTPSConnection("127.0.97.1", port, context=ctx, timeout=5)
    try:
        conn.request(method, path, headers={"Host": f"vault.bank:{port}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
        return None
    finally:
        conn.close()


def test_inbound_mtls_rbac_agrees_with_envoy(tmp_path: Path) -> None:
    port = free_port("127.0.97.1")
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    report = validate([config])
    assert report.model is not None, report.problems
    mesh = report.model
    ca = CertificateAuthority.generate()
    metadata = {"MESHCORE_APP_ADDRESS": "127.0.97.2", "MESHCORE_OUTBOUND_ADDRESS": "127.0.97.3"}
    boot = bootstrap_for(mesh, NODE, free_port(), ca, metadata)
    # The data plane compiles the very resources the bootstrap carries.
    result = generate(mesh, proxy_for_node(mesh, NODE, metadata))
    resources = {t: {n: ("1", m.SerializeToString()) for n, m in r.items()}  # type: ignore[union-attr]
                 for t, r in result.resources.items()}  # fmt: skip
    ads = AdsClient("127.0.0.1:1", NODE)
    ads.config = Compiler().compile(resources)
    dp = DataPlane(ads)
    app = serve_echo("127.0.97.2", port, "vault-app")
    mismatches = []
    outcomes = set()
    try:
        with running_envoy(boot, tmp_path, "vault"):
            for who in [*SAS, None]:
                spiffe = None if who is None else f"spiffe://cluster.local/ns/{who[0]}/sa/{who[1]}"
                ctx = client_context(ca, spiffe, tmp_path)
                for method, path in REQUESTS:
                    theirs = envoy_status(port, ctx, method, path)
                    d = dp.decide(direction="inbound", method=method, path=path,
                                  authority=f"vault.bank:{port}", port=port,
                                  principal=spiffe, source_ip="127.0.0.1")  # fmt: skip
                    envoy_allowed = theirs == 200
                    if envoy_allowed != d.allowed or (theirs is None) != (spiffe is None):
                        mismatches.append((spiffe, method, path, theirs, d.allowed, d.policy_id))
                    outcomes.add((d.allowed, d.policy_id))
    finally:
        app.shutdown()
        app.server_close()
    assert not mismatches, mismatches
    assert (True, "ns[bank]-policy[allow-tellers]-rule[0]") in outcomes
    assert (True, "ns[bank]-policy[allow-tellers]-rule[2]") in outcomes
    assert (False, "ns[bank]-policy[deny-ops-writes]-rule[0]") in outcomes
    assert (False, "ns[bank]-policy[deny-ops-writes]-rule[1]") in outcomes
    assert (False, None) in outcomes
