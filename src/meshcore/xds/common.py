"""Small builders the xDS builders share: Any packing, durations, percentages, matchers,
config sources, SDS references, addresses, and Istio's port protocol selection.

The builders trust what the loader validated (:func:`checked_of` puts a resource built by hand
through the loader's checker first). A valid field that cannot be applied here raises
:class:`Invalid` naming its path; the builders turn it into a ConfigProblem about the resource
it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from meshcore import _core
from meshcore.config import check_resource
from meshcore.config.model import (
    Checked,
    DestinationRule,
    RequestAuthentication,
    ServicePort,
    VirtualService,
    WorkloadEntry,
)
from meshcore.config.validate import parse_duration
from meshcore.names import SDS_CLUSTER, TLS_SOCKET

# Istio's defaults: an unset VirtualService timeout disables the route timeout; connections
# time out after 10 s.
DEFAULT_CONNECT_TIMEOUT_NS = 10 * 10**9
_HTTP_PROTOCOLS = frozenset({"http", "http2", "grpc", "grpc-web", "h2c"})
HTTP2_PROTOCOLS = frozenset({"http2", "grpc", "grpc-web", "h2c"})
_TCP_PROTOCOLS = frozenset({"tcp", "tls", "https", "mongo", "redis", "mysql"})


class Invalid(Exception):
    """One field of a VirtualService or DestinationRule cannot become valid Envoy config."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


# Said of what only capture-mode sidecars can do (loopback proxies are told, capture-mode ones
# are not: :mod:`meshcore.xds.capturelisteners` applies it).
CAPTURE_ONLY = (
    "needs original-destination routing: only capture-mode sidecars (INTERCEPTION_MODE"
    " REDIRECT) apply it"
)


def pack(msg: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    # Deterministic so that the content hash of a resource depends only on its content.
    out.Pack(msg, deterministic=True)
    return out


def duration_ns(ns: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ns // 10**9, nanos=ns % 10**9)


# What a resource without durations or regexes carries.
NOTHING_PARSED = Checked(MappingProxyType({}), frozenset())


def checked_of(res: VirtualService | DestinationRule | RequestAuthentication) -> Checked:
    """What the loader's checks parsed in ``res`` (its durations, its regexes). A resource built
    by hand (the translator called without the loader) goes through the loader's one checker
    here; its first error raises :class:`Invalid`, so that the builders, which trust validated
    values, never meet an invalid one."""
    if res.checked is not None:
        return res.checked
    checked, problems = check_resource(res)
    for p in problems:
        if p.severity == "error":
            raise Invalid(p.path or "spec", p.message)
    return checked


def duration(text: Any, path: str, checked: Checked) -> duration_pb2.Duration:
    """``text`` as a Duration: the loader's parse (``checked``); a value it did not record is
    parsed by the same parser."""
    ns = checked.durations.get(text) if isinstance(text, str) else None
    if ns is None:
        ns = parse_duration(text) if isinstance(text, str) else None
    if ns is None:
        raise Invalid(path, f"invalid duration {text!r}")
    return duration_ns(ns)


def percent(value: Any, path: str) -> percent_pb2.FractionalPercent:
    """Istio's Percent (0-100, fractional) as Envoy's FractionalPercent per million."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Invalid(path, f"invalid percentage {value!r}") from None
    if not 0 <= number <= 100:
        raise Invalid(path, f"percentage {value!r} must be in the range 0..100")
    return percent_pb2.FractionalPercent(
        numerator=round(number * 10000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def percentage_of(spec: Mapping[str, Any], path: str) -> percent_pb2.FractionalPercent:
    if spec.get("percentage") is not None:
        return percent((spec["percentage"] or {}).get("value", 0), path + ".percentage")
    if spec.get("percent") is not None:
        return percent(spec["percent"], path + ".percent")
    return percent(100, path)


def regex(pattern: Any, path: str, checked: Checked) -> regex_pb2.RegexMatcher:
    """A RegexMatcher: compiled by the loader (``checked``), or here by the same RE2 check."""
    if not isinstance(pattern, str):
        raise Invalid(path, f"regex must be a string, not {pattern!r}")
    if pattern not in checked.regexes:
        try:
            _core.check_regex(pattern)
        except ValueError as exc:
            raise Invalid(path, str(exc)) from None
    return regex_pb2.RegexMatcher(regex=pattern)


def string_matcher(m: Mapping[str, Any], path: str, checked: Checked) -> string_pb2.StringMatcher:
    """A validated StringMatch (exactly one of exact, prefix, regex: the loader's rule)."""
    if m.get("exact") is not None:
        return string_pb2.StringMatcher(exact=str(m["exact"]))
    if m.get("prefix") is not None:
        return string_pb2.StringMatcher(prefix=str(m["prefix"]))
    return string_pb2.StringMatcher(safe_regex=regex(m.get("regex"), path + ".regex", checked))


def ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    """Istio's SDS reference: the secret comes from the sidecar's agent over the bootstrap's
    ``sds-grpc`` cluster (not from the control plane), and listeners wait for it as long as
    it takes (``initial_fetch_timeout: 0s``)."""
    source = config_source_pb2.ConfigSource(resource_api_version=config_source_pb2.V3)
    api = source.api_config_source
    api.api_type = config_source_pb2.ApiConfigSource.GRPC
    api.transport_api_version = config_source_pb2.V3
    api.set_node_on_first_message_only = True
    api.grpc_services.add().envoy_grpc.cluster_name = SDS_CLUSTER
    source.initial_fetch_timeout.SetInParent()
    return secret_pb2.SdsSecretConfig(name=name, sds_config=source)


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port)
    )


def port_protocol(port: ServicePort) -> str:
    """Istio's protocol selection: appProtocol, else the port name's prefix; unknown -> http.

    Istio sniffs unnamed ports; without sniffing, meshcore takes them as HTTP.
    """
    if port.protocol.upper() == "UDP":
        return "udp"
    proto = (port.app_protocol or port.name.partition("-")[0]).lower()
    if proto in _HTTP_PROTOCOLS or proto in _TCP_PROTOCOLS:
        return proto
    return "http"


def is_http(proto: str) -> bool:
    return proto in _HTTP_PROTOCOLS


def endpoint_port(workload: WorkloadEntry, port: ServicePort) -> int | None:
    """The port a workload serves a service port on (WorkloadEntry ports override)."""
    if port.name and port.name in workload.ports:
        return int(workload.ports[port.name])
    if isinstance(port.target_port, int):
        return port.target_port
    named = workload.ports.get(str(port.target_port))
    return int(named) if named is not None else None


def spiffe(domain: str, namespace: str, sa: str) -> str:
    return f"spiffe://{domain}/ns/{namespace}/sa/{sa}"


def tls_socket(ctx: Message, name: str = TLS_SOCKET) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(name=name, typed_config=pack(ctx))


def copy_message(msg: Message) -> Any:
    out = type(msg)()
    out.CopyFrom(msg)
    return out
