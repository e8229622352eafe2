"""meshcore analyze: each analyzer on a small mesh, the route-table analyses against the
compiled table's own decisions, and the command's exit codes and JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore._core.route import RouteTable
from meshcore.tools.analyze import analyze
from meshcore.tools.shadow import compiled_routes, covers, shadowed
from tests._cli import main

from .conftest import EXAMPLES

MakeDir = Callable[[str], Path]


def codes(path: Path) -> set[tuple[str, str, str]]:
    return {(m.code, m.name, m.path) for m in analyze([str(path)]).messages}


def test_examples_are_clean() -> None:
    assert analyze([str(EXAMPLES)]).messages == ()


def test_references(mesh_dir: MakeDir) -> None:
    d = mesh_dir("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x, namespace: default, annotations: {networking.istio.io/bogus: "1"}}
spec:
  hosts: [x.example.com]
  gateways: [mesh, nogw]
  http:
  - route: [{destination: {host: ratings, subset: v9}, weight: 50}, {destination: {host: nothere}, weight: 50}]
""")
    found = codes(d)
    assert ("IST0101", "x", "spec.gateways[1]") in found
    assert ("IST0101", "x", "spec.http[0].route[0].destination.subset") in found
    assert ("IST0101", "x", "spec.http[0].route[1].destination.host") in found
    assert ("IST0108", "x", "metadata.annotations.networking.istio.io/bogus") in found


def test_conflicting_virtual_services_and_unreachable_subsets(mesh_dir: MakeDir) -> None:
    # reviews2 sorts first (its file does not, but Istio keeps the oldest: here the first
    # loaded); either way both are reported, and whichever wins, one side's subsets are dead.
    d = mesh_dir("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews2, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
""")
    found = codes(d)
    assert ("IST0109", "reviews", "") in found
    assert ("IST0109", "reviews2", "") in found


def test_subset_selecting_nothing_and_mtls_conflict(mesh_dir: MakeDir) -> None:
    d = mesh_dir(
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy: {tls: {mode: DISABLE}}
  subsets:
  - {name: v7, labels: {version: v7}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
""".replace("name: ratings, namespace", "name: ratings-extra, namespace")
    )
    found = codes(d)
    assert ("IST0173", "ratings-extra", "spec.subsets[0]") in found
    assert ("IST0113", "ratings-extra", "spec.trafficPolicy.tls.mode") in found


def test_authorization_policies(mesh_dir: MakeDir) -> None:
    d = mesh_dir("""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nobody, namespace: default}
spec:
  selector: {matchLabels: {app: nosuchapp}}
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wrong-port, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules:
  - to: [{operation: {ports: ["1234"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nothing, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
""")
    found = codes(d)
    assert ("IST0127", "nobody", "spec.selector") in found
    assert ("MC0003", "wrong-port", "spec.rules") in found
    assert ("MC0004", "nothing", "spec.rules") in found


SHADOWING = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - name: api
    match: [{uri: {prefix: /api}}]
    route: [{destination: {host: ratings}}]
  - name: api-v2
    match: [{uri: {prefix: /api/v2}, headers: {x-v: {exact: "2"}}}]
    route: [{destination: {host: ratings}}]
  - name: api-exact-header
    match: [{uri: {exact: /apix}, headers: {x-v: {exact: "2"}}}]
    route: [{destination: {host: ratings}}]
  - name: other
    match: [{uri: {prefix: /other}, headers: {x-v: {exact: "2"}}}]
    route: [{destination: {host: ratings}}]
  - name: other-more
    match: [{uri: {exact: /other/1}}]
    route: [{destination: {host: ratings}}]
  - name: rest
    route: [{destination: {host: ratings}}]
