"""xDS resource type URLs, in the order ADS sends them (make-before-break: clusters and their
endpoints before the listeners and routes that refer to them; secrets last)."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
# SotW responses for these carry the full set (a missing name means deletion); for the others a
# response may carry any subset and deletion is implied by the parent no longer naming them.
FULL_STATE_TYPES = frozenset({CLUSTER, LISTENER})

SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS"}

# A proxy's resources: type URL -> resource name -> Envoy message.
Resources = Mapping[str, Mapping[str, Message]]
