"""Sidecar's rules: Istio's webhook checks (``ValidateSidecar``), then what meshcore's layout
cannot do, refused with the reason.

meshcore runs sidecars in the loopback layout: an app reaches a service at the proxy's outbound
address and the service's port (``MESHCORE_OUTBOUND_ADDRESS``), with no traffic capture. So:

- ``egress[].hosts`` scope what a proxy receives (see :mod:`meshcore.xds.sidecarscope`), with
  or without a ``port`` (a port's listener then serves only that egress listener's hosts);
- ``egress[].bind`` and unix-socket egress listeners (port 0) are refused: outbound listeners
  bind to the proxy's outbound address; ``captureMode: IPTABLES`` is refused (no capture),
  ``DEFAULT`` and ``NONE`` mean the loopback layout;
- ``outboundTrafficPolicy.mode`` applies to the capture-mode proxies the Sidecar selects
  (virtualOutbound's catch-all and the ``allow_any``/``block_all`` virtual host); ALLOW_ANY is
  what the loopback layout does (an app reaches an address outside the mesh directly), and
  loopback proxies are told that they cannot apply REGISTRY_ONLY (a sidecar can only refuse
  traffic it receives); ``egressProxy`` is refused;
- ``ingress`` listeners replace the workload's inbound ports (from its Services): a listener
  on the workload's address at ``port`` to the app's ``defaultEndpoint`` port (the app's
  address, ``MESHCORE_APP_ADDRESS``, stands for 127.0.0.1 and 0.0.0.0); their ``bind``, ``tls``,
  ``connectionPool``, unix-socket endpoints and IPTABLES capture are refused, as is
  ``inboundConnectionPool``.
"""

from __future__ import annotations

import re
from typing import Any

from meshcore.config.validate import _DNS1123_LABEL, Checker, Path, _l, host_problem

# Istio's protocol.Parse names (case-insensitive); anything else is "not a valid protocol".
_PROTOCOLS = frozenset(
    {"TCP", "UDP", "GRPC", "GRPC-WEB", "HTTP", "HTTP_PROXY", "HTTP2", "HTTPS", "TLS"}
    | {"MONGO", "REDIS", "MYSQL"}
)
_UNIX = "unix://"
_LOOPBACK = "meshcore runs sidecars in the loopback layout (no traffic capture)"


def check_sidecar(c: Checker, spec: dict[str, Any], name: str) -> None:
    selector = spec.get("workloadSelector")
    if isinstance(selector, dict):
        c.labels(selector.get("labels"), ("spec", "workloadSelector", "labels"), selector=True)
        if not selector.get("labels"):
            c.warn(
                ("spec", "workloadSelector"),
                "workload selector specified without labels, will be applied to all services"
                " in namespace",
            )
    if not any(spec.get(k) for k in ("egress", "ingress")) and all(
        spec.get(k) is None for k in ("outboundTrafficPolicy", "inboundConnectionPool")
    ):
        c.error(("spec",), "sidecar: empty configuration provided")
        return
    _ingress(c, _l(spec.get("ingress")))
    if spec.get("inboundConnectionPool") is not None:
        c.error(
            ("spec", "inboundConnectionPool"),
            "not translated by meshcore (inbound clusters keep Envoy's defaults)",
        )
    _egress(c, _l(spec.get("egress")))
    _outbound_traffic_policy(c, spec.get("outboundTrafficPolicy"))


