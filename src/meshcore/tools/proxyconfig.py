"""``meshcore proxy-config``: one proxy's clusters, listeners, routes, endpoints and secrets,
from a running control plane (an ADS stream as the proxy, :func:`from_xds`), from an Envoy
admin ``config_dump`` (:func:`from_config_dump`) or translated here (:func:`from_mesh`).

Every source yields :class:`ProxyConfig`: resources by kind, each as the JSON Envoy's
``config_dump`` uses (proto field names). ``table(kind)`` gives istioctl's columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from meshcore.config import MeshModel
from meshcore.tools.constants import KINDS
from meshcore.xds import types

TYPE_OF_KIND = {"cluster": types.CLUSTER, "listener": types.LISTENER, "route": types.ROUTE,
                "endpoint": types.ENDPOINT, "secret": types.SECRET}  # fmt: skip
COLUMNS = {
    "cluster": ("SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"),
    "listener": ("ADDRESSES", "PORT", "MATCH", "DESTINATION"),
    "route": ("NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"),
    "endpoint": ("ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"),
    "secret": ("RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER",
               "NOT BEFORE"),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """A proxy's resources: kind -> list of resource JSON (config_dump's field names)."""

    resources: Mapping[str, list[dict[str, Any]]]

    def table(self, kind: str) -> list[tuple[str, ...]]:
        """istioctl's rows for ``kind`` (without the header)."""
        rows = [row for r in self.resources.get(kind, []) for row in _ROWS[kind](r)]
        return sorted(rows)


def _message_class(type_url: str) -> type[Message]:
    from google.protobuf import descriptor_pool, message_factory

    name = type_url.rsplit("/", 1)[-1]
    cls: type[Message] = message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName(name)
    )
    return cls


