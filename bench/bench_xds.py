"""xDS snapshots in the Rust core: one endpoint change pushed to a fleet, and memory per proxy.

Fleet: every proxy sees all clusters and endpoints of the mesh (the worst case: no sidecar
scoping) plus a listener of its own. Peer in the same run: the straightforward Python design,
one dict per proxy per type, copied on change (what a control plane without structural
sharing does).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2

from meshcore._core.xds import Fleet, ResourceStore, Snapshot
from meshcore.xds import types


def cluster(name: str) -> bytes:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    c.connect_timeout.seconds = 1
    c.eds_cluster_config.eds_config.ads.SetInParent()
    return c.SerializeToString(deterministic=True)


def cla(name: str, seed: int, endpoints: int = 5) -> bytes:
    a = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    group = a.endpoints.add()
    for j in range(endpoints):
        addr = group.lb_endpoints.add().endpoint.address.socket_address
        addr.address = f"10.{(seed >> 8) & 255}.{seed & 255}.{j}"
        addr.port_value = 8080
    return a.SerializeToString(deterministic=True)


def listener(i: int) -> bytes:
    lst = listener_pb2.Listener(name="virtualInbound")
    lst.address.socket_address.address = f"127.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    lst.address.socket_address.port_value = 15006
    return lst.SerializeToString(deterministic=True)


def names(services: int) -> list[str]:
    return [f"outbound|8080||svc{i}.ns{i % 10}.svc.cluster.local" for i in range(services)]


def fleet(services: int, proxies: int) -> tuple[ResourceStore, list[Snapshot]]:
    store = ResourceStore()
    ns = names(services)
    base = store.snapshot({
        types.CLUSTER: {n: cluster(n) for n in ns},
        types.ENDPOINT: {n: cla(n, i) for i, n in enumerate(ns)},
    })  # fmt: skip
    snaps = [
        base.with_changes(types.LISTENER, {"virtualInbound": listener(i)})[0]
        for i in range(proxies)
    ]
    return store, snaps


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("services", [1_000, 10_000])
def test_one_endpoint_change_for_5000_proxies(benchmark: Any, services: int) -> None:
    store, snaps = fleet(services, 5_000)
    proxies = Fleet(store)
    for i, snap in enumerate(snaps):
        proxies.set(f"sidecar~10.0.{i >> 8}.{i & 255}~p{i}.ns~ns.svc.cluster.local", snap)
    target = names(services)[services // 2]
    bodies = [cla(target, 90000 + r) for r in range(20)]
    rounds = iter(bodies)

    def push() -> int:
        # Which proxies must be pushed, with their new snapshots in place.
        return len(proxies.apply(types.ENDPOINT, {target: next(rounds)}))

    assert benchmark.pedantic(push, rounds=15, iterations=1) == 5_000
    benchmark.extra_info["services"] = services


def test_peer_python_dicts_one_endpoint_change(benchmark: Any) -> None:
    services = 1_000
    ns = names(services)
    base_c = {n: cluster(n) for n in ns}
    base_e = {n: cla(n, i) for i, n in enumerate(ns)}
    fleet_py = [{types.CLUSTER: dict(base_c), types.ENDPOINT: dict(base_e)} for _ in range(5_000)]
    target = ns[services // 2]
    body = cla(target, 99999)

    def push() -> int:
        pushes = 0
        for snap in fleet_py:
            new = dict(snap[types.ENDPOINT])  # copy-on-write of the type's map
            if new.get(target) != body:
                new[target] = body
                pushes += 1
        return pushes

    assert benchmark.pedantic(push, rounds=3, iterations=1) == 5_000


MEMORY_PROBE = """
import gc, os, sys
sys.path.insert(0, {bench!r})
from bench_xds import fleet, rss_bytes
gc.collect()
before = rss_bytes()
store, snaps = fleet(1_000, 1)
one = rss_bytes()
store2, snaps2 = fleet(1_000, 2_000)
after = rss_bytes()
print(one - before, after - one, len(store2))
"""


def test_memory_per_proxy() -> None:
    # A fresh interpreter: the numbers are not blurred by what earlier tests freed.
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE.format(bench=str(Path(__file__).parent))],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout.split()  # fmt: skip
    one_proxy, fleet_bytes, distinct = int(out[0]), int(out[1]), int(out[2])
    per_proxy = fleet_bytes / 2_000
    print(
        f"\nxDS memory: 1 proxy {one_proxy / 1e6:.1f} MB; 2,000 proxies {fleet_bytes / 1e6:.1f} MB, "
        f"{per_proxy / 1e3:.1f} KB per proxy ({distinct} distinct resources stored)"
    )
    assert per_proxy <= 100_000


def test_new_proxy_full_diff(benchmark: Any) -> None:
    _, snaps = fleet(1_000, 1)
    updated, removed = benchmark(snaps[0].diff, types.ENDPOINT, {}, None)
    assert len(updated) == 1_000
    assert removed == []
