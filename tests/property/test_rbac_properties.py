"""Properties of RbacEngine over random configs and requests (hypothesis).

- The index never changes a decision: evaluate() (indexed) agrees with explain() (every
  policy, in name order) on the effective policy, for configs big enough to be indexed.
- evaluate_batch() agrees with evaluate() request by request, with every attribute as a column
  (lists, numpy 'S' and 'U' arrays).
- Policy order in the message does not matter, only names do.
- A DENY engine and an ALLOW engine over the same policies decide opposite ways and report
  the same effective policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

pytest.importorskip("envoy.extensions.filters.http.rbac.v3.rbac_pb2")

from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from google.protobuf import json_format

from meshcore import RbacEngine

METHODS = ["GET", "POST", "PUT", "DELETE"]
PATHS = ["/", "/api", "/api/v1", "/api/v1/x?y=1", "/admin", "/admin/a", "/b"]
SANS = ["spiffe://td/ns/a/sa/web", "spiffe://td/ns/a/sa/db", "spiffe://td/ns/b/sa/web"]
SOURCES = ["10.0.0.1", "10.1.0.1", "192.168.0.1"]

leaf_permission = st.one_of(
    st.just({"any": True}),
    st.sampled_from(METHODS).map(
        lambda m: {"header": {"name": ":method", "string_match": {"exact": m}}}
    ),
    st.sampled_from(PATHS).map(lambda p: {"url_path": {"path": {"prefix": p.split("?")[0]}}}),
    st.sampled_from(PATHS).map(lambda p: {"url_path": {"path": {"exact": p.split("?")[0]}}}),
    st.sampled_from([80, 8080]).map(lambda p: {"destination_port": p}),
    st.sampled_from(["a", "b"]).map(
        lambda v: {"header": {"name": "x-a", "string_match": {"exact": v}}}
    ),
    st.sampled_from(["a.com", "b.com"]).map(lambda v: {"requested_server_name": {"exact": v}}),
    st.sampled_from(["10.9.0.0/16", "127.0.0.0/8"]).map(
        lambda c: {
            "destination_ip": {
                "address_prefix": c.split("/")[0],
                "prefix_len": int(c.split("/")[1]),
            }
        }
    ),
    st.sampled_from(["https", "http"]).map(
        lambda v: {"header": {"name": ":scheme", "string_match": {"exact": v}}}
    ),
)
permission = st.recursive(
    leaf_permission,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda r: {"and_rules": {"rules": r}}),
        st.lists(inner, min_size=1, max_size=3).map(lambda r: {"or_rules": {"rules": r}}),
        inner.map(lambda r: {"not_rule": r}),
    ),
    max_leaves=4,
)
leaf_principal = st.one_of(
    st.just({"any": True}),
    st.just({"authenticated": {}}),
    st.sampled_from(SANS).map(lambda s: {"authenticated": {"principal_name": {"exact": s}}}),
    st.sampled_from(["10.0.0.0/8", "10.0.0.0/16", "192.168.0.0/24"]).map(
        lambda c: {
            "remote_ip": {"address_prefix": c.split("/")[0], "prefix_len": int(c.split("/")[1])}
        }
    ),
    st.sampled_from(["10.0.0.0/8", "192.168.0.0/24"]).map(
        lambda c: {
            "source_ip": {"address_prefix": c.split("/")[0], "prefix_len": int(c.split("/")[1])}
        }
    ),
    st.sampled_from(["db.example", "CN=web"]).map(
        lambda s: {"authenticated": {"principal_name": {"exact": s}}}
    ),
)
principal = st.recursive(
    leaf_principal,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda r: {"or_ids": {"ids": r}}),
        inner.map(lambda r: {"not_id": r}),
    ),
    max_leaves=3,
)
policy = st.fixed_dictionaries(
    {
        "permissions": st.lists(permission, min_size=1, max_size=3),
        "principals": st.lists(principal, min_size=1, max_size=2),
    }
)
policies = st.dictionaries(
    st.text("abpqz019-_", min_size=1, max_size=4), policy, min_size=8, max_size=30
)
request = st.fixed_dictionaries(
    {
        "method": st.sampled_from(METHODS),
        "path": st.sampled_from(PATHS),
        "remote_ip": st.sampled_from(SOURCES),
        "destination_port": st.sampled_from([80, 8080, 9090]),
        "headers": st.sampled_from([[], [("x-a", "a")], [("x-a", "b"), ("X-A", "a")]]),
        "principal": st.sampled_from([None, *SANS]),
        "tls": st.sampled_from([None, True]),
    }
)
# Every attribute evaluate() takes (for the batch-versus-single property).
full_request = st.fixed_dictionaries(
    {
        "method": st.sampled_from(METHODS),
        "path": st.sampled_from(PATHS),
        "authority": st.sampled_from([None, "a.com", "b.com:80"]),
        "scheme": st.sampled_from([None, "http", "https"]),
        "source_ip": st.sampled_from([None, *SOURCES]),
        "remote_ip": st.sampled_from([None, *SOURCES]),
        "direct_remote_ip": st.sampled_from([None, *SOURCES]),
        "destination_ip": st.sampled_from([None, "10.9.1.1", "127.0.0.1"]),
        "destination_port": st.sampled_from([None, 80, 8080, 9090]),
        "headers": st.sampled_from([[], [("x-a", "a")], [("x-a", "b"), ("X-A", "a")]]),
        "principal": st.sampled_from([None, *SANS]),
        "uri_sans": st.sampled_from([None, [], [SANS[1]], [SANS[0], SANS[2]]]),
        "dns_sans": st.sampled_from([None, ["db.example"], ["x.example", "db.example"]]),
        "subject": st.sampled_from([None, "CN=web"]),
        "sni": st.sampled_from([None, "a.com", "b.com"]),
        "tls": st.sampled_from([None, True]),
    }
)


def engine(action: str, pols: dict[str, Any]) -> RbacEngine:
    cfg = json_format.ParseDict({"rules": {"action": action, "policies": pols}}, rbac_pb2.RBAC())
    return RbacEngine.from_proto(cfg)


def clean(req: dict[str, Any]) -> dict[str, Any]:
    out = dict(req)
    if out["principal"] is not None:
        out["tls"] = None  # a principal implies TLS
    return out


@settings(max_examples=100, deadline=None)
@given(pols=policies, reqs=st.lists(request, min_size=1, max_size=20))
def test_index_never_changes_the_decision(pols: dict[str, Any], reqs: list[dict[str, Any]]) -> None:
    e = engine("ALLOW", pols)
    for req in map(clean, reqs):
        d = e.evaluate(**req)
        explained = e.explain(**req)["rules"]["policies"]
        first = next((p["policy_id"] for p in explained if p["matched"]), None)
        assert d.policy_id == first
        assert d.allowed == (first is not None)


@settings(max_examples=40, deadline=None)
@given(pols=policies, reqs=st.lists(request, min_size=1, max_size=30))
def test_batch_agrees_with_single(pols: dict[str, Any], reqs: list[dict[str, Any]]) -> None:
    e = engine("DENY", pols)
    reqs = [clean(r) for r in reqs]
    out = e.evaluate_batch(
        method=[r["method"] for r in reqs],
        path=[r["path"] for r in reqs],
        remote_ip=[r["remote_ip"] for r in reqs],
        destination_port=[r["destination_port"] for r in reqs],
        headers=[r["headers"] for r in reqs],
        principal=[r["principal"] for r in reqs],
        tls=[r["tls"] for r in reqs],
    )
    for i, r in enumerate(reqs):
        d = e.evaluate(**r)
        assert bool(out["allowed"][i]) == d.allowed
        idx = int(out["policy"][i])
        assert (e.policy_ids[idx] if idx >= 0 else None) == d.policy_id


def _column(values: list[Any], form: str) -> Any:
    """A string column as a list, or as numpy 'S' / 'U' arrays (which cannot hold None)."""
    if form == "list" or any(v is None for v in values):
        return values
    return np.array(values, dtype="S" if form == "S" else "U")


_ANY = {"permissions": [{"any": True}], "principals": [{"any": True}]}
_AUTHENTICATED = {"permissions": [{"any": True}], "principals": [{"authenticated": {}}]}
_NO_FIELDS = dict.fromkeys(
    ("authority", "scheme", "source_ip", "remote_ip", "direct_remote_ip", "destination_ip",
     "destination_port", "principal", "dns_sans", "subject", "sni", "tls")
)  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    pols=policies,
    reqs=st.lists(full_request, min_size=1, max_size=30),
    form=st.sampled_from(["list", "S", "U"]),
)
# Found by hypothesis: an empty uri_sans list describes a peer certificate in both forms (the
# single call read it as no certificate, the batch as one).
@example(
    pols={"-": _AUTHENTICATED, "0": _ANY},
    reqs=[{**_NO_FIELDS, "method": "GET", "path": "/", "headers": [], "uri_sans": []}],
    form="list",
)
def test_batch_with_every_column_agrees_with_single(
    pols: dict[str, Any], reqs: list[dict[str, Any]], form: str
) -> None:
    e = engine("ALLOW", pols)
    per_request = ("destination_port", "headers", "uri_sans", "dns_sans", "tls")
    cols: dict[str, Any] = {}
    for k in reqs[0]:
        values = [r[k] for r in reqs]
        # String attributes are also given as numpy arrays.
        cols[k] = values if k in per_request else _column(values, form)
    out = e.evaluate_batch(**cols)
    for i, r in enumerate(reqs):
        d = e.evaluate(**r)
        assert bool(out["allowed"][i]) == d.allowed, (i, r)
        idx = int(out["policy"][i])
        assert (e.policy_ids[idx] if idx >= 0 else None) == d.policy_id


@settings(max_examples=40, deadline=None)
@given(pols=policies, req=request)
def test_names_not_message_order_decide(pols: dict[str, Any], req: dict[str, Any]) -> None:
    req = clean(req)
    forward = engine("ALLOW", pols)
    backward = engine("ALLOW", dict(reversed(list(pols.items()))))
    deny = engine("DENY", pols)
    a, b, c = forward.evaluate(**req), backward.evaluate(**req), deny.evaluate(**req)
    assert a == b
    assert c.allowed != a.allowed
    assert c.policy_id == a.policy_id
