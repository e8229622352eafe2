"""Real Envoy behind Istio's rules in a pod namespace: the app dials a peer by name and never
learns of the sidecar; Envoy (UID 1337) gets the connection on 15001, finds the original
destination, and its own upstream connection leaves uncaptured. Inbound the same through
15006, Envoy connecting to the app from 127.0.0.6 as Istio's InboundPassthroughCluster does.
With Envoy gone, captured connections are refused, never sent around it.

A static Envoy config stands in for the translator's capture layout (issue 15's next part).
"""

from __future__ import annotations

import json
import shutil
import stat as st
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.capture._programs import connect, start_listener
from tests.capture.test_capture_netns import SIDECAR_FLAGS, meshcore_iptables
from tests.envoy._sidecar import envoy_binary

from meshcore.capture.pods import Pod, PodNetwork, available

UNAVAILABLE = available()
pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no network namespaces: {UNAVAILABLE}"),
]

ORIGINAL_DST_FILTER = {
    "name": "envoy.filters.listener.original_dst",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
    },
}


def _listener(name: str, port: int, cluster: str) -> dict[str, object]:
    tcp_proxy = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    return {
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "listener_filters": [ORIGINAL_DST_FILTER],
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": tcp_proxy, "stat_prefix": cluster, "cluster": cluster},
        }]}],
    }  # fmt: skip


BOOTSTRAP = {
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
    "static_resources": {
        "listeners": [
            _listener("virtualOutbound", 15001, "PassthroughCluster"),
            _listener("virtualInbound", 15006, "InboundPassthroughCluster"),
        ],
        "clusters": [
            {
                "name": "PassthroughCluster",
                "type": "ORIGINAL_DST",
                "lb_policy": "CLUSTER_PROVIDED",
                "connect_timeout": "2s",
            },
            {
                "name": "InboundPassthroughCluster",
                "type": "ORIGINAL_DST",
                "lb_policy": "CLUSTER_PROVIDED",
                "connect_timeout": "2s",
                "upstream_bind_config": {
                    "source_address": {"address": "127.0.0.6", "port_value": 0}
                },
            },
        ],
    },
}

# Waits (bounded) for Envoy's admin /ready, or prints a stat's value.
ADMIN = r"""
import sys, time, urllib.request
what = sys.argv[1]
for _ in range(150):
    try:
        with urllib.request.urlopen("http://127.0.0.1:15000/" + what, timeout=2) as r:
            body = r.read().decode()
        print(body.strip())
        break
    except OSError:
        if what != "ready":
            raise
        time.sleep(0.1)
"""


def admin(pod: Pod, what: str) -> str:
    out = pod.run([sys.executable, "-c", ADMIN, what], capture_output=True, text=True)
    return str(out.stdout).strip()


def stat(pod: Pod, name: str) -> int:
    line = admin(pod, f"stats?filter=^{name}$")
    return int(line.split(": ")[1]) if line else -1


@pytest.fixture
def envoy_for_proxy() -> Iterator[str]:
    """Envoy's binary where UID 1337 can run it (a checkout under /root is out of its reach:
    then a copy in a world-readable temporary directory)."""
    path = Path(envoy_binary()).resolve()
    if all(d.stat().st_mode & st.S_IXOTH for d in path.parents) and path.stat().st_mode & 0o005:
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="mc-envoy-") as tmp:
        Path(tmp).chmod(0o755)
        copy = Path(tmp) / "envoy"
        shutil.copy(path, copy)
        copy.chmod(0o755)
        yield str(copy)


@pytest.fixture
def pods() -> Iterator[tuple[Pod, Pod]]:
    with PodNetwork() as net:
        yield net.add_pod("app"), net.add_pod("peer")


def test_app_calls_peer_by_name_through_envoy_unaware(
    pods: tuple[Pod, Pod], envoy_for_proxy: str
) -> None:
    app, peer = pods
    meshcore_iptables(app, *SIDECAR_FLAGS)
    envoy = app.popen([envoy_for_proxy,
                       "--config-yaml", json.dumps(BOOTSTRAP), "--disable-hot-restart",
                       "--concurrency", "1", "--log-level", "error"], uid=1337)  # fmt: skip
    assert admin(app, "ready") == "LIVE"
    status = Path(f"/proc/{envoy.pid}/status").read_text()
    assert "\nUid:\t1337\t" in status  # Envoy itself, as Istio's proxy user
    start_listener(peer, "peer", "0.0.0.0", 9080)
    start_listener(app, "app", "0.0.0.0", 8080)

    # Outbound: plain name, plain port; Envoy's passthrough took it.
    assert connect(app, "peer", 9080) == f"peer {peer.ip}:9080"
    assert stat(app, "cluster.PassthroughCluster.upstream_cx_total") == 1
    # Inbound: the peer dials the app; Envoy's 15006 hands it on from 127.0.0.6.
    assert connect(peer, "app", 8080) == f"app {app.ip}:8080"
    assert stat(app, "cluster.InboundPassthroughCluster.upstream_cx_total") == 1
    assert stat(app, "cluster.PassthroughCluster.upstream_cx_total") == 1  # no loop

    # The sidecar dies, the rules stay: connections are refused, not sent around it.
    envoy.terminate()
    envoy.wait(timeout=10)
    assert connect(app, "peer", 9080).startswith("error ConnectionRefusedError")
    assert connect(peer, "app", 8080).startswith("error ConnectionRefusedError")
