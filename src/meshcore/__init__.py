"""meshcore: a service-mesh core with Istio-style config, Envoy xDS and a Rust decision core."""

import importlib
from typing import TYPE_CHECKING, Any

from meshcore._core import __version__
from meshcore._core.rbac import RbacDecision, RbacEngine
from meshcore._core.route import RouteMatch, RouteTable
from meshcore.errors import (
    ConfigError,
    ConfigProblem,
    MeshcoreError,
    UnsupportedFeatureError,
)

if TYPE_CHECKING:
    from meshcore.security.authz import Authorizer

__all__ = [
    "Authorizer",
    "ConfigError",
    "ConfigProblem",
    "MeshcoreError",
    "RbacDecision",
    "RbacEngine",
    "RouteMatch",
    "RouteTable",
    "UnsupportedFeatureError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Lazy: the base install (no xds-protos) must still import meshcore.
    if name == "Authorizer":
        from meshcore._extras import require

        require("all", "meshcore.Authorizer")
        return importlib.import_module("meshcore.security.authz").Authorizer
    raise AttributeError(f"module 'meshcore' has no attribute {name!r}")
