"""``meshcore serve``: the control plane (config watch, translation, ADS) and its HTTP side
(Prometheus ``/metrics``, ``/debug/syncz`` for ``meshcore proxy-status``, ``/healthz``), run by
:class:`meshcore.xds.controlserver.ControlPlaneServer`; here the arguments and the output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from meshcore.config.meshconfig import MeshConfig
from meshcore.xds.controlserver import CAOptions, ControlPlaneServer, StartError


async def serve(
    paths: Sequence[str], *, xds_port: int, metrics_port: int | None, host: str = "127.0.0.1",
    ready: threading.Event | None = None, stop: asyncio.Event | None = None,
    mesh_config: MeshConfig | None = None,
    ca: CAOptions | None = None,
) -> int:  # fmt: skip
    server = ControlPlaneServer(
        paths, host=host, xds_port=xds_port, metrics_port=metrics_port, mesh_config=mesh_config,
        ca=ca,
    )  # fmt: skip
    plane = server.plane
    if not server.load():
        for p in plane.problems:
            print(f"{p.severity}: {p}", file=sys.stderr)
        print(
            "meshcore serve: the configuration is invalid; fix it and start again", file=sys.stderr
        )
        return 1
    try:
        await server.start()
    except StartError as exc:
        print(f"meshcore serve: {exc}", file=sys.stderr)
        return 2
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not possible off the main thread (as in tests); the caller's stop event still works.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    summary = (
        ", ".join(f"{n} {k}" for k, n in plane.mesh.summary().items() if n) if plane.mesh else ""
    )
    print(f"meshcore serve: {summary or 'empty mesh'}", flush=True)
    print(f"meshcore serve: ADS (state of the world and delta) on {host}:{server.ads_port}",
          flush=True)  # fmt: skip
    if server.ca_server is not None and server.authority is not None:
        assert ca is not None
        where = (
            f"root {Path(ca.cacerts or ca.state_dir or '') / 'root-cert.pem'}"
            if ca.cacerts or ca.state_dir
            else "generated root, not written (use --state-dir to keep it for agents)"
        )
        print(f"meshcore serve: CA for {server.authority.trust_domain} on {host}:{server.ca_server.port} "
              f"(bootstrap tokens: {server.token_count}), renewals (mTLS) on {host}:{server.ca_server.mtls_port}; "
              f"{where}", flush=True)  # fmt: skip
    if server.debug is not None:
        print(f"meshcore serve: metrics on http://{host}:{server.debug.server_address[1]}/metrics, "
              f"status on /debug/syncz", flush=True)  # fmt: skip
    if ready is not None:
        ready.set()
    try:
        await server.run(stop)
    finally:
        await server.close()
    return 0


def proxy_status(control_plane: str) -> int:
    """Prints SYNCED / STALE / NACKED / NOT SENT per xDS type per connected proxy."""
    import urllib.error
    import urllib.request

    url = control_plane.rstrip("/")
    if not url.startswith("http"):
        url = f"http://{url}"
    try:
        with urllib.request.urlopen(f"{url}/debug/syncz", timeout=5) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"meshcore proxy-status: cannot reach {url}/debug/syncz: {exc}", file=sys.stderr)
        return 2
    proxies: dict[str, dict[str, str]] = data.get("proxies", {})
    columns = ["CDS", "LDS", "EDS", "RDS", "SDS"]
    width = max([len("NAME"), *map(len, proxies)])
    print(f"{'NAME':<{width}}  " + "  ".join(f"{c:<8}" for c in columns))
    for node_id, row in sorted(proxies.items()):
        print(f"{node_id:<{width}}  " + "  ".join(f"{row.get(c, 'NOT SENT'):<8}" for c in columns))
    if not proxies:
        print("(no proxies connected)")
    return 0
