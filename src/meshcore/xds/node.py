"""Node identity: who a connected proxy is, from its xDS node id and metadata.

Sidecars identify as Istio's do: ``sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local``,
matched to a WorkloadEntry by name and namespace, else by address. Gateway proxies use the
type ``router`` (``router~IP~NAME.NAMESPACE~...``: :mod:`meshcore.xds.gateway`); their labels,
which Gateways select, come from their WorkloadEntry or the node metadata ``LABELS``.
A proxy's locality (locality load balancing) is its WorkloadEntry's ``locality``, else the
``istio-locality`` label (``region.zone.subzone``) of its metadata ``LABELS``.
Proxyless gRPC clients use the sidecar shape with node metadata ``GENERATOR: grpc`` (Istio's
convention).

Node metadata keys of the loopback layout (tests and the demo run without iptables): the app
listens on ``MESHCORE_APP_ADDRESS`` (default 127.0.0.1), outbound listeners bind on
``MESHCORE_OUTBOUND_ADDRESS`` (default 127.0.0.1).

Istio's ``INTERCEPTION_MODE`` chooses the layout per proxy: ``REDIRECT`` (iptables REDIRECT to
15001/15006, as ``meshcore iptables`` writes them) gets Istio's capture layout
(:mod:`meshcore.xds.capturelisteners`); absent or ``NONE`` gets the loopback layout, so both
kinds of proxy share one control plane. ``TPROXY`` is refused (not built).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcore.config.model import MeshModel, WorkloadEntry

__all__ = [
    "APP_ADDRESS_KEY",
    "DEFAULT_ADDRESS",
    "GENERATOR_KEY",
    "INTERCEPTION_MODE_KEY",
    "LABELS_KEY",
    "OUTBOUND_ADDRESS_KEY",
    "Proxy",
    "parse_node_id",
    "proxy_for_node",
]

APP_ADDRESS_KEY = "MESHCORE_APP_ADDRESS"
OUTBOUND_ADDRESS_KEY = "MESHCORE_OUTBOUND_ADDRESS"
DEFAULT_ADDRESS = "127.0.0.1"
# Istio's agent metadata: the client kind (``grpc`` for proxyless) and the workload's labels.
GENERATOR_KEY = "GENERATOR"
LABELS_KEY = "LABELS"
INTERCEPTION_MODE_KEY = "INTERCEPTION_MODE"
ISTIO_LOCALITY_LABEL = "istio-locality"
CAPTURE_MODES = ("REDIRECT",)
LOOPBACK_MODES = ("", "NONE")


@dataclass(frozen=True, slots=True)
class Proxy:
    """A connected proxy as the translator sees it."""

    node_id: str
    ip: str
    name: str
    namespace: str
    workload: WorkloadEntry | None
    labels: Mapping[str, str]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    type: str = "sidecar"
    domain: str = "cluster.local"
    # ``region/zone/subzone``: locality load balancing orders endpoints relative to it.
    locality: str = ""

    @property
    def proxyless(self) -> bool:
        """A gRPC client speaking xDS itself (Istio marks them with ``GENERATOR: grpc``)."""
        return str(self.metadata.get(GENERATOR_KEY, "")) == "grpc"

    @property
    def capture(self) -> bool:
        """Traffic reaches the sidecar through iptables REDIRECT (Istio's capture layout)."""
        return str(self.metadata.get(INTERCEPTION_MODE_KEY, "")) in CAPTURE_MODES

    @property
    def app_address(self) -> str:
        return str(self.metadata.get(APP_ADDRESS_KEY) or DEFAULT_ADDRESS)

    @property
    def outbound_address(self) -> str:
        return str(self.metadata.get(OUTBOUND_ADDRESS_KEY) or DEFAULT_ADDRESS)


def parse_node_id(node_id: str) -> tuple[str, str, str, str, str]:
    """``TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN`` -> (type, ip, name, namespace, domain).

    Raises ValueError naming what is wrong with the id.
    """
    parts = node_id.split("~")
    if len(parts) != 4:
        raise ValueError(
            f"node id {node_id!r}: expected TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.DOMAIN"
            f" (4 parts separated by '~', got {len(parts)})"
        )
    kind, ip, pod, dns = parts
    if not kind:
        raise ValueError(f"node id {node_id!r}: the proxy type (e.g. 'sidecar') is empty")
    name, dot, namespace = pod.rpartition(".")
    if not dot or not name or not namespace:
        raise ValueError(f"node id {node_id!r}: {pod!r} is not NAME.NAMESPACE")
    ns2, _, rest = dns.partition(".")
    domain = rest[4:] if rest.startswith("svc.") else rest
    if ns2 and ns2 != namespace:
        raise ValueError(
            f"node id {node_id!r}: namespace {namespace!r} and DNS domain {dns!r} disagree"
        )
    return kind, ip, name, namespace, domain or "cluster.local"


def proxy_for_node(
    mesh: MeshModel, node_id: str, metadata: Mapping[str, Any] | None = None
) -> Proxy:
    """The Proxy for an xDS node: its WorkloadEntry (by name, else by address) and labels.

    A node matching no WorkloadEntry still gets outbound config (labels from metadata
    ``LABELS``, as Istio's agent sends them).
    """
    kind, ip, name, namespace, domain = parse_node_id(node_id)
    meta = dict(metadata or {})
    mode = str(meta.get(INTERCEPTION_MODE_KEY, ""))
    if mode not in CAPTURE_MODES + LOOPBACK_MODES:
        raise ValueError(
            f"node metadata {INTERCEPTION_MODE_KEY}={mode!r}: meshcore builds REDIRECT (Istio's"
            " capture layout) and NONE (the loopback layout); TPROXY is not supported"
        )
    found = mesh.get("WorkloadEntry", namespace, name)
    workload = found if isinstance(found, WorkloadEntry) else None
    if workload is None and ip:
        workload = next((w for w in mesh.workloads(namespace) if w.address == ip), None)
    labels: Mapping[str, str]
    if workload is not None:
        labels = dict(workload.workload_labels)
    else:
        raw = meta.get(LABELS_KEY)
        labels = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
    return Proxy(
        locality=_locality(workload, labels),
        node_id=node_id,
        ip=ip,
        name=name,
        namespace=namespace,
        workload=workload,
        labels=labels,
        metadata=meta,
        type=kind,
        domain=domain,
    )


def _locality(workload: WorkloadEntry | None, labels: Mapping[str, str]) -> str:
    """The proxy's locality: its WorkloadEntry's, else Istio's ``istio-locality`` label
    (``region.zone.subzone``, as the agent sends it in ``LABELS``)."""
    if workload is not None and workload.locality:
        return workload.locality
    return "/".join(labels.get(ISTIO_LOCALITY_LABEL, "").split("."))
