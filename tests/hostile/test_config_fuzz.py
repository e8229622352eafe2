"""A bounded fuzz of the YAML reader and the validator (issue 11): realistic manifests with
hostile bytes spliced in, raw bytes, and numbers of every size in every numeric field.
Whatever comes in: ``meshcore validate`` exits 0 or 1 (never 70), every error names its file
and line, a file that is accepted holds every resource PyYAML's C loader reads from the same
bytes, and a configuration that validates translates without dropping anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcore.config import schema, validate, validate_object
from meshcore.xds.translate import generate, proxy_for_node
from tests._cli import main

MANIFESTS = [
    "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, labels: {app: reviews}}\n"
    "spec:\n  selector: {app: reviews}\n  ports:\n  - {name: http, port: 9080}\n",
    "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: reviews-1\n"
    "  namespace: default\nspec: {address: 10.0.0.1, labels: {app: reviews}}\n",
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n"
    "spec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /v2}}]\n"
    "    route: [{destination: {host: reviews, subset: v2}}]\n    timeout: 2s\n"
    "    retries: {attempts: 3, perTryTimeout: 500ms}\n"
    "  - route: [{destination: {host: reviews, subset: v1}}]\n",
    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\n"
    "spec:\n  host: reviews\n  trafficPolicy:\n    connectionPool: {tcp: {maxConnections: 100}}\n"
    "  subsets:\n  - name: v1\n    labels: {version: v1}\n  - name: v2\n"
    "    labels: {version: v2}\n",
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin}\n"
    "spec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n",
    '{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",\n'
    ' "metadata": {"name": "default"}, "spec": {"mtls": {"mode": "STRICT"}}}\n',
]

SPLICES = [
    b"\x00", b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1b", b"\x7f", "\x9f".encode(),
    "\ufffe".encode(), b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\t",
    b"\r", b"\r\n", b"\n", b"---\n", b"...\n", b"#", b"'", b'"', b"\\", b"&a ", b"*a", b"<<: ",
    b"[" * 200, b"{a: " * 200, b"- " * 200, b": ", b"- ", b"{", b"}", b"[", b"]", b",", b"?",
    b"9" * 400, b"1.0e+400", b".nan", b"-0", b"0x", b"1" * 30, b"99999999999h",
    b"metadata: {name: x}\n", b"kind: Service\n", b"\xe2\x80\xa8",
]  # fmt: skip

streams = st.lists(st.sampled_from(MANIFESTS), min_size=1, max_size=5).map(
    lambda docs: "---\n".join(docs).encode()
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(streams))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        choice = draw(st.integers(0, 2))
        if choice == 0:
            data[at:at] = draw(st.sampled_from(SPLICES))
        elif choice == 1:
            data[at : at + draw(st.integers(1, 20))] = b""
        else:
            data[at:at] = bytes(draw(st.binary(min_size=1, max_size=4)))
    return bytes(data)


class Unreadable(Exception):
    """PyYAML refused the bytes themselves (a character YAML forbids, an encoding error)."""


def _pyyaml(data: bytes) -> list[Any] | None:
    """The documents PyYAML's C loader reads from ``data``, or None when it refuses them;
    Unreadable when it refuses their characters."""
    try:
        return list(yaml.load_all(data, Loader=yaml.CSafeLoader))
    except yaml.reader.ReaderError as exc:
        raise Unreadable from exc
    except (yaml.YAMLError, ValueError, RecursionError, OverflowError):
        return None


def _resource_keys(docs: list[Any]) -> set[tuple[str, str, str]]:
    out = set()
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") not in schema.KINDS:
            continue
        # A kind of ours under another API group is another resource (the Gateway API's
        # Gateway; a mistyped group): ignored with a warning that names it, not dropped.
        api = doc.get("apiVersion")
        groups = {v.rpartition("/")[0] for v in schema.KINDS[doc["kind"]].api_versions}
        if not isinstance(api, str) or api.rpartition("/")[0] not in groups:
            continue
        meta = doc.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("name"), str):
            ns = meta.get("namespace")
            out.add((doc["kind"], ns if isinstance(ns, str) and ns else "default", meta["name"]))
    return out


def _check(data: bytes, tmp: Path) -> None:
    path = tmp / "mesh.yaml"
    path.write_bytes(data)
    report = validate([path])
    for p in report.errors:
        assert p.file == str(path), p
        assert p.line >= 1, p
    try:
        text = data.decode()
    except UnicodeDecodeError:
        pass
    else:  # the webhook's entry point, on the same text
        for p in validate_object(text, source="mesh.yaml"):
            assert p.severity == "warning" or p.line >= 1, p
    try:
        theirs = _pyyaml(data)
    except Unreadable:
        assert not report.ok, data  # read in part (the old reader stopped at a NUL)
        return
    if report.ok:
        assert report.model is not None
        ours = {r.key for r in report.model.resources}
        if theirs is not None:
            assert _resource_keys(theirs) <= ours, (data, theirs)


SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _fuzz(strategy: st.SearchStrategy[bytes], tmp: Path) -> None:
    files: list[Path] = []

    @SETTINGS
    @given(strategy)
    def one(data: bytes) -> None:
        where = tmp / str(len(files))
        where.mkdir()
        files.append(where / "mesh.yaml")
        _check(data, where)

    one()
    # `meshcore validate` as users run it, on every example's file: in one process (a start-up
    # per example would cost minutes), exit 0 or 1 (never 70), no traceback.
    assert main(["validate", "-o", "json", *map(str, files)]) in (0, 1)


def test_mutated_manifests(tmp_path: Path) -> None:
    _fuzz(mutated(), tmp_path)


def test_raw_bytes(tmp_path: Path) -> None:
    _fuzz(st.binary(max_size=600), tmp_path)


@pytest.mark.parametrize(
    "data", [m.encode() for m in MANIFESTS] + [b"---\n".join(m.encode() for m in MANIFESTS)]
)
def test_the_corpus_itself_is_valid_and_read_whole(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_bytes(data)
    report = validate([path])
    assert report.ok, [str(p) for p in report.problems]
    assert report.model is not None
    theirs = _pyyaml(data)
    assert theirs is not None
    assert {r.key for r in report.model.resources} == _resource_keys(theirs)


# --- numbers of every size, in every numeric field ---------------------------------------------

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, -(2**31) - 1, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e26", "1.0e+26", ".inf", "-.inf", ".nan", "0x7fffffffffffffffff"]),
)
durations = st.one_of(
    st.from_regex(r"\A[0-9]{1,25}(\.[0-9]{0,12})?(ns|us|ms|s|m|h)\Z"),
    st.sampled_from(["1" + "0" * 309 + "s", "2562047h47m16.854775807s", "2562048h", "0s"]),
)


def _scalar(value: Any) -> str:
    return (
        value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    )


@st.composite
def numeric_mesh(draw: st.DrawFn) -> str:
    """A small mesh with sane numbers and durations, but one (or none) drawn from anywhere."""
    slots = [
        *(("n", str(v)) for v in (9080, 9080, 9080, 10, 9080, 100, 3, 50, 100, 10, 3, 5, 30)),
        *(("d", v) for v in ("2s", "500ms", "1s", "1s", "60s", "10s")),
    ]
    k = draw(st.integers(-1, len(slots) - 1))
    values = [
        (_scalar(draw(numbers)) if kind == "n" else draw(durations)) if i == k else sane
        for i, (kind, sane) in enumerate(slots)
    ]
    (port, target, we_port, weight, dest_port, route_weight, attempts, fault_pct, mirror_pct,
     max_conn, pending, retries, ejection, timeout, per_try, delay, connect, idle, interval,
     ) = values  # fmt: skip
    return f"""apiVersion: v1
