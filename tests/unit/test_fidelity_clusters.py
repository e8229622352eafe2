"""Istio fidelity of outbound clusters and endpoints (issue 13): ServiceEntry subjectAltNames,
auto mTLS per endpoint tlsMode, SIMPLE origination with the system roots, outlier detection
defaults. Each case asserts on the xDS generated, as Istio's conversion gives it."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("envoy.config.cluster.v3.cluster_pb2")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from meshcore.config import load_objects, validate_object
from meshcore.xds import types
from meshcore.xds.translate import Generated, Translator, proxy_for_node

CLIENT_NODE = "sidecar~127.0.10.1~client-1.default~default.svc.cluster.local"
SAN_URI = common_pb2.SubjectAltNameMatcher.URI
SAN_DNS = common_pb2.SubjectAltNameMatcher.DNS


def m(kind: str, name: str, spec: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    api = {"Service": "v1", "PeerAuthentication": "security.istio.io/v1"}.get(
        kind, "networking.istio.io/v1"
    )
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def svc(name: str, port: int = 9080) -> dict[str, Any]:
    return m(
        "Service", name, {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]}
    )


def we(name: str, app: str, address: str, sa: str | None = None, **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"address": address, "labels": {"app": app, **labels}}
    if sa is not None:
        spec["serviceAccount"] = sa
    return m("WorkloadEntry", name, spec)


CLIENT = [svc("client", 8080), we("client-1", "client", "127.0.10.1", "client")]


def gen(objects: list[dict[str, Any]], node: str = CLIENT_NODE, **kw: Any) -> Generated:
    mesh = load_objects([*CLIENT, *objects])
    return Translator(**kw).generate(mesh, proxy_for_node(mesh, node, {}))


def cluster(result: Generated, name: str) -> cluster_pb2.Cluster:
    c: cluster_pb2.Cluster = result.resources[types.CLUSTER][name]
    return c


def tls_of(socket: Any) -> tls_pb2.UpstreamTlsContext:
    ctx = tls_pb2.UpstreamTlsContext()
    assert socket.typed_config.Unpack(ctx)
    return ctx


def auto_mtls_sans(c: cluster_pb2.Cluster) -> list[tuple[int, str]]:
    [istio] = [t for t in c.transport_socket_matches if t.name == "tlsMode-istio"]
    vc = tls_of(istio.transport_socket).common_tls_context.combined_validation_context
    return [
        (s.san_type, s.matcher.exact)
        for s in vc.default_validation_context.match_typed_subject_alt_names
    ]


def endpoint_tls_modes(result: Generated, name: str) -> dict[str, str]:
    cla = result.resources[types.ENDPOINT][name]
    out = {}
    for group in cla.endpoints:
        for lb in group.lb_endpoints:
            meta = lb.metadata.filter_metadata.get("envoy.transport_socket_match")
            mode = meta.fields["tlsMode"].string_value if meta is not None else ""
            out[lb.endpoint.address.socket_address.address] = mode
    return out


# --- b) ServiceEntry subjectAltNames -------------------------------------------------------------


def mesh_internal_se(**extra: Any) -> dict[str, Any]:
    return m(
        "ServiceEntry",
        "vm-db",
        {
            "hosts": ["db.vm.internal"],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}],
            "endpoints": [{"address": "127.0.40.1", "serviceAccount": "db"}],
            **extra,
        },
    )


def test_service_entry_sans_are_verified_with_the_endpoints_accounts() -> None:
    # Istio: the service's accounts are its endpoints' identities plus the ServiceEntry's
    # subjectAltNames; auto mTLS to the host verifies all of them.
    sans = ["spiffe://cluster.local/ns/legacy/sa/db-admin", "db.vm.internal"]
    result = gen([mesh_internal_se(subjectAltNames=sans)])
    c = cluster(result, "outbound|5432||db.vm.internal")
    assert auto_mtls_sans(c) == [
        (SAN_DNS, "db.vm.internal"),
        (SAN_URI, "spiffe://cluster.local/ns/default/sa/db"),
        (SAN_URI, "spiffe://cluster.local/ns/legacy/sa/db-admin"),
    ]


def test_service_entry_sans_with_istio_mutual_destination_rule() -> None:
    dr = m(
        "DestinationRule",
        "db",
        {"host": "db.vm.internal", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}},
    )
    se = mesh_internal_se(subjectAltNames=["spiffe://cluster.local/ns/legacy/sa/db-admin"])
    c = cluster(gen([se, dr]), "outbound|5432||db.vm.internal")
    vc = tls_of(c.transport_socket).common_tls_context.combined_validation_context
    assert [
        s.matcher.exact for s in vc.default_validation_context.match_typed_subject_alt_names
    ] == [
        "spiffe://cluster.local/ns/default/sa/db",
        "spiffe://cluster.local/ns/legacy/sa/db-admin",
    ]


def test_simple_tls_to_a_service_entry_verifies_its_sans() -> None:
    se = m(
        "ServiceEntry",
        "api",
        {
            "hosts": ["api.example.com"],
            "resolution": "DNS",
            "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
            "subjectAltNames": ["api.example.com"],
        },
    )
    dr = m(
        "DestinationRule",
        "api",
        {"host": "api.example.com", "trafficPolicy": {"tls": {"mode": "SIMPLE"}}},
    )
    c = cluster(gen([se, dr]), "outbound|443||api.example.com")
    vc = tls_of(c.transport_socket).common_tls_context.validation_context
    assert [(s.san_type, s.matcher.exact) for s in vc.match_typed_subject_alt_names] == [
        (SAN_DNS, "api.example.com")
    ]


# --- c) auto mTLS per endpoint tlsMode -------------------------------------------------------------


def test_endpoint_tls_mode_label_and_service_account() -> None:
    objects = [
        svc("ratings"),
        we("ratings-mesh", "ratings", "127.0.30.1", "ratings"),
        # labelled disabled: a workload without a sidecar, plaintext even with an account
        we(
            "ratings-plain",
            "ratings",
            "127.0.30.2",
            "ratings",
            **{"security.istio.io/tlsMode": "disabled"},
        ),
        # no service account, no label: Istio sends plaintext
        we("ratings-nosa", "ratings", "127.0.30.3"),
        # no service account but labelled istio: mTLS
        we("ratings-label", "ratings", "127.0.30.4", **{"security.istio.io/tlsMode": "istio"}),
    ]
    modes = endpoint_tls_modes(gen(objects), "outbound|9080||ratings.default.svc.cluster.local")
    assert modes == {
        "127.0.30.1": "istio",
        "127.0.30.2": "",
        "127.0.30.3": "",
        "127.0.30.4": "istio",
    }


def test_service_entry_endpoint_without_service_account_is_plaintext() -> None:
    se = mesh_internal_se()
    se["spec"]["endpoints"].append({"address": "127.0.40.2"})
    modes = endpoint_tls_modes(gen([se]), "outbound|5432||db.vm.internal")
    assert modes == {"127.0.40.1": "istio", "127.0.40.2": ""}


# --- d) SIMPLE without caCertificates: the system roots ------------------------------------------


def simple_dr(**tls: Any) -> list[dict[str, Any]]:
    return [
        m(
            "ServiceEntry",
            "httpbin",
            {
                "hosts": ["httpbin.org"],
                "resolution": "DNS",
                "ports": [{"number": 443, "name": "https", "protocol": "TLS"}],
            },
        ),
        m(
            "DestinationRule",
            "httpbin",
            {"host": "httpbin.org", "trafficPolicy": {"tls": {"mode": "SIMPLE", **tls}}},
        ),
    ]


def test_simple_without_ca_certificates_verifies_with_the_system_roots() -> None:
    result = gen(simple_dr())
    assert not [p for p in result.problems if p.severity == "error"]
    ctx = tls_of(cluster(result, "outbound|443||httpbin.org").transport_socket)
    assert ctx.sni == "httpbin.org"
    assert (
        ctx.common_tls_context.validation_context.trusted_ca.filename
        == "/etc/ssl/certs/ca-certificates.crt"
    )


def test_simple_system_roots_path_is_configurable_and_sans_are_matched() -> None:
    result = gen(
        simple_dr(subjectAltNames=["httpbin.org"]), system_ca="/etc/pki/tls/certs/ca-bundle.crt"
    )
    vc = tls_of(
        cluster(result, "outbound|443||httpbin.org").transport_socket
    ).common_tls_context.validation_context
    assert vc.trusted_ca.filename == "/etc/pki/tls/certs/ca-bundle.crt"
    assert [(s.san_type, s.matcher.exact) for s in vc.match_typed_subject_alt_names] == [
        (SAN_DNS, "httpbin.org")
    ]


def test_simple_insecure_skip_verify_and_explicit_ca() -> None:
    skip = tls_of(
        cluster(
            gen(simple_dr(insecureSkipVerify=True)), "outbound|443||httpbin.org"
        ).transport_socket
    )
    assert not skip.common_tls_context.validation_context.HasField("trusted_ca")
    own = tls_of(
        cluster(
            gen(simple_dr(caCertificates="/etc/certs/ca.pem")), "outbound|443||httpbin.org"
        ).transport_socket
    )
    assert own.common_tls_context.validation_context.trusted_ca.filename == "/etc/certs/ca.pem"


# --- e) outlier detection -------------------------------------------------------------------------


def outlier(od: dict[str, Any]) -> cluster_pb2.Cluster:
    dr = m(
        "DestinationRule", "ratings", {"host": "ratings", "trafficPolicy": {"outlierDetection": od}}
    )
    result = gen([svc("ratings"), we("ratings-1", "ratings", "127.0.30.1", "ratings"), dr])
    return cluster(result, "outbound|9080||ratings.default.svc.cluster.local")


def test_outlier_without_5xx_keeps_envoys_default_and_sets_panic_threshold_zero() -> None:
    c = outlier({"consecutiveGatewayErrors": 7, "interval": "5s"})
    od = c.outlier_detection
    # Envoy's defaults for 5xx ejection (5 errors, enforced at 100%) are left in place
    assert not od.HasField("consecutive_5xx")
    assert not od.HasField("enforcing_consecutive_5xx")
    assert (
        od.consecutive_gateway_failure.value,
        od.enforcing_consecutive_gateway_failure.value,
    ) == (7, 100)
    assert od.HasField("enforcing_success_rate")
    assert od.enforcing_success_rate.value == 0
    assert c.common_lb_config.HasField("healthy_panic_threshold")
    assert c.common_lb_config.healthy_panic_threshold.value == 0


def test_outlier_fields_as_istio_converts_them() -> None:
    c = outlier(
        {
            "consecutive5xxErrors": 0,
            "consecutiveGatewayErrors": 0,
            "minHealthPercent": 30,
            "splitExternalLocalOriginErrors": True,
            "consecutiveLocalOriginFailures": 4,
        }
    )
    od = c.outlier_detection
    assert (od.consecutive_5xx.value, od.enforcing_consecutive_5xx.value) == (0, 0)
    assert od.HasField("enforcing_consecutive_gateway_failure")
    assert od.enforcing_consecutive_gateway_failure.value == 0
    assert (
        od.consecutive_local_origin_failure.value,
        od.enforcing_consecutive_local_origin_failure.value,
    ) == (4, 100)
    assert od.HasField("enforcing_local_origin_success_rate")
    assert c.common_lb_config.healthy_panic_threshold.value == 30
    five = outlier({"consecutive5xxErrors": 3}).outlier_detection
    assert (five.consecutive_5xx.value, five.enforcing_consecutive_5xx.value) == (3, 100)
    assert not five.HasField("consecutive_gateway_failure")


def test_deprecated_consecutive_errors_has_no_effect_and_is_said() -> None:
    # Istio's conversion no longer reads consecutiveErrors: Envoy's defaults stay.
    od = outlier({"consecutiveErrors": 2}).outlier_detection
    assert not od.HasField("consecutive_5xx")
    assert not od.HasField("consecutive_gateway_failure")
    dr = m(
        "DestinationRule",
        "r",
        {"host": "ratings", "trafficPolicy": {"outlierDetection": {"consecutiveErrors": 2}}},
    )
    problems = validate_object(dr)
    assert [(p.severity, p.path) for p in problems] == [
        ("warning", "spec.trafficPolicy.outlierDetection.consecutiveErrors")
    ]
