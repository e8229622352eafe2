"""The demo mesh (``make demo``, ``meshcore demo``): meshcore's control plane and CA, three small
services behind real Envoy sidecars, the ``examples/`` config, live traffic and a live change.

Everything runs on 127.0.0.0/8 in the loopback layout of :mod:`meshcore.xds.listeners`: the
workload at ``127.0.X.Y`` (its WorkloadEntry address) has its sidecar's inbound listener there,
its app on ``127.1.X.Y`` and its sidecar's outbound listeners on ``127.2.X.Y``. Traffic enters
at the frontend app (as from an ingress), and every hop after that goes app → own sidecar →
mTLS → the callee's sidecar → callee app.

:class:`DemoMesh` is the reusable part (the tests drive it and inject failures);
:func:`run_demo` is the scripted tour that prints what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import TextIO

from meshcore.demo.mesh import EXAMPLES, FRONTEND_PATH, DemoMesh, Progress, Traffic, Workload
from meshcore.demo.status import StatusPage
from meshcore.demo.tour import Check, DemoReport, tour

__all__ = [
    "EXAMPLES",
    "Check",
    "DemoMesh",
    "DemoReport",
    "Progress",
    "Traffic",
    "Workload",
    "run_demo",
    "serving_block",
    "tour",
]


def print_report(report: DemoReport, out: TextIO) -> None:
    print("\nmeshcore demo: what happened", file=out)
    for c in report.checks:
        print(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}", file=out)
    denials = report.facts.get("denials", {})
    if denials:
        print("  denials (policy ids from the sidecars' access logs): "
              + ", ".join(f"{pid} ×{n}" for pid, n in sorted(denials.items())), file=out)  # fmt: skip
    lat = report.facts.get("latency_ms", {})
    if lat:
        hops = ("ingress gateway → " if report.facts.get("ingress") else "") + "frontend"
        print(f"  latency {hops} → reviews → ratings: "
              f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms", file=out)  # fmt: skip
    cp = report.facts.get("control_plane", {})
    if cp:
        print(f"  control plane: {cp['pushes_acked']:.0f} proxy convergences recorded, "
              f"mean push → ACK {cp['mean_ms']:.1f} ms (pilot_proxy_convergence_time)", file=out)  # fmt: skip
    print(f"\n{'all checks passed' if report.passed else 'SOME CHECKS FAILED'}", file=out)


def serving_block(dm: DemoMesh, status: StatusPage) -> str:
    """What ``--serve`` prints: the status page, the control plane's endpoints, the frontend,
    and one line per sidecar with its merged Prometheus endpoint (Envoy's stats and Istio's
    metrics)."""
    lines = ["", "serving (Ctrl-C stops):", f"  status page  {status.url}",
             f"  metrics      http://127.0.0.1:{dm.metrics_port}/metrics",
             f"  xDS sync     http://127.0.0.1:{dm.metrics_port}/debug/syncz",
             f"  frontend     http://{dm.entry}{FRONTEND_PATH}"]  # fmt: skip
    for name, sc in sorted(dm.sidecars.items()):
        url = getattr(sc, "stats_url", None)
        if url:
            lines.append(f"  sidecar {name} {url}")
    return "\n".join(lines)


async def run_demo(
    *,
    serve: bool = False,
    config: Path | None = None,
    workdir: Path | None = None,
    proxy: str = "envoy",
    out: TextIO | None = None,
    output: str = "text",
    replicas: int = 1,
) -> int:
    """The scripted tour; 0 when every check passed. With ``serve`` it keeps running."""
    out = out if out is not None else sys.stdout
    # The agents run in this process: their routine news would bury the progress display.
    quiet = logging.getLogger("meshcore")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return await _run_demo(serve, config, workdir, proxy, out, output, replicas)
    finally:
        quiet.setLevel(level)


async def _run_demo(
    serve: bool,
    config: Path | None,
    workdir: Path | None,
    proxy: str,
    out: TextIO,
    output: str,
    replicas: int = 1,
) -> int:
    progress = Progress()
    progress("starting the demo mesh")
    dm = DemoMesh(config, workdir, progress=progress, proxy=proxy, replicas=replicas)
    report = DemoReport()
    await dm.start()
    try:
        report.facts["ingress"] = dm.entry if dm.ingress is not None else None
        await tour(dm, report)
        if output == "text":
            print_report(report, out)
        else:
            from meshcore.cli import emit

            with contextlib.redirect_stdout(out):
                emit(report.to_dict(), output)
        if serve:
            status = StatusPage(dm, report)
            print(serving_block(dm, status), file=out, flush=True)
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
            finally:
                status.stop()
    finally:
        await dm.stop()
    return 0 if report.passed else 1