def _ingress(c: Checker, listeners: list[Any]) -> None:
    """Istio's ingress listener rules, then what meshcore does not translate. An ingress
    listener is an inbound listener on the workload's address at ``port`` to the app at
    ``defaultEndpoint``'s port (the same port without one)."""
    ports: set[int] = set()
    for i, ing in enumerate(listeners):
        path: Path = ("spec", "ingress", i)
        if not isinstance(ing, dict):
            c.error(path, "sidecar: ingress may not be null")
            continue
        port = ing.get("port")
        if not isinstance(port, dict):
            c.error(path + ("port",), "sidecar: port is required for ingress listeners")
            continue
        if port.get("targetPort"):
            c.error(path + ("port", "targetPort"), "targetPort has no impact on Sidecars")
        _port_name_and_protocol(c, port, path + ("port",))
        number = port.get("number") or 0
        if not isinstance(number, int) or not 1 <= number <= 65535:
            c.error(
                path + ("port", "number"), f"port number {number} must be in the range 1..65535"
            )
        if number in ports:
            c.error(
                path + ("port", "number"), "sidecar: ports on IP bound listeners must be unique"
            )
        ports.add(number)
        _default_endpoint(c, ing.get("defaultEndpoint"), path + ("defaultEndpoint",))
        if ing.get("bind"):
            c.error(
                path + ("bind",),
                "not available: inbound listeners bind to the workload's address (its"
                " WorkloadEntry's)",
            )
        if ing.get("captureMode") == "IPTABLES":
            c.error(path + ("captureMode",), f"IPTABLES capture is not available: {_LOOPBACK}")
        if ing.get("tls") is not None:
            c.error(
                path + ("tls",),
                "TLS termination on a sidecar ingress listener is not translated by meshcore"
                " (inbound TLS is mesh mTLS, per PeerAuthentication)",
            )
        if ing.get("connectionPool") is not None:
            c.error(
                path + ("connectionPool",),
                "not translated by meshcore (inbound clusters keep Envoy's defaults)",
            )


def _default_endpoint(c: Checker, endpoint: Any, path: Path) -> None:
    if not isinstance(endpoint, str) or not endpoint:
        return
    if endpoint.startswith(_UNIX):
        if len(endpoint) == len(_UNIX):
            c.error(path, "unix address must name a socket path")
        else:
            c.error(path, f"unix domain socket endpoints are not available: {_LOOPBACK}")
        return
    host, colon, port = endpoint.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon:
        c.error(path, f"address {endpoint}: missing port in address")
        return
    if host not in ("", "127.0.0.1", "0.0.0.0", "::1", "::"):
        c.error(
            path,
            "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,"
            "[::1]:port,[::]:port,unix://filepath or unset",
        )
    if not port.isdigit():
        c.error(path, f"sidecar: defaultEndpoint port ({port}) is not a number")
    elif not 1 <= int(port) <= 65535:
        c.error(path, f"port number {port} must be in the range 1..65535")


def _port_name_and_protocol(c: Checker, port: dict[str, Any], path: Path) -> None:
    pname = port.get("name")
    if isinstance(pname, str) and pname and not _DNS1123_LABEL.match(pname):
        c.error(path + ("name",), f"invalid port name: {pname}")
    proto = port.get("protocol")
    # Empty: Istio's protocol sniffing (meshcore: the services' own protocols).
    if isinstance(proto, str) and proto and proto.upper() not in _PROTOCOLS:
        c.error(path + ("protocol",), f"unsupported protocol: {proto}")


def _egress(c: Checker, listeners: list[Any]) -> None:
    ports: set[int] = set()
    catch_all = False
    for i, egress in enumerate(listeners):
        path: Path = ("spec", "egress", i)
        if not isinstance(egress, dict):
            c.error(path, "egress listener may not be null")
            continue
        port = egress.get("port")
        if port is None:
            if catch_all:
                c.error(path, "sidecar: egress can have only one listener with empty port")
                continue
            if i != len(listeners) - 1:
                c.error(
                    path,
                    "sidecar: the egress listener with empty port should be the last listener"
                    " in the list",
                )
            catch_all = True
        elif isinstance(port, dict):
            _egress_port(c, egress, port, path, ports)
        capture = egress.get("captureMode")
        if capture == "IPTABLES":
            c.error(path + ("captureMode",), f"IPTABLES capture is not available: {_LOOPBACK}")
        _egress_hosts(c, _l(egress.get("hosts")), path + ("hosts",))


