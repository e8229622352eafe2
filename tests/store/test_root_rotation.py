"""Root rotation of the replicas' shared CA on a real etcd, with two replicas: only the leader
advances the stored record (new root trusted, then signing, then the expired root dropped),
every replica reloads it, and a leader that dies hands the rotation over within the TTL."""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshcore.ca import CertificateAuthority
from meshcore.dataplane import CertificateClient
from meshcore.store import parse_store_url
from meshcore.store.etcd import EtcdClient
from meshcore.store.replicas import ReplicaDuties, _decode_record, _encode_ca, rotation_step
from tests.envoy._sidecar import control_plane_in_thread, wait_for
from tests.store._etcd import EtcdCluster

REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
TOKEN = "reviews-token-0123456789abcdef"
MINUTE = datetime.timedelta(minutes=1)  # generate() starts a root one minute in the past


def csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(REVIEWS)]), critical=True
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def test_rotation_steps() -> None:
    """The record's states at given times (no store): nothing due, new root trusted, new root
    signing, old root dropped once expired."""
    old = CertificateAuthority.generate(ttl=datetime.timedelta(days=10))
    start = old.cert.not_valid_before_utc
    record = _encode_ca(old)
    assert rotation_step(record, at=start + datetime.timedelta(days=7)) is None
    trusting = rotation_step(
        record, at=start + datetime.timedelta(days=8, hours=1), root_ttl=datetime.timedelta(days=30)
    )
    assert trusting is not None
    signing, upcoming = _decode_record(trusting, "cluster.local")
    assert signing.cert == old.cert
    assert upcoming is not None
    assert signing.roots() == (upcoming.cert, old.cert)  # trusted before it signs
    assert rotation_step(trusting, at=start + datetime.timedelta(days=8, hours=2)) is None
    switched = rotation_step(trusting, at=start + datetime.timedelta(days=9, hours=1))
    assert switched is not None
    signing, nxt = _decode_record(switched, "cluster.local")
    assert nxt is None
    assert signing.cert == upcoming.cert
    assert signing.roots() == (upcoming.cert, old.cert)  # the old root's leaves still valid
    assert signing.cert.not_valid_after_utc - signing.cert.not_valid_before_utc == (
        datetime.timedelta(days=30)
    )
    pruned = rotation_step(switched, at=start + datetime.timedelta(days=10, hours=1))
    assert pruned is not None
    assert _decode_record(pruned, "cluster.local")[0].roots() == (upcoming.cert,)


