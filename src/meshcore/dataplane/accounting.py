"""What the reference proxy reports of each request, after its response is written: Istio's
standard metrics (on the source side outbound, the destination side inbound) and the access log
(Envoy's default format plus the RBAC policy id and the attempt count).

A request's Istio labels are computed once per combination of what they come from (the peer,
the service, the protocol, the response code and flags, ...) and reused as a
:class:`~meshcore.observability.istio.Series`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import Metric

from meshcore.dataplane.http1 import Request, Response
from meshcore.dataplane.http2 import is_grpc
from meshcore.dataplane.plane import DataPlane, Decision
from meshcore.observability import istio

log = logging.getLogger("meshcore.proxy")
access_log = logging.getLogger("meshcore.proxy.access")

REQUEST_ID = "x-request-id"
MAX_SERIES = 4096  # label sets kept (the cache starts again past it)


class IstioMetrics(istio.IstioMetrics):
    """Istio's standard metrics, and the time spent in ``DataPlane.decide()``."""

    def __init__(self) -> None:
        super().__init__()
        self.decisions = 0
        self.decision_seconds = 0.0

    def decided(self, seconds: float) -> None:
        with self._lock:
            self.decisions += 1
            self.decision_seconds += seconds

    def collect(self) -> Iterator[Metric]:
        yield from super().collect()
        with self._lock:
            calls = Metric("meshcore_proxy_decisions", "DataPlane.decide() calls.", "untyped")
            calls.add_sample("meshcore_proxy_decisions", {}, float(self.decisions))
            yield calls
            spent = Metric(
                "meshcore_proxy_decision_seconds", "Time spent in DataPlane.decide().", "untyped"
            )
            spent.add_sample("meshcore_proxy_decision_seconds", {}, self.decision_seconds)
            yield spent


class Accounting:
    """One proxy's metrics and access log (``principal``: its own SPIFFE id, read when a label
    set is first made)."""

    def __init__(
        self,
        dp: DataPlane,
        metrics: IstioMetrics,
        workload: str,
        namespace: str,
        labels: dict[str, str],
        principal: Callable[[], str],
    ) -> None:
        self.dp = dp
        self.metrics = metrics
        self.workload, self.namespace = workload, namespace
        self.labels = labels
        self.principal = principal
        self._series: dict[tuple[object, ...], istio.Series] = {}

    def _labels(self, key: tuple[object, ...], make: Callable[[], dict[str, str]]) -> istio.Series:
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= MAX_SERIES:
                self._series.clear()
            series = self._series[key] = istio.Series.of(make())
        return series

    def outbound(
        self,
        request: Request,
        response: Response,
        d: Decision,
        attempts: int,
        peer: str | None,
        millis: float,
    ) -> None:
        grpc = is_grpc(request.headers)
        key = (self.dp.config.generation, d.cluster, peer, grpc, response.status,
               d.response_flags)  # fmt: skip

        def make() -> dict[str, str]:
            cluster = self.dp.config.clusters.get(d.cluster or "")
            service = cluster.service if cluster is not None else (d.cluster or "unknown")
            svc_name, _, svc_ns = service.partition(".")
            dest_ns = svc_ns.split(".")[0] if svc_ns else "unknown"
            return {
                "reporter": "source",
                "source_workload": self.workload,
                "source_workload_namespace": self.namespace,
                "source_principal": self.principal(),
                "source_app": self.labels.get("app", "unknown"),
                "source_version": self.labels.get("version", "unknown"),
                "destination_principal": peer or "unknown",
                "destination_service": service,
                "destination_service_name": svc_name or "unknown",
                "destination_service_namespace": dest_ns,
                "destination_workload_namespace": dest_ns,
                "request_protocol": "grpc" if grpc else "http",
                "response_code": str(response.status),
                "grpc_response_status": "",
                "response_flags": d.response_flags,
                "connection_security_policy": "unknown",
                "destination_cluster": "Kubernetes",
                "source_cluster": "Kubernetes",
            }

        self.metrics.record(self._labels(key, make), millis, request.size, response.size)
        self.log(request, response, d, millis, attempts, "outbound")

    def inbound(
        self,
        request: Request,
        response: Response,
        d: Decision,
        attempts: int,
        millis: float,
        peer_workload: str,
        principal: str | None,
        tls: bool,
    ) -> None:
        host = request.header("host") or "unknown"
        grpc = is_grpc(request.headers)
        key = (peer_workload, principal, host, grpc, response.status, d.response_flags, tls)

        def make() -> dict[str, str]:
            src_name, _, src_ns = peer_workload.partition(".")
            return {
                "reporter": "destination",
                "source_workload": src_name or "unknown",
                "source_workload_namespace": src_ns or "unknown",
                "source_principal": principal or "unknown",
                "destination_workload": self.workload,
                "destination_workload_namespace": self.namespace,
                "destination_principal": self.principal(),
                "destination_app": self.labels.get("app", "unknown"),
                "destination_version": self.labels.get("version", "unknown"),
                "destination_service": host,
                "destination_service_name": host.split(".")[0].split(":")[0],
                "destination_service_namespace": self.namespace,
                "request_protocol": "grpc" if grpc else "http",
                "response_code": str(response.status),
                "grpc_response_status": "",
                "response_flags": d.response_flags,
                "connection_security_policy": "mutual_tls" if tls else "none",
                "destination_cluster": "Kubernetes",
                "source_cluster": "Kubernetes" if src_name else "unknown",
            }

        self.metrics.record(self._labels(key, make), millis, request.size, response.size)
        self.log(request, response, d, millis, attempts, "inbound", principal)

    def log(
        self,
        request: Request,
        response: Response,
        d: Decision,
        millis: float,
        attempts: int,
        direction: str,
        principal: str | None = None,
    ) -> None:
        # Envoy's default access log format, plus the RBAC policy id and the retry count; the
        # arguments (a time string, a dict) are built only when someone listens.
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                '[%s] "%s %s HTTP/1.1" %d %s %d %d %.0f "%s" "%s" "%s" %s %s %s attempts=%d '
                "policy=%s peer=%s",
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                request.method, request.target, response.status, d.response_flags,
                request.size, response.size, millis,
                request.header("user-agent") or "-", request.header(REQUEST_ID) or "-",
                request.header("host") or "-",
                direction, d.endpoint or "-", d.cluster or "-", attempts, d.policy_id or "-",
                principal or "-",
                # The same, structured, for handlers that count rather than print (the demo).
                extra={"access": {
                    "workload": self.workload, "direction": direction, "status": response.status,
                    "cluster": d.cluster, "endpoint": d.endpoint, "attempts": attempts,
                    "policy_id": d.policy_id, "allowed": d.allowed, "peer": principal,
                }},
            )  # fmt: skip
        if direction == "inbound" and not d.allowed:
            log.info("denied %s %s from %s: policy %s", request.method, request.target,
                     principal or "-", d.policy_id or "(no ALLOW policy matched)")  # fmt: skip
