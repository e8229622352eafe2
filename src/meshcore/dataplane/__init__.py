"""The data-plane side of meshcore: what runs next to (or inside) a workload's proxy.

``DataPlane`` gives a custom proxy Envoy's decisions (routes, clusters, endpoints, RBAC) from
the config meshcore's control plane serves over delta ADS, and mTLS contexts from the
workload's SVID; ``CertificateClient`` keeps that SVID fresh.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from meshcore._extras import require

require("all", "meshcore.dataplane")

from meshcore.dataplane.certs import CertificateClient, WorkloadSecret

if TYPE_CHECKING:
    from meshcore.dataplane.plane import DataPlane, Decision

__all__ = ["CertificateClient", "DataPlane", "Decision", "WorkloadSecret"]


def __getattr__(name: str) -> Any:
    # DataPlane needs the Envoy protos (the control-plane extra): imported on first use.
    if name in ("DataPlane", "Decision"):
        return getattr(importlib.import_module("meshcore.dataplane.plane"), name)
    raise AttributeError(f"module 'meshcore.dataplane' has no attribute {name!r}")
