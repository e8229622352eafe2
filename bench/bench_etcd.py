"""The etcd config store (issue 16), measured with a real etcd on 127.0.0.1:

- watch latency: an etcd write until a replica's view holds it, and until it serves the mesh
  built from it (the control plane's 100 ms debounce included, as istiod's);
- failover: a fleet of delta ADS clients on replica A, A stopped: the time until every client
  is on replica B, and what B sends them (resources, bytes: 0 when versions agree).

``make test`` runs a quick form (few writes, a small fleet); ``make bench`` the measured one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.envoy._sidecar import control_plane_in_thread, free_ports
from tests.store._etcd import EtcdCluster, etcd_cluster, replica_process

from fleet_command import client_kind, fleet_command
from meshcore.config import load
from meshcore.store import parse_store_url
from meshcore.store.apply import commit, read_items
from meshcore.store.etcd import EtcdClient
from meshgen import write_mesh


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    # A whole generated mesh is applied as one transaction: etcd's limits raised for it.
    with etcd_cluster(
        Path(tmp_path_factory.mktemp("etcd")), 1,
        "--max-txn-ops", "100000", "--max-request-bytes", str(64 * 2**20),
    ) as c:  # fmt: skip
        yield c


def quick(request: pytest.FixtureRequest) -> bool:
    """make test's form (--benchmark-disable, unless --benchmark-enable overrides it)."""
    opt = request.config.getoption
    return bool(opt("benchmark_disable")) and not opt("benchmark_enable")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def route(name: str, weight: int) -> bytes:
    return json.dumps({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": [name], "http": [{"route": [{"destination": {"host": name}, "weight": weight}]}]},
    }).encode()  # fmt: skip


def test_watch_latency(etcd: EtcdCluster, request: pytest.FixtureRequest) -> None:
    writes = 10 if quick(request) else 300
    url = parse_store_url(etcd.url("/bench-watch"))
    client = EtcdClient(etcd.endpoints)
    key = url.key("networking.istio.io", "VirtualService", "default", "r")
    client.put(key, route("r", 1))
    xds, mon = free_ports(2)
    to_view: list[float] = []
    to_served: list[float] = []
    with control_plane_in_thread([], store=url, xds_port=xds, metrics_port=mon) as (_, server):
        source = server.store
        for i in range(writes):
            t0 = time.perf_counter()
            revision = client.put(key, route("r", 2 + i))
            while source.revision < revision:
                time.sleep(0.0002)
            t1 = time.perf_counter()
            while source.served_revision < revision:
                time.sleep(0.0005)
            to_view.append(t1 - t0)
            to_served.append(time.perf_counter() - t0)
            time.sleep(0.15)  # past the debounce: each write measured on its own
    client.close()
    print(
        f"\netcd watch latency over {writes} writes: write -> replica's view p50 "
        f"{percentile(to_view, 0.5) * 1e3:.1f} ms, p99 {percentile(to_view, 0.99) * 1e3:.1f} ms; "
        f"write -> mesh served (100 ms debounce included) p50 "
        f"{percentile(to_served, 0.5) * 1e3:.0f} ms, p99 {percentile(to_served, 0.99) * 1e3:.0f} ms"
    )
    assert percentile(to_served, 0.99) < 5.0


