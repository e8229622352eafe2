"""The live status page of ``meshcore demo --serve`` (and its twin, ``meshcore serve``'s
``/status``, with the edges and the CA's certificates):
after traffic through the demo mesh, headless Chromium (Debian's ``chromium``) renders it, and
the screenshot shows the plots with data (the SVG plots' colours are on the picture: bars of the
push histograms, lines of the per-edge request rate), not an empty page."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

from meshcore.demo import DemoMesh, DemoReport, serving_block
from meshcore.demo.status import StatusPage
from meshcore.observability.status import COLORS

pytestmark = pytest.mark.envoy


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return found


def screenshot(url: str, out: Path) -> None:
    subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-background-networking", "--window-size=1300,2600",
         f"--screenshot={out}", url],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Decodes an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes): width, height,
    rows of pixel bytes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0)
    assert color in (2, 6)
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(b"".join(bytes(line[j : j + 3]) for j in range(0, stride, bpp)))
        prev = line
    return width, height, rows


def count_color(rows: list[bytes], hex_color: str) -> int:
    rgb = bytes.fromhex(hex_color.lstrip("#"))
    return sum(1 for row in rows for i in range(0, len(row), 3) if row[i : i + 3] == rgb)


def test_status_page_plots_have_data_in_chromium(tmp_path: Path) -> None:
    chromium()
    asyncio.run(_scenario(tmp_path))


async def _scenario(tmp_path: Path) -> None:
    dm = DemoMesh(workdir=tmp_path / "mesh")
    await dm.start()
    status = StatusPage(dm, DemoReport())
    try:
        # The first look at meshcore serve's page starts its sampler of the sidecars' metrics.
        await asyncio.to_thread(_get, f"http://127.0.0.1:{dm.metrics_port}/debug/statusz")
        # Steady traffic for a few seconds: the sampler sees requests per edge over time.
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set():
                dm.send(10, concurrency=2)

        thread = threading.Thread(target=traffic)
        thread.start()
        await asyncio.sleep(6)
        stop.set()
        await asyncio.to_thread(thread.join, 20)
        await asyncio.sleep(1.2)  # the last access-log batch, then a sample
        html = await asyncio.to_thread(_get, status.url)
        assert html.count("<svg") >= 6
        assert "frontend-1 → reviews" in html
        assert "reviews-v1-1 → ratings" in html
        assert 'class="line"' in html
        assert 'class="bar"' in html
        shot = tmp_path / "status.png"
        await asyncio.to_thread(screenshot, status.url, shot)
        _, _, rows = png_pixels(shot)
        # Bars (push histograms) and at least two edges' lines are drawn in their colours.
        assert count_color(rows, COLORS[0]) > 200
        assert count_color(rows, COLORS[1]) > 20
        # What --serve prints: one line per sidecar with its merged Prometheus endpoint.
        block = serving_block(dm, status).splitlines()
        sidecars = [line.split() for line in block if line.startswith("  sidecar ")]
        assert sorted(s[1] for s in sidecars) == sorted(dm.sidecars)
        assert any(line.startswith("  frontend     http://") for line in block)
        for _, name, url in sidecars:
            text = await asyncio.to_thread(_get, url)
            assert "envoy_server_live" in text, name  # Envoy's own statistics
            assert "istio_requests_total{" in text, name  # and Istio's
        # meshcore serve's own page (the demo's control plane): same plots, served by it.
        cp = await asyncio.to_thread(_get, f"http://127.0.0.1:{dm.metrics_port}/status")
        assert "push → ACK convergence" in cp
        assert 'class="bar"' in cp
        assert "SYNCED" in cp
        # ... and, from the agents' advertised endpoints and its CA, the edges and certificates.
        assert "frontend-1 → reviews" in cp
        assert 'class="line"' in cp
        assert "Certificates issued by the CA" in cp
        assert "spiffe://cluster.local/ns/default/sa/" in cp
        cp_shot = tmp_path / "serve-status.png"
        await asyncio.to_thread(screenshot, f"http://127.0.0.1:{dm.metrics_port}/status", cp_shot)
        _, _, rows = png_pixels(cp_shot)
        assert count_color(rows, COLORS[0]) > 200
        assert count_color(rows, COLORS[1]) > 20
    finally:
        status.stop()
        await dm.stop()


def _get(url: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
