"""A gateway proxy's listeners carry Istio's stats logger (as the source of what it forwards,
the way Istio's gateways report) when its agent collects Istio's metrics, on HTTP and TCP
servers, and never when it does not (that Envoy has no telemetry cluster to log to), even when
both kinds of gateway share namespace, labels and address in one translation."""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshcore.config import load_objects
from meshcore.xds import types
from meshcore.xds.telemetry import OTEL_LOGGER_NAME, TELEMETRY_KEY
from meshcore.xds.translate import proxy_for_node
from meshcore.xds.translator import Translator

ROUTER = "router~10.1.0.1~gw.istio-system~istio-system.svc.cluster.local"
LABELS = {"LABELS": {"istio": "ingressgateway"}}
MESH: list[dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
     "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 8000},
                                                    {"name": "tcp", "port": 9000}]}},
    {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
     "metadata": {"name": "gw", "namespace": "default"},
     "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
         {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]},
         {"port": {"number": 31400, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}]}},
    {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
     "metadata": {"name": "web", "namespace": "default"},
     "spec": {"hosts": ["web.example.com"], "gateways": ["gw"],
              "http": [{"route": [{"destination": {"host": "web", "port": {"number": 8000}}}]}],
              "tcp": [{"match": [{"port": 31400}],
                       "route": [{"destination": {"host": "web", "port": {"number": 9000}}}]}]}},
]  # fmt: skip


def loggers(resources: Any) -> dict[str, list[str]]:
    """Per listener, the access loggers of its HCM or TCP proxy."""
    out = {}
    for name, listener in resources[types.LISTENER].items():
        f = listener.filter_chains[0].filters[-1]
        msg: Any = hcm_pb2.HttpConnectionManager() if "http_connection_manager" in f.name \
            else tcp_proxy_pb2.TcpProxy()  # fmt: skip
        f.typed_config.Unpack(msg)
        out[name] = [log.name for log in msg.access_log]
    return out


def test_gateway_listeners_report_istio_metrics_when_the_agent_collects() -> None:
    mesh = load_objects(MESH)
    translator = Translator()
    collecting = {**LABELS, TELEMETRY_KEY: "otlp"}
    for order in ((collecting, LABELS), (LABELS, collecting)):
        got = {
            bool(meta.get(TELEMETRY_KEY)): loggers(
                translator.generate(mesh, proxy_for_node(mesh, ROUTER, meta)).resources
            )
            for meta in order
        }
        assert got[True] == {"0.0.0.0_80": [OTEL_LOGGER_NAME], "0.0.0.0_31400": [OTEL_LOGGER_NAME]}
        assert got[False] == {"0.0.0.0_80": [], "0.0.0.0_31400": []}
