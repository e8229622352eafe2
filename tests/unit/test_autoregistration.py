"""WorkloadGroup and auto-registration (issue 13): the WorkloadEntry a registering proxy gets
(as Istio's autoregistration controller builds it), the grace period after it disconnects, the
group's readiness probe and the endpoint health it decides, and WorkloadGroup validation."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

pytest.importorskip("envoy.config.endpoint.v3.endpoint_pb2")

from envoy.config.core.v3 import health_check_pb2

from meshcore.config import MeshModel, WorkloadEntry, load_objects, validate_object
from meshcore.xds import types
from meshcore.xds.autoregistration import SOURCE, AutoRegistry, probe_once
from meshcore.xds.cache import NodeInfo
from meshcore.xds.translate import Translator, proxy_for_node


def m(kind: str, name: str, spec: dict[str, Any], ns: str = "vms", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1" if kind == "Service" else "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns, **meta},
        "spec": spec,
    }


GROUP = m(
    "WorkloadGroup",
    "reviews",
    {
        "metadata": {"labels": {"version": "v1"}, "annotations": {"team": "books"}},
        "template": {
            "labels": {"app": "reviews"},
            "serviceAccount": "reviews",
            "ports": {"http": 9080},
        },
    },
)
PROBED = m(
    "WorkloadGroup",
    "probed",
    {
        "template": {"labels": {"app": "probed"}},
        "probe": {
            "tcpSocket": {"port": 1},
            "periodSeconds": 2,
            "failureThreshold": 2,
            "successThreshold": 2,
        },
    },
)
SERVICES = [
    m(
        "Service",
        "reviews",
        {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": 9080}]},
    ),
    m(
        "Service",
        "probed",
        {"selector": {"app": "probed"}, "ports": [{"name": "http", "port": 9081}]},
    ),
]
MESH = load_objects([GROUP, PROBED, *SERVICES])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def node(group: str, ip: str = "127.0.90.1", **meta: Any) -> NodeInfo:
    return NodeInfo(
        f"sidecar~{ip}~vm-1.vms~vms.svc.cluster.local",
        metadata={"AUTO_REGISTER_GROUP": group, **meta},
    )


def test_registering_proxy_gets_its_workload_entry() -> None:
    reg = AutoRegistry(clock=Clock())
    assert reg.connected(MESH, node("reviews", LABELS={"zone": "a"}))
    [entry] = reg.entries()
    assert (entry.namespace, entry.name, entry.address, entry.file) == (
        "vms",
        "reviews-127.0.90.1",
        "127.0.90.1",
        SOURCE,
    )
    # template labels, then the group's metadata labels, then the node's (Istio's order)
    assert dict(entry.workload_labels) == {"app": "reviews", "version": "v1", "zone": "a"}
    assert entry.spec["serviceAccount"] == "reviews"
    assert entry.annotations["istio.io/autoRegistrationGroup"] == "reviews"
    assert entry.annotations["team"] == "books"
    assert entry.healthy  # no probe: no health checks
    # the Service selecting the template's labels gets the endpoint
    mesh = reg.overlay(MESH)
    client = proxy_for_node(mesh, "sidecar~127.0.90.9~c.vms~vms.svc.cluster.local", {})
    eds = Translator().generate(mesh, client).resources[types.ENDPOINT]
    cla = eds["outbound|9080||reviews.vms.svc.cluster.local"]
    [ep] = cla.endpoints[0].lb_endpoints
    assert ep.endpoint.address.socket_address.address == "127.0.90.1"
    # and the registering proxy is bound to its entry (by address)
    assert proxy_for_node(mesh, node("reviews").id, {}).workload == entry


def test_grace_period_then_removed() -> None:
    clock = Clock()
    reg = AutoRegistry(grace_period=10, clock=clock)
    n = node("reviews")
    assert reg.connected(MESH, n)
    assert not reg.connected(MESH, n)  # a second stream: nothing new
    reg.disconnected(n)
    clock.now += 5
    assert not reg.expire()
    assert not reg.connected(MESH, n)  # back within the grace period: kept
    reg.disconnected(n)
    clock.now += 9.9
    assert not reg.expire()
    clock.now += 0.1
    assert reg.expire()
    assert reg.entries() == []
    assert reg.overlay(MESH) is MESH


def test_no_group_or_taken_name_registers_nothing(caplog: pytest.LogCaptureFixture) -> None:
    reg = AutoRegistry()
    assert not reg.connected(MESH, node("missing"))
    assert "no WorkloadGroup vms/missing" in caplog.text
    taken = load_objects(
        [GROUP, m("WorkloadEntry", "reviews-127.0.90.1", {"address": "127.0.90.1"})]
    )
    assert not reg.connected(taken, node("reviews"))
    assert "exists in the configuration" in caplog.text
    assert not reg.connected(MESH, NodeInfo("sidecar~127.0.90.1~vm.vms~vms.svc.cluster.local"))
    assert reg.entries() == []


def test_probe_decides_endpoint_health() -> None:
    clock = Clock()
    reg = AutoRegistry(clock=clock)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        probed = load_objects(
            [
                m(
                    "WorkloadGroup",
                    "probed",
                    {
                        "template": {"labels": {"app": "probed"}},
                        "probe": {
                            "tcpSocket": {"port": port},
                            "periodSeconds": 2,
                            "failureThreshold": 2,
                            "successThreshold": 2,
                        },
                    },
                ),
                *SERVICES,
            ]
        )
        assert reg.connected(probed, node("probed", MESHCORE_APP_ADDRESS="127.0.0.1"))
        [entry] = reg.entries()
        assert entry.annotations["proxy.istio.io/health-checks-enabled"] == "true"
        assert not entry.healthy  # unhealthy until the probe succeeds (Istio)
        assert _eds_health(reg.overlay(probed)) == health_check_pb2.UNHEALTHY

        def step() -> bool:
            changed = asyncio.run(reg.probe_due())
            clock.now += 2
            return changed

        assert not step()  # one success of the two needed
        assert step()
        assert reg.entries()[0].healthy
        assert _eds_health(reg.overlay(probed)) == health_check_pb2.HEALTHY
    # the port is closed now: two failures make it unhealthy again
    assert not step()
    assert step()
    assert not reg.entries()[0].healthy
    assert _eds_health(reg.overlay(probed)) == health_check_pb2.UNHEALTHY


def _eds_health(mesh: MeshModel) -> int:
    client = proxy_for_node(mesh, "sidecar~127.0.90.9~c.vms~vms.svc.cluster.local", {})
    cla = (
        Translator()
        .generate(mesh, client)
        .resources[types.ENDPOINT]["outbound|9081||probed.vms.svc.cluster.local"]
    )
    [ep] = cla.endpoints[0].lb_endpoints
    return int(ep.health_status)


def test_http_probe() -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(
                200 if self.path == "/ready" and self.headers["x-probe"] == "1" else 500
            )
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        ok = {
            "httpGet": {
                "port": port,
                "path": "/ready",
                "httpHeaders": [{"name": "x-probe", "value": "1"}],
            }
        }
        assert asyncio.run(probe_once(ok, "127.0.0.1"))
        assert not asyncio.run(
            probe_once({"httpGet": {"port": port, "path": "/other"}}, "127.0.0.1")
        )
    finally:
        server.shutdown()
        server.server_close()


def test_user_entry_with_health_checks_is_unhealthy_until_reported() -> None:
    annotated = WorkloadEntry(
        "WorkloadEntry", "networking.istio.io/v1", "w", "vms", {"address": "127.0.0.1"},
        annotations={"proxy.istio.io/health-checks-enabled": "true"},
    )  # fmt: skip
    assert not annotated.healthy


def _errors(spec: dict[str, Any]) -> list[str]:
    return [
        f"{p.path}: {p.message}"
        for p in validate_object(m("WorkloadGroup", "g", spec))
        if p.severity == "error"
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, "template is required"),
        (
            {"template": {}, "probe": {"periodSeconds": -1, "tcpSocket": {"port": 80}}},
            "non-negative",
        ),
        ({"template": {}, "probe": {"periodSeconds": 1}}, "health check method"),
        ({"template": {}, "probe": {"httpGet": {"port": 0}}}, "range"),
        ({"template": {}, "probe": {"httpGet": {"port": 80, "scheme": "FTP"}}}, "scheme"),
        ({"template": {}, "probe": {"exec": {"command": ["true"]}}}, "exec probes are not run"),
        ({"template": {}, "probe": {"exec": {}}}, "exec.command is required"),
        ({"template": {}, "metadata": {"labels": {"a b": "c"}}}, "label key"),
        ({"template": {"address": "127.0.0.1"}}, "agent's"),
    ],
)
def test_invalid_group(spec: dict[str, Any], expected: str) -> None:
    errors = _errors(spec)
    assert any(expected in e for e in errors), errors


def test_valid_groups() -> None:
    assert _errors(GROUP["spec"]) == []
    assert _errors(PROBED["spec"]) == []
    assert _errors({"template": {}, "probe": {"httpGet": {"port": 8080, "scheme": "HTTPS"}}}) == []


def test_panic_mode_off_and_unhealthy_endpoints_excluded_with_min_health() -> None:
    """Istio turns Envoy's 50% panic mode off on every cluster (else an all-unhealthy cluster
    would route to its unhealthy endpoints), and leaves unhealthy endpoints out of EDS only
    where outlier detection's minHealthPercent keeps a panic threshold."""
    unhealthy = m(
        "WorkloadEntry",
        "p-1",
        {"address": "127.0.90.5", "labels": {"app": "probed"}},
        annotations={"proxy.istio.io/health-checks-enabled": "true"},
    )
    mesh = load_objects([*SERVICES, unhealthy])
    client = proxy_for_node(mesh, "sidecar~127.0.90.9~c.vms~vms.svc.cluster.local", {})
    result = Translator().generate(mesh, client)
    name = "outbound|9081||probed.vms.svc.cluster.local"
    c = result.resources[types.CLUSTER][name]
    assert c.common_lb_config.HasField("healthy_panic_threshold")
    assert c.common_lb_config.healthy_panic_threshold.value == 0
    assert _eds_health(mesh) == health_check_pb2.UNHEALTHY
    dr = m(
        "DestinationRule",
        "probed",
        {"host": "probed", "trafficPolicy": {"outlierDetection": {"minHealthPercent": 50}}},
    )
    mesh = load_objects([*SERVICES, unhealthy, dr])
    client = proxy_for_node(mesh, "sidecar~127.0.90.9~c.vms~vms.svc.cluster.local", {})
    result = Translator().generate(mesh, client)
    assert (
        result.resources[types.CLUSTER][name].common_lb_config.healthy_panic_threshold.value == 50
    )
    assert not result.resources[types.ENDPOINT][name].endpoints


def test_a_workload_group_change_retranslates_no_proxy() -> None:
    from meshcore.xds.deps import DependencyIndex

    changed = load_objects(
        [{**GROUP, "spec": {"template": {"labels": {"app": "other"}}}}, PROBED, *SERVICES]
    )
    deps = DependencyIndex()
    info = NodeInfo("sidecar~127.0.90.9~c.vms~vms.svc.cluster.local")
    deps.add(MESH, info, Translator().resources_for(MESH, info))
    key = ("WorkloadGroup", "vms", "reviews")
    assert deps.affected(MESH, changed, {key: (MESH.get(*key), changed.get(*key))}) == set()
