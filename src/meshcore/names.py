"""The naming contract between meshcore's control plane, its data plane, CA and sidecars.

Names the control plane gives Envoy resources and that the other side reads back (cluster
names, SDS secret names, filter names), and the limits both sides must agree on. Istio's
names, so that people read them as they read istiod's output. Built and parsed here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

# --- clusters -----------------------------------------------------------------------------------

OUTBOUND = "outbound"
INBOUND = "inbound"


class ClusterName(NamedTuple):
    """Istio's cluster name ``DIRECTION|PORT|SUBSET|HOST``, e.g. ``outbound|9080|v1|reviews...``
    (inbound clusters: ``inbound|PORT||``)."""

    direction: str
    port: int
    subset: str
    host: str

    def __str__(self) -> str:
        return cluster_name(self.direction, self.port, self.subset, self.host)


def cluster_name(direction: str, port: int, subset: str = "", host: str = "") -> str:
    """The name Istio gives a cluster (the inverse of :func:`parse_cluster_name`)."""
    # A plain format, not a ClusterName: built for every cluster, route and endpoint set.
    return f"{direction}|{port}|{subset}|{host}"


def parse_cluster_name(name: str) -> ClusterName | None:
    """The parts of an Istio cluster name; None for a name of another shape (``zipkin``, a
    bootstrap cluster)."""
    parts = name.split("|")
    if len(parts) != 4 or not parts[1].isdigit():
        return None
    return ClusterName(parts[0], int(parts[1]), parts[2], parts[3])


# Istio's name for the tracing collector's cluster.
ZIPKIN_CLUSTER = "zipkin"

# --- SDS ----------------------------------------------------------------------------------------

# Istio's SDS resource names: the workload certificate and the root (trust bundle).
SDS_CERT = "default"
SDS_ROOT = "ROOTCA"
# The bootstrap cluster through which a sidecar reaches its agent's SDS server (Istio's name).
SDS_CLUSTER = "sds-grpc"

# --- filters and extensions ---------------------------------------------------------------------

HCM_NAME = "envoy.filters.network.http_connection_manager"
TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
ROUTER_NAME = "envoy.filters.http.router"
FAULT_NAME = "envoy.filters.http.fault"
CORS_NAME = "envoy.filters.http.cors"
HTTP_RBAC = "envoy.filters.http.rbac"
HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
TCP_RBAC = "envoy.filters.network.rbac"
TCP_EXT_AUTHZ = "envoy.filters.network.ext_authz"
# End-user authentication (RequestAuthentication): the verified JWT payload goes in this
# filter's dynamic metadata under JWT_PAYLOAD_KEY, where the RBAC matchers read it (Istio's).
JWT_AUTHN_NAME = "envoy.filters.http.jwt_authn"
JWT_PAYLOAD_KEY = "payload"
TLS_INSPECTOR_NAME = "envoy.filters.listener.tls_inspector"
FILE_LOG_NAME = "envoy.access_loggers.file"
ZIPKIN_TRACER_NAME = "envoy.tracers.zipkin"
TLS_SOCKET = "envoy.transport_sockets.tls"
RAW_BUFFER_SOCKET = "envoy.transport_sockets.raw_buffer"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Endpoint metadata filter read by transport socket matches (Istio's ``tlsMode`` label).
TRANSPORT_SOCKET_MATCH_KEY = "envoy.transport_socket_match"

# --- limits -------------------------------------------------------------------------------------

# The RE2 program-size limit meshcore's Envoys run with (Istio's: bootstrap runtime
# ``re2.max_program_size.error_level``; Envoy's own default of 100 rejects ordinary regexes).
# Tables compiled from meshcore's config (DataPlane, Authorizer) accept what those Envoys accept.
RE2_MAX_PROGRAM_SIZE = 32768

# Runtime every bootstrap needs (Istio sets the same): Envoy's default refuses any regex whose
# RE2 program is larger than 100, which ordinary VirtualService regexes exceed, and would NACK
# the whole RouteConfiguration.
BOOTSTRAP_RUNTIME: Mapping[str, Any] = {"re2.max_program_size.error_level": RE2_MAX_PROGRAM_SIZE}
