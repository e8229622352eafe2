"""MeshModel -> the Envoy xDS resources Istio would give one proxy.

``Translator().generate(mesh, proxy_for_node(mesh, node_id, metadata))`` returns, per type URL,
a mapping resource name -> Envoy protobuf message, plus the ConfigProblems met on the way. Names follow
Istio so that people can read them as they read istiod's output:

- clusters ``outbound|PORT|SUBSET|HOST`` (EDS over ADS) and ``inbound|PORT||`` (static, to the
  app); ClusterLoadAssignments named after their cluster;
- a RouteConfiguration per outbound HTTP port, named by the port (``"9080"``), with one virtual
  host ``HOST:PORT`` per service; routes from the host's VirtualService, else Istio's
  ``default`` route;
- listeners ``ADDRESS_PORT`` (Istio's per-port listener names), outbound with an HTTP
  connection manager using RDS (or tcp_proxy for TCP ports), inbound with the workload's
  RBAC/ext_authz filters and TLS per PeerAuthentication;
- ServiceEntry hosts as services: EDS clusters (STATIC) or STRICT_DNS / LOGICAL_DNS clusters;
- SDS secrets referenced by Istio's names, ``default`` (the workload certificate) and ``ROOTCA``
  (the trust bundle), fetched from the sidecar's agent over the bootstrap cluster ``sds-grpc``
  (:mod:`meshcore.ca.sds`, :mod:`meshcore.dataplane.agent`). This module does not produce the
  secrets themselves.

Loopback layout
---------------
Tests and the demo run without iptables, so interception is replaced by explicit addresses:

- each workload has its own 127.0.0.0/8 address A (its WorkloadEntry ``address``); its sidecar
  binds one inbound listener per workload port on A:TARGET_PORT, and other sidecars' EDS
  endpoints point there;
- the app listens on node metadata ``MESHCORE_APP_ADDRESS`` (default 127.0.0.1) at the target
  port; the inbound cluster ``inbound|PORT||`` points there;
- outbound listeners bind on node metadata ``MESHCORE_OUTBOUND_ADDRESS`` (default 127.0.0.1)
  at the service port; an app calls its own sidecar there with the service host in
  Host/:authority (``curl -H 'Host: reviews' http://OUTBOUND:9080/``).

Two sidecars on one machine therefore need different outbound and app addresses.

Capture layout
--------------
Sidecars whose node metadata says ``INTERCEPTION_MODE: REDIRECT`` (behind Istio's iptables
rules, ``meshcore agent --capture``) get Istio's own layout instead: ``virtualOutbound``
(15001), ``virtualInbound`` (15006), per-port and per-VIP listeners, PassthroughCluster,
BlackHoleCluster and InboundPassthroughCluster (:mod:`meshcore.xds.capturelisteners`; service
VIPs from :mod:`meshcore.xds.vips`). Both layouts share clusters and endpoints, and one
control plane serves both.

Node ids
--------
Sidecars identify as Istio's do: ``sidecar~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local``,
matched to a WorkloadEntry by name and namespace, else by address. Proxyless gRPC clients use
the same shape with node metadata ``GENERATOR: grpc`` (Istio's convention); they get, per
service port, a Listener ``FQDN:PORT`` holding an ``api_listener`` (HTTP connection manager
with RDS of the same name), which is what ``xds:///FQDN:PORT`` asks for.

Sharing and reuse
-----------------
A :class:`Translator` (the object a control plane holds) builds clusters, endpoints and
VirtualService routes once per mesh and shares them among its proxies; route configurations
once per namespace; authorization filters once per set of selecting policies. When it sees a
new MeshModel it carries over from the previous mesh's translation whatever the change does not touch (compared by value): routes when
Services, VirtualServices and DestinationRules are equal, authorization filters when the
AuthorizationPolicies are, clusters and endpoints per service when the Service, its
DestinationRule and its workloads are. So an endpoint change costs little more than one
service's clusters and endpoints, plus each proxy's own (inbound) part. A DestinationRule with
a ``workloadSelector`` applies (as in Istio) only to the selected proxies of its namespace:
they get the shared clusters and endpoints with those hosts' rebuilt from it (built once per
set of selecting rules).

Messages (and the per-type mappings) returned for different proxies may be the same objects:
treat them as read-only. The module-level :func:`generate` translates with a Translator of its
own each time (nothing shared between calls): hold a Translator to share and carry over. Any-packed fields are serialized deterministically and every
collection is built in sorted order, so identical input gives identical bytes.

For the ADS server
------------------
Sidecars reference the SDS secrets ``default`` and ``ROOTCA`` from their agent's SDS server,
through the bootstrap cluster ``sds-grpc`` (listeners with mTLS warm only once both arrive); their bootstrap needs ``BOOTSTRAP_RUNTIME`` (Istio's RE2
program-size limit), or Envoy NACKs RouteConfigurations with ordinary regexes. Proxyless gRPC
clients need certificate providers named ``default`` in their bootstrap when a
DestinationRule asks for ISTIO_MUTUAL.

Not translated, and reported as warnings when a mesh uses them: VirtualService tcp/tls routes
on sidecars (gateways translate them), ``exportTo`` visibility, ``zoneAwareLbSetting``,
wildcard hosts, and for loopback proxies ServiceEntry resolution NONE and PASSTHROUGH load
balancing (capture-mode sidecars apply both). These translation problems are found once per mesh when it is loaded
(:meth:`Translator.load_problems`): ``meshcore validate`` and ``describe`` print them as
warnings, ``meshcore serve`` logs them at start-up and on every reload. Not built at all: inbound listeners for proxyless gRPC servers.
Gateway proxies (node type ``router``) get Istio's gateway layout from
:mod:`meshcore.xds.gateway`, and their ``credentialName`` secrets over SDS on the ADS stream.
Endpoints are HEALTHY except those of WorkloadEntries with health checks enabled whose probe
has not succeeded (see :mod:`meshcore.xds.autoregistration`): UNHEALTHY, as Istio sends them.

Where the code lives
--------------------
This module gathers the public names. The translator is :mod:`meshcore.xds.translator`; it
holds, per mesh, the index (:mod:`meshcore.xds.index`, Istio's PushContext) and one builder
per xDS type: :mod:`meshcore.xds.clusters` (with :mod:`meshcore.xds.trafficpolicy`),
:mod:`meshcore.xds.routes` (with :mod:`meshcore.xds.virtualservice`) and
:mod:`meshcore.xds.listeners` (with :mod:`meshcore.xds.telemetry`), and for gateway proxies
:mod:`meshcore.xds.gateway` (with :mod:`meshcore.xds.gateway_tls`). Names shared with the data
plane, the CA and sidecars are in :mod:`meshcore.names`; node identity in
:mod:`meshcore.xds.node`.
"""

from __future__ import annotations

from typing import Any

from meshcore.config.meshconfig import MeshConfig
from meshcore.config.model import MeshModel
from meshcore.names import BOOTSTRAP_RUNTIME
from meshcore.xds.bootstrap import render_static_bootstrap
from meshcore.xds.index import uses_source_match
from meshcore.xds.node import Proxy, parse_node_id, proxy_for_node
from meshcore.xds.translator import Generated, Translator
from meshcore.xds.types import Resources

__all__ = [
    "BOOTSTRAP_RUNTIME",
    "Generated",
    "Proxy",
    "Resources",
    "Translator",
    "generate",
    "parse_node_id",
    "proxy_for_node",
    "render_static_bootstrap",
    "uses_source_match",
]


def generate(
    mesh: MeshModel,
    proxy: Proxy,
    *,
    extension_providers: Any = None,
    mesh_config: MeshConfig | None = None,
) -> Generated:
    """One proxy's resources, translated afresh (see :meth:`Translator.generate`)."""
    return Translator().generate(
        mesh, proxy, extension_providers=extension_providers, mesh_config=mesh_config
    )
