"""Validate once (issue 12, item 3): the loader keeps what it parsed on VirtualServices and
DestinationRules, and the route and cluster builders read it instead of parsing again."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest

from meshcore.config import MeshModel, load_objects
from meshcore.config.model import Checked, Resource
from meshcore.config.values import freeze
from meshcore.errors import ConfigError
from meshcore.xds import types
from meshcore.xds.translate import Generated, Translator, proxy_for_node

REVIEWS = "reviews.default.svc.cluster.local"
FRONTEND_NODE = "sidecar~127.0.10.1~frontend-1.default~default.svc.cluster.local"
SECOND = 10**9


def _svc(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]},
    }


def _we(name: str, app: str, address: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"address": address, "labels": {"app": app}, "serviceAccount": app},
    }


OBJECTS = [
    _svc("reviews", 9080),
    _svc("frontend", 8080),
    _we("reviews-1", "reviews", "127.0.20.1"),
    _we("frontend-1", "frontend", "127.0.10.1"),
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {
                    "match": [
                        {"uri": {"regex": "/r/[0-9]+"}, "headers": {"x-v": {"regex": "v.*"}}}
                    ],
                    "route": [{"destination": {"host": "reviews"}}],
                    "timeout": "1.5s",
                    "retries": {"attempts": 2, "perTryTimeout": "250ms"},
                    "corsPolicy": {"allowOrigins": [{"regex": "https://.*"}], "maxAge": "24h"},
                }
            ],
        },
    },
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "host": "reviews",
            "trafficPolicy": {
                "connectionPool": {"tcp": {"connectTimeout": "2s"}},
                "outlierDetection": {"interval": "1s", "baseEjectionTime": "30s"},
            },
        },
    },
]


def _translate(resources: list[Resource]) -> Generated:
    mesh = MeshModel(resources)
    return Translator().generate(mesh, proxy_for_node(mesh, FRONTEND_NODE))


def _of(resources: list[Resource], kind: str) -> Resource:
    (found,) = [r for r in resources if r.kind == kind]
    return found


def test_the_loader_keeps_parsed_durations_and_compiled_regexes() -> None:
    resources = list(load_objects(OBJECTS).resources)
    vs = _of(resources, "VirtualService")
    dr = _of(resources, "DestinationRule")
    assert vs.checked == Checked(  # type: ignore[attr-defined]
        MappingProxyType({"1.5s": 1_500_000_000, "250ms": 250_000_000, "24h": 24 * 3600 * SECOND}),
        frozenset({"/r/[0-9]+", "v.*", "https://.*"}),
    )
    checked = dr.checked  # type: ignore[attr-defined]
    assert dict(checked.durations) == {"2s": 2 * SECOND, "1s": SECOND, "30s": 30 * SECOND}
    assert checked.regexes == frozenset()


def test_builders_read_the_loaders_values_instead_of_parsing() -> None:
    resources = list(load_objects(OBJECTS).resources)
    vs = _of(resources, "VirtualService")
    dr = _of(resources, "DestinationRule")
    # What the builders would get had the loader parsed differently: proof they do not parse.
    vs_checked = Checked(
        MappingProxyType({"1.5s": 7 * SECOND, "250ms": 3 * SECOND, "24h": 5 * SECOND}),
        vs.checked.regexes,  # type: ignore[attr-defined]
    )
    dr_checked = Checked(MappingProxyType({"2s": 9 * SECOND, "1s": 4 * SECOND}), frozenset())
    others = [r for r in resources if r not in (vs, dr)]
    result = _translate(
        [*others, replace(vs, checked=vs_checked), replace(dr, checked=dr_checked)]  # type: ignore[call-arg]
    )
    route = result.resources[types.ROUTE]["9080"]
    (vhost,) = [v for v in route.virtual_hosts if v.name == f"{REVIEWS}:9080"]
    action = vhost.routes[0].route
    assert action.timeout.seconds == 7
    assert action.retry_policy.per_try_timeout.seconds == 3
    cluster = result.resources[types.CLUSTER][f"outbound|9080||{REVIEWS}"]
    assert cluster.connect_timeout.seconds == 9
    assert cluster.outlier_detection.interval.seconds == 4
    # Not in what the loader parsed: parsed here.
    assert cluster.outlier_detection.base_ejection_time.seconds == 30


def test_hand_built_resources_translate_as_loaded_ones() -> None:
    """Resources built without the loader (checked=None) are parsed and checked by the
    builders, to the same bytes."""
    loaded = list(load_objects(OBJECTS).resources)
    by_hand = [
        replace(r, checked=None)  # type: ignore[call-arg]
        if r.kind in ("VirtualService", "DestinationRule")
        else r
        for r in loaded
    ]
    assert any(getattr(r, "checked", 0) is None for r in by_hand)
    one, two = _translate(loaded), _translate(by_hand)
    assert not one.problems
    assert not two.problems
    for kind in (types.ROUTE, types.CLUSTER, types.LISTENER):
        assert {
            n: m.SerializeToString(deterministic=True) for n, m in one.resources[kind].items()
        } == {n: m.SerializeToString(deterministic=True) for n, m in two.resources[kind].items()}


def _by_hand(kind: str, spec: dict[str, Any]) -> Resource:
    """A resource of ``kind`` built without the loader (``checked`` None), from ``spec``."""
    loaded = _of(list(load_objects(OBJECTS).resources), kind)
    return replace(loaded, spec=freeze(spec), checked=None, file="hand.yaml", line=3)  # type: ignore[call-arg]


def _with(resource: Resource) -> list[Resource]:
    loaded = list(load_objects(OBJECTS).resources)
    return [r for r in loaded if r.kind != resource.kind] + [resource]


INVALID_ROUTES = [
    # (the route's fields, the path the loader's checker names): values the translator no longer
    # checks itself, each refused before the route builder could read it
    ({"retries": {"attempts": -1}}, "spec.http[0].retries.attempts"),
    ({"fault": {"delay": {"percentage": {"value": 5}}}}, "spec.http[0].fault.delay.fixedDelay"),
    ({"fault": {"abort": {"httpStatus": 700}}}, "spec.http[0].fault.abort.httpStatus"),
    ({"fault": {"abort": {"grpcStatus": "NOPE"}}}, "spec.http[0].fault.abort.grpcStatus"),
    ({"headers": {"request": {"set": {":path": "/x"}}}}, "spec.http[0].headers.request.set[':path']"),
    ({"headers": {"response": {"remove": ["bad name"]}}}, "spec.http[0].headers.response.remove[0]"),
    ({"match": [{"uri": {"exact": "/a", "prefix": "/b"}}]}, "spec.http[0].match[0].uri"),
    ({"match": [{"queryParams": {"q": {"prefix": "a"}}}]}, "spec.http[0].match[0].queryParams.q.prefix"),
    ({"timeout": "soon"}, "spec.http[0].timeout"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "path"), INVALID_ROUTES, ids=[p for _, p in INVALID_ROUTES])
def test_a_hand_built_virtual_service_meets_the_loaders_checker(
    fields: dict[str, Any], path: str
) -> None:
    route = {"route": [{"destination": {"host": "reviews"}}], **fields}
    vs = _by_hand("VirtualService", {"hosts": ["reviews"], "http": [route]})
    assert load_objects_problem(vs) == path  # what the loader says of the same manifest
    result = _translate(_with(vs))
    (problem,) = [p for p in result.problems if p.severity == "error"]
    assert (problem.kind, problem.name, problem.file, problem.line) == (
        "VirtualService", "reviews", "hand.yaml", 3,
    )  # fmt: skip
    assert problem.path == path
    assert "default route" in problem.message
    route_config = result.resources[types.ROUTE]["9080"]
    (vhost,) = [v for v in route_config.virtual_hosts if v.name == f"{REVIEWS}:9080"]
    assert [r.name for r in vhost.routes] == ["default"]


def load_objects_problem(res: Resource) -> str:
    """The path of the first error the loader finds in ``res``'s manifest."""
    with pytest.raises(ConfigError) as info:
        load_objects([res.manifest()])
    return info.value.errors()[0].path


def test_a_hand_built_destination_rule_meets_the_loaders_checker() -> None:
    # MUTUAL without its files: the cluster builder no longer checks it; the loader's checker
    # refuses it, and the cluster keeps Istio's defaults.
    tls = {"mode": "MUTUAL", "caCertificates": "/ca.pem"}
    dr = _by_hand("DestinationRule", {"host": "reviews", "trafficPolicy": {"tls": tls}})
    result = _translate(_with(dr))
    errors = [p for p in result.problems if p.severity == "error"]
    assert {(p.kind, p.path) for p in errors} == {
        ("DestinationRule", "spec.trafficPolicy.tls.clientCertificate")
    }
    assert all("default settings" in p.message for p in errors)
    cluster = result.resources[types.CLUSTER][f"outbound|9080||{REVIEWS}"]
    assert not cluster.transport_socket.typed_config.value.count(b"/ca.pem")