kind: Service
metadata: {{name: reviews}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: {port}, targetPort: {target}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-1}}
spec: {{address: 10.0.0.3, labels: {{app: reviews}}, ports: {{http: {we_port}}}, weight: {weight}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-1}}
spec: {{address: 10.0.0.2, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, port: {{number: {dest_port}}}}}, weight: {route_weight}}}]
    timeout: {timeout}
    retries: {{attempts: {attempts}, perTryTimeout: {per_try}}}
    fault: {{delay: {{fixedDelay: {delay}, percentage: {{value: {fault_pct}}}}}}}
    mirror: {{host: reviews}}
    mirrorPercentage: {{value: {mirror_pct}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: {max_conn}, connectTimeout: {connect}}}
      http: {{http1MaxPendingRequests: {pending}, maxRetries: {retries}, idleTimeout: {idle}}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: {interval}, maxEjectionPercent: {ejection}}}
"""


def test_numbers_are_validated_never_dropped_by_the_translator(tmp_path: Path) -> None:
    files: list[Path] = []

    @settings(max_examples=120, deadline=None)
    @given(numeric_mesh())
    def one(text: str) -> None:
        _numbers(text, tmp_path / str(len(files)), files)

    one()
    # `meshcore validate` on every example's file, in one process: exit 0 or 1, no traceback.
    assert main(["validate", *map(str, files)]) in (0, 1)


def _numbers(text: str, tmp: Path, files: list[Path]) -> None:
    tmp.mkdir()
    path = tmp / "mesh.yaml"
    path.write_text(text)
    files.append(path)
    report = validate([path])
    for p in report.errors:
        assert p.line >= 1, p
        assert p.path, p
    if report.model is None:
        assert report.errors
        return
    mesh = report.model
    proxy = proxy_for_node(mesh, "sidecar~10.0.0.2~web-1.default~default.svc.cluster.local")
    result = generate(mesh, proxy)
    errors = [str(p) for p in result.problems if p.severity == "error"]
    assert not errors, (text, errors)
