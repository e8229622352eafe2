"""A static Envoy bootstrap holding a proxy's translated resources inline (for checking a
translation offline: ``envoy --mode validate``, tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from meshcore.names import BOOTSTRAP_RUNTIME
from meshcore.xds import types
from meshcore.xds.node import parse_node_id
from meshcore.xds.translator import Generated
from meshcore.xds.types import Resources

__all__ = ["render_static_bootstrap"]


def _plain(value: Any) -> Any:
    # MessageToDict renders Any fields as OrderedDicts, which YAML dumpers refuse.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _to_dict(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = _plain(json_format.MessageToDict(msg, preserving_proto_field_name=True))
    return out


def _walk(value: Any, fn: Callable[[dict[str, Any]], None]) -> None:
    if isinstance(value, dict):
        fn(value)
        for v in value.values():
            _walk(v, fn)
    elif isinstance(value, list):
        for v in value:
            _walk(v, fn)


def render_static_bootstrap(
    result: Generated | Resources,
    node_id: str,
    admin_port: int,
    *,
    secrets: Iterable[Message] | None = None,
    admin_address: str = "127.0.0.1",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An Envoy bootstrap (a dict: dump it as YAML or JSON) with every resource inline.

    Routes are inlined into the HTTP connection managers that name them, endpoints into their
    clusters' ``load_assignment`` (EDS clusters become STATIC). ``secrets`` (Envoy ``Secret``
    messages named ``default`` and ``ROOTCA``) go into ``static_resources.secrets``, and every SDS
    reference is pointed at the static secrets (a static bootstrap has no agent to fetch them
    from): pass them whenever mTLS is in use. This is for checking a translation offline
    (``envoy --mode validate``, tests); sidecars run by :mod:`meshcore.dataplane.agent` get
    their config over ADS and their secrets over SDS instead.
    """
    resources = result.resources if isinstance(result, Generated) else result
    routes = {name: _to_dict(m) for name, m in resources.get(types.ROUTE, {}).items()}
    endpoints = {name: _to_dict(m) for name, m in resources.get(types.ENDPOINT, {}).items()}
    clusters = [_to_dict(m) for _, m in sorted(resources.get(types.CLUSTER, {}).items())]
    listeners = [_to_dict(m) for _, m in sorted(resources.get(types.LISTENER, {}).items())]
    static_secrets = [_to_dict(s) for s in secrets or ()]

    def inline_rds(d: dict[str, Any]) -> None:
        rds = d.get("rds")
        if isinstance(rds, dict) and "route_config_name" in rds:
            name = rds["route_config_name"]
            d.pop("rds")
            d["route_config"] = routes.get(name, {"name": name, "validate_clusters": False})

    def local_sds(d: dict[str, Any]) -> None:
        for key in ("tls_certificate_sds_secret_configs",):
            for ref in d.get(key, ()):
                ref.pop("sds_config", None)
        ref = d.get("validation_context_sds_secret_config")
        if isinstance(ref, dict):
            ref.pop("sds_config", None)

    for listener in listeners:
        _walk(listener, inline_rds)
        _walk(listener, local_sds)
    for cluster in clusters:
        if cluster.get("type") == "EDS":
            name = cluster.get("eds_cluster_config", {}).get("service_name", cluster["name"])
            cluster.pop("eds_cluster_config", None)
            cluster["type"] = "STATIC"
            cluster["load_assignment"] = endpoints.get(name, {"cluster_name": name})
        _walk(cluster, local_sds)
    _, _, name, namespace, _ = parse_node_id(node_id)
    node: dict[str, Any] = {"id": node_id, "cluster": f"{name}.{namespace}"}
    if metadata:
        node["metadata"] = json_format.MessageToDict(_struct(metadata))
    static: dict[str, Any] = {"listeners": listeners, "clusters": clusters}
    if static_secrets:
        static["secrets"] = static_secrets
    return {
        "node": node,
        "admin": {
            "address": {"socket_address": {"address": admin_address, "port_value": admin_port}}
        },
        "static_resources": static,
        "layered_runtime": {
            "layers": [
                {"name": "global config", "static_layer": dict(BOOTSTRAP_RUNTIME)},
                {"name": "admin", "admin_layer": {}},
            ]
        },
    }


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(values))
    return s
