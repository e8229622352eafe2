"""meshcore: a service-mesh core with Istio-style config, Envoy xDS and a Rust decision core."""

from meshcore._core import __version__
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
    "UnsupportedFeatureError",
    "__version__",
]
