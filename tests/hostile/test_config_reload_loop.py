"""``meshcore serve`` keeps answering while it reads a large config (issue 11: a big file
blocked its event loop, and /metrics stopped answering for 16 s): reading, parsing and
validating run in a worker thread. A probe asks /metrics and /debug/syncz (both answered by
the event loop) every 20 ms while a 2 MB file of 8,000 documents is read; the reload ends with
the file's one error reported, and no probe waited long."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.envoy._sidecar import free_ports, serve_process, wait_for
from tests.hostile._config_helpers import SERVICE, big_mesh

BROKEN = "---\napiVersion: v1\nkind: Service\nmetadata: {name: last}\nspec: {ports: [{port: 0}]}\n"


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        body: bytes = r.read()
        return body


def _problems(port: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(_get(port, "/debug/syncz"))["config_problems"]
    return found


def test_metrics_answer_during_a_large_reload(tmp_path: Path) -> None:
    xds, metrics = free_ports(2)
    config = tmp_path / "config"
    config.mkdir()
    (config / "mesh.yaml").write_text(SERVICE.format(name="reviews"))
    big = tmp_path / "big.yaml"
    big.write_text(big_mesh(2000) + BROKEN)
    with serve_process(tmp_path, config, {"xds": xds, "metrics": metrics}):
        wait_for(lambda: b"pilot_xds" in _get(metrics, "/metrics"), "/metrics")
        os.replace(big, config / "big.yaml")
        started = time.monotonic()
        waits: list[float] = []
        while time.monotonic() - started < 120:
            t0 = time.monotonic()
            _get(metrics, "/metrics")
            problems = _problems(metrics)
            waits.append(time.monotonic() - t0)
            if problems:
                break
            time.sleep(0.02)
        reload = time.monotonic() - started
        assert problems, "the reload did not finish in 120 s"
        [problem] = problems
        assert problem["file"].endswith("big.yaml")
        assert problem["line"] == big_mesh(2000).count("\n") + 5  # spec: of the last
        # The event loop answered throughout: no probe waited for the reload to end.
        assert len(waits) >= 5, (reload, waits)
        assert max(waits) < max(0.5, reload / 3), (reload, sorted(waits)[-5:])
