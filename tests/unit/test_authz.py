"""Hand-written cases for Authorizer: policy selection, filter order, errors and fallbacks.

The translation itself is pinned by Istio's goldens (test_authz_conformance.py); these pin
what the goldens do not: which policies apply to a workload, and how bad input is reported.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("envoy.config.rbac.v3.rbac_pb2")

import meshcore
from meshcore import Authorizer, ConfigError, UnsupportedFeatureError

LABELS = {"app": "httpbin", "version": "v1"}


def policy(
    name: str,
    namespace: str = "foo",
    *,
    action: str | None = None,
    selector: dict[str, str] | None = None,
    rules: Any = ({},),
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = dict(spec)
    if action:
        body["action"] = action
    if selector is not None:
        body["selector"] = {"matchLabels": selector}
    if rules is not None:
        body["rules"] = list(rules)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata,
        "spec": body,
    }


def build(policies: list[Any], **kwargs: Any) -> Authorizer:
    kwargs.setdefault("namespace", "foo")
    kwargs.setdefault("labels", LABELS)
    return Authorizer.from_policies(policies, **kwargs)


def policy_ids(authz: Authorizer, tcp: bool = False) -> list[tuple[str, list[str]]]:
    """(filter name, sorted enforced policy ids) per filter."""
    out = []
    for f in authz.filter_dicts(tcp):
        rules = f["typedConfig"].get("rules") or f["typedConfig"].get("shadowRules") or {}
        out.append((f["name"], sorted(rules.get("policies", {}))))
    return out


def test_exported_lazily_from_package() -> None:
    assert meshcore.Authorizer is Authorizer
    assert "Authorizer" in meshcore.__all__


# --- selection ----------------------------------------------------------------------------


def test_other_namespace_is_ignored() -> None:
    authz = build([policy("mine"), policy("theirs", namespace="bar")])
    assert authz.policy_names == ("foo/mine",)


def test_root_namespace_applies_mesh_wide_and_comes_first() -> None:
    authz = build([policy("local"), policy("global", namespace="istio-system")])
    assert authz.policy_names == ("istio-system/global", "foo/local")
    [(_, ids)] = policy_ids(authz)
    assert ids == ["ns[foo]-policy[local]-rule[0]", "ns[istio-system]-policy[global]-rule[0]"]


def test_root_namespace_is_configurable() -> None:
    authz = build([policy("global", namespace="mesh-root")], root_namespace="mesh-root")
    assert authz.policy_names == ("mesh-root/global",)
    assert build([policy("global", namespace="mesh-root")]).policy_names == ()


def test_selector_must_match_every_label() -> None:
    authz = build(
        [
            policy("all-labels", selector={"app": "httpbin", "version": "v1"}),
            policy("subset", selector={"app": "httpbin"}),
            policy("other-version", selector={"app": "httpbin", "version": "v2"}),
            policy("other-app", selector={"app": "productpage"}),
            policy("empty-selector", selector={}),
        ]
    )
    assert set(authz.policy_names) == {"foo/all-labels", "foo/subset", "foo/empty-selector"}


def test_root_namespace_selector_still_applies() -> None:
    authz = build(
        [
            policy("match", namespace="istio-system", selector={"app": "httpbin"}),
            policy("no-match", namespace="istio-system", selector={"app": "other"}),
        ]
    )
    assert authz.policy_names == ("istio-system/match",)


def test_target_ref_selects_only_the_named_gateway() -> None:
    gateway_ref = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}
    service_ref = {"group": "", "kind": "Service", "name": "httpbin"}
    policies = [
        policy("to-gateway", targetRefs=[gateway_ref]),
        policy("to-service", targetRef=service_ref),
    ]
    assert build(policies).policy_names == ()
    gateway_labels = {"gateway.networking.k8s.io/gateway-name": "gw"}
    assert build(policies, labels=gateway_labels).policy_names == ("foo/to-gateway",)


def test_no_policy_means_no_filter() -> None:
    assert build([]).filters() == []
    assert build([policy("theirs", namespace="bar")]).filters(tcp=True) == []


def test_a_single_manifest_is_accepted() -> None:
    assert Authorizer.from_policies(policy("p"), namespace="foo").policy_names == ("foo/p",)


def test_empty_documents_are_skipped() -> None:
    assert build([None, policy("p")]).policy_names == ("foo/p",)


def test_loaded_resources_are_accepted() -> None:
    class Resource:
        file = "policies.yaml"
        line = 7

        def __init__(self, manifest: dict[str, Any]) -> None:
            self._manifest = manifest

        def manifest(self) -> dict[str, Any]:
            return self._manifest

    assert build([Resource(policy("p"))]).policy_names == ("foo/p",)
    bad = policy("p", rules=[{"when": [{"key": "nope", "values": ["x"]}]}])
    with pytest.raises(ConfigError) as err:
        build([Resource(bad)])
    [problem] = err.value.errors()
    assert (problem.file, problem.line) == ("policies.yaml", 7)


# --- filters ------------------------------------------------------------------------------


def test_filter_order_is_custom_audit_deny_allow() -> None:
    providers = [{"name": "ext", "envoyExtAuthzGrpc": {"service": "ext.foo.svc", "port": 9000}}]
    authz = build(
        [
            policy("a", action="ALLOW"),
            policy("d", action="DENY"),
            policy("au", action="AUDIT"),
            policy("c", action="CUSTOM", provider={"name": "ext"}),
        ],
        providers=providers,
    )
    names = [f["name"] for f in authz.filter_dicts()]
    assert names == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.rbac",
        "envoy.filters.http.rbac",
        "envoy.filters.http.rbac",
    ]
    actions = [f["typedConfig"].get("rules", {}).get("action") for f in authz.filter_dicts()]
    # ALLOW is the enum default, so proto-JSON omits it.
    assert actions == [None, None, "LOG", "DENY", None]
    tcp_names = [f["name"] for f in authz.filter_dicts(tcp=True)]
    assert tcp_names[:2] == ["envoy.filters.network.rbac", "envoy.filters.network.ext_authz"]


def test_filters_are_protobuf_messages_and_fresh_copies() -> None:
    authz = build([policy("p")])
    [first] = authz.filters()
    assert type(first).DESCRIPTOR.full_name == (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter"
    )
    first.name = "changed"
    assert authz.filters()[0].name == "envoy.filters.http.rbac"
    [tcp] = authz.filters(tcp=True)
    assert type(tcp).DESCRIPTOR.full_name == "envoy.config.listener.v3.Filter"


def test_dry_run_goes_to_shadow_rules_and_bad_annotation_is_enforced() -> None:
    authz = build(
        [
            policy("dry", annotations={"istio.io/dry-run": "true"}),
            policy("typo", annotations={"istio.io/dry-run": "yes"}),
        ]
    )
    [config] = [f["typedConfig"] for f in authz.filter_dicts()]
    assert list(config["shadowRules"]["policies"]) == ["ns[foo]-policy[dry]-rule[0]"]
    assert list(config["rules"]["policies"]) == ["ns[foo]-policy[typo]-rule[0]"]
    [problem] = authz.problems
    assert problem.severity == "warning"
    assert problem.name == "typo"
    assert "enforced" in problem.message


def test_allow_rule_needing_http_is_dropped_on_tcp_but_deny_rule_widens() -> None:
    rule = {"to": [{"operation": {"methods": ["GET"], "ports": ["8080"]}}]}
    allow = build([policy("p", action="ALLOW", rules=[rule])]).filter_dicts(tcp=True)
    assert allow[0]["typedConfig"]["rules"] == {}  # present: ALLOW nothing
    deny = build([policy("p", action="DENY", rules=[rule])]).filter_dicts(tcp=True)
    [permission] = deny[0]["typedConfig"]["rules"]["policies"]["ns[foo]-policy[p]-rule[0]"][
        "permissions"
    ]
    assert permission == {
        "andRules": {"rules": [{"orRules": {"rules": [{"destinationPort": 8080}]}}]}
    }


def test_service_accounts_default_to_the_policy_namespace() -> None:
    rule = {"from": [{"source": {"serviceAccounts": ["sa", "other/sa2"]}}]}
    config = build([policy("p", rules=[rule])]).filter_dicts()[0]["typedConfig"]
    principal = config["rules"]["policies"]["ns[foo]-policy[p]-rule[0]"]["principals"][0]
    regexes = [
        i["authenticated"]["principalName"]["safeRegex"]["regex"]
        for i in principal["andIds"]["ids"][0]["orIds"]["ids"]
    ]
    assert regexes == [
        "spiffe://.+/ns/foo/(.+/|)sa/sa(/.+)?",
        "spiffe://.+/ns/other/(.+/|)sa/sa2(/.+)?",
    ]


def test_trust_domains_expand_to_aliases() -> None:
    rule = {"from": [{"source": {"trustDomains": ["td1"]}}]}
    config = build([policy("p", rules=[rule])], trust_domain="td1", trust_domain_aliases=["old"])
    principal = config.filter_dicts()[0]["typedConfig"]["rules"]["policies"][
        "ns[foo]-policy[p]-rule[0]"
    ]["principals"][0]
    prefixes = [
        i["authenticated"]["principalName"]["prefix"]
        for i in principal["andIds"]["ids"][0]["orIds"]["ids"]
    ]
    assert prefixes == ["spiffe://td1/", "spiffe://old/"]


# --- CUSTOM providers -----------------------------------------------------------------------


def test_undefined_provider_fails_closed() -> None:
    authz = build([policy("c", action="CUSTOM", provider={"name": "missing"})])
    [(name, ids)] = policy_ids(authz)
    assert name == "envoy.filters.http.rbac"
    assert ids == [
        "istio-ext-authz-missing-ns[foo]-policy[c]-rule[0]-deny-due-to-bad-CUSTOM-action"
    ]
    assert authz.filter_dicts()[0]["typedConfig"]["rules"]["action"] == "DENY"
    [problem] = authz.problems
    assert "not defined" in problem.message


def test_provider_not_in_service_registry_fails_closed() -> None:
    providers = {"ext": {"envoyExtAuthzHttp": {"service": "foo/nope.foo.svc", "port": 80}}}
    authz = build(
        [policy("c", action="CUSTOM", provider={"name": "ext"})],
        providers=providers,
        services=["foo/ext.foo.svc.cluster.local"],
    )
    assert [n for n, _ in policy_ids(authz)] == ["envoy.filters.http.rbac"]
    assert "could not find service" in authz.problems[0].message


def test_ambiguous_provider_host_fails_closed() -> None:
    providers = {"ext": {"envoyExtAuthzGrpc": {"service": "ext.svc", "port": 80}}}
    authz = build(
        [policy("c", action="CUSTOM", provider={"name": "ext"})],
        providers=providers,
        services=["a/ext.svc", "b/ext.svc"],
    )
    assert "multiple namespaces" in authz.problems[0].message
    assert authz.filter_dicts()[0]["typedConfig"]["rules"]["action"] == "DENY"


def test_http_provider_has_no_tcp_filter() -> None:
    providers = {"ext": {"envoyExtAuthzHttp": {"service": "ext.foo.svc", "port": 80}}}
    authz = build([policy("c", action="CUSTOM", provider={"name": "ext"})], providers=providers)
    assert authz.filters(tcp=True) == []
    assert len(authz.filters()) == 2


def test_provider_timeouts_accept_go_durations() -> None:
    providers = {"ext": {"envoyExtAuthzGrpc": {"service": "e.svc", "port": 80, "timeout": "1m30s"}}}
    authz = build([policy("c", action="CUSTOM", provider={"name": "ext"})], providers=providers)
    ext_authz = authz.filter_dicts()[1]["typedConfig"]
    assert ext_authz["grpcService"]["timeout"] == "90s"
    assert authz.filters()[1].typed_config.value  # parses into the real ExtAuthz message


def test_unknown_provider_field_is_unsupported() -> None:
    providers = {"ext": {"envoyExtAuthzGrpc": {"service": "e.svc", "port": 80, "retries": 3}}}
    with pytest.raises(UnsupportedFeatureError) as err:
        build([policy("c", action="CUSTOM", provider={"name": "ext"})], providers=providers)
    assert err.value.errors()[0].path == "extensionProviders[0].envoyExtAuthzGrpc.retries"


# --- errors ---------------------------------------------------------------------------------


def errors_of(*policies: Any) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as err:
        build(list(policies))
    return [(p.name, p.path, p.message) for p in err.value.errors()]


def test_every_problem_is_reported_with_its_path() -> None:
    bad = policy(
        "bad",
        rules=[
            {
                "from": [{"source": {"ipBlocks": ["10.0.0.300"], "principal": ["typo"]}}],
                "to": [{"operation": {"ports": ["http", "70000"], "paths": ["/a/{**}/{*}"]}}],
                "when": [
                    {"key": "request.headers", "values": ["x"]},
                    {"key": "source.ip", "notValues": ["nope"]},
                    {"key": "destination.port"},
                    {"key": "unknown.attr", "values": ["x"]},
                ],
            }
        ],
    )
    paths = [path for _, path, _ in errors_of(bad)]
    assert paths == [
        "spec.rules[0].from[0].source.principal",
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "spec.rules[0].to[0].operation.ports[0]",
        "spec.rules[0].to[0].operation.ports[1]",
        "spec.rules[0].to[0].operation.paths[0]",
        "spec.rules[0].when[0].key",
        "spec.rules[0].when[1].notValues[0]",
        "spec.rules[0].when[2]",
        "spec.rules[0].when[3].key",
    ]


def test_problem_names_the_policy() -> None:
    with pytest.raises(ConfigError) as err:
        build([policy("bad", action="REJECT")])
    assert "AuthorizationPolicy foo/bad: spec.action: unknown action 'REJECT'" in str(err.value)


@pytest.mark.parametrize(
    ("spec_change", "path"),
    [
        ({"action": "CUSTOM"}, "spec.provider"),
        ({"action": "CUSTOM", "provider": {}}, "spec.provider.name"),
        ({"selector": {"app": "x"}}, "spec.selector.app"),
        ({"targetRefs": [{"kind": "Gateway"}]}, "spec.targetRefs[0]"),
        ({"action": "DENY", "provider": {"name": "x"}}, "spec.provider"),
        ({"selector": {"matchLabels": {}}, "targetRef": {"kind": "Gateway"}}, "spec.selector"),
        ({"rules": [{"from": [{"source": {}}]}]}, "spec.rules[0].from[0].source"),
        ({"rules": [{"to": [{}]}]}, "spec.rules[0].to[0].operation"),
        (
            {"rules": [{"from": [{"source": {"namespaces": "ns"}}]}]},
            "spec.rules[0].from[0].source.namespaces",
        ),
        ({"rules": "all"}, "spec.rules"),
        (
            {"rules": [{"when": [{"key": "request.auth.claims", "values": ["x"]}]}]},
            "spec.rules[0].when[0].key",
        ),
        (
            {"rules": [{"when": [{"key": "experimental.envoy.filters.x", "values": ["x"]}]}]},
            "spec.rules[0].when[0].key",
        ),
        (
            {"rules": [{"to": [{"operation": {"paths": ["/a{*}"]}}]}]},
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            {"rules": [{"to": [{"operation": {"paths": ["/a/{name}/{*}"]}}]}]},
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        ({"action": "DENY"}, "spec.rules"),
        ({"action": "CUSTOM", "provider": {"name": "x"}}, "spec.rules"),
        (
            {
                "action": "CUSTOM",
                "provider": {"name": "x"},
                "rules": [{"from": [{"source": {"principals": ["a"]}}]}],
            },
            "spec.rules[0].from[0].source.principals",
        ),
        (
            {
                "action": "CUSTOM",
                "provider": {"name": "x"},
                "rules": [{"when": [{"key": "request.auth.claims[iss]", "values": ["a"]}]}],
            },
            "spec.rules[0].when[0].key",
        ),
        (
            {"rules": [{"from": [{"source": {"principals": ["a"], "serviceAccounts": ["b"]}}]}]},
            "spec.rules[0].from[0].source",
        ),
        (
            {"rules": [{"from": [{"source": {"serviceAccounts": ["ns/sa/x"]}}]}]},
            "spec.rules[0].from[0].source.serviceAccounts[0]",
        ),
        (
            {"rules": [{"when": [{"key": "source.serviceAccount", "values": ["sa-*"]}]}]},
            "spec.rules[0].when[0].values[0]",
        ),
        ({"rules": [{"from": []}]}, "spec.rules[0].from"),
        ({"rules": [{"to": [None]}]}, "spec.rules[0].to[0]"),
        ({"rules": [None]}, "spec.rules[0]"),
        (
            {"rules": [{"when": [{"key": "destination.labels[app]", "values": ["a"]}]}]},
            "spec.rules[0].when[0].key",
        ),
        ({"selector": {"matchLabels": {"app": "http*"}}}, "spec.selector.matchLabels.app"),
        ({"rules": [{"typo": []}]}, "spec.rules[0].typo"),
        ({"selectr": {}}, "spec.selectr"),
    ],
)
def test_invalid_spec(spec_change: dict[str, Any], path: str) -> None:
    p = policy("bad", rules=None)
    p["spec"].update(spec_change)
    if spec_change.get("action") == "CUSTOM" and "provider" not in spec_change:
        p["spec"]["provider"] = None
    found = [pp for _, pp, _ in errors_of(p)]
    assert path in found


def test_manifest_shape_errors() -> None:
    no_ns = policy("p")
    del no_ns["metadata"]["namespace"]
    wrong_kind = policy("q")
    wrong_kind["kind"] = "PeerAuthentication"
    old_api = policy("r")
    old_api["apiVersion"] = "security.istio.io/v1alpha1"
    problems = errors_of(no_ns, wrong_kind, old_api, "not a manifest")
    assert [(n, p) for n, p, _ in problems] == [
        ("p", "metadata.namespace"),
        ("q", "kind"),
        ("r", "apiVersion"),
        ("", "policies[3]"),
    ]


def test_policies_for_other_workloads_are_not_validated() -> None:
    # As in Istio, only the policies that apply contribute; a broken one elsewhere is not ours.
    other = policy("other", namespace="bar", rules=[{"when": [{"key": "bogus", "values": ["x"]}]}])
    assert build([other]).policy_names == ()


def test_deny_rule_with_only_http_attributes_warns() -> None:
    http_only = {"to": [{"operation": {"methods": ["GET"]}}]}
    with_port = {"to": [{"operation": {"methods": ["GET"], "ports": ["80"]}}]}
    authz = build([policy("d", action="DENY", rules=[http_only, with_port])])
    [warning] = authz.problems
    assert (warning.path, warning.severity) == ("spec.rules[0]", "warning")
    assert "denies all traffic to TCP ports" in warning.message


def test_selector_without_labels_warns() -> None:
    [warning] = build([policy("p", selector={})]).problems
    assert warning.path == "spec.selector"


def test_ext_authz_durations_are_read_by_the_config_parser() -> None:
    # One duration parser: an ext_authz provider's timeout is read exactly as the config's
    # durations are (in whole nanoseconds, not through a float; Go's range).
    from meshcore.config.validate import parse_duration as config_duration
    from meshcore.security._extauthz import parse_duration

    for text in ["9007199254740993ns", "0.1000000005s", "1h0.5s", "250ms"]:
        ns = config_duration(text)
        assert ns is not None
        assert parse_duration(text) == {"seconds": ns // 10**9, "nanos": ns % 10**9}
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("3000000h")  # longer than Go's time.Duration: Istio refuses it


# --- policies the loader validated (issue 12: validate once) ---------------------------------


def test_loaded_policies_are_trusted_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy loaded by meshcore.config carries what its validation found: the Authorizer
    builds the same filters and reports the same warnings (at the resource's file and line)
    as for the manifest, without running the checks again."""
    from meshcore.config import load_objects
    from meshcore.security import _validate

    manifests = [
        policy("deny-http", action="DENY", rules=[{"to": [{"operation": {"methods": ["GET"]}}]}]),
        policy("all", selector={}),  # a selector without labels: a warning
        policy("allow", rules=[{"from": [{"source": {"principals": ["a/b"]}}]}]),
    ]
    expected = build(manifests)
    loaded = load_objects(manifests).authorization_policies
    assert all(p.checked_warnings is not None for p in loaded)
    calls: list[str] = []
    real = _validate.check_spec

    def counting(c: Any, spec: Any) -> None:
        calls.append(c.name)
        real(c, spec)

    monkeypatch.setattr(_validate, "check_spec", counting)
    trusted = build(list(loaded))
    assert calls == []
    assert trusted.filter_dicts() == expected.filter_dicts()
    assert trusted.filter_dicts(tcp=True) == expected.filter_dicts(tcp=True)
    assert [(p.path, p.message, p.name, p.severity) for p in trusted.problems] == [
        (p.path, p.message, p.name, p.severity) for p in expected.problems
    ]
    assert len(trusted.problems) == 2
    assert {(p.file, p.line) for p in trusted.problems} == {("<objects>", 0)}
    # A manifest (or a resource not validated by the loader) is still checked.
    build(manifests)
    assert calls == ["deny-http", "all", "allow"]


def test_loader_checks_the_policy_the_model_holds() -> None:
    """A null field is not set: the loader checks `source: {principals: null}` as the empty
    source the model holds (Istio refuses it), rather than loading a policy that the
    Authorizer, trusting the loader, would build from an empty source."""
    from meshcore.config import load_objects

    bad = policy("p", action="DENY", rules=[{"from": [{"source": {"principals": None}}]}])
    with pytest.raises(ConfigError) as caught:
        load_objects([bad])
    assert [(p.path, p.severity) for p in caught.value.errors() if "empty" in p.message] == [
        ("spec.rules[0].from[0].source", "error")
    ]
