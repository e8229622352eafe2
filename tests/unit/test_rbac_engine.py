"""Hand-pinned cases for RbacEngine and Authorizer.evaluate (real Envoy is the oracle in
tests/envoy/test_rbac_envoy_diff.py; these pin what a plaintext differential cannot reach:
TLS principals, absent attributes, errors, the batch API and Istio's layering)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("envoy.extensions.filters.http.rbac.v3.rbac_pb2")

from envoy.config.rbac.v3 import rbac_pb2 as config_rbac
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac
from google.protobuf import any_pb2, json_format

import meshcore
from meshcore import Authorizer, ConfigError, RbacEngine, UnsupportedFeatureError

SA = "spiffe://cluster.local/ns/default/sa/"


def filter_config(rules: Any = None, shadow: Any = None, **extra: Any) -> http_rbac.RBAC:
    d: dict[str, Any] = dict(extra)
    if rules is not None:
        d["rules"] = rules
    if shadow is not None:
        d["shadow_rules"] = shadow
    return json_format.ParseDict(d, http_rbac.RBAC())


def method(m: str) -> dict[str, Any]:
    return {"header": {"name": ":method", "string_match": {"exact": m}}}


def principal(name: str) -> dict[str, Any]:
    return {"authenticated": {"principal_name": {"exact": SA + name}}}


ANY = {"any": True}


def test_exported_from_meshcore() -> None:
    assert meshcore.RbacEngine is RbacEngine
    assert "RbacEngine" in meshcore.__all__


def test_allow_deny_and_effective_policy_in_name_order() -> None:
    rules = {
        "action": "DENY",
        "policies": {
            "b": {"permissions": [ANY], "principals": [ANY]},
            "a": {"permissions": [method("DELETE")], "principals": [ANY]},
        },
    }
    engine = RbacEngine.from_proto(filter_config(rules))
    assert engine.policy_ids == ("a", "b")
    assert engine.action == "DENY"
    d = engine.evaluate(method="DELETE", path="/")
    assert (d.allowed, d.policy_id, d.shadow_allowed, d.shadow_policy_id) == (
        False,
        "a",
        None,
        None,
    )
    assert engine.evaluate(method="GET").policy_id == "b"
    assert not engine.evaluate(method="GET")


def test_message_bytes_any_and_plain_rbac_forms() -> None:
    cfg = filter_config({"policies": {"p": {"permissions": [ANY], "principals": [ANY]}}})
    packed = any_pb2.Any()
    packed.Pack(cfg)
    plain = json_format.ParseDict(
        {"policies": {"p": {"permissions": [ANY], "principals": [ANY]}}}, config_rbac.RBAC()
    )
    for source in (
        RbacEngine.from_proto(cfg),
        RbacEngine.from_proto(cfg.SerializeToString()),
        RbacEngine.from_proto(packed),
        RbacEngine.from_proto(plain),
        RbacEngine.from_proto(plain.SerializeToString(), message_type="envoy.config.rbac.v3.RBAC"),
    ):
        assert source.evaluate().policy_id == "p"
    # No rules at all: the filter allows everything.
    assert RbacEngine.from_proto(b"").evaluate().allowed
    # An empty envoy.config.rbac.v3.RBAC is ALLOW with no policies: it denies everything.
    assert not RbacEngine.from_proto(b"", message_type="envoy.config.rbac.v3.RBAC").evaluate()
    with pytest.raises(TypeError, match="expected"):
        RbacEngine.from_proto(b"", message_type="envoy.config.route.v3.RouteConfiguration")


def test_authenticated_principals_and_tls() -> None:
    rules = {
        "policies": {
            "any-tls": {"permissions": [method("GET")], "principals": [{"authenticated": {}}]},
            "web": {"permissions": [ANY], "principals": [principal("web")]},
        }
    }
    engine = RbacEngine.from_proto(filter_config(rules))
    # Plaintext never matches `authenticated`, even with no principal name.
    assert not engine.evaluate(method="GET").allowed
    # TLS without a client certificate matches `authenticated: {}`.
    assert engine.evaluate(method="GET", tls=True).policy_id == "any-tls"
    assert engine.evaluate(method="POST", principal=SA + "web").policy_id == "web"
    assert engine.evaluate(method="POST", uri_sans=["x", SA + "web"]).policy_id == "web"
    assert engine.evaluate(method="POST", dns_sans=[SA + "web"]).policy_id == "web"
    assert engine.evaluate(method="POST", subject=SA + "web").policy_id == "web"
    assert not engine.evaluate(method="POST", principal=SA + "other").allowed
    with pytest.raises(ValueError, match="tls=False"):
        engine.evaluate(principal=SA + "web", tls=False)


def test_omitted_attributes_are_absent() -> None:
    rules = {
        "action": "DENY",
        "policies": {
            "not-internal": {
                "permissions": [ANY],
                "principals": [
                    {"not_id": {"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}}}
                ],
            },
            "port": {"permissions": [{"destination_port": 8080}], "principals": [ANY]},
        },
    }
    engine = RbacEngine.from_proto(filter_config(rules))
    # Without remote_ip, `not remote_ip in 10/8` matches (the inner rule cannot).
    assert engine.evaluate().policy_id == "not-internal"
    assert engine.evaluate(remote_ip="10.1.2.3").allowed
    assert engine.evaluate(remote_ip="10.1.2.3", destination_port=8080).policy_id == "port"
    with pytest.raises(ValueError, match="not an IP"):
        engine.evaluate(remote_ip="nope")


def test_shadow_rules_are_reported_not_enforced() -> None:
    shadow = {"action": "DENY", "policies": {"dry": {"permissions": [ANY], "principals": [ANY]}}}
    engine = RbacEngine.from_proto(
        filter_config(None, shadow, shadow_rules_stat_prefix="istio_dry_run_deny_")
    )
    d = engine.evaluate(method="GET")
    assert (d.allowed, d.policy_id, d.shadow_allowed, d.shadow_policy_id) == (
        True,
        None,
        False,
        "dry",
    )
    assert engine.shadow_rules_stat_prefix == "istio_dry_run_deny_"
    assert engine.shadow_policy_ids == ("dry",)


def test_unsupported_rules_fail_closed_with_field_paths() -> None:
    cel = {
        "policies": {
            "p": {
                "permissions": [ANY],
                "principals": [ANY],
                "condition": {"const_expr": {"bool_value": True}},
            }
        }
    }
    with pytest.raises(UnsupportedFeatureError) as e:
        RbacEngine.from_proto(filter_config(cel))
    assert [p.path for p in e.value.errors()] == ['rules.policies["p"].condition']
    sourced = {
        "policies": {
            "p": {
                "permissions": [ANY],
                "principals": [{"sourced_metadata": {"metadata_matcher": {"filter": "f"}}}],
            }
        }
    }
    with pytest.raises(UnsupportedFeatureError, match="sourced_metadata"):
        RbacEngine.from_proto(filter_config(None, sourced))
    bad = {
        "policies": {
            "p": {
                "permissions": [{"url_path": {"path": {"safe_regex": {"regex": "("}}}}],
                "principals": [{"source_ip": {"address_prefix": "x", "prefix_len": 8}}],
            }
        }
    }
    with pytest.raises(ConfigError) as e2:
        RbacEngine.from_proto(filter_config(bad))
    paths = [p.path for p in e2.value.errors()]
    assert paths == [
        'rules.policies["p"].permissions[0].url_path.path.safe_regex.regex',
        'rules.policies["p"].principals[0].source_ip.address_prefix',
    ]


def test_metadata_matchers_use_the_metadata_given() -> None:
    jwt = "envoy.filters.http.jwt_authn"

    def claim(key: str, value: dict[str, Any]) -> dict[str, Any]:
        path = [{"key": "payload"}, {"key": key}]
        return {"metadata": {"filter": jwt, "path": path, "value": value}}

    rules = {
        "policies": {
            "aud": {
                "permissions": [ANY],
                "principals": [
                    claim("aud", {"list_match": {"one_of": {"string_match": {"exact": "api"}}}})
                ],
            },
            "admin": {
                "permissions": [ANY],
                "principals": [claim("admin", {"bool_match": True})],
            },
            "level": {
                "permissions": [ANY],
                "principals": [claim("level", {"double_match": {"range": {"start": 2, "end": 5}}})],
            },
        }
    }
    engine = RbacEngine.from_proto(filter_config(rules))

    def decide(payload: dict[str, Any] | None) -> str | None:
        md = None if payload is None else {jwt: {"payload": payload}}
        return engine.evaluate(metadata=md).policy_id

    assert decide({"aud": ["web", "api"]}) == "aud"
    assert decide({"aud": "api"}) is None  # a string is not a list
    assert decide({"admin": True, "aud": ["api"]}) == "admin"  # name order
    assert decide({"level": 4.5}) == "level"
    assert decide({"level": 5}) is None
    assert decide(None) is None
    with pytest.raises(TypeError, match="metadata"):
        engine.evaluate(metadata={jwt: {"payload": {"x": object()}}})
    # The same decisions from one batch with a metadata column.
    payloads: list[dict[str, Any] | None] = [
        {"aud": ["web", "api"]},
        {"aud": "api"},
        {"admin": True, "aud": ["api"]},
        {"level": 4.5},
        None,
    ]
    out = engine.evaluate_batch(
        metadata=[None if p is None else {jwt: {"payload": p}} for p in payloads]
    )
    ids = [engine.policy_ids[i] if i >= 0 else None for i in out["policy"].tolist()]
    assert ids == [decide(p) for p in payloads]


def test_explain_names_the_permission_and_principal() -> None:
    rules = {
        "policies": {
            "a": {
                "permissions": [method("PUT"), method("GET")],
                "principals": [principal("x"), ANY],
            },
            "b": {"permissions": [method("POST")], "principals": [ANY]},
        }
    }
    engine = RbacEngine.from_proto(filter_config(rules))
    e = engine.explain(method="GET")
    assert e["allowed"] is True
    assert e["policy_id"] == "a"
    first, second = e["rules"]["policies"]
    assert (first["matched"], first["permission"], first["principal"]) == (True, 1, 1)
    assert second["matched"] is False
    assert "no permission matches" in second["reason"]
    assert e["shadow_rules"] is None


def test_evaluate_batch_matches_evaluate() -> None:
    rules = {
        "action": "ALLOW",
        "policies": {
            f"p{i:02}": {
                "permissions": [
                    {
                        "and_rules": {
                            "rules": [method(m), {"url_path": {"path": {"prefix": f"/svc{i}"}}}]
                        }
                    }
                ],
                "principals": [principal(f"sa{i % 7}")],
            }
            for i, m in enumerate(["GET", "POST"] * 20)
        },
    }
    engine = RbacEngine.from_proto(filter_config(rules))
    rng = np.random.default_rng(7)
    n = 500
    methods = rng.choice(["GET", "POST", "PUT"], n).tolist()
    paths = [f"/svc{int(i)}/x" for i in rng.integers(0, 45, n)]
    principals = [SA + f"sa{int(i)}" if i < 8 else None for i in rng.integers(0, 10, n)]
    out = engine.evaluate_batch(method=methods, path=paths, principal=principals)
    assert out["allowed"].dtype == np.bool_
    assert out["policy"].dtype == np.int32
    for i in range(n):
        d = engine.evaluate(method=methods[i], path=paths[i], principal=principals[i])
        assert bool(out["allowed"][i]) == d.allowed
        pid = engine.policy_ids[out["policy"][i]] if out["policy"][i] >= 0 else None
        assert pid == d.policy_id
    # Scalars broadcast; columns must agree in length.
    one = engine.evaluate_batch(method="GET", path=["/svc0", "/svc2"], principal=SA + "sa0")
    assert one["allowed"].tolist() == [True, False]
    with pytest.raises(ValueError, match="one entry per request"):
        engine.evaluate_batch(method=["GET"], path=["/a", "/b"])
    # explain() reads its keywords as a batch of one: the same checks, the same decision.
    with pytest.raises(TypeError, match="unexpected keyword argument 'pth'"):
        engine.explain(pth="/svc0")
    with pytest.raises(ValueError, match="tls=False contradicts"):
        engine.explain(principal=SA + "sa0", tls=False)
    why = engine.explain(method="GET", path="/svc0/x", principal=SA + "sa0", uri_sans=[])
    assert (
        why["policy_id"]
        == engine.evaluate(method="GET", path="/svc0/x", principal=SA + "sa0").policy_id
    )
    # numpy string arrays ('S' and 'U') are read without a Python object per request.
    for dtype in ("S", "U"):
        cols = {
            "method": np.array(methods, dtype=dtype),
            "path": np.array(paths, dtype=dtype),
            "principal": principals,
        }
        again = engine.evaluate_batch(**cols)
        assert again["policy"].tolist() == out["policy"].tolist()
    # Bad values name the request and the column.
    with pytest.raises(ValueError, match='request 1: source_ip: "x" is not an IP address'):
        engine.evaluate_batch(method="GET", source_ip=["10.0.0.1", "x"])
    with pytest.raises(ValueError, match="request 0: tls=False contradicts"):
        engine.evaluate_batch(principal=[SA + "sa0"], tls=[False])
    with pytest.raises(TypeError, match=r"uri_sans\[0\] must be a list of str"):
        engine.evaluate_batch(uri_sans=["spiffe://x"])
    with pytest.raises(TypeError, match=r"path\[1\] must be str or None"):
        engine.evaluate_batch(path=["/a", 3])


# --- Authorizer.evaluate: Istio's layering ----------------------------------------------------


def policy(
    name: str, action: str | None, rules: list[Any], ns: str = "foo", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"rules": rules, **spec}
    if action:
        body["action"] = action
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": body,
    }


def authz(*policies: dict[str, Any], **kw: Any) -> Authorizer:
    return Authorizer.from_policies(
        list(policies), namespace="foo", labels={"app": "httpbin"}, **kw
    )


def test_no_policy_allows() -> None:
    d = authz().evaluate(method="GET", path="/")
    assert (d.allowed, d.action, d.policy_id) == (True, None, None)


def test_deny_before_allow_and_allow_needs_a_match() -> None:
    a = authz(
        policy("allow-get", "ALLOW", [{"to": [{"operation": {"methods": ["GET"]}}]}]),
        policy("deny-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin*"]}}]}]),
        policy("audit-all", "AUDIT", [{}]),
    )
    d = a.evaluate(method="GET", path="/x")
    assert (d.allowed, d.action, d.policy_id) == (
        True,
        "ALLOW",
        "ns[foo]-policy[allow-get]-rule[0]",
    )
    assert d.audit_policy_id == "ns[foo]-policy[audit-all]-rule[0]"
    d = a.evaluate(method="GET", path="/admin/x")
    assert (d.allowed, d.action, d.policy_id) == (
        False,
        "DENY",
        "ns[foo]-policy[deny-admin]-rule[0]",
    )
    d = a.evaluate(method="POST", path="/x")
    assert (d.allowed, d.action, d.policy_id) == (False, "ALLOW", None)
    # A DENY policy alone: what it does not match is allowed.
    only_deny = authz(
        policy("deny-admin", "DENY", [{"to": [{"operation": {"paths": ["/admin*"]}}]}])
    )
    assert only_deny.evaluate(method="POST", path="/x").allowed


def test_principals_and_dry_run() -> None:
    a = authz(
        policy(
            "web",
            "ALLOW",
            [{"from": [{"source": {"principals": ["cluster.local/ns/default/sa/web"]}}]}],
        ),
        policy(
            "dry-deny",
            "DENY",
            [{"to": [{"operation": {"methods": ["DELETE"]}}]}],
        )
        | {
            "metadata": {
                "name": "dry-deny",
                "namespace": "foo",
                "annotations": {"istio.io/dry-run": "true"},
            }
        },
    )
    d = a.evaluate(method="DELETE", path="/", principal=SA + "web")
    assert d.allowed
    assert d.policy_id == "ns[foo]-policy[web]-rule[0]"
    assert d.dry_run == (("DENY", False, "ns[foo]-policy[dry-deny]-rule[0]"),)
    assert not a.evaluate(method="GET", path="/", principal=SA + "db").allowed
    assert not a.evaluate(method="GET", path="/").allowed  # plaintext: no principal


def test_custom_provider_decides_what_it_matches() -> None:
    providers = [
        {
            "name": "ext",
            "envoyExtAuthzHttp": {"service": "ext.foo.svc.cluster.local", "port": 9000},
        }
    ]
    a = authz(
        policy(
            "custom",
            "CUSTOM",
            [{"to": [{"operation": {"paths": ["/private*"]}}]}],
            provider={"name": "ext"},
        ),
        providers=providers,
    )
    d = a.evaluate(method="GET", path="/private/x")
    assert (d.allowed, d.action, d.custom_provider) == (False, "CUSTOM", "ext")
    assert d.policy_id == "ns[foo]-policy[custom]-rule[0]"
    d = a.evaluate(method="GET", path="/private/x", custom_allowed=True)
    assert (d.allowed, d.custom_provider) == (True, "ext")
    d = a.evaluate(method="GET", path="/public")
    assert (d.allowed, d.custom_provider) == (True, None)


def test_network_filter_refuses_header_rules_and_ignores_http_attributes() -> None:
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac

    def network(rules: dict[str, Any]) -> network_rbac.RBAC:
        return json_format.ParseDict({"rules": rules, "stat_prefix": "tcp"}, network_rbac.RBAC())

    with pytest.raises(ConfigError) as e:
        RbacEngine.from_proto(
            network(
                {
                    "policies": {
                        "p": {"permissions": [{"not_rule": method("GET")}], "principals": [ANY]}
                    }
                }
            )
        )
    assert [p.path for p in e.value.errors()] == [
        'rules.policies["p"].permissions[0].not_rule.header'
    ]
    engine = RbacEngine.from_proto(
        network(
            {
                "action": "DENY",
                "policies": {
                    "path": {
                        "permissions": [{"url_path": {"path": {"prefix": "/"}}}],
                        "principals": [ANY],
                    },
                    "port": {"permissions": [{"destination_port": 9000}], "principals": [ANY]},
                },
            }
        )
    )
    # A TCP connection has no request: url_path never matches, even when a path is given.
    assert engine.evaluate(path="/x").allowed
    assert engine.evaluate(path="/x", destination_port=9000).policy_id == "port"