"""


def test_shadowed_routes(tmp_path: Path) -> None:
    for f in ("services.yaml", "workloads.yaml"):
        (tmp_path / f).write_text((EXAMPLES / f).read_text())
    (tmp_path / "vs.yaml").write_text(SHADOWING)
    found = {(m.code, m.path) for m in analyze([str(tmp_path)]).messages}
    # /api covers /api/v2 (whatever the headers) and /apix; "other" has a header condition,
    # so it does not cover /other/1 (a request without x-v reaches other-more).
    assert found == {("IST0130", "spec.http[1]"), ("IST0130", "spec.http[2]")}


def _route(match: str) -> rc.Route:
    r = rc.Route(name="r")
    from google.protobuf import text_format

    text_format.Parse(match, r.match)
    r.route.cluster = "c"
    return r


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ('prefix: "/"', 'safe_regex {regex: ".*"}', True),
        ('prefix: "/a"', 'path: "/ab"', True),
        ('prefix: "/ab"', 'path: "/a"', False),
        ('path: "/a"', 'path: "/a"', True),
        ('path: "/a"', 'prefix: "/a"', False),
        ('path_separated_prefix: "/a"', 'prefix: "/ab"', False),
        ('path_separated_prefix: "/a"', 'prefix: "/a/b"', True),
        ('path_separated_prefix: "/a"', 'path: "/a"', True),
        (
            'prefix: "/a" case_sensitive {value: false}',
            'prefix: "/A/b" case_sensitive {value: false}',
            True,
        ),
        ('prefix: "/a" case_sensitive {value: false}', 'prefix: "/A/b"', False),
        ('prefix: "/a" runtime_fraction {default_value {numerator: 50}}', 'path: "/a"', False),
        ('prefix: "/a" headers {name: "x" present_match: true}', 'path: "/a"', False),
        (
            'prefix: "/a" headers {name: "x" present_match: true}',
            'path: "/a/b" headers {name: "x" present_match: true}',
            True,
        ),
        ('prefix: "/a" query_parameters {name: "q" present_match: true}', 'path: "/a"', False),
    ],
)
def test_covers(a: str, b: str, expected: bool) -> None:
    assert covers(_route(a), _route(b)) is expected


def test_shadowed_routes_are_never_chosen_by_the_compiled_table() -> None:
    """A witness request for each shadowed route (its path, its exact headers) is routed by the
    compiled table to an earlier route: what analyze reports is what the table does."""
    config = route_pb2.RouteConfiguration(name="t")
    vh = config.virtual_hosts.add(name="vh", domains=["*"])
    for i, m in enumerate(['prefix: "/a"', 'path: "/a/b"', 'path_separated_prefix: "/c"',
                           'prefix: "/c/d" headers {name: "x" string_match {exact: "1"}}',
                           'path: "/c"']):  # fmt: skip
        r = _route(m)
        r.name = f"r{i}"
        vh.routes.append(r)
    found = shadowed(compiled_routes(config))
    assert [(s.route.route.name, s.by.route.name) for s in found] == [
        ("r1", "r0"),
        ("r3", "r2"),
        ("r4", "r2"),
    ]
    table = RouteTable.from_proto(config)
    for s in found:
        match = s.route.route.match
        path = getattr(match, match.WhichOneof("path_specifier"))
        headers = [(h.name, h.string_match.exact) for h in match.headers]
        got = table.route("h", path, "GET", headers)
        assert got is not None
        assert got.name == s.by.route.name


def test_cli_exit_codes_and_json(mesh_dir: MakeDir, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(EXAMPLES)]) == 0
    assert "No validation issues" in capsys.readouterr().out
    d = mesh_dir("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x, namespace: default}
spec:
  hosts: [x.example.com]
  http: [{route: [{destination: {host: nothere}}]}]
""")
    assert main(["analyze", str(d), "-o", "json"]) == 79
    data = json.loads(capsys.readouterr().out)
    assert data == [{
        "code": "IST0101", "level": "Error", "name": "ReferencedResourceNotFound",
        "kind": "VirtualService", "namespace": "default", "resource_name": "x",
        "file": str(d / "zz-extra.yaml"), "line": 2,
        "path": "spec.http[0].route[0].destination.host",
        "message": 'Referenced host not found: "nothere"',
    }]  # fmt: skip
    assert main(["analyze", str(d), "-S", "IST0101=VirtualService x.default"]) == 0
    assert main(["analyze", str(d), "--failure-threshold", "Error", "-S", "IST0101=*"]) == 0
    assert main(["analyze", str(d), "-S", "bad"]) == 2
    assert main(["analyze", "--store", "etcd://127.0.0.1:2379"]) == 2


PATHS = ["/a", "/a/b", "/ab", "/a/b/c", "/b"]


@st.composite
def route_lists(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(2, 6))):
        kind = draw(st.sampled_from(["prefix", "path", "path_separated_prefix"]))
        m = f'{kind}: "{draw(st.sampled_from(PATHS))}"'
        if draw(st.booleans()):
            m += f' headers {{name: "x" string_match {{exact: "{draw(st.sampled_from("12"))}"}}}}'
        out.append(m)
    return out


@settings(max_examples=200, deadline=None)
@given(route_lists())
def test_what_is_reported_shadowed_is_never_routed_to(matches: list[str]) -> None:
    """Property: for every route reported shadowed, requests it matches (its own path, below
    it, with its own headers) are routed by the compiled table to an earlier route."""
    config = route_pb2.RouteConfiguration(name="t")
    vh = config.virtual_hosts.add(name="vh", domains=["*"])
    for i, m in enumerate(matches):
        r = _route(m)
        r.name = f"r{i}"
        vh.routes.append(r)
    table = RouteTable.from_proto(config)
    for s in shadowed(compiled_routes(config)):
        match = s.route.route.match
        kind = match.WhichOneof("path_specifier")
        value = getattr(match, kind)
        paths = [value] if kind == "path" else [value, value + "/z"]
        headers = [(h.name, h.string_match.exact) for h in match.headers]
        for path in paths:
            got = table.route("h", path, "GET", headers)
            assert got is not None
            assert got.route_index < s.route.index, (matches, s, path)


def test_hosts_of_wildcard_service_entries_are_known(mesh_dir: MakeDir) -> None:
    d = mesh_dir("""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example, namespace: default}
spec:
  hosts: ["*.example.com"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: default}
spec:
  host: api.example.com
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: other, namespace: default}
spec:
  host: api.example.org
""")
    found = {(m.code, m.name) for m in analyze([str(d)]).messages}
    assert ("IST0101", "other") in found
    assert ("IST0101", "api") not in found
