"""The Sidecar resource (issue 13): validation as Istio's webhook gives it (plus what the
loopback layout refuses, with the reason), and egress scoping as Istio's SidecarScope resolves
it: a scoped proxy gets only the clusters, endpoints, virtual hosts and outbound listeners of
the services it may reach."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("envoy.config.cluster.v3.cluster_pb2")

from meshcore.config import MeshModel, load_objects, validate_object
from meshcore.errors import ConfigError
from meshcore.xds import types
from meshcore.xds.deps import DependencyIndex
from meshcore.xds.translate import Generated, Translator, proxy_for_node


def m(kind: str, name: str, spec: dict[str, Any], ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1" if kind == "Service" else "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def svc(name: str, ns: str, port: int = 9080, protocol: str = "http") -> dict[str, Any]:
    return m(
        "Service",
        name,
        {"selector": {"app": name}, "ports": [{"name": protocol, "port": port}]},
        ns,
    )


def we(name: str, ns: str, address: str, **labels: str) -> dict[str, Any]:
    return m("WorkloadEntry", name, {"address": address, "labels": {"app": name, **labels}}, ns)


def sidecar(name: str, ns: str, *hosts: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"egress": [{"hosts": list(hosts)}]} if hosts else {}
    body.update(spec)
    return m("Sidecar", name, body, ns)


# Three namespaces: the client's (a), b, and istio-system (the root namespace).
MESH = [
    svc("client", "a"),
    we("client", "a", "127.0.20.1", role="front"),
    svc("local", "a"),
    we("local", "a", "127.0.20.2"),
    svc("other", "b"),
    we("other", "b", "127.0.20.3"),
    svc("db", "b", 5432, "tcp"),
    we("db", "b", "127.0.20.4"),
    svc("istiod", "istio-system", 15012, "grpc"),
]
NODE = "sidecar~127.0.20.1~client.a~a.svc.cluster.local"


def gen(objects: list[dict[str, Any]], node: str = NODE) -> Generated:
    mesh = load_objects([*MESH, *objects])
    return Translator().generate(mesh, proxy_for_node(mesh, node, {}))


def hosts(result: Generated) -> set[str]:
    """The service hosts whose outbound clusters the proxy got."""
    return {
        name.split("|")[3]
        for name in result.resources[types.CLUSTER]
        if name.startswith("outbound|")
    }


def vhosts(result: Generated, port: str = "9080") -> set[str]:
    rc = result.resources[types.ROUTE].get(port)
    return {vh.name for vh in rc.virtual_hosts} if rc is not None else set()


def fq(name: str, ns: str) -> str:
    return f"{name}.{ns}.svc.cluster.local"


ALL = {fq("client", "a"), fq("local", "a"), fq("other", "b"), fq("db", "b")}
ALL |= {fq("istiod", "istio-system")}


def test_no_sidecar_every_service() -> None:
    assert hosts(gen([])) == ALL


def test_namespace_default_scopes_to_own_and_istio_system() -> None:
    result = gen([sidecar("default", "a", "./*", "istio-system/*")])
    assert hosts(result) == {fq("client", "a"), fq("local", "a"), fq("istiod", "istio-system")}
    # Endpoints, virtual hosts and listeners follow the clusters.
    assert {n.split("|")[3] for n in result.resources[types.ENDPOINT]} <= hosts(result)
    assert vhosts(result) == {f"{fq('client', 'a')}:9080", f"{fq('local', 'a')}:9080"}
    listeners = set(result.resources[types.LISTENER])
    assert "127.0.0.1_5432" not in listeners  # db (namespace b) is out of scope
    assert {"127.0.0.1_9080", "127.0.0.1_15012"} <= listeners
    assert not result.problems


def test_sidecar_without_egress_keeps_every_service() -> None:
    # Istio: without egress, the proxy reaches every service its namespace can see (*/*).
    result = gen([sidecar("default", "a", outboundTrafficPolicy={"mode": "ALLOW_ANY"})])
    assert hosts(result) == ALL
    assert "127.0.0.1_5432" in result.resources[types.LISTENER]


def test_other_namespace_without_sidecar_unscoped() -> None:
    node = "sidecar~127.0.20.3~other.b~b.svc.cluster.local"
    assert hosts(gen([sidecar("default", "a", "./*")], node)) == ALL


def test_root_namespace_default_applies_where_no_own_sidecar() -> None:
    root = sidecar("default", "istio-system", "./*")
    # "." in the mesh default is the proxy's namespace.
    assert hosts(gen([root])) == {fq("client", "a"), fq("local", "a")}
    # A namespace's own Sidecar wins over the mesh default.
    own = sidecar("default", "a", "b/*")
    assert hosts(gen([root, own])) == {fq("other", "b"), fq("db", "b")}


def test_workload_selector_wins_over_namespace_default() -> None:
    selected = sidecar(
        "front", "a", "*/db.b.svc.cluster.local", workloadSelector={"labels": {"role": "front"}}
    )
    wide = sidecar("default", "a", "./*")
    assert hosts(gen([wide, selected])) == {fq("db", "b")}
    # Another workload of the namespace gets the namespace default.
    node = "sidecar~127.0.20.2~local.a~a.svc.cluster.local"
    assert hosts(gen([wide, selected], node)) == {fq("client", "a"), fq("local", "a")}


def test_exact_wildcard_and_excluded_hosts() -> None:
    assert hosts(gen([sidecar("s", "a", "*/*.b.svc.cluster.local")])) == {
        fq("other", "b"),
        fq("db", "b"),
    }
    assert hosts(gen([sidecar("s", "a", "*/*", "~b/db.b.svc.cluster.local")])) == ALL - {
        fq("db", "b")
    }
    assert hosts(gen([sidecar("s", "a", "~/*")])) == set()
    # The namespace must match: other.b is not in namespace a.
    assert hosts(gen([sidecar("s", "a", "a/other.b.svc.cluster.local")])) == set()


def test_port_specific_egress_listener() -> None:
    spec = {
        "egress": [
            {"port": {"number": 5432, "protocol": "TCP", "name": "pg"}, "hosts": ["b/*"]},
            {"hosts": ["./*"]},
        ]
    }
    result = gen([m("Sidecar", "s", spec, "a")])
    # db on its port only; the catch-all imports namespace a on every port.
    assert hosts(result) == {fq("client", "a"), fq("local", "a"), fq("db", "b")}
    assert "outbound|5432||db.b.svc.cluster.local" in result.resources[types.CLUSTER]
    assert {"127.0.0.1_5432", "127.0.0.1_9080"} <= set(result.resources[types.LISTENER])


def test_virtual_service_destinations_get_clusters() -> None:
    # A VirtualService for local.a (imported) routes to other.b (not imported): Istio adds
    # the destination's cluster, not its virtual host.
    vs = m(
        "VirtualService",
        "local",
        {
            "hosts": ["local"],
            "http": [{"route": [{"destination": {"host": "other.b.svc.cluster.local"}}]}],
        },
        "a",
    )
    result = gen([vs, sidecar("s", "a", "./*")])
    assert fq("other", "b") in hosts(result)
    assert f"{fq('other', 'b')}:9080" not in vhosts(result)
    assert fq("db", "b") not in hosts(result)


def test_scoped_proxies_share_layers() -> None:
    mesh = load_objects([*MESH, sidecar("default", "a", "./*")])
    t = Translator()
    one = t.generate(mesh, proxy_for_node(mesh, NODE, {}))
    two = t.generate(
        mesh, proxy_for_node(mesh, "sidecar~127.0.20.2~local.a~a.svc.cluster.local", {})
    )
    for type_url in (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE):
        assert one.resources[type_url].shared is two.resources[type_url].shared


def test_sidecar_change_affects_its_namespace() -> None:
    old = load_objects(MESH)
    new = load_objects([*MESH, sidecar("default", "a", "./*")])
    deps = DependencyIndex()
    t = Translator()
    for node in (NODE, "sidecar~127.0.20.3~other.b~b.svc.cluster.local"):
        from meshcore.xds.cache import NodeInfo

        info = NodeInfo(node, {})
        deps.add(old, info, t.resources_for(old, info))
    key = ("Sidecar", "a", "default")
    assert deps.affected(old, new, {key: (None, new.get(*key))}) == {NODE}
    root = load_objects([*MESH, sidecar("default", "istio-system", "./*")])
    rkey = ("Sidecar", "istio-system", "default")
    assert deps.affected(old, root, {rkey: (None, root.get(*rkey))}) is None


def _errors(spec: dict[str, Any], ns: str = "a") -> list[str]:
    return [
        f"{p.path}: {p.message}"
        for p in validate_object(m("Sidecar", "s", spec, ns))
        if p.severity == "error"
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, "empty configuration"),
        ({"egress": [{"hosts": ["bookinfo.com"]}]}, "namespace/dnsName"),
        ({"egress": [{"hosts": ["./reviews"]}]}, "short names"),
        ({"egress": [{"hosts": ["a b/*"]}]}, "invalid namespace"),
        ({"egress": [{"hosts": []}]}, "at least one host"),
        (
            {
                "egress": [
                    {"hosts": ["*/*"]},
                    {"hosts": ["*/*"], "port": {"number": 80, "protocol": "HTTP"}},
                ]
            },
            "should be the last",
        ),
        ({"egress": [{"hosts": ["*/*"]}, {"hosts": ["*/*"]}]}, "only one listener with empty port"),
        (
            {
                "egress": [
                    {"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*/*"]},
                    {"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*/*"]},
                ]
            },
            "unique",
        ),
        (
            {"egress": [{"port": {"number": 80, "protocol": "bad"}, "hosts": ["*/*"]}]},
            "unsupported protocol",
        ),
        (
            {
                "egress": [
                    {
                        "port": {"number": 80, "protocol": "HTTP"},
                        "bind": "127.1.2.3",
                        "hosts": ["*/*"],
                    }
                ]
            },
            "outbound address",
        ),
        ({"egress": [{"captureMode": "IPTABLES", "hosts": ["*/*"]}]}, "IPTABLES"),
        (
            {"outboundTrafficPolicy": {"mode": "ALLOW_ANY_DYNAMIC_DNS"}},
            "only supported in MeshConfig",
        ),
        (
            {
                "ingress": [
                    {
                        "port": {"number": 9080, "protocol": "HTTP"},
                        "defaultEndpoint": "127.0.0.1:8080",
                        "tls": {"mode": "SIMPLE"},
                    }
                ]
            },
            "TLS termination on a sidecar ingress listener is not translated",
        ),
        (
            {"ingress": [{"port": {"number": 9080}, "defaultEndpoint": "unix:///sock"}]},
            "unix domain socket endpoints are not available",
        ),
        (
            {"ingress": [{"port": {"number": 9080}, "defaultEndpoint": "10.0.0.1:80"}]},
            "defaultEndpoint must be of form",
        ),
        (
            {"ingress": [{"port": {"number": 9080}, "bind": "127.0.0.9"}]},
            "inbound listeners bind to the workload's address",
        ),
        (
            {"workloadSelector": {"labels": {"app": "*"}}, "egress": [{"hosts": ["*/*"]}]},
            "wildcard",
        ),
    ],
)
def test_invalid(spec: dict[str, Any], expected: str) -> None:
    errors = _errors(spec)
    assert any(expected in e for e in errors), errors


@pytest.mark.parametrize(
    "spec",
    [
        {"egress": [{"hosts": ["./*", "istio-system/*"]}]},
        {"egress": [{"hosts": ["*/*.example.com", "~/*"]}]},
        {
            "egress": [
                {
                    "port": {"number": 5432, "protocol": "TCP", "name": "pg"},
                    "captureMode": "NONE",
                    "hosts": ["b/*"],
                },
                {"hosts": ["./*"]},
            ]
        },
        {"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}},
        {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}},  # capture-mode proxies apply it
        {"workloadSelector": {"labels": {"app": "x"}}, "egress": [{"hosts": ["./*"]}]},
    ],
)
def test_valid(spec: dict[str, Any]) -> None:
    assert _errors(spec) == []


def test_duplicate_hosts_warn() -> None:
    found = validate_object(m("Sidecar", "s", {"egress": [{"hosts": ["a/*", "./foo.com"]}]}, "a"))
    assert [p.severity for p in found] == ["warning"]
    assert "duplicated egress host" in found[0].message


def test_invalid_sidecar_refused_at_load_with_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_objects([*MESH, sidecar("s", "a", "reviews")])
    assert "spec.egress[0].hosts[0]" in str(info.value)


def test_second_namespace_default_warned() -> None:
    result = gen([sidecar("one", "a", "./*"), sidecar("two", "a", "*/*")])
    assert hosts(result) == {fq("client", "a"), fq("local", "a")}
    assert any("already has a Sidecar" in p.message for p in result.problems)


def test_model_lists_sidecars() -> None:
    mesh: MeshModel = load_objects([*MESH, sidecar("default", "a", "./*")])
    assert mesh.summary()["Sidecar"] == 1


def test_ingress_listeners_replace_the_inbound_ports() -> None:
    """Istio: a Sidecar's ingress listeners are the workload's inbound listeners, each to the
    app's defaultEndpoint port (the same port without one)."""
    spec = {
        "ingress": [
            {
                "port": {"number": 9080, "protocol": "HTTP", "name": "http"},
                "defaultEndpoint": "127.0.0.1:8080",
            },
            {"port": {"number": 9443, "protocol": "TCP"}},
        ]
    }
    result = gen([m("Sidecar", "client", spec, "a")])
    listeners = result.resources[types.LISTENER]
    clusters = result.resources[types.CLUSTER]
    assert {"127.0.20.1_9080", "127.0.20.1_9443"} <= set(listeners)
    inbound = clusters["inbound|9080||"]
    addr = inbound.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (addr.address, addr.port_value) == ("127.0.0.1", 8080)
    other = clusters["inbound|9443||"].load_assignment.endpoints[0].lb_endpoints[0]
    assert other.endpoint.address.socket_address.port_value == 9443
    # the HTTP port gets a connection manager, the TCP one a TCP proxy
    assert (
        listeners["127.0.20.1_9080"]
        .filter_chains[0]
        .filters[-1]
        .name.endswith("http_connection_manager")
    )
    assert listeners["127.0.20.1_9443"].filter_chains[0].filters[-1].name.endswith("tcp_proxy")
    # without the Sidecar: the Service's port, to the same app port
    plain = gen([]).resources[types.CLUSTER]["inbound|9080||"]
    assert (
        plain.load_assignment.endpoints[0]
        .lb_endpoints[0]
        .endpoint.address.socket_address.port_value
        == 9080
    )


def test_egress_port_protocol_that_disagrees_is_warned() -> None:
    spec = {
        "egress": [
            {"port": {"number": 5432, "protocol": "HTTP"}, "hosts": ["b/*"]},
            {"port": {"number": 9080, "protocol": "HTTP"}, "hosts": ["./*"]},
        ]
    }
    result = gen([m("Sidecar", "s", spec, "a")])
    assert [(p.severity, p.path) for p in result.problems] == [
        ("warning", "spec.egress[0].port.protocol")
    ]
    assert "typed by the services on it (TCP)" in result.problems[0].message
