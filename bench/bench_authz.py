"""AuthorizationPolicy -> Envoy filter translation time (Authorizer) for 10/100/1,000 rules.

The policy set is the one issue 7 names: "principal P may METHOD on PATH prefix" ALLOW rules,
plus one DENY rule per ten ALLOW rules. Ten rules per policy, as real meshes group them.
Results and machine notes: BENCHMARKS.md, section "Authorization translation".
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("envoy.config.rbac.v3.rbac_pb2")

from meshcore import Authorizer

METHODS = ("GET", "POST", "PUT", "DELETE")


def policy_set(rules: int) -> list[dict[str, Any]]:
    policies: list[dict[str, Any]] = []
    per_policy = 10
    for p in range(max(1, rules // per_policy)):
        allow_rules = [
            {
                "from": [{"source": {"principals": [f"cluster.local/ns/ns{r}/sa/sa{r}"]}}],
                "to": [
                    {
                        "operation": {
                            "methods": [METHODS[r % len(METHODS)]],
                            "paths": [f"/api/v{r}/*"],
                        }
                    }
                ],
            }
            for r in range(p * per_policy, min(rules, (p + 1) * per_policy))
        ]
        policies.append(_policy(f"allow-{p}", "ALLOW", allow_rules))
        deny_rule = {
            "from": [{"source": {"notNamespaces": [f"ns{p}"]}}],
            "to": [{"operation": {"paths": [f"/admin/{p}/*"]}}],
        }
        policies.append(_policy(f"deny-{p}", "DENY", [deny_rule]))
    return policies


def _policy(name: str, action: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "foo"},
        "spec": {"action": action, "selector": {"matchLabels": {"app": "httpbin"}}, "rules": rules},
    }


def build(policies: list[dict[str, Any]]) -> int:
    authz = Authorizer.from_policies(policies, namespace="foo", labels={"app": "httpbin"})
    return len(authz.filters())


def select(policies: list[dict[str, Any]]) -> int:
    authz = Authorizer.from_policies(policies, namespace="foo", labels={"app": "httpbin"})
    return len(authz.policy_names)


@pytest.mark.parametrize("rules", [10, 100, 1000])
def test_filters(benchmark: Any, rules: int) -> None:
    """Validate, select, translate and build the protobuf messages (HTTP filters)."""
    policies = policy_set(rules)
    benchmark.group = f"authz translation, {rules} rules"
    assert benchmark(build, policies) == 2


@pytest.mark.parametrize("rules", [10, 100, 1000])
def test_select_and_validate(benchmark: Any, rules: int) -> None:
    """Only selection and validation (from_policies), to show where the time goes."""
    policies = policy_set(rules)
    benchmark.group = f"authz translation, {rules} rules"
    assert benchmark(select, policies) == len(policies)
