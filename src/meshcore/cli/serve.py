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
from typing import TYPE_CHECKING

from meshcore.config.loader import MAX_FILE_BYTES
from meshcore.config.meshconfig import MeshConfig
from meshcore.xds.controlserver import CAOptions, ControlPlaneServer, StartError

if TYPE_CHECKING:
    from meshcore.store import StoreURL


async def serve(
    paths: Sequence[str], *, xds_port: int, metrics_port: int | None, host: str = "127.0.0.1",
    ready: threading.Event | None = None, stop: asyncio.Event | None = None,
    mesh_config: MeshConfig | None = None,
    ca: CAOptions | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    store: StoreURL | None = None,
    ads_transport: str | None = None,
) -> int:  # fmt: skip
    try:
        server = ControlPlaneServer(
            paths if store is None else (), host=host, xds_port=xds_port,
            metrics_port=metrics_port, mesh_config=mesh_config, ca=ca,
            max_file_bytes=max_file_bytes, store=store, ads_transport=ads_transport,
        )  # fmt: skip
    except StartError as exc:
        print(f"meshcore serve: {exc}", file=sys.stderr)
        return 2
    plane = server.plane
    try:
        loaded = server.load()
    except StartError as exc:
        print(f"meshcore serve: {exc}", file=sys.stderr)
        return 2
    for p in plane.problems:
        print(f"{p.severity}: {p}", file=sys.stderr)
    if not loaded:
        e = sum(p.severity == "error" for p in plane.problems)
        print(
            f"meshcore serve: the configuration is invalid ({e} error{'s' * (e != 1)}); "
            "fix it and start again",
            file=sys.stderr,
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
    if server.store is not None:
        print(f"meshcore serve: config from {store} at revision {server.store.revision} "
              "(watched)", flush=True)  # fmt: skip
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
        print(f"meshcore serve: monitoring on http://{host}:{server.debug.server_address[1]}: "
              f"/metrics, /debug/syncz (proxy-status), /healthz", flush=True)  # fmt: skip
    if ready is not None:
        ready.set()
    try:
        await server.run(stop)
    finally:
        await server.close()
    return 0


def proxy_status(address: str, *, output: str = "text") -> int:
    """Prints SYNCED / STALE / NACKED / NOT SENT per xDS type per connected proxy, from the
    control plane's monitoring port (``/debug/syncz``)."""
    import http.client
    import urllib.error
    import urllib.request

    url = address.rstrip("/")
    if not url.startswith("http"):
        url = f"http://{url}"
    where = f"{url}/debug/syncz"
    hint = "is it meshcore serve's monitoring port (--monitoring-port, default 15014)?"
    try:
        with urllib.request.urlopen(where, timeout=5) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        print(f"meshcore proxy-status: {where} answered HTTP {exc.code}: {hint}", file=sys.stderr)
        return 2
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, http.client.BadStatusLine | http.client.RemoteDisconnected):
            reason = "the answer is not HTTP"
        print(f"meshcore proxy-status: cannot read {where}: {reason}; {hint}", file=sys.stderr)
        return 2
    try:
        data = json.loads(body)
        proxies: dict[str, dict[str, str]] = data["proxies"]
    except (ValueError, TypeError, KeyError):
        print(f"meshcore proxy-status: {where} is not meshcore's sync status; {hint}",
              file=sys.stderr)  # fmt: skip
        return 2
    if output != "text":
        from meshcore.cli import emit

        emit({"proxies": proxies}, output)
        return 0
    columns = ["CDS", "LDS", "EDS", "RDS", "SDS"]
    width = max([len("NAME"), *map(len, proxies)])
    print((f"{'NAME':<{width}}  " + "  ".join(f"{c:<8}" for c in columns)).rstrip())
    for node_id, row in sorted(proxies.items()):
        cells = "  ".join(f"{row.get(c, 'NOT SENT'):<8}" for c in columns)
        print(f"{node_id:<{width}}  {cells}".rstrip())
    if not proxies:
        print("(no proxies connected)")
    return 0
