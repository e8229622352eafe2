"""``meshcore demo --capture``: the tour in pods, quickly (60 requests); CI runs it as root."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from meshcore.capture.pods import available
from meshcore.dataplane.agent import find_envoy
from meshcore.demo.capture import run_capture_demo

UNAVAILABLE = available()


@pytest.mark.envoy
@pytest.mark.skipif(
    UNAVAILABLE is not None and os.environ.get("CI") != "true",
    reason=f"no network namespaces: {UNAVAILABLE}",
)
def test_capture_demo_tour_passes() -> None:
    out = io.StringIO()
    assert run_capture_demo(find_envoy(), out=out, requests=60) == 0, out.getvalue()
    text = out.getvalue()
    assert "the apps used plain service names (http://reviews:9080/" in text
    for check in ("canary 90/10", "header route x-user: tester → v2",
                  "STRICT refuses plaintext", "PERMISSIVE accepts plaintext",
                  "AuthorizationPolicy denies frontend → ratings", "canary 50/50 after the change",
                  "traces reach the Zipkin collector"):  # fmt: skip
        assert f"PASS  {check}" in text, text
    assert "ISTIO_REDIRECT" in text


def test_capture_demo_refuses_loopback_options() -> None:
    out = subprocess.run([sys.executable, "-m", "meshcore", "demo", "--capture", "--serve"],
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode == 2
    assert "--serve" in out.stderr
