"""Fixtures shared by the tests with real Envoy."""

from __future__ import annotations

import http.server
from collections.abc import Iterator

import pytest


@pytest.fixture
def named_servers() -> Iterator[list[http.server.ThreadingHTTPServer]]:
    """The servers a test starts (``_sidecar.serve_named``), stopped after it."""
    started: list[http.server.ThreadingHTTPServer] = []
    yield started
    for s in started:
        s.shutdown()
        s.server_close()
