"""The load balancers' hash and hash tables moved into the core (``meshcore._core.lb``); the
Python implementations they replace are kept here as the reference. On random endpoint sets,
weights, table sizes and hash keys, the core builds the same tables and ``LoadBalancer`` makes
the same picks as the Python it replaced."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore._core import lb as core_lb
from meshcore.dataplane.config import ClusterConfig, Endpoint
from meshcore.dataplane.lb import LoadBalancer


def ref_hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def ref_ring(endpoints: Sequence[Endpoint], size: int) -> tuple[list[int], list[Endpoint]]:
    total = sum(e.weight for e in endpoints)
    points: list[tuple[int, Endpoint]] = []
    for e in endpoints:
        n = max(1, round(size * e.weight / total))
        key = str(e).encode()
        points.extend((ref_hash64(key + b"_" + str(i).encode()), e) for i in range(n))
    points.sort(key=lambda p: p[0])
    return [h for h, _ in points], [e for _, e in points]


def ref_maglev(endpoints: Sequence[Endpoint], size: int) -> list[Endpoint]:
    n = len(endpoints)
    offsets, skips = [], []
    for e in endpoints:
        key = str(e).encode()
        offsets.append(ref_hash64(key) % size)
        skips.append(ref_hash64(key + b"#skip") % (size - 1) + 1)
    max_w = max(e.weight for e in endpoints)
    nexts = [0] * n
    table: list[int] = [-1] * size
    filled = 0
    credit = [0.0] * n
    while True:
        for i in range(n):
            credit[i] += endpoints[i].weight / max_w
            if credit[i] < 1.0:
                continue
            credit[i] -= 1.0
            c = (offsets[i] + nexts[i] * skips[i]) % size
            while table[c] >= 0:
                nexts[i] += 1
                c = (offsets[i] + nexts[i] * skips[i]) % size
            table[c] = i
            nexts[i] += 1
            filled += 1
            if filled == size:
                return [endpoints[j] for j in table]


endpoint_sets = st.lists(
    st.tuples(st.integers(1, 250), st.integers(1, 65535), st.integers(1, 9)),
    min_size=1, max_size=12, unique_by=lambda t: (t[0], t[1]),
).map(lambda xs: tuple(Endpoint(f"10.0.0.{a}", p, weight=w) for a, p, w in xs))  # fmt: skip
keys = st.integers(0, 2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_hash64_is_blake2b_8(data: bytes) -> None:
    assert core_lb.hash64(data) == ref_hash64(data)
    for n in (127, 128, 129, 256):  # the block boundaries
        assert core_lb.hash64(data[:1] * n) == ref_hash64(data[:1] * n)


@settings(max_examples=150, deadline=None)
@given(endpoint_sets, st.integers(1, 600))
def test_ring_table_is_the_python_ring(endpoints: tuple[Endpoint, ...], size: int) -> None:
    hashes, owners = core_lb.ring_table([(str(e), e.weight) for e in endpoints], size)
    ref_hashes, ref_owners = ref_ring(endpoints, size)
    assert hashes == ref_hashes
    assert [endpoints[i] for i in owners] == ref_owners


@settings(max_examples=150, deadline=None)
@given(endpoint_sets, st.sampled_from([2, 3, 7, 13, 101, 251, 1021]))
def test_maglev_table_is_the_python_table(endpoints: tuple[Endpoint, ...], size: int) -> None:
    table = core_lb.maglev_table([(str(e), e.weight) for e in endpoints], size)
    assert [endpoints[i] for i in table] == ref_maglev(endpoints, size)


def _cluster(policy: str) -> ClusterConfig:
    return ClusterConfig("c", policy, None, None, None, None, 1.0, ring_size=97,
                         maglev_table_size=101)  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(endpoint_sets, st.lists(keys, min_size=1, max_size=20))
def test_hash_picks_are_the_python_picks(
    endpoints: tuple[Endpoint, ...], hash_keys: list[int]
) -> None:
    lb = LoadBalancer(seed=1)
    ring_hashes, ring_owners = ref_ring(endpoints, 97)
    table = ref_maglev(endpoints, 101) if len(endpoints) > 1 else list(endpoints)
    for key in hash_keys:
        ring_pick = lb.pick(_cluster("RING_HASH"), endpoints, key)
        maglev_pick = lb.pick(_cluster("MAGLEV"), endpoints, key)
        if len(endpoints) == 1:  # a single host is picked without a table
            assert ring_pick == maglev_pick == endpoints[0]
            continue
        i = bisect.bisect_left(ring_hashes, key)
        assert ring_pick == ring_owners[i % len(ring_owners)]
        assert maglev_pick == table[key % len(table)]


def test_tables_refuse_what_cannot_be_built() -> None:
    for build in (core_lb.ring_table, core_lb.maglev_table):
        with pytest.raises(ValueError, match="no hosts"):
            build([], 11)
        with pytest.raises(ValueError, match="weight 0"):
            build([("a:1", 0)], 11)
    with pytest.raises(ValueError, match="at least 2"):
        core_lb.maglev_table([("a:1", 1)], 1)