def test_failover_cost(etcd: EtcdCluster, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    proxies = 20 if quick(request) else 1000
    config = tmp_path / "mesh"
    services = 20 if quick(request) else 100
    write_mesh(config, services=services, workloads_per_service=10, policies=services // 2)
    url = parse_store_url(etcd.url("/bench-failover"))
    client = EtcdClient(etcd.endpoints, timeout=60)
    items, problems = read_items([str(config)], url)
    assert not [p for p in problems if p.severity == "error"]
    commit(client, items)
    client.close()
    mesh = load(config)
    lines = []
    for i, w in enumerate(mesh.workload_entries[:proxies]):
        node = f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
        clusters = [
            f"outbound|8080||svc{(i * 7 + k) % services}.ns{((i * 7 + k) % services) % 10}"
            ".svc.cluster.local"
            for k in range(5)
        ]
        lines.append(" ".join([node, *clusters]))
    assert len(lines) == proxies
    nodes = tmp_path / "nodes.txt"
    nodes.write_text("\n".join(lines) + "\n")
    ports = free_ports(4)
    with (
        control_plane_in_thread([], store=url, xds_port=ports[0], metrics_port=ports[1]) as (la, a),
        control_plane_in_thread([], store=url, xds_port=ports[2], metrics_port=ports[3]) as (_, b),
    ):  # fmt: skip
        fleet = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "xds_delta_fleet.py"),
             f"127.0.0.1:{ports[0]},127.0.0.1:{ports[2]}", str(nodes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert fleet.stdout is not None
        assert fleet.stdin is not None
        try:
            assert fleet.stdout.readline().strip() == b"ready"
            assert len(b.ads.proxies) == 0
            sent0 = sum(b.ads.metrics.resources_sent.values())
            bytes0 = sum(h.total for h in b.ads.metrics.config_size.values())
            resent: list[int] = []
            lines_seen: list[bytes] = []

            def read() -> None:
                assert fleet.stdout is not None
                for raw in fleet.stdout:
                    lines_seen.append(raw)
                    if raw.startswith(b"resent"):
                        resent.append(int(raw.split()[2]))

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            t0 = time.monotonic()
            la.run(a.close(), 30)  # replica A goes away: its streams end
            while len(b.ads.proxies) < proxies and time.monotonic() - t0 < 120:
                time.sleep(0.01)
            took = time.monotonic() - t0
            assert len(b.ads.proxies) == proxies
            time.sleep(0.5)  # anything B would still send
            sent = sum(b.ads.metrics.resources_sent.values()) - sent0
            sent_bytes = sum(h.total for h in b.ads.metrics.config_size.values()) - bytes0
        finally:
            fleet.stdin.close()
            fleet.wait(30)
            fleet.stdout.close()
    print(
        f"\nfailover: {proxies} delta clients moved from replica A (stopped, 1 s grace for its "
        f"streams) to B in {took * 1e3:.0f} ms; B sent them {sent} resources ({sent_bytes:.0f} bytes), "
        f"{sum(resent)} seen by the clients"
    )
    assert sent == 0
    assert sum(resent) == 0


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_ready(fleet: subprocess.Popen[bytes]) -> None:
    """The fleet client's ``ready N lost M`` line; fails on any lost stream."""
    assert fleet.stdout is not None
    line = fleet.stdout.readline()
    lost = []
    while line.startswith(b"lost "):
        lost.append(line)
        line = fleet.stdout.readline()
    assert line.startswith(b"ready "), line
    assert not lost, f"streams lost: {line!r} {lost[:5]}"
    assert line.split()[-1] == b"0", f"streams lost: {line!r}"


def test_fleet_over_three_replicas(
    etcd: EtcdCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A fleet of SotW proxies (``xds_fleet_client.py``, one process per replica) spread over
    three ``meshcore serve`` processes on the store; one endpoint change written to etcd in one
    transaction (``meshcore apply``'s): the time until each proxy has it, and the replicas'
    memory per proxy (averaged over all, and marginal: the second half of each replica's
    proxies, connected after the first). ``MESHCORE_ETCD_FLEET`` sets the size of the long
    form (10,000 in BENCHMARKS.md)."""
    proxies = 30 if quick(request) else int(os.environ.get("MESHCORE_ETCD_FLEET", "3000"))
    services = 30 if quick(request) else 1000
    config = tmp_path / "mesh"
    per_service = max(5, -(-proxies // services))  # one workload per proxy at least
    write_mesh(config, services=services, workloads_per_service=per_service, policies=services // 2)
    url = parse_store_url(etcd.url("/bench-fleet"))
    client = EtcdClient(etcd.endpoints, timeout=120)
    items, _ = read_items([str(config)], url)
    commit(client, items)
    mesh = load(config)
    target = mesh.service("svc0", "ns0")
    assert target is not None
    watched = f"outbound|8080||{target.hostname}"
    lines = []
    for i, w in enumerate(mesh.workload_entries[:proxies]):
        others = [
            f"outbound|8080||svc{(i * 7 + k) % services}.ns{((i * 7 + k) % services) % 10}"
            ".svc.cluster.local"
            for k in range(1, 10)
        ]
        node = f"sidecar~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.cluster.local"
        lines.append(" ".join([node, watched, *others]))
    assert len(lines) == proxies
    (tmp_path / "tokens").write_text("")
    replicas = [
        dict(zip(("xds", "metrics", "ca", "ca_mtls"), free_ports(4), strict=True)) for _ in range(3)
    ]
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(replica_process(tmp_path, str(url), ports, str(i), ready=300))
            for i, ports in enumerate(replicas)
        ]
        commands = []
        for i, ports in enumerate(replicas):
            chunk = tmp_path / f"nodes{i}.txt"
            chunk.write_text("\n".join(lines[i::3]) + "\n")
            commands.append(
                fleet_command(
                    f"127.0.0.1:{ports['xds']}", chunk, i * proxies, 2, release=not quick(request)
                )
            )
        rss0 = [rss_of(p.pid) for p in procs]
        fleets = []
        t0 = time.monotonic()
        for command in commands:
            fleet = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            stack.callback(fleet.wait, 60)
            stack.callback(
                lambda f=fleet: (f.stdin and f.stdin.close(), f.stdout and f.stdout.close())
            )
            fleets.append(fleet)
        for fleet in fleets:  # first halves
            read_ready(fleet)
        rss1 = [rss_of(p.pid) for p in procs]
        for fleet in fleets:
            assert fleet.stdin is not None
            fleet.stdin.write(b"next\n")
            fleet.stdin.flush()
        for fleet in fleets:  # second halves
            read_ready(fleet)
        cold = time.monotonic() - t0
        rss2 = [rss_of(p.pid) for p in procs]
        share = [len(lines[i::3]) for i in range(3)]
        kb = [(b - a) / n / 1e3 for a, b, n in zip(rss0, rss2, share, strict=True)]
        marginal = [
            (b - a) / (n - -(-n // 2)) / 1e3 for a, b, n in zip(rss1, rss2, share, strict=True)
        ]
        # One endpoint of svc0 moves: written to etcd in one transaction.
        # (the first WorkloadEntry written is svc0's first, as in bench_xds_fleet.py)
        wl = next(i for i in items if i.kind == "WorkloadEntry")
        value = json.loads(wl.value or b"{}")
        value["spec"]["address"] = "10.255.255.1"
        seen: dict[int, float] = {}
        lost: list[bytes] = []

        def collect(fleet: subprocess.Popen[bytes]) -> None:
            assert fleet.stdout is not None
            for raw in fleet.stdout:
                kind, _, rest = raw.partition(b" ")
                if kind == b"lost":
                    lost.append(raw)
                elif kind == b"got":
                    for item in rest.split():
                        index, _, at = item.partition(b":")
                        seen.setdefault(int(index), float(at))

        readers = [threading.Thread(target=collect, args=(f,), daemon=True) for f in fleets]
        for r in readers:
            r.start()
        cpu0 = [cpu_of(p.pid) for p in (*procs, *fleets)]
        written = time.time()
        commit(client, [replace(wl, value=json.dumps(value).encode())])
        deadline = time.monotonic() + 120
        while len(seen) < proxies and not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lost, f"streams lost: {lost[:5]}"
        assert len(seen) == proxies, f"{len(seen)} of {proxies} proxies got the change"
        delays = sorted(at - written for at in seen.values())
        cpu = [cpu_of(p.pid) - c for p, c in zip((*procs, *fleets), cpu0, strict=True)]
        load1 = os.getloadavg()[0]
    client.close()
    print(
        f"\n{proxies} proxies over 3 replicas ({services}-service mesh, "
        f"{len(mesh.workload_entries)} workloads in etcd): cold connect {cold:.1f} s; "
        f"endpoint change committed to etcd -> each proxy has it: p50 "
        f"{percentile(delays, 0.5) * 1e3:.0f} ms, p99 {percentile(delays, 0.99) * 1e3:.0f} ms, "
        f"max {delays[-1] * 1e3:.0f} ms; replica RSS per connected proxy "
        + ", ".join(f"{k:.0f}" for k in kb)
        + " KB averaged, "
        + ", ".join(f"{k:.0f}" for k in marginal)
        + " KB marginal; CPU for the change: replicas "
        + ", ".join(f"{c:.2f}" for c in cpu[:3])
        + f" s, fleet clients ({client_kind()}) "
        + ", ".join(f"{c:.2f}" for c in cpu[3:])
        + f" s; load average {load1:.1f}"
    )


def test_ca_watch_latency(etcd: EtcdCluster, request: pytest.FixtureRequest) -> None:
    """The shared CA record written (a rotation step) -> a replica's CAWatch has it, against
    the poll it replaced (a read of the record every second), both following the same writes."""
    from meshcore.ca import CertificateAuthority
    from meshcore.store.replicas import CAWatch, _encode_ca

    writes = 8 if quick(request) else 60
    url = parse_store_url(etcd.url("/bench-ca"))
    client = EtcdClient(etcd.endpoints)
    records = [_encode_ca(CertificateAuthority.generate()) for _ in range(writes + 1)]
    client.put(url.meta("ca"), records[0])
    seen: list[float] = []
    watch = CAWatch(client.clone(), url, lambda ca: seen.append(time.perf_counter()))
    polled: list[tuple[int, float]] = []
    stop = threading.Event()

    def poll() -> None:  # what replicas did before the watch: read the record each second
        poller = client.clone()
        last = 0
        while not stop.is_set():
            _, kv = poller.get(url.meta("ca"))
            if int(kv.mod_revision) != last:
                last = int(kv.mod_revision)
                polled.append((last, time.perf_counter()))
            stop.wait(1.0)
        poller.close()

    watch.start()
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        while not seen or not polled:
            time.sleep(0.01)
        by_watch: list[float] = []
        after_commit: list[float] = []  # from the put's answer: what meshcore's watch adds
        by_poll: list[float] = []
        for record in records[1:]:
            before = len(seen)
            t0 = time.perf_counter()
            revision = client.put(url.meta("ca"), record)
            committed = time.perf_counter()
            while len(seen) == before:
                time.sleep(0.0002)
            by_watch.append(seen[-1] - t0)
            after_commit.append(seen[-1] - committed)
            while not polled or polled[-1][0] < revision:
                time.sleep(0.001)
            by_poll.append(polled[-1][1] - t0)
            time.sleep(0.3 + (len(by_watch) % 7) * 0.1)  # writes at varied phases of the poll
    finally:
        stop.set()
        watch.stop()
        watch.client.close()
        client.close()
    w50, w99 = percentile(by_watch, 0.5) * 1e3, percentile(by_watch, 0.99) * 1e3
    p50, p99 = percentile(by_poll, 0.5) * 1e3, percentile(by_poll, 0.99) * 1e3
    c99 = percentile(after_commit, 0.99) * 1e3
    print(
        f"\nshared CA record write -> replica has it, {writes} writes ({os.getloadavg()[0]:.1f} "
        f"load): watch p50 {w50:.1f} ms, p99 {w99:.1f} ms (p99 {c99:.1f} ms after etcd's "
        f"commit answered); 1 s poll (before) p50 {p50:.0f} ms, p99 {p99:.0f} ms; ratio p50 "
        f"{p50 / max(w50, 1e-3):.0f}x"
    )
    # etcd's own commit (a WAL fsync) can stall on a busy disk; the watch's part is after it.
    assert percentile(after_commit, 0.99) < 1.0
    assert percentile(by_watch, 0.5) < percentile(by_poll, 0.5)


def test_tls_connect_cost(
    etcd: EtcdCluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """etcd over TLS with client certificates against plaintext, interleaved: a new client's
    first read (channel, handshake, Range: what each CLI command pays) and a read on an open
    channel (what a replica pays per call)."""
    from tests.store._pki import make_pki

    from meshcore.store import EtcdTLS

    rounds = 8 if quick(request) else 40
    calls = 50 if quick(request) else 500
    pki = make_pki(tmp_path / "pki")
    tls = EtcdTLS(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    (tmp_path / "etcd-tls").mkdir()
    with etcd_cluster(tmp_path / "etcd-tls", 1, pki=pki) as secure:
        sides = {"plaintext": (etcd.endpoints, None), "TLS": (secure.endpoints, tls)}
        first: dict[str, list[float]] = {k: [] for k in sides}
        steady: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(rounds):
            for name, (endpoints, t) in sides.items():
                t0 = time.perf_counter()
                c = EtcdClient(endpoints, tls=t)
                c.get("/bench-tls/k")
                first[name].append(time.perf_counter() - t0)
                c.close()
        for name, (endpoints, t) in sides.items():
            c = EtcdClient(endpoints, tls=t)
            c.get("/bench-tls/k")
            cpu0, t0 = time.process_time(), time.perf_counter()
            for _ in range(calls):
                c.get("/bench-tls/k")
            steady[name] = [
                (time.perf_counter() - t0) / calls,
                (time.process_time() - cpu0) / calls,
            ]
            c.close()
    f_plain, f_tls = percentile(first["plaintext"], 0.5), percentile(first["TLS"], 0.5)
    print(
        f"\netcd client, load {os.getloadavg()[0]:.1f}: first read on a new client p50 plaintext "
        f"{f_plain * 1e3:.1f} ms, TLS {f_tls * 1e3:.1f} ms (x{f_tls / f_plain:.2f}); a read on an "
        f"open channel plaintext {steady['plaintext'][0] * 1e6:.0f} us "
        f"({steady['plaintext'][1] * 1e6:.0f} us CPU), TLS {steady['TLS'][0] * 1e6:.0f} us "
        f"({steady['TLS'][1] * 1e6:.0f} us CPU)"
    )
