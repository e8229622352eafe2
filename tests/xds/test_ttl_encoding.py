"""The TTL wrapping is encoded by the Rust core (no decode and re-encode in Python): its bytes
are those protobuf's deterministic serialization gives for the same messages."""

from __future__ import annotations

import pytest
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, duration_pb2
from hypothesis import given
from hypothesis import strategies as st

from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache

RESOURCE_TYPE = "type.googleapis.com/envoy.service.discovery.v3.Resource"
TTLS = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 30.0, 1e-9]), st.floats(0, 1e7))


def _snap():  # type: ignore[no-untyped-def]
    cache = SnapshotCache()
    return cache.snapshot(
        {
            types.ENDPOINT: {
                n: endpoint_pb2.ClusterLoadAssignment(cluster_name=n) for n in ("b", "a", "c")
            }
        }
    )


def _ttl(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


@given(TTLS)
def test_sotw_wrapped_and_heartbeat_match_protobuf(ttl: float) -> None:
    snap = _snap()
    version = snap.version(types.ENDPOINT)
    data, count = snap.sotw_response(types.ENDPOINT, version, "7-1", ["c", "a", "x"], ttl)
    want = discovery_pb2.DiscoveryResponse(version_info=version, type_url=types.ENDPOINT)
    want.nonce = "7-1"
    for name in ("a", "c"):
        _, body = snap.resource(types.ENDPOINT, name) or ("", b"")
        r = discovery_pb2.Resource(name=name, version=version, ttl=_ttl(ttl))
        r.resource.CopyFrom(any_pb2.Any(type_url=types.ENDPOINT, value=body))
        want.resources.add(type_url=RESOURCE_TYPE, value=r.SerializeToString(deterministic=True))
    assert count == 2
    assert data == want.SerializeToString(deterministic=True)

    beat = snap.sotw_heartbeat(types.ENDPOINT, version, "7-2", ["a", "c"], ttl)
    want = discovery_pb2.DiscoveryResponse(version_info=version, type_url=types.ENDPOINT)
    want.nonce = "7-2"
    for name in ("a", "c"):
        r = discovery_pb2.Resource(name=name, version=version, ttl=_ttl(ttl))
        want.resources.add(type_url=RESOURCE_TYPE, value=r.SerializeToString(deterministic=True))
    assert beat == want.SerializeToString(deterministic=True)


@given(TTLS)
def test_delta_with_ttl_and_heartbeat_match_protobuf(ttl: float) -> None:
    snap = _snap()
    out = snap.delta_response(types.ENDPOINT, "3-1", {}, ["a", "b", "gone"], {"gone"}, None, ttl)
    assert out is not None
    data, sent, removed = out
    want = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=snap.version(types.ENDPOINT), type_url=types.ENDPOINT, nonce="3-1"
    )
    for name, version in sent:
        _, body = snap.resource(types.ENDPOINT, name) or ("", b"")
        r = want.resources.add(name=name, version=version, ttl=_ttl(ttl))
        r.resource.CopyFrom(any_pb2.Any(type_url=types.ENDPOINT, value=body))
    want.removed_resources.extend(removed)
    assert [n for n, _ in sent] == ["a", "b"]
    assert removed == ["gone"]
    assert data == want.SerializeToString(deterministic=True)

    held = dict(sent)
    held["c"] = "an older version"  # not refreshed: the client must get it again
    beat = snap.delta_heartbeat(types.ENDPOINT, "3-2", held, ttl)
    want = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=snap.version(types.ENDPOINT), type_url=types.ENDPOINT, nonce="3-2"
    )
    for name, version in sent:
        want.resources.add(name=name, version=version, ttl=_ttl(ttl))
    assert beat == want.SerializeToString(deterministic=True)
    assert snap.delta_heartbeat(types.ENDPOINT, "3-3", {"c": "old"}, ttl) is None


def test_a_ttl_that_is_no_duration_is_refused() -> None:
    snap = _snap()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="resource TTL"):
            snap.sotw_response(types.ENDPOINT, "", "", None, bad)
        with pytest.raises(ValueError, match="resource TTL"):
            snap.delta_heartbeat(types.ENDPOINT, "", {}, bad)
