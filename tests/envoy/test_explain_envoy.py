"""Agreement: ``meshcore x explain`` (over ADS from ``meshcore serve``) names the route's
endpoint, and the inbound authorization decision, that a real Envoy fed the same config takes,
for the differential corpus of test_dataplane_envoy_diff; and ``meshcore proxy-config`` shows
the same rows from the control plane (as the proxy) as from that Envoy's own config_dump (one
Envoy for both tools: CI time)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from _sidecar import (
    LoopThread,
    admin_get,
    free_port,
    http_get,
    running_envoy,
    serve_echo,
    serve_process,
    workload_secret,
)
from test_dataplane_envoy_diff import HOSTS, INBOUND, MESH, NAMES, REQUESTS, node

from meshcore.ca import CertificateAuthority
from meshcore.ca.sds import start_sds_server
from meshcore.dataplane.bootstrap import ads_bootstrap
from meshcore.tools import proxyconfig
from meshcore.tools.explain import Request, explain, planes_from_xds

pytestmark = pytest.mark.envoy


def test_explain_agrees_with_envoy(tmp_path: Path) -> None:
    port = free_port("127.0.81.1")
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(MESH.format(port=port))
    xds = free_port()
    backends = [serve_echo(address, port, name) for address, name in NAMES.items()]
    backends.append(serve_echo("127.0.86.2", port, "guarded-app"))
    stack = contextlib.ExitStack()
    try:
        loop = LoopThread()
        sds_server, secrets, sds = loop.run(start_sds_server(port=0))
        secret = workload_secret(
            CertificateAuthority.generate(), "spiffe://cluster.local/ns/default/sa/web"
        )
        loop.loop.call_soon_threadsafe(secrets.update, secret)
        stack.callback(loop.close)
        stack.callback(lambda: loop.run(sds_server.stop(None)))
        with serve_process(tmp_path, config, {"xds": xds}):
            web = ads_bootstrap(node("web-1", "127.0.80.1"), "127.0.0.1", xds,
                                admin_port=free_port(), delta=True, sds_address=sds,
                                metadata={"MESHCORE_OUTBOUND_ADDRESS": "127.0.80.2"})  # fmt: skip
            guarded = ads_bootstrap(node("guarded-1", "127.0.86.1"), "127.0.0.1", xds,
                                    admin_port=free_port(), delta=True, sds_address=sds,
                                    metadata={"MESHCORE_APP_ADDRESS": "127.0.86.2",
                                              "MESHCORE_OUTBOUND_ADDRESS": "127.0.86.3"})  # fmt: skip
            with (
                running_envoy(web, tmp_path, "web") as admin,
                running_envoy(guarded, tmp_path, "g"),
                planes_from_xds(f"127.0.0.1:{xds}") as planes,
            ):
                source = node("dp-web", "127.0.80.1")
                mismatches = []
                for host in HOSTS:
                    for method, path, headers in REQUESTS:
                        status, body = http_get(f"http://127.0.80.2:{port}{path}",
                                                f"{host}:{port}", method, **headers)  # fmt: skip
                        envoy = body if status == 200 else status
                        hs = [f"{k}: {v}" for k, v in headers.items()]
                        req = Request.parse(f"{method} http://{host}:{port}{path}", hs)
                        e = explain(planes, proxy=source, request=req)
                        ep = e["endpoint"]
                        ours = NAMES[ep.rsplit(":", 1)[0]] if ep else e["status"]
                        if envoy != ours:
                            mismatches.append(
                                (host, method, path, headers, envoy, ours, e["route"])
                            )
                assert not mismatches, mismatches
                outcomes = set()
                for method, path, headers in INBOUND:
                    status, body = http_get(f"http://127.0.86.1:{port}{path}",
                                            f"guarded:{port}", method, **headers)  # fmt: skip
                    envoy_allowed = status == 200 and body == "guarded-app"
                    hs = [f"{k}: {v}" for k, v in headers.items()]
                    req = Request.parse(f"{method} http://guarded:{port}{path}", hs)
                    e = explain(planes, proxy=source, request=req)
                    assert e["route"] is not None, e
                    assert e["cluster"], e
                    if envoy_allowed != e["allowed"]:
                        mismatches.append((method, path, headers, status, e["allowed"],
                                           e["policy_id"]))  # fmt: skip
                    outcomes.add((e["allowed"], e["policy_id"]))
                assert not mismatches, mismatches
                assert (False, "ns[default]-policy[deny-admin]-rule[0]") in outcomes
                assert (True, "ns[default]-policy[allow-api]-rule[1]") in outcomes
                assert (False, None) in outcomes
                check_proxy_config(admin, f"127.0.0.1:{xds}", node("web-1", "127.0.80.1"))
    finally:
        stack.close()
        for b in backends:
            b.shutdown()
            b.server_close()


def check_proxy_config(admin: int, xds: str, node_id: str) -> None:
    dump = proxyconfig.from_config_dump(json.loads(admin_get(admin, "/config_dump?include_eds")))
    served = proxyconfig.from_xds(xds, node_id)
    for kind in ("cluster", "listener", "route", "endpoint"):
        ours = served.table(kind)
        assert ours, kind
        envoy = dump.table(kind)
        # Envoy's also has its bootstrap's static clusters (xds, sds) and their endpoints.
        if kind == "cluster":
            envoy = [r for r in envoy if r[3] != "-"]
        elif kind == "endpoint":
            envoy = [r for r in envoy if "|" in r[3]]
        assert ours == envoy, (kind, ours, envoy)
