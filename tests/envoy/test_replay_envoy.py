"""``meshcore authz replay`` on a real Envoy's own access log (meshcore's JSON format, as
MeshConfig ``accessLogEncoding: JSON`` configures it): the differential corpus's inbound
requests to the guarded workload, replayed against a tightened policy, change exactly the
requests the tightening is about."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from _sidecar import (
    LoopThread,
    control_plane_in_thread,
    free_port,
    http_get,
    running_envoy,
    serve_echo,
    wait_for,
    workload_secret,
)
from test_dataplane_envoy_diff import INBOUND, MESH, node

from meshcore.ca import CertificateAuthority
from meshcore.ca.sds import start_sds_server
from meshcore.config import MeshModel, validate
from meshcore.config.meshconfig import MeshConfig
from meshcore.dataplane.bootstrap import ads_bootstrap
from meshcore.tools.replay import parse_log, replay, with_policies

pytestmark = pytest.mark.envoy

# allow-api without its rule 1 (POST /submit from 127.0.0.0/8): only that request changes.
TIGHT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin}
spec:
  selector: {matchLabels: {app: guarded}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
  - when: [{key: "request.headers[x-block]", values: ["*"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-api}
spec:
  selector: {matchLabels: {app: guarded}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET], paths: ["/api/*"]}}]
  - to: [{operation: {notPaths: ["/private*"], methods: [DELETE]}}]
"""


def test_replay_of_envoys_access_log(tmp_path: Path) -> None:
    port = free_port("127.0.86.1")
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    log = tmp_path / "access.log"
    mc = MeshConfig.from_dict({"accessLogFile": str(log), "accessLogEncoding": "JSON"})
    backend = serve_echo("127.0.86.2", port, "guarded-app")
    stack = contextlib.ExitStack()
    statuses = []
    try:
        loop = LoopThread()
        sds_server, secrets, sds = loop.run(start_sds_server(port=0))
        secret = workload_secret(
            CertificateAuthority.generate(), "spiffe://cluster.local/ns/default/sa/guarded"
        )
        loop.loop.call_soon_threadsafe(secrets.update, secret)
        stack.callback(loop.close)
        stack.callback(lambda: loop.run(sds_server.stop(None)))
        xds = free_port()
        with control_plane_in_thread([str(config)], xds_port=xds, mesh_config=mc):
            guarded = ads_bootstrap(node("guarded-1", "127.0.86.1"), "127.0.0.1", xds,
                                    admin_port=free_port(), delta=True, sds_address=sds,
                                    metadata={"MESHCORE_APP_ADDRESS": "127.0.86.2",
                                              "MESHCORE_OUTBOUND_ADDRESS": "127.0.86.3"})  # fmt: skip
            with running_envoy(guarded, tmp_path, "g"):
                for method, path, headers in INBOUND:
                    status, _ = http_get(f"http://127.0.86.1:{port}{path}", f"guarded:{port}",
                                         method, **headers)  # fmt: skip
                    statuses.append(status)
                wait_for(
                    lambda: log.exists() and len(log.read_text().splitlines()) >= len(INBOUND),
                    "Envoy's access log",
                )
    finally:
        stack.close()
        backend.shutdown()
        backend.server_close()
    lines = log.read_text().splitlines()
    assert len(lines) == len(INBOUND)
    (tmp_path / "tight").mkdir()
    (tmp_path / "tight" / "policies.yaml").write_text(TIGHT)
    old, policies = validate([str(config)]).model, validate([str(tmp_path / "tight")]).model
    assert old is not None
    assert policies is not None
    requests = parse_log(lines)
    assert len(requests) == len(INBOUND)
    assert requests.skipped == 0
    report = replay(old, with_policies(old, policies), requests)
    assert report.not_replayed == 0
    submit = INBOUND.index(("POST", "/submit", {})) + 1
    delete = INBOUND.index(("DELETE", "/thing", {})) + 1
    # Envoy allowed both under the current policies.
    assert (statuses[submit - 1], statuses[delete - 1]) == (200, 200)
    # POST /submit is now denied; DELETE /thing is still allowed, by the rule that moved up.
    assert [(c.lines, c.method, c.path, c.old, c.new, c.old_policy, c.new_policy)
            for c in report.changes] == [
        ((submit,), "POST", "/submit", "ALLOW", "DENY",
         "ns[default]-policy[allow-api]-rule[1]", None),
        ((delete,), "DELETE", "/thing", "ALLOW", "ALLOW",
         "ns[default]-policy[allow-api]-rule[2]", "ns[default]-policy[allow-api]-rule[1]"),
    ]  # fmt: skip
    # And the current policies' decisions are Envoy's: against no policy at all (everything
    # allowed), the requests that change from DENY are exactly those Envoy answered 403, but
    # for a request denied on a header (x-block): access logs do not record request headers.
    none = replay(old, with_policies(old, MeshModel([])), requests)
    denied = {line for c in none.changes if c.old == "DENY" for line in c.lines}
    envoy_denied = {i + 1 for i, status in enumerate(statuses) if status == 403}
    by_header = {i + 1 for i, (_, _, headers) in enumerate(INBOUND) if headers}
    assert denied == envoy_denied - by_header
    assert len(denied) >= 5