def _egress_port(
    c: Checker, egress: dict[str, Any], port: dict[str, Any], path: Path, ports: set[int]
) -> None:
    if port.get("targetPort"):
        c.error(path + ("port", "targetPort"), "targetPort has no impact on Sidecars")
    _port_name_and_protocol(c, port, path + ("port",))
    number = port.get("number") or 0
    bind = egress.get("bind")
    if number == 0:
        if not (isinstance(bind, str) and bind.startswith(_UNIX) and len(bind) > len(_UNIX)):
            c.error(
                path + ("bind",),
                "sidecar: ports with 0 value must have a unix domain socket bind address",
            )
        else:
            c.error(
                path + ("bind",), f"unix domain socket listeners are not available: {_LOOPBACK}"
            )
        return
    if not isinstance(number, int) or not 1 <= number <= 65535:
        c.error(path + ("port", "number"), f"port number {number} must be in the range 1..65535")
    if number in ports:
        c.error(path + ("port", "number"), "sidecar: ports on IP bound listeners must be unique")
    ports.add(number)
    if bind:
        c.error(
            path + ("bind",),
            "not available: outbound listeners bind to the proxy's outbound address"
            " (MESHCORE_OUTBOUND_ADDRESS of its agent)",
        )


def _egress_hosts(c: Checker, hosts: list[Any], path: Path) -> None:
    if not hosts:
        c.error(path, "sidecar: egress listener must contain at least one host")
        return
    seen: dict[str, set[str]] = {}
    for j, host in enumerate(hosts):
        if not isinstance(host, str):
            continue
        ns, slash, dns = host.partition("/")
        if slash and not ns.startswith("~"):
            ns = c.namespace if ns == "." else ns
            names = seen.setdefault(ns, set())
            if (dns != "*" and (dns in names or "*" in names)) or (dns == "*" and names):
                c.warn(path + (j,), f"duplicated egress host: {host}")
            names.add(dns)
        problem = host_slash_problem(host)
        if problem:
            c.error(path + (j,), problem)
    if "*" in seen.get("*", ()) and len(seen) != 1:
        c.warn(path, "`*/*` host select all resources, no other hosts can be added")


def host_slash_problem(host: str) -> str | None:
    """Why ``host`` is not a Sidecar egress host (``namespace/dnsName``), or None."""
    ns, slash, dns = host.partition("/")
    if not slash:
        return "host must be of form namespace/dnsName"
    if not ns or not dns:
        return "config namespace and dnsName in host entry cannot be empty"
    bare = ns.removeprefix("~")
    if bare not in ("", "*", ".") and not (len(bare) <= 63 and _DNS1123_LABEL.match(bare)):
        return f"invalid namespace value {ns!r} in sidecar"
    if dns != "*" and "." not in dns:
        return f"{host}: short names (non FQDN) are not allowed"
    if "/" in dns or re.search(r"\s", dns):
        return f"invalid host {dns!r}"
    return host_problem(dns)


def _outbound_traffic_policy(c: Checker, policy: Any) -> None:
    if not isinstance(policy, dict):
        return
    path: Path = ("spec", "outboundTrafficPolicy")
    mode = policy.get("mode", "REGISTRY_ONLY")
    if mode == "ALLOW_ANY_DYNAMIC_DNS":
        c.error(
            path + ("mode",),
            "sidecar: ALLOW_ANY_DYNAMIC_DNS mode is only supported in MeshConfig, not in"
            " Sidecar resource",
        )
        return
    if policy.get("egressProxy") is not None:
        if mode != "ALLOW_ANY":
            c.error(
                path + ("egressProxy",),
                "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy"
                " mode",
            )
            return
        c.error(
            path + ("egressProxy",),
            f"not available: {_LOOPBACK}; traffic to unknown hosts never reaches the sidecar",
        )
    # REGISTRY_ONLY: capture-mode proxies apply it; loopback proxies are told when they
    # connect (the problem :mod:`meshcore.xds.index` reports).
