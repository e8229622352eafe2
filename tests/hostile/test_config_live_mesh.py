"""Hostile config files dropped into a running mesh (issue 11): ``meshcore serve`` (the CLI,
with its CA) and real Envoy sidecars run by ``meshcore agent``, traffic from web to reviews
through both sidecars (mTLS), a DENY policy on /admin. Each hostile file (a NUL byte ahead of
the DENY policy, 100 KB of nesting, a file over the size limit, overflowing numbers) is
written into the config directory in turn: the control plane stays up, reports the file and
line in /debug/syncz, and keeps serving the last good configuration: the sidecars' config
is unchanged and so is every answer. Then the file is taken back and the report clears."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from meshcore.config.loader import MAX_FILE_BYTES
from tests.envoy._sidecar import (
    free_ports,
    http_get,
    running_agent,
    serve_echo,
    serve_process,
    wait_for,
)
from tests.hostile._config_helpers import CASES_BY_NAME, DENY

pytestmark = pytest.mark.envoy

MESH = """apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web-1}}
spec: {{address: 127.0.90.1, labels: {{app: web}}, serviceAccount: web}}
---
apiVersion: v1
kind: Service
metadata: {{name: reviews}}
spec:
  selector: {{app: reviews}}
  ports: [{{name: http, port: {port}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-1}}
spec: {{address: 127.0.91.1, labels: {{app: reviews}}, serviceAccount: reviews}}
"""

ROUTES = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    timeout: 5s
    retries: {attempts: 2, perTryTimeout: 2s}
"""


def _node(name: str, address: str) -> str:
    return f"sidecar~{address}~{name}.default~default.svc.cluster.local"


def _spiffe(sa: str) -> str:
    return f"spiffe://cluster.local/ns/default/sa/{sa}"


def _syncz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/syncz", timeout=10) as r:
        found: dict[str, Any] = json.loads(r.read())
        return found


def _errors(port: int) -> list[dict[str, Any]]:
    return [p for p in _syncz(port)["config_problems"] if p["severity"] == "error"]


def _served(admin: int) -> str:
    """A digest of the sidecar's dynamic config (what the control plane sent), timestamps
    left out."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=10) as r:
        dump = json.loads(r.read())

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "last_updated"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    dynamic = [strip(c) for c in dump["configs"] if "Bootstrap" not in c.get("@type", "")]
    return hashlib.sha256(json.dumps(dynamic, sort_keys=True).encode()).hexdigest()


def _oversize(path: Path) -> None:
    with path.open("wb") as f:  # sparse: no time spent writing it
        f.truncate(MAX_FILE_BYTES + 1)


def _overflow_routes(extra: str) -> bytes:
    return ROUTES.replace("    timeout: 5s\n", f"    timeout: 5s\n    {extra}\n").encode()


# (name, file it goes to, its bytes or a writer, the line /debug/syncz must report (0: any))
HOSTILE: list[tuple[str, str, Any, int]] = [
    # The old reader stopped at the NUL: the DENY policy vanished and /admin answered 200.
    ("nul", "policy.yaml", b"# policies\n# \x00\n---\n" + DENY.encode(), 2),
    ("deep-block-seq", "deep.yaml", CASES_BY_NAME["deep-block-seq"].data, 0),
    ("deep-flow-map", "deep.yaml", CASES_BY_NAME["deep-flow-map"].data, 0),
    ("oversize", "big.yaml", _oversize, 1),
    ("percentage-310-digits", "routes.yaml", _overflow_routes(f"mirrorPercentage: {{value: 1{'0' * 309}}}"), 9),
    ("attempts-10^26", "routes.yaml", ROUTES.replace("attempts: 2", f"attempts: {10**26}").encode(), 9),
    ("timeout-310-digits", "routes.yaml", ROUTES.replace("timeout: 5s", f"timeout: 1{'0' * 309}s").encode(), 8),
]  # fmt: skip


def test_hostile_files_leave_a_live_mesh_unchanged(tmp_path: Path) -> None:
    port, xds, metrics, ca, ca_mtls = free_ports(5)
    config = tmp_path / "config"
    config.mkdir()
    originals = {
        "mesh.yaml": MESH.format(port=port).encode(),
        "routes.yaml": ROUTES.encode(),
        "policy.yaml": DENY.encode(),
    }
    for name, data in originals.items():
        (config / name).write_bytes(data)
    ports = {"xds": xds, "metrics": metrics, "ca": ca, "ca_mtls": ca_mtls}
    tokens = {sa: f"{sa}-token-0123456789abcdef" for sa in ("web", "reviews")}
    (tmp_path / "tokens").write_text("".join(f"{t} {_spiffe(sa)}\n" for sa, t in tokens.items()))
    backend = serve_echo("127.0.91.2", port, "reviews")
    with ExitStack() as stack:
        stack.callback(backend.server_close)
        stack.callback(backend.shutdown)
        cp = stack.enter_context(serve_process(tmp_path, config, ports))
        common: dict[str, Any] = {
            "xds": xds, "ca": ca, "ca_mtls": ca_mtls,
            "ca_root": tmp_path / "state" / "root-cert.pem",
        }  # fmt: skip
        reviews_admin = stack.enter_context(running_agent(
            tmp_path, "reviews-1", node_id=_node("reviews-1", "127.0.91.1"),
            identity=_spiffe("reviews"), token=tokens["reviews"],
            metadata={"MESHCORE_APP_ADDRESS": "127.0.91.2",
                      "MESHCORE_OUTBOUND_ADDRESS": "127.0.91.3"}, **common,
        ))  # fmt: skip
        web_admin = stack.enter_context(running_agent(
            tmp_path, "web-1", node_id=_node("web-1", "127.0.90.1"), identity=_spiffe("web"),
            token=tokens["web"], metadata={"MESHCORE_OUTBOUND_ADDRESS": "127.0.90.3"}, **common,
        ))  # fmt: skip
        url = f"http://127.0.90.3:{port}"

        def traffic() -> tuple[int, int]:
            return http_get(f"{url}/", "reviews")[0], http_get(f"{url}/admin", "reviews")[0]

        wait_for(lambda: traffic() == (200, 403), "traffic through the sidecars", timeout=60)
        wait_for(lambda: not _errors(metrics), "a clean start")
        served = (_served(web_admin), _served(reviews_admin))
        for name, file, content, line in HOSTILE:
            target = config / file
            if callable(content):
                content(target)
            else:
                staged = tmp_path / f"staged-{file}"
                staged.write_bytes(content)
                os.replace(staged, target)  # all at once: never half a file

            def reported(target: Path = target) -> list[dict[str, Any]]:
                return [p for p in _errors(metrics) if p["file"] == str(target)]

            wait_for(reported, f"{name} reported in /debug/syncz", timeout=30)
            problems = reported()
            assert all(p["line"] >= 1 for p in problems), (name, problems)
            if line:
                assert line in [p["line"] for p in problems], (name, problems)
            assert cp.poll() is None, name  # still running
            for _ in range(5):
                assert traffic() == (200, 403), name
            assert (_served(web_admin), _served(reviews_admin)) == served, name
            # Taken back: the report clears, and still nothing was pushed.
            if file in originals:
                staged = tmp_path / f"staged-{file}"
                staged.write_bytes(originals[file])
                os.replace(staged, target)
            else:
                target.unlink()
            wait_for(lambda: not _errors(metrics), f"{name} taken back")
            assert traffic() == (200, 403), name
        assert (_served(web_admin), _served(reviews_admin)) == served
