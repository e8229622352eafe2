"""The capture-mode pod mesh for the end-to-end tests (:mod:`meshcore.capture.podmesh`), with
one Service per app on port 9080."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.envoy._sidecar import envoy_binary

from meshcore.capture import podmesh
from meshcore.capture.podmesh import PodMesh as CaptureMesh
from meshcore.capture.podmesh import PodWorkload as Workload
from meshcore.capture.podmesh import obj

__all__ = ["CaptureMesh", "Workload", "capture_mesh", "obj", "rewrite", "usable_envoy"]


@contextlib.contextmanager
def capture_mesh(
    workloads: list[Workload],
    config: list[dict[str, Any]],
    envoy: str,
    extra_pods: tuple[str, ...] = (),
    mesh_config: dict[str, Any] | None = None,
) -> Iterator[CaptureMesh]:
    services = services_of(workloads)
    with podmesh.pod_mesh(workloads, services + config, envoy, extra_pods, mesh_config) as m:
        yield m


def services_of(workloads: list[Workload]) -> list[dict[str, Any]]:
    """One Service per app, on port 9080."""
    apps = sorted({w.app for w in workloads})
    return [obj("Service", a, {"selector": {"app": a},
                "ports": [{"name": "http", "port": 9080}]}) for a in apps]  # fmt: skip


def rewrite(mesh: CaptureMesh, config: list[dict[str, Any]]) -> None:
    """Replaces the config (the Services kept)."""
    mesh.write("config", services_of(list(mesh.workloads.values())) + config)


def usable_envoy(tmp: Path) -> str:
    return podmesh.usable_envoy(tmp, envoy_binary())
