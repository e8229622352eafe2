"""WorkloadEntry auto-registration (Istio's autoregistration controller) and the readiness
probes of WorkloadGroups.

A proxy whose node metadata names a WorkloadGroup (``AUTO_REGISTER_GROUP``, what
``meshcore agent --workload-group NAME`` sets, as Istio's agent does from
``ISTIO_META_AUTO_REGISTER_GROUP``) registers itself when it connects: the control plane creates
the WorkloadEntry ``GROUP-IP`` (``-NETWORK`` when the node names one) in the proxy's namespace
from the group's template, with the proxy's address (its node id's IP), the labels of the
template, then of the group's ``metadata``, then of the node's ``LABELS`` metadata (later wins),
and the group's annotations plus ``istio.io/autoRegistrationGroup``. Services and ServiceEntries
selecting those labels get the endpoint. When its last stream closes the entry is kept for a
grace period (Istio's PILOT_WORKLOAD_ENTRY_GRACE_PERIOD, 10 s): a reconnection within it keeps
it, otherwise it is removed. A group that does not exist registers nothing (logged), and a
WorkloadEntry written by the user under the same name is never replaced.

With a ``probe`` in the group, the entry is annotated ``proxy.istio.io/health-checks-enabled``
and starts unhealthy, as Istio's does; its endpoint is sent UNHEALTHY (Envoy does not balance
to it) until the probe succeeds ``successThreshold`` times in a row, and again after
``failureThreshold`` failures (Kubernetes' probe rules and defaults: period 10 s, timeout 1 s,
thresholds 1 and 3). Istio's agent runs the probe next to the app and reports over xDS;
meshcore's control plane runs ``httpGet`` (2xx and 3xx succeed) and ``tcpSocket`` probes itself,
against the probe's ``host``, else the address the app listens on (the node's
``MESHCORE_APP_ADDRESS`` in the loopback layout, else the workload's address).

The registered entries are an overlay on the loaded configuration: the control plane serves the
loaded mesh plus them (see :meth:`meshcore.xds.controlplane.ControlPlane.reoverlay`), and they
are never written to the configuration source.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcore._text import shown
from meshcore.config.model import (
    HEALTH_CHECKS_ANNOTATION,
    HEALTHY_ANNOTATION,
    MeshModel,
    WorkloadEntry,
    WorkloadGroup,
)
from meshcore.config.values import freeze, thaw
from meshcore.xds.cache import NodeInfo
from meshcore.xds.node import APP_ADDRESS_KEY, LABELS_KEY, parse_node_id

__all__ = [
    "AUTO_REGISTER_GROUP_KEY",
    "DEFAULT_GRACE_PERIOD",
    "SOURCE",
    "AutoRegistry",
    "probe_once",
]

log = logging.getLogger("meshcore.autoregistration")

AUTO_REGISTER_GROUP_KEY = "AUTO_REGISTER_GROUP"
NETWORK_KEY = "NETWORK"
GROUP_ANNOTATION = "istio.io/autoRegistrationGroup"
CONNECTED_AT_ANNOTATION = "istio.io/connectedAt"
# The ``file`` of registered entries (what the control plane's change detection compares).
SOURCE = "<auto-registration>"
DEFAULT_GRACE_PERIOD = 10.0
# Kubernetes' probe defaults (Istio's ReadinessProbe follows them).
_PROBE_DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}


@dataclass(slots=True)
class _Registration:
    entry: WorkloadEntry
    probe: Mapping[str, Any] | None
    target: str  # the address the probe reaches by default
    nodes: set[str] = field(default_factory=set)
    gone_since: float | None = None
    next_probe: float = 0.0
    passes: int = 0
    failures: int = 0


class AutoRegistry:
    """The auto-registered WorkloadEntries and their probes' state. ``connected`` and
    ``disconnected`` are told about proxies, ``expire`` and ``probe_due`` are called
    periodically (``run``); each returns whether the entries changed (then the control plane
    serves ``overlay(loaded mesh)`` again)."""

    def __init__(
        self,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace_period = grace_period
        self.clock = clock
        self._entries: dict[tuple[str, str], _Registration] = {}

    def entries(self) -> list[WorkloadEntry]:
        return [r.entry for _, r in sorted(self._entries.items())]

    def overlay(self, mesh: MeshModel) -> MeshModel:
        """``mesh`` with the registered WorkloadEntries (``mesh`` itself when there are none)."""
        if not self._entries:
            return mesh
        return MeshModel(
            (*mesh.resources, *self.entries()),
            domain=mesh.domain,
            root_namespace=mesh.root_namespace,
        )

    def connected(self, mesh: MeshModel | None, node: NodeInfo) -> bool:
        group_name = node.metadata.get(AUTO_REGISTER_GROUP_KEY)
        if not group_name or mesh is None:
            return False
        try:
            _, ip, _, namespace, _ = parse_node_id(node.id)
        except ValueError:
            return False  # the stream is refused for its node id elsewhere
        name = "-".join(
            p
            for p in (
                str(group_name),
                ip.replace(":", "-"),
                str(node.metadata.get(NETWORK_KEY) or ""),
            )
            if p
        )[-253:]
        found = self._entries.get((namespace, name))
        if found is not None:
            found.nodes.add(node.id)
            found.gone_since = None
            return False
        group = mesh.get("WorkloadGroup", namespace, str(group_name))
        if not isinstance(group, WorkloadGroup):
            log.error(
                "%s: no WorkloadGroup %s/%s to register with (AUTO_REGISTER_GROUP); not registered",
                shown(node.id),
                namespace,
                shown(group_name),
            )
            return False
        if not ip:
            log.error("%s: no IP address in the node id; not registered", shown(node.id))
            return False
        if mesh.get("WorkloadEntry", namespace, name) is not None:
            log.error(
                "%s: WorkloadEntry %s/%s exists in the configuration; it is kept, not registered",
                shown(node.id),
                namespace,
                name,
            )
            return False
        entry = _entry_from_group(group, name, ip, node)
        target = str(node.metadata.get(APP_ADDRESS_KEY) or ip)
        reg = _Registration(entry, group.probe, target, {node.id})
        if reg.probe is not None:
            reg.next_probe = self.clock() + _setting(reg.probe, "initialDelaySeconds")
        self._entries[(namespace, name)] = reg
        log.info("registered WorkloadEntry %s/%s (%s) for %s", namespace, name, ip, shown(node.id))
        return True

    def disconnected(self, node: NodeInfo) -> None:
        """The proxy's last stream closed: its entry is kept for the grace period."""
        for reg in self._entries.values():
            if node.id in reg.nodes:
                reg.nodes.discard(node.id)
                if not reg.nodes:
                    reg.gone_since = self.clock()

    def expire(self) -> bool:
        """Removes the entries whose proxy has been gone longer than the grace period."""
        now = self.clock()
        gone = [
            key
            for key, reg in self._entries.items()
            if reg.gone_since is not None and now - reg.gone_since >= self.grace_period
        ]
        for key in gone:
            del self._entries[key]
            log.info("unregistered WorkloadEntry %s/%s (disconnected)", *key)
        return bool(gone)

    async def probe_due(self) -> bool:
        """Runs the probes that are due (concurrently); True when an entry's health changed."""
        now = self.clock()
        due = [
            reg
            for reg in self._entries.values()
            if reg.probe is not None and reg.gone_since is None and reg.next_probe <= now
        ]
        if not due:
            return False
        results = await asyncio.gather(*(probe_once(r.probe or {}, r.target) for r in due))
        changed = False
        for reg, ok in zip(due, results, strict=True):
            probe = reg.probe or {}
            reg.next_probe = now + max(1, _setting(probe, "periodSeconds"))
            if ok:
                reg.passes, reg.failures = reg.passes + 1, 0
            else:
                reg.passes, reg.failures = 0, reg.failures + 1
            healthy = reg.entry.healthy
            if not healthy and reg.passes >= max(1, _setting(probe, "successThreshold")):
                changed |= self._set_health(reg, True)
            elif healthy and reg.failures >= max(1, _setting(probe, "failureThreshold")):
                changed |= self._set_health(reg, False)
        return changed

    def _set_health(self, reg: _Registration, healthy: bool) -> bool:
        annotations = dict(reg.entry.annotations)
        annotations[HEALTHY_ANNOTATION] = "true" if healthy else "false"
        reg.entry = WorkloadEntry(
            kind=reg.entry.kind,
            api_version=reg.entry.api_version,
            name=reg.entry.name,
            namespace=reg.entry.namespace,
            spec=reg.entry.spec,
            labels=reg.entry.labels,
            annotations=freeze(annotations),
            file=reg.entry.file,
        )
        log.info(
            "WorkloadEntry %s/%s is %s (probe)",
            reg.entry.namespace,
            reg.entry.name,
            "healthy" if healthy else "unhealthy",
        )
        return True

    async def run(
        self, changed: Callable[[], None], stop: asyncio.Event, tick: float = 0.2
    ) -> None:
        """Expires and probes until ``stop``; calls ``changed`` when the entries changed."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)
            if self.expire() | await self.probe_due():
                changed()


def _setting(probe: Mapping[str, Any], key: str) -> int:
    value = probe.get(key)
    return int(value) if isinstance(value, int) and value > 0 else _PROBE_DEFAULTS[key]


def _entry_from_group(group: WorkloadGroup, name: str, ip: str, node: NodeInfo) -> WorkloadEntry:
    spec = dict(thaw(group.template))
    spec["address"] = ip
    meta = group.spec.get("metadata") or {}
    labels: dict[str, str] = {**(spec.get("labels") or {}), **(meta.get("labels") or {})}
    raw = node.metadata.get(LABELS_KEY)
    if isinstance(raw, Mapping):
        labels.update({str(k): str(v) for k, v in raw.items()})
    labels.pop("istio-locality", None)
    spec["labels"] = labels
    if node.metadata.get(NETWORK_KEY):
        spec["network"] = str(node.metadata[NETWORK_KEY])
    annotations = {
        GROUP_ANNOTATION: group.name,
        CONNECTED_AT_ANNOTATION: datetime.datetime.now(datetime.UTC).isoformat(),
        **(meta.get("annotations") or {}),
    }
    if group.probe is not None:
        annotations[HEALTH_CHECKS_ANNOTATION] = "true"
    return WorkloadEntry(
        kind="WorkloadEntry",
        api_version="networking.istio.io/v1",
        name=name,
        namespace=group.namespace,
        spec=freeze(spec),
        labels=freeze(labels),
        annotations=freeze(annotations),
        file=SOURCE,
    )


async def probe_once(probe: Mapping[str, Any], target: str) -> bool:
    """One run of a readiness probe (``httpGet`` or ``tcpSocket``) against ``target`` (unless
    the probe names its ``host``): True when it succeeds within ``timeoutSeconds``."""
    timeout = _setting(probe, "timeoutSeconds")
    try:
        return await asyncio.wait_for(_probe(probe, target), timeout)
    except (OSError, TimeoutError, ValueError, ssl.SSLError):
        return False


async def _probe(probe: Mapping[str, Any], target: str) -> bool:
    http = probe.get("httpGet")
    tcp = probe.get("tcpSocket")
    spec = http if http is not None else tcp
    if spec is None:
        return False
    host = str(spec.get("host") or target)
    port = int(spec["port"])
    tls = None
    if http is not None and str(http.get("scheme", "")).upper() == "HTTPS":
        # Kubernetes' HTTPS probes do not verify the certificate.
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(host, port, ssl=tls)
    try:
        if http is None:
            return True
        path = str(http.get("path") or "/")
        headers = {"Host": f"{host}:{port}", "User-Agent": "meshcore-probe", "Connection": "close"}
        for h in http.get("httpHeaders") or ():
            headers[str(h.get("name"))] = str(h.get("value", ""))
        request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write((request + "\r\n").encode("latin-1"))
        await writer.drain()
        status = (await reader.readline()).split()
        return len(status) >= 2 and status[1].isdigit() and 200 <= int(status[1]) < 400
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
