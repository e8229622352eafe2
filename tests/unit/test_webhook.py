"""The admission webhook over real TLS: AdmissionReview v1 JSON in and out."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.hostile._server_helpers import tls_pair

from meshcore.config.webhook import make_server, serve_in_thread


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tls_pair(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tls_files: tuple[Path, Path]) -> Iterator[int]:
    cert, key = tls_files
    srv = make_server(str(cert), str(key), 0)
    thread = serve_in_thread(srv)
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def post(port: int, cafile: Path, body: bytes) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("POST", "/validate", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def review(obj: dict[str, Any] | None, operation: str = "CREATE") -> bytes:
    request: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "networking.istio.io", "version": "v1", "kind": "VirtualService"},
        "resource": {
            "group": "networking.istio.io",
            "version": "v1",
            "resource": "virtualservices",
        },
        "name": "reviews",
        "namespace": "default",
        "operation": operation,
        "userInfo": {"username": "admin"},
        "object": obj,
        "oldObject": None,
        "dryRun": False,
    }
    return json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    ).encode()


def virtual_service(weight: int) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {
            "hosts": ["reviews"],
            "http": [{"route": [{"destination": {"host": "reviews"}, "weight": weight}]}],
        },
    }


def test_allows_valid(server: int, tls_files: tuple[Path, Path]) -> None:
    status, body = post(server, tls_files[0], review(virtual_service(100)))
    assert status == 200
    assert body == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True},
    }


def test_denies_invalid_with_the_message(server: int, tls_files: tuple[Path, Path]) -> None:
    status, body = post(server, tls_files[0], review(virtual_service(-5)))
    assert status == 200
    response = body["response"]
    assert response["allowed"] is False
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["status"]["code"] == 400
    assert response["status"]["message"] == (
        "VirtualService default/reviews: spec.http[0].route[0].weight: "
        "weight -5 must not be negative"
    )


def test_delete_is_allowed_and_unknown_kinds_warn(
    server: int, tls_files: tuple[Path, Path]
) -> None:
    _, body = post(server, tls_files[0], review(None, operation="DELETE"))
    assert body["response"]["allowed"] is True
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    _, body = post(server, tls_files[0], review(widget))
    assert body["response"]["allowed"] is True
    assert "unknown kind 'Widget'" in body["response"]["warnings"][0]


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"kind": "AdmissionReview"}',
        json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}
        ).encode(),
    ],
)
def test_bad_requests_get_400(server: int, tls_files: tuple[Path, Path], payload: bytes) -> None:
    status, body = post(server, tls_files[0], payload)
    assert status == 400
    assert body["error"]


def test_plaintext_is_refused(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        try:
            data = s.recv(1024)
        except ConnectionResetError:
            data = b""
    assert not data.startswith(b"HTTP/1.1 200")


def test_a_stalled_client_does_not_block_others(server: int, tls_files: tuple[Path, Path]) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5):
        # This connection never starts its handshake; the next one must still be served.
        status, _ = post(server, tls_files[0], review(virtual_service(100)))
    assert status == 200


def test_cli_webhook_serves(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshcore",
            "webhook",
            "--cert",
            str(cert),
            "--key",
            str(key),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"https://127.0.0.1:{port}/validate" in line
        status, body = post(port, cert, review(virtual_service(100)))
        assert status == 200
        assert body["response"]["allowed"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_cli_webhook_missing_cert_is_usage_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshcore",
            "webhook",
            "--cert",
            str(tmp_path / "no.crt"),
            "--key",
            str(tmp_path / "no.key"),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 2
    assert "no such file" in r.stderr
