"""Envoy bootstraps for sidecars of meshcore's control plane (ADS over gRPC)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshcore.names import BOOTSTRAP_RUNTIME, SDS_CLUSTER
from meshcore.xds.node import parse_node_id

XDS_CLUSTER = "xds-grpc"  # Istio's name for the control-plane cluster


def ads_bootstrap(
    node_id: str,
    xds_host: str,
    xds_port: int,
    *,
    admin_port: int = 0,
    admin_address: str = "127.0.0.1",
    metadata: Mapping[str, Any] | None = None,
    delta: bool = False,
    sds_address: str | None = None,
    xds_addresses: str | None = None,
) -> dict[str, Any]:
    """A bootstrap (a dict, for JSON or YAML) whose listeners and clusters all come from
    meshcore over one ADS stream (state of the world, or delta with ``delta=True``).

    ``sds_address`` (``unix:PATH`` or ``HOST:PORT``) adds the ``sds-grpc`` cluster through
    which Envoy fetches its certificates from the agent's SDS server. Translated listeners and
    clusters reference secrets there whenever mTLS may be used (auto mTLS included), so a
    sidecar needs it: :class:`meshcore.dataplane.agent.Agent` runs one and passes it.

    ``xds_addresses`` (``HOST:PORT,HOST:PORT...``, control-plane replicas) replaces
    ``xds_host``/``xds_port``: all of them in the xds cluster, Envoy moves between them."""
    _, _, name, namespace, _ = parse_node_id(node_id)  # ValueError names a bad id
    node: dict[str, Any] = {"id": node_id, "cluster": f"{name}.{namespace}"}
    if metadata:
        node["metadata"] = dict(metadata)
    ads = {"ads": {}, "resource_api_version": "V3"}
    boot: dict[str, Any] = {
        "node": node,
        "admin": {"address": {"socket_address": {"address": admin_address, "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [grpc_cluster(XDS_CLUSTER, xds_addresses or f"{xds_host}:{xds_port}")]
        },
        "layered_runtime": {
            "layers": [
                {"name": "global config", "static_layer": dict(BOOTSTRAP_RUNTIME)},
                {"name": "admin", "admin_layer": {}},
            ]
        },
    }  # fmt: skip
    if sds_address is not None:
        boot["static_resources"]["clusters"].append(grpc_cluster(SDS_CLUSTER, sds_address))
    return boot


def grpc_cluster(name: str, address: str) -> dict[str, Any]:
    """A static HTTP/2 cluster for a gRPC server at ``HOST:PORT`` or ``unix:PATH`` (the
    control plane's ``xds-grpc``, the agent's ``sds-grpc``); ``HOST:PORT,HOST:PORT...``: one
    endpoint each (control-plane replicas: a stream that breaks reconnects to another)."""
    endpoints: list[dict[str, Any]] = []
    for one in address.split(","):
        if one.startswith("unix:"):
            endpoint: dict[str, Any] = {"pipe": {"path": one[len("unix:") :]}}
        else:
            host, _, port = one.strip().rpartition(":")
            endpoint = {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}
        endpoints.append({"endpoint": {"address": endpoint}})
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": endpoints}],
        },
    }
