"""PodNetwork: pods as network namespaces on a private bridge, reachable by name, and
nothing left behind afterwards (also when the test fails half way)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.capture._programs import connect, start_listener

from meshcore.capture import CaptureError
from meshcore.capture.pods import NETNS_ETC, PodNetwork, available

UNAVAILABLE = available()
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"no network namespaces: {UNAVAILABLE}"
)


def namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          timeout=30, check=True).stdout  # fmt: skip


def host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30,
                         check=True).stdout  # fmt: skip
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_two_pods_reach_each_other_by_name() -> None:
    links_before = host_links()
    with PodNetwork() as net:
        a, b = net.add_pod("ratings"), net.add_pod("reviews")
        vip = net.add_service("productpage")
        assert a.ip == "198.18.0.2"
        assert b.ip == "198.18.0.3"
        assert vip == "198.19.0.10"
        # The host sees no new interface: the bridge lives in a namespace of its own.
        assert not (host_links() - links_before) & {"br0", "p2", "p3", "eth0"}
        hosts = (NETNS_ETC / a.netns / "hosts").read_text()
        assert "198.18.0.3\treviews" in hosts
        assert "198.19.0.10\tproductpage" in hosts
        start_listener(a, "ratings", "0.0.0.0", 9080)
        start_listener(b, "reviews", "0.0.0.0", 9080)
        assert connect(b, "ratings", 9080) == "ratings 198.18.0.2:9080"
        assert connect(a, "reviews", 9080) == "reviews 198.18.0.3:9080"
        names = [a.netns, b.netns, net.bridge_netns]
    listing = namespaces()
    for name in names:
        assert name not in listing
        assert not Path(NETNS_ETC / name).exists()


def fail_half_way(net: PodNetwork) -> None:
    with net:
        pod = net.add_pod("app")
        start_listener(pod, "app", "0.0.0.0", 9080)
        assert pod.netns in namespaces()
        raise RuntimeError("boom")


def test_torn_down_when_the_test_fails_half_way() -> None:
    net = PodNetwork()
    with pytest.raises(RuntimeError, match="boom"):
        fail_half_way(net)
    assert net.prefix not in namespaces()
    assert not (NETNS_ETC / net.pods["app"].netns).exists()
    assert net.pods["app"]._procs == []  # the listener was stopped
    net.close()  # twice is harmless


def test_bad_names_are_refused() -> None:
    with PodNetwork() as net:
        net.add_pod("app")
        for bad in ("app", "a b", "../x", ""):
            with pytest.raises(CaptureError, match="pod name"):
                net.add_pod(bad)
        with pytest.raises(CaptureError, match="service name"):
            net.add_service("app")
