"""What replicas share in etcd: one CA created once, one leader on a lease, the proxies of
every replica for ``meshcore proxy-status --store``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from meshcore.ca import CAError
from meshcore.store import parse_store_url
from meshcore.store.etcd import EtcdClient, rpc
from meshcore.store.replicas import ReplicaDuties, _absent, shared_authority
from tests._cli import main
from tests.envoy._sidecar import wait_for
from tests.store._etcd import EtcdCluster


def test_concurrent_replicas_create_one_ca(etcd: EtcdCluster, prefix: str) -> None:
    url = parse_store_url(etcd.url(prefix))
    results: list[tuple[object, bool]] = []
    start = threading.Barrier(4)

    def replica() -> None:
        client = EtcdClient(etcd.endpoints)
        start.wait()
        results.append(shared_authority(client, url))
        client.close()

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(created for _, created in results) == 1, "exactly one replica creates the CA"
    roots = {ca.trust_bundle_pem() for ca, _ in results}  # type: ignore[attr-defined]
    assert len(roots) == 1
    # What another replica reads signs as the creator's would: the same key.
    keys = {ca.key.private_numbers().private_value for ca, _ in results}  # type: ignore[attr-defined]
    assert len(keys) == 1


def test_a_lost_lock_holder_frees_the_ca_lock_within_its_lease(
    etcd: EtcdCluster, prefix: str
) -> None:
    """A replica that took the CA creation lock and died before writing the CA: the others
    wait for it, not generate a CA of their own, and take the lock once its lease expires."""
    url = parse_store_url(etcd.url(prefix))
    client = EtcdClient(etcd.endpoints)
    try:
        lost = client.grant(2)
        client.put(url.meta("ca-lock"), b"", lease=lost)  # never refreshed: the holder is gone
        with pytest.raises(CAError, match="holds the creation lock"):
            shared_authority(client, url, lease_ttl=2, wait=0.5)
        assert client.get(url.meta("ca"))[1] is None, "nobody wrote a CA while the lock was held"
        started = time.monotonic()
        ca, created = shared_authority(client, url, lease_ttl=2, wait=10)
        waited = time.monotonic() - started
        assert created
        assert waited < 4, waited
        assert client.get(url.meta("ca-lock"))[1] is None, "the lock is released after the write"
        again, created = shared_authority(client, url)
        assert not created
        assert again.trust_bundle_pem() == ca.trust_bundle_pem()
    finally:
        client.close()


def test_a_lock_holder_that_lost_its_lease_writes_nothing(etcd: EtcdCluster, prefix: str) -> None:
    """The CA write holds only while the writer still holds the lock under its lease."""
    url = parse_store_url(etcd.url(prefix))
    client = EtcdClient(etcd.endpoints)
    try:
        stale = client.grant(30)
        client.put(url.meta("ca-lock"), b"", lease=stale)
        client.revoke(stale)  # the lease is gone with the lock
        other = client.grant(30)
        client.put(url.meta("ca-lock"), b"", lease=other)  # another replica took the lock
        resp = client.txn(
            [
                _absent(url.meta("ca")),
                rpc.Compare(
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.LEASE,
                    key=url.meta("ca-lock").encode(),
                    lease=stale,
                ),
            ],
            [rpc.RequestOp(request_put=rpc.PutRequest(key=url.meta("ca").encode(), value=b"x"))],
        )
        assert not resp.succeeded
        assert client.get(url.meta("ca"))[1] is None
        client.revoke(other)
    finally:
        client.close()


def test_one_leader_and_failover_within_the_lease_ttl(
    etcd: EtcdCluster, prefix: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = parse_store_url(etcd.url(prefix))
    duties = [
        ReplicaDuties(
            EtcdClient(etcd.endpoints),
            url,
            name,
            status=lambda name=name: {
                f"sidecar~10.0.0.1~{name}.default~default.svc.cluster.local": {"CDS": "SYNCED"}
            },
            interval=0.2,
            ttl=2,
            analysis=lambda name=name: {"by": name},
        )
        for name in ("r1", "r2")
    ]
    duties[0].start()
    wait_for(lambda: duties[0].election.leader, "r1 leads")
    duties[1].start()
    try:
        time.sleep(1.0)
        assert not duties[1].election.leader
        client = EtcdClient(etcd.endpoints)
        _, kv = client.get(url.meta("status", "analysis"))
        assert kv is not None
        assert json.loads(kv.value) == {"by": "r1"}, "only the leader writes the analysis"
        # proxy-status --store: both replicas' proxies, each with its replica.
        assert main(["proxy-status", "--store", etcd.url(prefix), "-o", "json"]) == 0
        status = json.loads(capsys.readouterr().out)
        proxies = status["proxies"]
        assert {p["replica"] for p in proxies.values()} == {"r1", "r2"}
        assert status["leader"] == "r1"
        # r1 dies without a word (its lease is not revoked): r2 leads within the 2 s TTL.
        died = time.monotonic()
        duties[0].stop(resign=False)
        wait_for(lambda: duties[1].election.leader, "r2 leads", 10)
        assert time.monotonic() - died < 2 + 2.5  # the TTL, and a loaded machine's slack
        wait_for(
            lambda: json.loads(client.get(url.meta("status", "analysis"))[1].value) == {"by": "r2"},
            "the new leader writes",
        )
        # r1's proxies expire with its lease.
        wait_for(
            lambda: (
                main(["proxy-status", "--store", etcd.url(prefix), "-o", "json"]) == 0
                and {p["replica"] for p in json.loads(capsys.readouterr().out)["proxies"].values()}
                == {"r2"}
            ),
            "r1's proxies gone",
        )
        client.close()
    finally:
        duties[1].stop()
