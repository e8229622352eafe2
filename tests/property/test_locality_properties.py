"""Properties of locality failover (meshcore.xds.locality) over random localities: the
priorities Envoy gets are contiguous from 0 (Envoy requires it), they never rank a locality
sharing less of the proxy's region/zone/subzone above one sharing more, and the proxy's own
locality, when it has endpoints, is priority 0."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("envoy.config.endpoint.v3.endpoint_pb2")

from envoy.config.endpoint.v3 import endpoint_pb2

from meshcore.xds.locality import apply_locality_lb, lb_priority, split_locality

PART = st.sampled_from(["", "a", "b"])
LOCALITY = st.tuples(PART, PART, PART).map("/".join)


@settings(max_examples=300, deadline=None)
@given(
    proxy=LOCALITY,
    groups=st.lists(LOCALITY, min_size=1, max_size=6, unique=True),
    failover=st.lists(st.tuples(PART, PART), max_size=2),
)
def test_failover_priorities(
    proxy: str, groups: list[str], failover: list[tuple[str, str]]
) -> None:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="c")
    for loc in groups:
        g = cla.endpoints.add()
        g.locality.region, g.locality.zone, g.locality.sub_zone = split_locality(loc)
        g.lb_endpoints.add()
    setting = {"failover": [{"from": f, "to": t} for f, t in failover]}
    apply_locality_lb(cla, [[{}] for _ in groups], proxy, {}, setting, outlier=True)
    got = {loc: g.priority for loc, g in zip(groups, cla.endpoints, strict=True)}
    assert sorted(set(got.values())) == list(range(len(set(got.values()))))
    for x in groups:
        for y in groups:
            if lb_priority(proxy, x) < lb_priority(proxy, y):
                assert got[x] <= got[y], (proxy, got)
    if proxy in got:
        assert got[proxy] == 0
