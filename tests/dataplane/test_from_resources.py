"""DataPlane.from_resources: a data plane on the translator's resources, with no control plane."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.config import validate
from meshcore.dataplane import DataPlane
from meshcore.dataplane.ads import AdsClient
from meshcore.dataplane.config import Compiler
from meshcore.dataplane.plane import DataPlaneError
from meshcore.errors import ConfigError
from meshcore.xds import translate, types

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = "sidecar~127.0.10.1~frontend-1.default~default.svc.cluster.local"
RATINGS = "sidecar~127.0.30.1~ratings-1.default~default.svc.cluster.local"


def _resources(node: str) -> types.Resources:
    report = validate([ROOT / "examples"])
    assert report.model is not None
    mesh = report.model
    return translate.generate(mesh, translate.proxy_for_node(mesh, node)).resources


def _as_ads_would(node: str, resources: types.Resources) -> DataPlane:
    ads = AdsClient("127.0.0.1:1", node)
    ads.config = Compiler().compile(
        {t: {n: ("1", m.SerializeToString()) for n, m in by.items()} for t, by in resources.items()}
    )
    return DataPlane(ads)


def test_decides_as_a_plane_fed_over_ads() -> None:
    resources = _resources(FRONTEND)
    offline = DataPlane.from_resources(FRONTEND, resources)
    fed = _as_ads_would(FRONTEND, resources)
    # The same weighted-cluster draws in both (reviews is a 90/10 canary).
    offline._random.seed(17)
    fed._random.seed(17)
    for authority, path in [("ratings:9080", "/ratings/1"), ("reviews:9080", "/reviews/2"),
                            ("nothing:9080", "/"), ("ratings:1234", "/")]:  # fmt: skip
        a = offline.decide(direction="outbound", authority=authority, path=path)
        b = fed.decide(direction="outbound", authority=authority, path=path)
        assert (a.status, a.route, a.cluster) == (b.status, b.route, b.cluster)
        assert (a.endpoint is None) == (b.endpoint is None)
    d = offline.decide(direction="outbound", authority="ratings:9080", path="/ratings/1")
    assert d.cluster == "outbound|9080||ratings.default.svc.cluster.local"
    assert d.endpoint is not None
    assert offline.config.generation == fed.config.generation


def test_inbound_from_serialized_bytes() -> None:
    resources = _resources(RATINGS)
    raw = {t: {n: m.SerializeToString() for n, m in by.items()} for t, by in resources.items()}
    dp = DataPlane.from_resources(RATINGS, raw)
    spiffe = "spiffe://cluster.local/ns/default/sa/"
    ok = dp.decide(direction="inbound", port=9080, authority="ratings:9080", path="/ratings/1",
                   principal=spiffe + "reviews")  # fmt: skip
    no = dp.decide(direction="inbound", port=9080, authority="ratings:9080", path="/ratings/1")
    assert ok.allowed
    assert not no.allowed  # STRICT mTLS: plaintext refused


def test_bad_input_is_refused_with_its_reason() -> None:
    with pytest.raises(DataPlaneError, match="node"):
        DataPlane.from_resources("not-a-node-id", {})
    with pytest.raises(DataPlaneError, match="not a resource type"):
        DataPlane.from_resources(FRONTEND, {"type.googleapis.com/x.Unknown": {}})
    with pytest.raises(ConfigError, match="broken"):
        DataPlane.from_resources(FRONTEND, {types.ROUTE: {"broken": b"\xff\xff"}})
