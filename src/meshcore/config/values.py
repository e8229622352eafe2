"""Plain values of the loaded mesh: deep-frozen copies of specs and back, Istio's short host
names, label selectors. No resource types here (see :mod:`meshcore.config.model`)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

DEFAULT_DOMAIN = "cluster.local"


def freeze(value: Any) -> Any:
    """A deep read-only copy: mappings become MappingProxyType, lists become tuples.

    Fields set to null are dropped: null means "not set", as the Kubernetes API server treats
    it, so readers can rely on ``spec.get(field, default)``.
    """
    if isinstance(value, dict):
        return MappingProxyType({k: freeze(v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain-Python (dict/list) copy of a frozen value, e.g. to hand to other libraries."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def resolve_host(host: str, namespace: str, domain: str = DEFAULT_DOMAIN) -> str:
    """Istio's short-name rule: a host without a dot is a service in the resource's namespace."""
    if "." in host or host == "*" or not host:
        return host
    return f"{host}.{namespace}.svc.{domain}"


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A missing selector selects every workload; otherwise every label must be equal."""
    if not selector:
        return True
    return all(labels.get(k) == v for k, v in selector.items())
