"""meshcore: a service-mesh core with Istio-style config, Envoy xDS and a Rust decision core."""

from meshcore._core import RouteMatch, RouteTable, __version__
from meshcore.errors import (
    ConfigError,
    ConfigProblem,
    MeshcoreError,
    UnsupportedFeatureError,
)

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "MeshcoreError",
    "RouteMatch",
    "RouteTable",
    "UnsupportedFeatureError",
    "__version__",
]
