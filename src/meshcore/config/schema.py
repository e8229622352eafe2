"""The shape of every resource kind meshcore reads: field names, types and enums.

The generic walk in :mod:`meshcore.config.validate` uses these to report unknown fields (with a
"did you mean" suggestion: a misspelt field is never ignored silently), wrong types and bad enum
values, each at its field path. Field names are the camelCase JSON names of the Istio and
Kubernetes APIs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Scalar:
    """A scalar: ``kind`` is one of string, int (32-bit), int64, uint32, bool, number,
    duration, int_or_string. Integers are checked against their range, durations against
    Go's (Istio's) longest, numbers must be finite."""

    kind: str


@dataclass(frozen=True, slots=True)
class Enum:
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListOf:
    item: FieldType


@dataclass(frozen=True, slots=True)
class MapOf:
    """A map with string keys (``key`` says how keys are checked: string or uint32)."""

    value: FieldType
    key: str = "string"


@dataclass(frozen=True, slots=True)
class Message:
    name: str
    fields: Mapping[str, FieldType]
    # Fields accepted but not interpreted by meshcore (informational, e.g. deprecated ones
    # that Istio itself ignores); listed so that they are not reported as unknown.
    open: bool = False


@dataclass(frozen=True, slots=True)
class AnyValue:
    """Free-form content (e.g. Kubernetes status); not checked."""


FieldType = Scalar | Enum | ListOf | MapOf | Message | AnyValue

STRING = Scalar("string")
INT = Scalar("int")
INT64 = Scalar("int64")
UINT32 = Scalar("uint32")
BOOL = Scalar("bool")
NUMBER = Scalar("number")
DURATION = Scalar("duration")
INT_OR_STRING = Scalar("int_or_string")
ANY = AnyValue()
STRINGS = ListOf(STRING)
LABELS = MapOf(STRING)


def message(_name: str, /, **fields: FieldType) -> Message:
    return Message(_name, fields)


OBJECT_META = message(
    "ObjectMeta",
    name=STRING,
    namespace=STRING,
    labels=LABELS,
    annotations=LABELS,
    generateName=STRING,
    uid=STRING,
    resourceVersion=STRING,
    generation=INT64,
    creationTimestamp=ANY,
    deletionTimestamp=ANY,
    deletionGracePeriodSeconds=INT64,
    ownerReferences=ANY,
    finalizers=STRINGS,
    managedFields=ANY,
    selfLink=STRING,
)

# --- core v1 Service ---------------------------------------------------------------------------

SERVICE_PORT = message(
    "ServicePort",
    name=STRING,
    port=INT,
    targetPort=INT_OR_STRING,
    protocol=Enum(("TCP", "UDP", "SCTP")),
    nodePort=INT,
    appProtocol=STRING,
)
SERVICE_SPEC = message(
    "ServiceSpec",
    ports=ListOf(SERVICE_PORT),
    selector=LABELS,
    type=Enum(("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")),
    clusterIP=STRING,
    clusterIPs=STRINGS,
    externalName=STRING,
    externalIPs=STRINGS,
    sessionAffinity=Enum(("None", "ClientIP")),
    sessionAffinityConfig=ANY,
    ipFamilies=STRINGS,
    ipFamilyPolicy=STRING,
    externalTrafficPolicy=STRING,
    internalTrafficPolicy=STRING,
    loadBalancerIP=STRING,
    loadBalancerSourceRanges=STRINGS,
    loadBalancerClass=STRING,
    allocateLoadBalancerNodePorts=BOOL,
    healthCheckNodePort=INT,
    publishNotReadyAddresses=BOOL,
    trafficDistribution=STRING,
)

# --- networking.istio.io -------------------------------------------------------------------------

WORKLOAD_ENTRY_SPEC = message(
    "WorkloadEntry",
    address=STRING,
    ports=MapOf(UINT32),
    labels=LABELS,
    network=STRING,
    locality=STRING,
    weight=UINT32,
    serviceAccount=STRING,
)
SERVICE_ENTRY_PORT = message(
    "ServicePort", number=UINT32, protocol=STRING, name=STRING, targetPort=UINT32
)
WORKLOAD_SELECTOR = message("WorkloadSelector", labels=LABELS)
SELECTOR = message("WorkloadSelector", matchLabels=LABELS)
SERVICE_ENTRY_SPEC = message(
    "ServiceEntry",
    hosts=STRINGS,
    addresses=STRINGS,
    ports=ListOf(SERVICE_ENTRY_PORT),
    location=Enum(("MESH_EXTERNAL", "MESH_INTERNAL")),
    resolution=Enum(("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")),
    endpoints=ListOf(WORKLOAD_ENTRY_SPEC),
    workloadSelector=WORKLOAD_SELECTOR,
    exportTo=STRINGS,
    subjectAltNames=STRINGS,
)

STRING_MATCH = message("StringMatch", exact=STRING, prefix=STRING, regex=STRING)
PORT_SELECTOR = message("PortSelector", number=UINT32)
DESTINATION = message("Destination", host=STRING, subset=STRING, port=PORT_SELECTOR)
HEADER_OPERATIONS = message("HeaderOperations", set=LABELS, add=LABELS, remove=STRINGS)
HEADERS = message("Headers", request=HEADER_OPERATIONS, response=HEADER_OPERATIONS)
PERCENT = message("Percent", value=NUMBER)
HTTP_MATCH_REQUEST = message(
    "HTTPMatchRequest",
    name=STRING,
    uri=STRING_MATCH,
    scheme=STRING_MATCH,
    method=STRING_MATCH,
    authority=STRING_MATCH,
    headers=MapOf(STRING_MATCH),
    port=UINT32,
    sourceLabels=LABELS,
    gateways=STRINGS,
    queryParams=MapOf(STRING_MATCH),
    ignoreUriCase=BOOL,
    withoutHeaders=MapOf(STRING_MATCH),
    sourceNamespace=STRING,
    statPrefix=STRING,
)
HTTP_ROUTE_DESTINATION = message(
    "HTTPRouteDestination", destination=DESTINATION, weight=INT, headers=HEADERS
)
HTTP_REDIRECT = message(
    "HTTPRedirect",
    uri=STRING,
    authority=STRING,
    port=UINT32,
    derivePort=Enum(("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT")),
    scheme=STRING,
    redirectCode=UINT32,
    prefixRewrite=STRING,
)
HTTP_DIRECT_RESPONSE = message(
    "HTTPDirectResponse",
    status=UINT32,
    body=message("HTTPBody", string=STRING, bytes=STRING),
)
HTTP_REWRITE = message(
    "HTTPRewrite",
    uri=STRING,
    authority=STRING,
    uriRegexRewrite=message("RegexRewrite", match=STRING, rewrite=STRING),
)
HTTP_RETRY = message(
    "HTTPRetry",
    attempts=INT,
    perTryTimeout=DURATION,
    retryOn=STRING,
    retryRemoteLocalities=BOOL,
    retryIgnorePreviousHosts=BOOL,
    backoff=DURATION,
)
HTTP_FAULT = message(
    "HTTPFaultInjection",
    delay=message(
        "Delay",
        fixedDelay=DURATION,
        exponentialDelay=DURATION,
        percentage=PERCENT,
        percent=INT,
    ),
    abort=message(
        "Abort", httpStatus=INT, grpcStatus=STRING, http2Error=STRING, percentage=PERCENT
    ),
)
CORS_POLICY = message(
    "CorsPolicy",
    allowOrigins=ListOf(STRING_MATCH),
    allowOrigin=STRINGS,
    allowMethods=STRINGS,
    allowHeaders=STRINGS,
    exposeHeaders=STRINGS,
    maxAge=DURATION,
    allowCredentials=BOOL,
    unmatchedPreflights=Enum(("UNSPECIFIED", "FORWARD", "IGNORE")),
)
HTTP_ROUTE = message(
    "HTTPRoute",
    name=STRING,
    match=ListOf(HTTP_MATCH_REQUEST),
    route=ListOf(HTTP_ROUTE_DESTINATION),
    redirect=HTTP_REDIRECT,
    directResponse=HTTP_DIRECT_RESPONSE,
    delegate=message("Delegate", name=STRING, namespace=STRING),
    rewrite=HTTP_REWRITE,
    timeout=DURATION,
    retries=HTTP_RETRY,
    fault=HTTP_FAULT,
    mirror=DESTINATION,
    mirrors=ListOf(message("HTTPMirrorPolicy", destination=DESTINATION, percentage=PERCENT)),
    mirrorPercentage=PERCENT,
    mirrorPercent=INT,
    mirror_percent=INT,
    corsPolicy=CORS_POLICY,
    headers=HEADERS,
)
ROUTE_DESTINATION = message("RouteDestination", destination=DESTINATION, weight=INT)
TLS_ROUTE = message(
    "TLSRoute",
    match=ListOf(
        message(
            "TLSMatchAttributes",
            sniHosts=STRINGS,
            destinationSubnets=STRINGS,
            port=UINT32,
            sourceLabels=LABELS,
            gateways=STRINGS,
            sourceNamespace=STRING,
        )
    ),
    route=ListOf(ROUTE_DESTINATION),
)
TCP_ROUTE = message(
    "TCPRoute",
    match=ListOf(
        message(
            "L4MatchAttributes",
            destinationSubnets=STRINGS,
            port=UINT32,
            sourceSubnet=STRING,
            sourceLabels=LABELS,
            gateways=STRINGS,
            sourceNamespace=STRING,
        )
    ),
    route=ListOf(ROUTE_DESTINATION),
)
VIRTUAL_SERVICE_SPEC = message(
    "VirtualService",
    hosts=STRINGS,
    gateways=STRINGS,
    http=ListOf(HTTP_ROUTE),
    tls=ListOf(TLS_ROUTE),
    tcp=ListOf(TCP_ROUTE),
    exportTo=STRINGS,
)

_WEIGHTS: FieldType = MapOf(UINT32)
LOAD_BALANCER = message(
    "LoadBalancerSettings",
    simple=Enum(
        ("UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST")
    ),
    consistentHash=message(
        "ConsistentHashLB",
        httpHeaderName=STRING,
        httpCookie=message(
            "HTTPCookie",
            name=STRING,
            path=STRING,
            ttl=DURATION,
            attributes=ListOf(message("Attribute", name=STRING, value=STRING)),
        ),
        useSourceIp=BOOL,
        httpQueryParameterName=STRING,
        ringHash=message("RingHash", minimumRingSize=UINT32),
        maglev=message("MagLev", tableSize=UINT32),
        minimumRingSize=UINT32,
    ),
    localityLbSetting=message(
        "LocalityLoadBalancerSetting",
        distribute=ListOf(message("Distribute", **{"from": STRING, "to": _WEIGHTS})),
        failover=ListOf(message("Failover", **{"from": STRING, "to": STRING})),
        failoverPriority=STRINGS,
        enabled=BOOL,
    ),
    zoneAwareLbSetting=message(
        "ZoneAwareLoadBalancerSetting",
        enabled=BOOL,
        failover=ListOf(message("Failover", **{"from": STRING, "to": STRING})),
        failoverPriority=STRINGS,
        minClusterSize=INT64,
    ),
    warmupDurationSecs=DURATION,
    warmup=ANY,
)
CONNECTION_POOL = message(
    "ConnectionPoolSettings",
    tcp=message(
        "TCPSettings",
        maxConnections=INT,
        connectTimeout=DURATION,
        tcpKeepalive=message("TcpKeepalive", probes=UINT32, time=DURATION, interval=DURATION),
        maxConnectionDuration=DURATION,
        idleTimeout=DURATION,
    ),
    http=message(
        "HTTPSettings",
        http1MaxPendingRequests=INT,
        http2MaxRequests=INT,
        maxRequestsPerConnection=INT,
        maxRetries=INT,
        idleTimeout=DURATION,
        h2UpgradePolicy=Enum(("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")),
        useClientProtocol=BOOL,
        maxConcurrentStreams=INT,
        http2KeepAlive=message("ConnectionKeepalive", interval=DURATION, timeout=DURATION),
    ),
)
OUTLIER_DETECTION = message(
    "OutlierDetection",
    consecutiveErrors=INT,
    consecutiveGatewayErrors=UINT32,
    consecutive5xxErrors=UINT32,
    splitExternalLocalOriginErrors=BOOL,
    consecutiveLocalOriginFailures=UINT32,
    interval=DURATION,
    baseEjectionTime=DURATION,
    maxEjectionPercent=INT,
    minHealthPercent=INT,
)
CLIENT_TLS = message(
    "ClientTLSSettings",
    mode=Enum(("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")),
    clientCertificate=STRING,
    privateKey=STRING,
    caCertificates=STRING,
    credentialName=STRING,
    subjectAltNames=STRINGS,
    sni=STRING,
    insecureSkipVerify=BOOL,
    caCrl=STRING,
)
_TRAFFIC_POLICY_FIELDS: dict[str, FieldType] = {
    "loadBalancer": LOAD_BALANCER,
    "connectionPool": CONNECTION_POOL,
    "outlierDetection": OUTLIER_DETECTION,
    "tls": CLIENT_TLS,
}
PORT_TRAFFIC_POLICY = message("PortTrafficPolicy", port=PORT_SELECTOR, **_TRAFFIC_POLICY_FIELDS)
TRAFFIC_POLICY = message(
    "TrafficPolicy",
    portLevelSettings=ListOf(PORT_TRAFFIC_POLICY),
    tunnel=message("TunnelSettings", protocol=STRING, targetHost=STRING, targetPort=UINT32),
    proxyProtocol=message("ProxyProtocol", version=Enum(("V1", "V2"))),
    **_TRAFFIC_POLICY_FIELDS,
)
SUBSET = message("Subset", name=STRING, labels=LABELS, trafficPolicy=TRAFFIC_POLICY)
DESTINATION_RULE_SPEC = message(
    "DestinationRule",
    host=STRING,
    trafficPolicy=TRAFFIC_POLICY,
    subsets=ListOf(SUBSET),
    exportTo=STRINGS,
    # istio.type.v1beta1.WorkloadSelector (matchLabels), not the ServiceEntry's (labels)
    workloadSelector=SELECTOR,
)

# Gateway (networking.istio.io): its rules are meshcore.config.gateway's.
GATEWAY_PORT = message("Port", number=UINT32, protocol=STRING, name=STRING, targetPort=UINT32)
TLS_PROTOCOL = Enum(("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"))
SERVER_TLS = message(
    "ServerTLSSettings",
    httpsRedirect=BOOL,
    mode=Enum(
        ("PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL")
    ),
    serverCertificate=STRING,
    privateKey=STRING,
    caCertificates=STRING,
    caCrl=STRING,
    credentialName=STRING,
    credentialNames=STRINGS,
    tlsCertificates=ListOf(
        message(
            "TLSCertificate", serverCertificate=STRING, privateKey=STRING, caCertificates=STRING
        )
    ),
    subjectAltNames=STRINGS,
    verifyCertificateSpki=STRINGS,
    verifyCertificateHash=STRINGS,
    minProtocolVersion=TLS_PROTOCOL,
    maxProtocolVersion=TLS_PROTOCOL,
    cipherSuites=STRINGS,
)
GATEWAY_SPEC = message(
    "Gateway",
    servers=ListOf(
        message(
            "Server",
            port=GATEWAY_PORT,
            bind=STRING,
            hosts=STRINGS,
            tls=SERVER_TLS,
            defaultEndpoint=STRING,
            name=STRING,
        )
    ),
    selector=LABELS,
)
# A Kubernetes Secret keeps these at the top level (no spec): the loader reads them as its spec.
SECRET_FIELDS = frozenset({"type", "data", "stringData", "immutable"})
SECRET_SPEC = message(
    "Secret", type=STRING, data=MapOf(STRING), stringData=MapOf(STRING), immutable=BOOL
)

# --- security.istio.io ---------------------------------------------------------------------------

# AuthorizationPolicy's spec is checked field by field by meshcore.security._validate (shared
# with the Authorizer), which knows Istio's webhook rules for it.
AUTHORIZATION_POLICY_SPEC = ANY
MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
MTLS = message("MutualTLS", mode=Enum(MTLS_MODES))
PEER_AUTHENTICATION_SPEC = message(
    "PeerAuthentication",
    selector=SELECTOR,
    mtls=MTLS,
    portLevelMtls=MapOf(MTLS, key="uint32"),
)

POLICY_TARGET_REFERENCE = message(
    "PolicyTargetReference", group=STRING, kind=STRING, name=STRING, namespace=STRING
)
JWT_HEADER = message("JWTHeader", name=STRING, prefix=STRING)
CLAIM_TO_HEADER = message("ClaimToHeader", header=STRING, claim=STRING)
JWT_RULE = message(
    "JWTRule",
    issuer=STRING,
    audiences=STRINGS,
    jwksUri=STRING,
    jwks=STRING,
    fromHeaders=ListOf(JWT_HEADER),
    fromParams=STRINGS,
    fromCookies=STRINGS,
    outputPayloadToHeader=STRING,
    forwardOriginalToken=BOOL,
    outputClaimToHeaders=ListOf(CLAIM_TO_HEADER),
    timeout=DURATION,
    spaceDelimitedClaims=STRINGS,
)
REQUEST_AUTHENTICATION_SPEC = message(
    "RequestAuthentication",
    selector=SELECTOR,
    targetRef=POLICY_TARGET_REFERENCE,
    targetRefs=ListOf(POLICY_TARGET_REFERENCE),
    jwtRules=ListOf(JWT_RULE),
)

# telemetry.istio.io Telemetry (meshcore.config.telemetry applies it and refuses what it does
# not implement).
METRICS_NAMES = ("ALL_METRICS", "REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE",
                 "RESPONSE_SIZE", "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS",
                 "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES", "GRPC_REQUEST_MESSAGES",
                 "GRPC_RESPONSE_MESSAGES")  # fmt: skip
WORKLOAD_MODES = Enum(("CLIENT_AND_SERVER", "CLIENT", "SERVER"))
PROVIDER_REF = message("ProviderRef", name=STRING)
TELEMETRY_SPEC = message(
    "Telemetry",
    selector=SELECTOR,
    targetRef=POLICY_TARGET_REFERENCE,
    targetRefs=ListOf(POLICY_TARGET_REFERENCE),
    tracing=ListOf(message(
        "Tracing", match=message("TracingSelector", mode=WORKLOAD_MODES),
        providers=ListOf(PROVIDER_REF), customTags=ANY, randomSamplingPercentage=NUMBER,
        disableSpanReporting=BOOL, useRequestIdForTraceSampling=BOOL, enableIstioTags=BOOL,
    )),
    metrics=ListOf(message(
        "Metrics", providers=ListOf(PROVIDER_REF), reportingInterval=DURATION,
        overrides=ListOf(message(
            "MetricsOverrides",
            match=message("MetricSelector", metric=Enum(METRICS_NAMES), customMetric=STRING,
                          mode=WORKLOAD_MODES),
            disabled=BOOL, tagOverrides=ANY,
        )),
    )),
    accessLogging=ListOf(message(
        "AccessLogging", match=message("AccessLogSelector", mode=WORKLOAD_MODES),
        providers=ListOf(PROVIDER_REF), disabled=BOOL, filter=ANY,
    )),
)  # fmt: skip

SIDECAR_PORT = message(
    "SidecarPort", number=UINT32, protocol=STRING, name=STRING, targetPort=UINT32
)
CAPTURE_MODE = Enum(("DEFAULT", "IPTABLES", "NONE"))
EGRESS_LISTENER = message(
    "IstioEgressListener", port=SIDECAR_PORT, bind=STRING, captureMode=CAPTURE_MODE, hosts=STRINGS
)
INGRESS_LISTENER = message(
    "IstioIngressListener",
    port=SIDECAR_PORT,
    bind=STRING,
    captureMode=CAPTURE_MODE,
    defaultEndpoint=STRING,
    tls=ANY,
    connectionPool=CONNECTION_POOL,
)
OUTBOUND_TRAFFIC_POLICY = message(
    "OutboundTrafficPolicy",
    mode=Enum(("REGISTRY_ONLY", "ALLOW_ANY", "ALLOW_ANY_DYNAMIC_DNS")),
    egressProxy=DESTINATION,
)
SIDECAR_SPEC = message(
    "Sidecar",
    workloadSelector=WORKLOAD_SELECTOR,
    ingress=ListOf(INGRESS_LISTENER),
    egress=ListOf(EGRESS_LISTENER),
    inboundConnectionPool=CONNECTION_POOL,
    outboundTrafficPolicy=OUTBOUND_TRAFFIC_POLICY,
)

HTTP_HEADER = message("HTTPHeader", name=STRING, value=STRING)
READINESS_PROBE = message(
    "ReadinessProbe",
    initialDelaySeconds=INT,
    timeoutSeconds=INT,
    periodSeconds=INT,
    successThreshold=INT,
    failureThreshold=INT,
    httpGet=message(
        "HTTPHealthCheckConfig",
        path=STRING,
        port=UINT32,
        host=STRING,
        scheme=STRING,
        httpHeaders=ListOf(HTTP_HEADER),
    ),
    tcpSocket=message("TCPHealthCheckConfig", host=STRING, port=UINT32),
    exec=message("ExecHealthCheckConfig", command=STRINGS),
    grpc=message("GrpcHealthCheckConfig", port=UINT32, service=STRING),
)
WORKLOAD_GROUP_SPEC = message(
    "WorkloadGroup",
    metadata=message("ObjectMeta", labels=LABELS, annotations=LABELS),
    template=WORKLOAD_ENTRY_SPEC,
    probe=READINESS_PROBE,
)

# --- kinds ---------------------------------------------------------------------------------------

NETWORKING = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)
SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")
TELEMETRY = ("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1")


@dataclass(frozen=True, slots=True)
class KindSpec:
    kind: str
    api_versions: tuple[str, ...]
    spec: Message | AnyValue
    namespaced: bool = True


KINDS: Mapping[str, KindSpec] = {
    k.kind: k
    for k in (
        KindSpec("Service", ("v1",), SERVICE_SPEC),
        KindSpec("WorkloadEntry", NETWORKING, WORKLOAD_ENTRY_SPEC),
        KindSpec("ServiceEntry", NETWORKING, SERVICE_ENTRY_SPEC),
        KindSpec("VirtualService", NETWORKING, VIRTUAL_SERVICE_SPEC),
        KindSpec("DestinationRule", NETWORKING, DESTINATION_RULE_SPEC),
        KindSpec("AuthorizationPolicy", SECURITY, AUTHORIZATION_POLICY_SPEC),
        KindSpec("PeerAuthentication", SECURITY, PEER_AUTHENTICATION_SPEC),
        KindSpec("RequestAuthentication", SECURITY, REQUEST_AUTHENTICATION_SPEC),
        KindSpec("Gateway", NETWORKING, GATEWAY_SPEC),
        KindSpec("Secret", ("v1",), SECRET_SPEC),
        KindSpec("Telemetry", TELEMETRY, TELEMETRY_SPEC),
        KindSpec("Sidecar", NETWORKING, SIDECAR_SPEC),
        KindSpec("WorkloadGroup", NETWORKING, WORKLOAD_GROUP_SPEC),
    )
}