def _to_json(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


def from_resources(resources: Mapping[str, Mapping[str, Message | bytes]]) -> ProxyConfig:
    """From xDS resources by type URL then name (the translator's or an ADS client's)."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for kind, url in TYPE_OF_KIND.items():
        for _, res in sorted(resources.get(url, {}).items()):
            msg = res if isinstance(res, Message) else _message_class(url).FromString(res)
            out[kind].append(_to_json(msg))
    return ProxyConfig(out)


def from_mesh(mesh: MeshModel, node_id: str) -> ProxyConfig:
    """Translated here for ``node_id`` (no control plane)."""
    from meshcore.xds.node import proxy_for_node
    from meshcore.xds.translator import Translator

    proxy = proxy_for_node(mesh, node_id)
    return from_resources(Translator().generate(mesh, proxy).resources)


def from_xds(address: str, node_id: str, *, timeout: float = 10.0) -> ProxyConfig:
    """What a running control plane sends the proxy ``node_id`` (one ADS stream, as it)."""
    from meshcore.dataplane.plane import DataPlane

    dp = DataPlane.connect(address, node_id=node_id, timeout=timeout)
    try:
        held = {url: {n: raw for n, (_, raw) in by.items()} for url, by in dp.ads.resources.items()}
    finally:
        dp.close()
    return from_resources(held)


_DUMP_KEYS = {
    "ClustersConfigDump": ("cluster", (("static_clusters", "cluster"),
                                       ("dynamic_active_clusters", "cluster"))),
    "ListenersConfigDump": ("listener", (("static_listeners", "listener"),
                                         ("dynamic_listeners", "active_state.listener"))),
    "RoutesConfigDump": ("route", (("static_route_configs", "route_config"),
                                   ("dynamic_route_configs", "route_config"))),
    "EndpointsConfigDump": ("endpoint", (("static_endpoint_configs", "endpoint_config"),
                                         ("dynamic_endpoint_configs", "endpoint_config"))),
    "SecretsConfigDump": ("secret", (("static_secrets", "secret"),
                                     ("dynamic_active_secrets", "secret"))),
}  # fmt: skip


def _dig(d: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(d, Mapping):
            return None
        d = d.get(key)
    return d


def from_config_dump(source: str | Path | Mapping[str, Any]) -> ProxyConfig:
    """From Envoy's ``/config_dump`` JSON (a file, or the parsed document); endpoints appear
    only in ``/config_dump?include_eds``. Raises ValueError on a document that is not one."""
    doc = source if isinstance(source, Mapping) else json.loads(Path(source).read_text())
    configs = doc.get("configs") if isinstance(doc, Mapping) else None
    if not isinstance(configs, list):
        raise ValueError("not an Envoy config_dump: no 'configs' list")
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for c in configs:
        if not isinstance(c, Mapping):
            continue
        short = str(c.get("@type", "")).rsplit(".", 1)[-1]
        if short not in _DUMP_KEYS:
            continue
        kind, places = _DUMP_KEYS[short]
        for key, inner in places:
            for item in c.get(key) or ():
                res = _dig(item, inner)
                if isinstance(res, Mapping):
                    body = {k: v for k, v in res.items() if k != "@type"}
                    out[kind].append(body)
    return ProxyConfig(out)


# --- istioctl's columns ------------------------------------------------------------------------


def _cluster_rows(c: Mapping[str, Any]) -> list[tuple[str, ...]]:
    name = str(c.get("name", ""))
    parts = name.split("|")
    kind = str(c.get("type", "EDS" if "eds_cluster_config" in c else "STATIC"))
    dr = "-"
    istio = _dig(c, "metadata.filter_metadata.istio.config")
    if isinstance(istio, str) and "/destination-rule/" in istio:
        segs = istio.split("/")
        dr = f"{segs[-1]}.{segs[-3]}"
    if len(parts) == 4:
        direction, port, subset, fqdn = parts
        return [(fqdn, port, subset or "-", direction, kind, dr)]
    return [(name, "-", "-", "-", kind, dr)]


def _chain_match(chain: Mapping[str, Any]) -> str:
    m = chain.get("filter_chain_match") or {}
    bits = []
    if m.get("transport_protocol"):
        bits.append(f"Trans: {m['transport_protocol']}")
    if m.get("application_protocols"):
        bits.append(f"App: {','.join(m['application_protocols'])}")
    if m.get("server_names"):
        bits.append(f"SNI: {','.join(m['server_names'])}")
    if m.get("destination_port"):
        bits.append(f"Port: {m['destination_port']}")
    return "; ".join(bits) or "ALL"


def _chain_destination(chain: Mapping[str, Any]) -> str:
    for f in chain.get("filters") or ():
        cfg = f.get("typed_config") or {}
        if "rds" in cfg:
            return f"Route: {_dig(cfg, 'rds.route_config_name')}"
        if "route_config" in cfg:
            return f"Inline Route: {_dig(cfg, 'route_config.name') or '-'}"
        if "cluster" in cfg:
            return f"Cluster: {cfg['cluster']}"
    return "-"


def _listener_rows(lst: Mapping[str, Any]) -> list[tuple[str, ...]]:
    sock = _dig(lst, "address.socket_address") or {}
    addr, port = str(sock.get("address", "-")), str(sock.get("port_value", "-"))
    chains = list(lst.get("filter_chains") or ())
    if lst.get("default_filter_chain"):
        chains.append(lst["default_filter_chain"])
    return [(addr, port, _chain_match(c), _chain_destination(c)) for c in chains] or [
        (addr, port, "-", "-")
    ]


def _route_match(route: Mapping[str, Any]) -> str:
    m = route.get("match") or {}
    for key in ("path", "prefix", "path_separated_prefix"):
        if key in m:
            return str(m[key]) + ("*" if key != "path" else "")
    if "safe_regex" in m:
        return f"regex {_dig(m, 'safe_regex.regex')}"
    return "/*"


def _route_rows(rc: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for vh in rc.get("virtual_hosts") or ():
        domains = list(vh.get("domains") or ())
        shown = domains[0] if len(domains) == 1 else (f"{domains[0]} +{len(domains) - 1} more"
                                                      if domains else "-")  # fmt: skip
        for r in vh.get("routes") or ():
            vs = _dig(r, "metadata.filter_metadata.istio.config")
            vsname = "-"
            if isinstance(vs, str) and "/virtual-service/" in vs:
                segs = vs.split("/")
                vsname = f"{segs[-1]}.{segs[-3]}"
            rows.append((str(rc.get("name", "")), str(vh.get("name", "")), shown,
                         _route_match(r), vsname))  # fmt: skip
    return rows


def _endpoint_rows(cla: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for group in cla.get("endpoints") or ():
        for lb in group.get("lb_endpoints") or ():
            sock = _dig(lb, "endpoint.address.socket_address") or {}
            status = str(lb.get("health_status", "HEALTHY"))
            rows.append((f"{sock.get('address', '-')}:{sock.get('port_value', '-')}", status,
                         "OK", str(cla.get("cluster_name", ""))))  # fmt: skip
    return rows


def _secret_rows(s: Mapping[str, Any]) -> list[tuple[str, ...]]:
    import base64

    from cryptography import x509

    name = str(s.get("name", ""))
    if "tls_certificate" in s:
        kind, pem = "Cert Chain", _dig(s, "tls_certificate.certificate_chain")
    elif "validation_context" in s:
        kind, pem = "CA", _dig(s, "validation_context.trusted_ca")
    else:
        return [(name, "-", "ACTIVE", "false", "-", "-", "-")]
    data = b""
    if isinstance(pem, Mapping):
        if "inline_bytes" in pem:
            data = base64.b64decode(pem["inline_bytes"])
        elif "inline_string" in pem:
            data = str(pem["inline_string"]).encode()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return [(name, kind, "ACTIVE", "false", "-", "-", "-")]
    return [(name, kind, "ACTIVE", "true", format(cert.serial_number, "x"),
             cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
             cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"))]  # fmt: skip


_ROWS = {"cluster": _cluster_rows, "listener": _listener_rows, "route": _route_rows,
         "endpoint": _endpoint_rows, "secret": _secret_rows}  # fmt: skip


def render(config: ProxyConfig, kind: str) -> str:
    """istioctl's text table for ``kind``."""
    header = COLUMNS[kind]
    rows = [header, *config.table(kind)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
