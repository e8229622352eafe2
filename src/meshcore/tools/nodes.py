"""The xDS node id of a mesh's workload, as its proxy would connect."""

from __future__ import annotations

from meshcore.config import MeshModel
from meshcore.config.model import Gateway, WorkloadEntry
from meshcore.config.values import selector_matches


def node_id(mesh: MeshModel, w: WorkloadEntry) -> str:
    """A gateway proxy (``router``) when a Gateway selects the workload, else a sidecar."""
    gateways = (r for r in mesh.resources if isinstance(r, Gateway))
    router = any(selector_matches(g.selector, w.workload_labels) for g in gateways)
    kind = "router" if router else "sidecar"
    return f"{kind}~{w.address}~{w.name}.{w.namespace}~{w.namespace}.svc.{mesh.domain}"
