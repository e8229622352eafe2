"""``meshcore serve``: the control plane (config watch, translation, ADS) and its HTTP side
(Prometheus ``/metrics``, ``/debug/syncz`` for ``meshcore proxy-status``, ``/healthz``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshcore.ca import CAError, CertificateAuthority
from meshcore.ca.service import BootstrapTokens, CAServer, start_ca_server
from meshcore.ca.tokens import load_tokens
from meshcore.config.loader import MAX_FILE_BYTES
from meshcore.config.meshconfig import MeshConfig
from meshcore.xds.controlplane import ControlPlane
from meshcore.xds.deps import DependencyIndex
from meshcore.xds.jwt import JwksFetcher
from meshcore.xds.server import AdsServer, start_ads_server
from meshcore.xds.translator import Translator

log = logging.getLogger("meshcore.serve")


class _Debug(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        plane: ControlPlane,
        ads: AdsServer,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(address, _DebugHandler)
        self.plane = plane
        self.ads = ads
        self.loop = loop

    def in_loop(self, fn: Any) -> Any:
        """Runs ``fn`` on the event loop (which owns the ADS state) and returns its result."""

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=5)


class _DebugHandler(BaseHTTPRequestHandler):
    server: _Debug

    def do_GET(self) -> None:
        if self.path == "/metrics":
            body = self.server.in_loop(lambda: generate_latest(self.server.ads.metrics.registry()))
            self._send(200, CONTENT_TYPE_LATEST, body)
        elif self.path == "/debug/syncz":
            status = self.server.in_loop(self.server.ads.sync_status)
            problems = [p.to_dict() for p in self.server.plane.problems]
            self._send(
                200,
                "application/json",
                json.dumps({"proxies": status, "config_problems": problems}).encode(),
            )
        elif self.path in ("/healthz", "/ready"):
            ok = self.server.plane.mesh is not None
            self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"no valid config\n")
        else:
            self._send(404, "text/plain", b"try /metrics, /debug/syncz or /healthz\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


@dataclass(frozen=True, slots=True)
class CAOptions:
    """``meshcore serve --ca-port ...``: the CA next to ADS (Istio's istiod does both)."""

    port: int
    mtls_port: int = 0
    cacerts: str | None = None  # Istio's plug-in layout
    state_dir: str | None = None  # where a generated root is kept
    tokens: str | None = None  # 'TOKEN SPIFFE-ID [expires=TIME]' per line (meshcore.ca.tokens)


def load_ca(options: CAOptions) -> CertificateAuthority:
    """The plug-in CA from ``cacerts``; else the root kept in ``state_dir`` (generated and
    saved there, key 0600, on first use); else a root that lives as long as the process."""
    if options.cacerts:
        return CertificateAuthority.load(options.cacerts)
    if options.state_dir:
        state = Path(options.state_dir)
        if (state / "ca-key.pem").is_file():
            return CertificateAuthority.load(state)
        ca = CertificateAuthority.generate()
        ca.save(state)
        return ca
    return CertificateAuthority.generate()


async def _start_ca(options: CAOptions, host: str) -> tuple[CAServer, CertificateAuthority, int]:
    ca = load_ca(options)
    tokens = BootstrapTokens()
    count = load_tokens(options.tokens, tokens) if options.tokens else 0
    server = await start_ca_server(
        ca, tokens, port=options.port, mtls_port=options.mtls_port, host=host
    )
    return server, ca, count


async def serve(
    paths: Sequence[str], *, xds_port: int, metrics_port: int | None, host: str = "127.0.0.1",
    ready: threading.Event | None = None, stop: asyncio.Event | None = None,
    mesh_config: MeshConfig | None = None,
    ca: CAOptions | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> int:  # fmt: skip
    # JWKS are fetched in the control plane's refresh thread, never by a translation in the
    # event loop: a jwksUri not fetched yet fails closed until its keys arrive (as istiod).
    translator = Translator(mesh_config=mesh_config, jwks=JwksFetcher(fetch_on_miss=False))
    plane = ControlPlane(
        paths,
        translator.resources_for,
        dependencies=DependencyIndex(),
        settle_gc=True,
        max_file_bytes=max_file_bytes,
        check=translator.load_problems,
        refresh=translator.refresh_jwks,  # RequestAuthentication jwksUri keys, as istiod
    )
    loaded = plane.load()
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
    ca_server = None
    if ca is not None:
        try:
            ca_server, authority, token_count = await _start_ca(ca, host)
        except (CAError, ValueError, OSError, RuntimeError) as exc:
            print(f"meshcore serve: cannot start the CA: {exc}", file=sys.stderr)
            return 2
    server, ads, port = await start_ads_server(
        plane.cache, port=xds_port, host=host, ready=lambda: plane.mesh is not None
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not possible off the main thread (as in tests); the caller's stop event still works.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    debug = None
    if metrics_port is not None:
        try:
            debug = _Debug((host, metrics_port), plane, ads, loop)
        except OSError as exc:
            print(f"meshcore serve: cannot open the monitoring port {host}:{metrics_port}: "
                  f"{exc.strerror} (choose another with --monitoring-port, 0 for none)",
                  file=sys.stderr)  # fmt: skip
            await server.stop(None)
            if ca_server is not None:
                await ca_server.stop(None)
            return 2
        threading.Thread(target=debug.serve_forever, name="meshcore-debug", daemon=True).start()
    summary = (
        ", ".join(f"{n} {k}" for k, n in plane.mesh.summary().items() if n) if plane.mesh else ""
    )
    print(f"meshcore serve: {summary or 'empty mesh'}", flush=True)
    print(f"meshcore serve: ADS (state of the world and delta) on {host}:{port}", flush=True)
    if ca_server is not None:
        assert ca is not None
        where = (
            f"root {Path(ca.cacerts or ca.state_dir or '') / 'root-cert.pem'}"
            if ca.cacerts or ca.state_dir
            else "generated root, not written (use --state-dir to keep it for agents)"
        )
        print(f"meshcore serve: CA for {authority.trust_domain} on {host}:{ca_server.port} "
              f"(bootstrap tokens: {token_count}), renewals (mTLS) on {host}:{ca_server.mtls_port}; "
              f"{where}", flush=True)  # fmt: skip
    if debug is not None:
        print(f"meshcore serve: monitoring on http://{host}:{debug.server_address[1]}: /metrics, "
              f"/debug/syncz (proxy-status), /healthz", flush=True)  # fmt: skip
    if ready is not None:
        ready.set()
    try:
        await plane.run(lambda: [s.node for s in ads.proxies.values()], stop)
    finally:
        if debug is not None:
            debug.shutdown()
            debug.server_close()
        await server.stop(1.0)
        if ca_server is not None:
            await ca_server.stop(1.0)
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
