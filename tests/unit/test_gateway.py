"""Gateway translation (router proxies): Istio's names and layout, VirtualService binding,
httpsRedirect, TLS modes, credentialName secrets and who may have them."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshcore.config import load_objects, validate_object
from meshcore.dataplane.agent import with_proxy_type
from meshcore.xds import types
from meshcore.xds.translate import generate, proxy_for_node

NET = "networking.istio.io/v1"
ROUTER = "router~10.1.0.1~gw.istio-system~istio-system.svc.cluster.local"
LABELS = {"LABELS": {"istio": "ingressgateway"}}
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def doc(
    kind: str, name: str, spec: dict[str, Any], ns: str = "default", api: str = NET
) -> dict[str, Any]:
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def service(name: str, port: int, ns: str = "default") -> dict[str, Any]:
    return doc("Service", name, {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]},
               ns, api="v1")  # fmt: skip


def gateway(servers: list[dict[str, Any]], name: str = "gw", ns: str = "default") -> dict[str, Any]:
    return doc("Gateway", name, {"selector": {"istio": "ingressgateway"}, "servers": servers}, ns)


def server(
    port: int, protocol: str = "HTTP", hosts: tuple[str, ...] = ("*",), **extra: Any
) -> dict[str, Any]:
    return {"port": {"number": port, "name": f"{protocol.lower()}-{port}", "protocol": protocol},
            "hosts": list(hosts), **extra}  # fmt: skip


def vs(name: str, hosts: list[str], gateways: list[str] | None, dest: str = "web",
       ns: str = "default", **extra: Any) -> dict[str, Any]:  # fmt: skip
    spec: dict[str, Any] = {"hosts": hosts,
                            "http": [{"route": [{"destination": {"host": dest}}]}], **extra}  # fmt: skip
    if gateways is not None:
        spec["gateways"] = gateways
    return doc("VirtualService", name, spec, ns)


def secret(name: str, ns: str = "istio-system", **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
            "type": "kubernetes.io/tls",
            "stringData": data or {"tls.crt": CERT, "tls.key": KEY}}  # fmt: skip


def router(
    objects: list[dict[str, Any]], node: str = ROUTER, meta: dict[str, Any] | None = None
) -> Any:
    mesh = load_objects(objects)
    return generate(mesh, proxy_for_node(mesh, node, LABELS if meta is None else meta))


def hcm_of(chain: Any) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    chain.filters[-1].typed_config.Unpack(hcm)
    return hcm


def test_istio_names_listeners_and_route_configurations() -> None:
    out = router([
        service("web", 8000),
        gateway([server(80), server(443, "HTTPS", ("web.example.com",),
                                    tls={"mode": "SIMPLE", "credentialName": "cred"}),
                 server(8080, bind="10.1.0.1")]),
        vs("web", ["web.example.com"], ["gw"]),
        secret("cred"),
    ])  # fmt: skip
    assert sorted(out.resources[types.LISTENER]) == ["0.0.0.0_443", "0.0.0.0_80", "10.1.0.1_8080"]
    assert sorted(out.resources[types.ROUTE]) == [
        "http.80", "http.8080.10.1.0.1", "https.443.https-443.gw.default",
    ]  # fmt: skip
    listener = out.resources[types.LISTENER]["0.0.0.0_80"]
    assert listener.address.socket_address.address == "0.0.0.0"
    assert hcm_of(listener.filter_chains[0]).rds.route_config_name == "http.80"
    vh = out.resources[types.ROUTE]["http.80"].virtual_hosts[0]
    assert (vh.name, list(vh.domains)) == (
        "web.example.com:80",
        ["web.example.com", "web.example.com:*"],
    )
    assert vh.routes[0].route.cluster == "outbound|8000||web.default.svc.cluster.local"
    # a gateway proxy's clusters are the mesh's
    assert "outbound|8000||web.default.svc.cluster.local" in out.resources[types.CLUSTER]


def test_the_loopback_layout_address_comes_from_node_metadata() -> None:
    out = router([gateway([server(80)])], meta={**LABELS, "MESHCORE_GATEWAY_ADDRESS": "127.0.9.1"})
    (listener,) = out.resources[types.LISTENER].values()
    assert listener.name == "127.0.9.1_80"
    assert listener.address.socket_address.address == "127.0.9.1"


def test_virtual_services_bind_to_gateways_as_istio_resolves_them() -> None:
    objects = [
        service("web", 8000),
        service("api", 8000, ns="apis"),
        gateway([server(80)]),
        vs("bound", ["a.example.com"], ["gw"]),
        vs(
            "by-ns", ["b.example.com"], ["default/gw"], dest="api.apis.svc.cluster.local", ns="apis"
        ),
        vs("legacy", ["c.example.com"], ["gw.default.svc.cluster.local"], ns="apis", dest="api"),
        vs("mesh-only", ["e.example.com"], None),
        vs("other-ns-short", ["f.example.com"], ["gw"], ns="apis", dest="api"),
        vs("web-mesh", ["web"], ["mesh", "gw"]),
    ]
    out = router(objects)
    hosts = {vh.name.split(":")[0] for vh in out.resources[types.ROUTE]["http.80"].virtual_hosts}
    assert hosts == {"a.example.com", "b.example.com", "c.example.com",
                     "web.default.svc.cluster.local"}  # fmt: skip
    # sidecars get only the mesh-bound VirtualServices
    mesh = load_objects(objects)
    sidecar = generate(
        mesh, proxy_for_node(mesh, "sidecar~10.2.0.1~s.default~default.svc.cluster.local")
    )
    web = next(vh for vh in sidecar.resources[types.ROUTE]["8000"].virtual_hosts
               if vh.name == "web.default.svc.cluster.local:8000")  # fmt: skip
    assert web.routes[0].name != "default"  # web-mesh's route (mesh-bound)
    all_domains = {d for r in sidecar.resources[types.ROUTE].values() for vh in r.virtual_hosts
                   for d in vh.domains}  # fmt: skip
    assert "a.example.com" not in all_domains


def test_match_gateways_and_server_host_namespaces() -> None:
    out = router([
        service("web", 8000),
        service("web2", 8000),
        gateway([server(80, hosts=("./a.example.com", "apis/b.example.com", "*/*.c.example.com"))]),
        doc("VirtualService", "split", {
            "hosts": ["a.example.com"], "gateways": ["mesh", "gw"],
            "http": [{"match": [{"gateways": ["mesh"]}], "route": [{"destination": {"host": "web2"}}]},
                     {"match": [{"gateways": ["gw"], "uri": {"prefix": "/x"}}],
                      "route": [{"destination": {"host": "web"}}]}]}),
        vs("b-wrong-ns", ["b.example.com"], ["gw"]),  # the server admits b only from apis
        vs("c", ["x.c.example.com"], ["gw"]),
        vs("any", ["*"], ["gw"]),  # "*" meets *.c.example.com (a.example.com: the first VS's)
    ])  # fmt: skip
    vhosts = {vh.name: vh for vh in out.resources[types.ROUTE]["http.80"].virtual_hosts}
    assert sorted(vhosts) == ["*.c.example.com:80", "a.example.com:80", "x.c.example.com:80"]
    # Envoy takes one wildcard per domain: a wildcard host keeps its port (Istio's domains)
    assert list(vhosts["*.c.example.com:80"].domains) == ["*.c.example.com", "*.c.example.com:80"]
    assert list(vhosts["a.example.com:80"].domains) == ["a.example.com", "a.example.com:*"]
    routes = vhosts["a.example.com:80"].routes
    # split's gateway match (not its mesh one), then the "*" VirtualService's route
    assert [r.match.prefix for r in routes] == ["/x", "/"]
    assert routes[0].route.cluster == "outbound|8000||web.default.svc.cluster.local"


def test_https_redirect_and_no_virtual_host() -> None:
    out = router([
        service("web", 8000),
        gateway([server(80, hosts=("web.example.com",), tls={"httpsRedirect": True}),
                 server(81, hosts=("other.example.com",))]),
        vs("web", ["web.example.com"], ["gw"]),
    ])  # fmt: skip
    (vh,) = out.resources[types.ROUTE]["http.80"].virtual_hosts
    assert vh.require_tls == rc.VirtualHost.ALL
    # nothing bound to port 81: Istio's blackhole virtual host (no route: 404)
    (empty,) = out.resources[types.ROUTE]["http.81"].virtual_hosts
    assert (empty.name, list(empty.domains), len(empty.routes)) == ("blackhole:81", ["*"], 0)


def _tls(chain: Any) -> tls_pb2.DownstreamTlsContext:
    ctx = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(ctx)
    return ctx


def test_credential_name_secrets_go_to_the_gateway_of_their_namespace_only() -> None:
    objects = [
        gateway([server(443, "HTTPS", ("a.example.com",),
                        tls={"mode": "MUTUAL", "credentialName": "cred"})]),
        secret("cred", **{"tls.crt": CERT, "tls.key": KEY, "ca.crt": CERT}),
        secret("cred", ns="default"),
        secret("unused"),
    ]  # fmt: skip
    out = router(objects)
    secrets = out.resources[types.SECRET]
    assert sorted(secrets) == ["kubernetes://cred", "kubernetes://cred-cacert"]
    assert secrets["kubernetes://cred"].tls_certificate.private_key.inline_bytes == KEY.encode()
    assert (
        secrets["kubernetes://cred-cacert"].validation_context.trusted_ca.inline_bytes
        == CERT.encode()
    )
    (chain,) = out.resources[types.LISTENER]["0.0.0.0_443"].filter_chains
    ctx = _tls(chain)
    assert ctx.require_client_certificate.value
    sds = ctx.common_tls_context.tls_certificate_sds_secret_configs[0]
    assert sds.name == "kubernetes://cred"
    assert sds.sds_config.HasField("ads")
    assert (ctx.common_tls_context.combined_validation_context.validation_context_sds_secret_config.name
            == "kubernetes://cred-cacert")  # fmt: skip
    assert list(chain.filter_chain_match.server_names) == ["a.example.com"]
    # a gateway workload in another namespace gets none of them (and is told why)
    other = router(objects, node="router~10.1.0.2~gw.other~other.svc.cluster.local")
    assert not other.resources[types.SECRET]
    assert any(p.path == "spec.servers[0].tls.credentialName" for p in other.problems)
    # a sidecar never gets credentialName secrets
    mesh = load_objects(objects)
    sidecar = generate(
        mesh,
        proxy_for_node(
            mesh, "sidecar~10.1.0.3~s.istio-system~istio-system.svc.cluster.local", LABELS
        ),
    )
    assert not sidecar.resources.get(types.SECRET)


def test_istio_mutual_uses_the_mesh_certificate() -> None:
    out = router([gateway([server(443, "HTTPS", tls={"mode": "ISTIO_MUTUAL"})])])
    (chain,) = out.resources[types.LISTENER]["0.0.0.0_443"].filter_chains
    common = _tls(chain).common_tls_context
    assert common.tls_certificate_sds_secret_configs[0].name == "default"
    assert common.tls_certificate_sds_secret_configs[0].sds_config.HasField("api_config_source")
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"
    assert not out.resources[types.SECRET]


def test_passthrough_routes_tls_by_sni_and_auto_passthrough_by_its_sni_cluster() -> None:
    out = router([
        service("web", 8443),
        gateway([server(443, "TLS", ("*.example.com",), tls={"mode": "PASSTHROUGH"}),
                 server(15443, "TLS", ("*.local",), tls={"mode": "AUTO_PASSTHROUGH"})]),
        doc("VirtualService", "tls", {
            "hosts": ["web.example.com"], "gateways": ["gw"],
            "tls": [{"match": [{"port": 443, "sniHosts": ["web.example.com"]}],
                     "route": [{"destination": {"host": "web", "port": {"number": 8443}}}]}]}),
    ])  # fmt: skip
    (chain,) = out.resources[types.LISTENER]["0.0.0.0_443"].filter_chains
    assert list(chain.filter_chain_match.server_names) == ["web.example.com"]
    assert not chain.HasField("transport_socket")  # passed through, not terminated
    tcp = tcp_proxy_pb2.TcpProxy()
    chain.filters[-1].typed_config.Unpack(tcp)
    assert tcp.cluster == "outbound|8443||web.default.svc.cluster.local"
    auto = out.resources[types.LISTENER]["0.0.0.0_15443"]
    assert [f.name for f in auto.filter_chains[0].filters] == [
        "envoy.filters.network.sni_cluster", "envoy.filters.network.tcp_proxy",
    ]  # fmt: skip
    assert auto.listener_filters[0].name == "envoy.filters.listener.tls_inspector"
    dnat = out.resources[types.CLUSTER]["outbound_.8443_._.web.default.svc.cluster.local"]
    assert not dnat.HasField("transport_socket")
    assert not dnat.transport_socket_matches
    assert dnat.eds_cluster_config.service_name == "outbound|8443||web.default.svc.cluster.local"


def test_no_gateway_selects_the_proxy() -> None:
    out = router([gateway([server(80)])], meta={"LABELS": {"istio": "egressgateway"}})
    assert not out.resources[types.LISTENER]


def test_gateway_api_gateway_stays_an_unknown_kind() -> None:
    problems = validate_object({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                                "metadata": {"name": "gw"}, "spec": {"gatewayClassName": "istio"}})  # fmt: skip
    assert [(p.severity, p.path) for p in problems] == [("warning", "kind")]


def test_secret_problems_name_the_key_and_never_show_the_value() -> None:
    problems = validate_object({"apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": "s", "namespace": "ns"},
                                "type": "kubernetes.io/tls", "data": {"tls.crt": "s3cr3t!!"}})  # fmt: skip
    paths = sorted(p.path for p in problems)
    assert paths == ["data", "data['tls.crt']"]
    assert all("s3cr3t" not in p.message for p in problems)


@pytest.mark.parametrize(
    ("node", "kind", "want"),
    [
        (
            "sidecar~1.2.3.4~a.b~b.svc.cluster.local",
            "router",
            "router~1.2.3.4~a.b~b.svc.cluster.local",
        ),
        ("router~1.2.3.4~a.b~b.svc.cluster.local", None, "router~1.2.3.4~a.b~b.svc.cluster.local"),
    ],
)
def test_agent_proxy_type(node: str, kind: str | None, want: str) -> None:
    assert with_proxy_type(node, kind) == want
    with pytest.raises(ValueError, match="expected TYPE"):
        with_proxy_type("not-a-node-id", "router")


def test_a_virtual_service_change_reaches_a_connected_gateway(tmp_path: Any) -> None:
    """The control plane's incremental update: VirtualServices only change shared route
    configurations for sidecars, but a gateway's route configurations are its own, so the
    gateway is translated again."""
    import yaml

    from meshcore.xds.cache import NodeInfo
    from meshcore.xds.controlplane import ControlPlane
    from meshcore.xds.deps import DependencyIndex
    from meshcore.xds.translator import Translator

    def write(prefix: str) -> None:
        objs = [service("web", 8000), gateway([server(80)]),
                doc("VirtualService", "web", {"hosts": ["web.example.com"], "gateways": ["gw"],
                    "http": [{"match": [{"uri": {"prefix": prefix}}],
                              "route": [{"destination": {"host": "web"}}]}]})]  # fmt: skip
        (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(objs))

    write("/v1")
    plane = ControlPlane([tmp_path], Translator().resources_for, dependencies=DependencyIndex())
    assert plane.load()
    node = NodeInfo(ROUTER, metadata=LABELS)

    def prefix() -> str:
        snap = plane.cache.get(node)
        assert snap is not None
        found = snap.resource(types.ROUTE, "http.80")
        assert found is not None
        from envoy.config.route.v3 import route_pb2

        rcfg = route_pb2.RouteConfiguration.FromString(found[1])
        return str(rcfg.virtual_hosts[0].routes[0].match.prefix)

    plane.cache.set(node.id, plane.snapshot_for(node))
    assert prefix() == "/v1"
    write("/v2")
    import os

    os.utime(tmp_path / "mesh.yaml", ns=(1, 1))  # a new stamp even within the clock's tick
    assert plane.load()
    plane.update()
    assert prefix() == "/v2"


def test_servers_matching_the_same_connections_keep_the_first() -> None:
    """Envoy refuses a listener with two filter chains for the same connections (the whole
    listener would be NACKed): the first is kept and the other reported."""
    out = router([
        service("web", 8000),
        gateway([server(80), server(80, "TCP")], name="gw"),
        gateway([server(443, "HTTPS", ("a.example.com",), tls={"mode": "ISTIO_MUTUAL"})],
                name="gw2"),
        gateway([server(443, "HTTPS", ("a.example.com",), tls={"mode": "ISTIO_MUTUAL"})],
                name="gw3"),
        vs("web", ["*"], ["gw", "gw2", "gw3"]),
        doc("VirtualService", "tcp", {"hosts": ["*"], "gateways": ["gw"], "tcp": [
            {"route": [{"destination": {"host": "web", "port": {"number": 8000}}}]}]}),
    ])  # fmt: skip
    assert len(out.resources[types.LISTENER]["0.0.0.0_80"].filter_chains) == 1
    assert len(out.resources[types.LISTENER]["0.0.0.0_443"].filter_chains) == 1
    left_out = sorted((p.name, p.path) for p in out.problems if "left out" in p.message)
    assert left_out == [("gw", "spec.servers[1]"), ("gw3", "spec.servers[0]")]


def test_a_secret_reads_and_writes_as_kubernetes_does() -> None:
    import base64

    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "n"},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": base64.b64encode(CERT.encode()).decode()},
                "stringData": {"tls.key": KEY}}  # fmt: skip
    (secret_res,) = load_objects([manifest]).resources
    assert secret_res.value("tls.crt") == CERT.encode()
    assert secret_res.value("tls.key") == KEY.encode()
    assert secret_res.manifest() == manifest
    assert "PRIVATE" not in repr(secret_res)


def test_a_virtual_service_naming_a_missing_gateway_is_warned(tmp_path: Any) -> None:
    import yaml

    from meshcore.config import validate

    objs = [gateway([server(80)]), vs("ok", ["a.example.com"], ["gw", "mesh"], dest="a.example.com"),
            vs("typo", ["b.example.com"], ["gww"], dest="b.example.com")]  # fmt: skip
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump_all(objs))
    report = validate([tmp_path])
    assert report.ok
    missing = [(p.name, p.path) for p in report.warnings if "not in the config" in p.message]
    assert missing == [("typo", "spec.gateways[0]")]