def test_two_replicas_rotate_a_short_lived_root(
    etcd: EtcdCluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshcore.store")
    url = parse_store_url(etcd.url(prefix))
    client = EtcdClient(etcd.endpoints)
    # A root with 20 s left of 80 s: due at once (grace 0.4: under 32 s left), signing moves
    # to the new root under 16 s left (4 s from now), the old root expires in 20 s.
    old = CertificateAuthority.generate(ttl=MINUTE + datetime.timedelta(seconds=20))
    client.put(url.meta("ca"), _encode_ca(old))
    seen: dict[str, CertificateAuthority] = {}
    duties = [
        ReplicaDuties(
            EtcdClient(etcd.endpoints),
            url,
            name,
            status=dict,
            interval=0.2,
            ttl=2,
            on_ca=lambda ca, name=name: seen.__setitem__(name, ca),
            root_grace=0.4,
            root_ttl=datetime.timedelta(hours=1),
        )
        for name in ("r1", "r2")
    ]
    duties[0].start()
    wait_for(lambda: duties[0].election.leader, "r1 leads")
    duties[1].start()
    try:
        # Phase 1: both replicas trust the new root; the old one still signs.
        wait_for(
            lambda: all(len(seen.get(n, old).roots()) == 2 for n in ("r1", "r2")),
            "both replicas trust two roots",
            10,
        )
        assert all(seen[n].cert == old.cert for n in ("r1", "r2"))
        new_root = seen["r2"].roots()[0]
        # The leader dies (its lease is not revoked): r2 leads within the TTL and finishes.
        died = time.monotonic()
        duties[0].stop(resign=False)
        wait_for(lambda: duties[1].election.leader, "r2 leads", 10)
        assert time.monotonic() - died < 2 + 2.5  # the TTL, and a loaded machine's slack
        wait_for(lambda: seen["r2"].cert == new_root, "r2 signs with the new root", 15)
        ca = seen["r2"]
        assert ca.roots() == (new_root, old.cert), "the old root stays trusted"
        leaf = x509.load_pem_x509_certificate(ca.sign_csr(csr(), REVIEWS).encode())
        leaf.verify_directly_issued_by(new_root)
        # The old root expires: the bundle drops it.
        wait_for(lambda: seen["r2"].roots() == (new_root,), "the expired root dropped", 25)
        writers = [
            r.getMessage().split(":")[0]
            for r in caplog.records
            if "root rotation" in r.getMessage()
        ]
        assert writers == ["r1", "r2", "r2"], writers  # only ever the leader of the moment
    finally:
        duties[1].stop()
        client.close()


def test_serve_reloads_a_rotated_root(etcd: EtcdCluster, prefix: str, tmp_path: Path) -> None:
    """``meshcore serve --store`` with its CA: a rotated record written to the store (what
    the leader writes) is taken while it runs: root-cert.pem for agents holds both roots, and
    a renewal authenticated by an old-root certificate gets one from the new root."""
    from meshcore.xds.controlserver import CAOptions

    url = parse_store_url(etcd.url(prefix))
    (tmp_path / "tokens").write_text(f"{TOKEN} {REVIEWS}\n")
    state = tmp_path / "state"
    options = CAOptions(port=0, mtls_port=0, state_dir=str(state), tokens=str(tmp_path / "tokens"))
    with control_plane_in_thread([], store=url, ca=options, metrics_port=0) as (loop, server):
        old = server.authority
        assert old is not None
        ca_server = server.ca_server
        address = f"127.0.0.1:{ca_server.port}"
        agent = CertificateClient(
            address,
            REVIEWS,
            mtls_address=f"127.0.0.1:{ca_server.mtls_port}",
            trust_bundle_pem=old.trust_bundle_pem(),
            bootstrap_token=TOKEN,
        )
        loop.run(agent.fetch(), 30)
        new = CertificateAuthority.generate().with_roots([old.cert])
        client = EtcdClient(etcd.endpoints)
        client.put(url.meta("ca"), _encode_ca(new))
        client.close()
        wait_for(lambda: server.authority.cert == new.cert, "the replica reloads the CA", 10)
        assert (state / "root-cert.pem").read_text() == new.trust_bundle_pem()
        agent.trust_bundle_pem = (state / "root-cert.pem").read_text()  # the agent's new bundle
        second = loop.run(agent.fetch(), 30)
        assert agent.renewals == 1  # authenticated by its old-root certificate
        leaf = x509.load_pem_x509_certificate(second.cert_chain_pem.encode())
        leaf.verify_directly_issued_by(new.cert)


def test_a_rotation_reaches_a_follower_within_a_second(
    etcd: EtcdCluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The follower watches the CA record: each of the leader's rotation writes (new root
    trusted, then signing) is the follower's CA in under 1 s, though its duties' interval is
    30 s (no poll could explain it); and every certificate the follower signs meanwhile
    chains to a root of the record stored at that moment (it never signs with a key the
    store has not got)."""
    caplog.set_level(logging.INFO, logger="meshcore.store")
    url = parse_store_url(etcd.url(prefix))
    client = EtcdClient(etcd.endpoints)
    old = CertificateAuthority.generate(ttl=MINUTE + datetime.timedelta(seconds=20))
    client.put(url.meta("ca"), _encode_ca(old))
    taken: list[tuple[float, CertificateAuthority]] = []
    # The leader first, with nothing due yet (a grace of nearly 0); the follower's first read.
    leader = ReplicaDuties(
        EtcdClient(etcd.endpoints), url, "r1", status=dict, interval=0.2, ttl=2,
        on_ca=lambda ca: None, root_grace=1e-6, root_ttl=datetime.timedelta(hours=1),
    )  # fmt: skip
    follower = ReplicaDuties(
        EtcdClient(etcd.endpoints), url, "r2", status=dict, interval=30, ttl=2,
        on_ca=lambda ca: taken.append((time.time(), ca)), root_grace=0.4,
    )  # fmt: skip
    leader.start()
    wait_for(lambda: leader.election.leader, "r1 leads")
    follower.start()
    wait_for(lambda: taken and follower.election.lease, "the follower has the record")
    assert not follower.election.leader
    bad: list[str] = []
    signed = 0
    # Due now: 20 s left of 80 s, under 40%: the new root is trusted at once, signs under 20%.
    leader.root_grace = 0.4
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _, ca = taken[-1]
            leaf = x509.load_pem_x509_certificate(ca.sign_csr(csr(), REVIEWS).encode())
            signed += 1
            _, kv = client.get(url.meta("ca"))
            stored, _ = _decode_record(bytes(kv.value), "cluster.local")
            if not any(leaf.issuer == root.subject for root in stored.roots()):
                bad.append(f"leaf from {leaf.issuer.rfc4514_string()} not in the stored roots")
            if len(taken) >= 3 and taken[-1][1].cert != old.cert:
                break
            time.sleep(0.01)
        writes = [r.created for r in caplog.records if "r1: root rotation" in r.getMessage()]
        assert len(writes) >= 2, writes
        delays = []
        for written, (seen, _) in zip(writes[:2], taken[1:3], strict=True):
            delays.append(seen - written)
        print(f"\nrotation write on the leader -> the follower's CA: "
              f"{', '.join(f'{d * 1000:.1f} ms' for d in delays)}; {signed} leaves signed")  # fmt: skip
        assert all(d < 1.0 for d in delays), delays
        assert len(taken[1][1].roots()) == 2
        assert taken[1][1].cert == old.cert
        assert taken[2][1].cert == taken[1][1].roots()[0]  # then signing
        assert not bad, bad[:3]
        assert "PRIVATE KEY" not in caplog.text  # the records went through the log's reach
        assert follower.ca_watch is not None
        assert follower.ca_watch.reads == 1
    finally:
        leader.stop()
        follower.stop()
        client.close()


def test_ca_watch_reads_again_after_compaction(etcd: EtcdCluster, prefix: str) -> None:
    """A CA watch that starts below the compaction revision is cancelled by etcd: the watch
    ends and the next round reads the record again (and takes its newest version)."""
    from meshcore.store.replicas import CAWatch

    url = parse_store_url(etcd.url(prefix))
    client = EtcdClient(etcd.endpoints)
    first = CertificateAuthority.generate()
    second = CertificateAuthority.generate()
    start = client.put(url.meta("ca"), _encode_ca(first))
    now = client.put(url.meta("ca"), _encode_ca(second))
    client.compact(now)
    taken: list[CertificateAuthority] = []
    watch = CAWatch(EtcdClient(etcd.endpoints), url, taken.append)
    try:
        watch._follow(start - 1)  # returns (compacted) instead of raising
        assert taken == []
        watch.start()
        wait_for(lambda: taken, "the record read again")
        assert taken[-1].cert == second.cert
    finally:
        watch.stop()
        watch.client.close()
        client.close()


def test_ca_watch_skips_an_unreadable_record_and_never_logs_it(
    etcd: EtcdCluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A record another client wrote broken (here: a truncated key) is logged as unreadable
    without its content, the replica keeps the CA it had, and the next good version is taken."""
    import json

    from meshcore.store.replicas import CAWatch

    caplog.set_level(logging.DEBUG)
    url = parse_store_url(etcd.url(prefix))
    client = EtcdClient(etcd.endpoints)
    good = CertificateAuthority.generate()
    client.put(url.meta("ca"), _encode_ca(good))
    taken: list[CertificateAuthority] = []
    watch = CAWatch(EtcdClient(etcd.endpoints), url, taken.append)
    watch.start()
    try:
        wait_for(lambda: taken, "the first record")
        broken = json.loads(_encode_ca(CertificateAuthority.generate()))
        secret = broken["ca-key.pem"].splitlines()[1]
        broken["ca-key.pem"] = broken["ca-key.pem"][:-60]
        client.put(url.meta("ca"), json.dumps(broken).encode())
        wait_for(lambda: "unreadable" in caplog.text, "the broken record reported")
        assert len(taken) == 1
        newer = CertificateAuthority.generate()
        client.put(url.meta("ca"), _encode_ca(newer))
        wait_for(lambda: len(taken) == 2, "the next good record")
        assert taken[1].cert == newer.cert
        assert secret not in caplog.text
        assert "PRIVATE KEY" not in caplog.text
    finally:
        watch.stop()
        watch.client.close()
        client.close()


def test_ca_watch_comes_back_after_etcd_restarts(tmp_path: Path) -> None:
    """etcd goes away and comes back: the CA watch reads the record again and follows it
    (a version written after the return is taken)."""
    from meshcore.store.replicas import CAWatch
    from tests.store._etcd import etcd_cluster

    with etcd_cluster(tmp_path, 1) as cluster:
        url = parse_store_url(cluster.url("/ca-restart"))
        client = EtcdClient(cluster.endpoints)
        client.put(url.meta("ca"), _encode_ca(CertificateAuthority.generate()))
        taken: list[CertificateAuthority] = []
        watch = CAWatch(EtcdClient(cluster.endpoints), url, taken.append, retry_seconds=0.2)
        watch.start()
        try:
            wait_for(lambda: taken, "the first record")
            member = cluster.members[0]
            cluster.stop(member)
            time.sleep(1.0)
            cluster.start(member, state="existing")
            cluster.wait_healthy()
            newer = CertificateAuthority.generate()
            client.put(url.meta("ca"), _encode_ca(newer))
            wait_for(lambda: taken[-1].cert == newer.cert, "the record after the restart", 20)
            assert watch.reads >= 2  # read again after the stream broke
        finally:
            watch.stop()
            watch.client.close()
            client.close()
