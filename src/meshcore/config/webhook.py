"""A Kubernetes validating admission webhook: AdmissionReview v1 in, AdmissionReview v1 out.

The same validation as ``meshcore validate`` (one resource at a time, as the API server sends
them), served over HTTPS with the standard library so the base install can run it.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from meshcore.config import validate_object

log = logging.getLogger("meshcore.webhook")

ADMISSION_API = "admission.k8s.io/v1"
MAX_BODY = 3 * 1024 * 1024  # the API server's own request size limit
CLIENT_TIMEOUT_S = 10.0  # the API server's default webhook timeout


class BadReview(ValueError):
    """The request is not an AdmissionReview we can answer (HTTP 400)."""


def review(body: Any) -> dict[str, Any]:
    """Answers one AdmissionReview request (a parsed JSON document)."""
    if not isinstance(body, dict):
        raise BadReview("the body must be a JSON object (an AdmissionReview)")
    if body.get("kind") != "AdmissionReview" or body.get("apiVersion") != ADMISSION_API:
        raise BadReview(f"expected kind AdmissionReview and apiVersion {ADMISSION_API}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise BadReview("request.uid is required")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    obj = request.get("object")
    if request.get("operation") != "DELETE" and obj is not None:
        if not isinstance(obj, dict):
            raise BadReview("request.object must be a JSON object")
        problems = validate_object(obj, source="admission")
        errors = [p for p in problems if p.severity == "error"]
        warnings = [_line(p) for p in problems if p.severity == "warning"]
        if errors:
            response["allowed"] = False
            response["status"] = {
                "code": 400,
                "reason": "Invalid",
                "message": "; ".join(_line(p) for p in errors),
            }
            log.info("denied %s: %d problem(s)", _ident(obj), len(errors))
        if warnings:
            response["warnings"] = warnings
    return {"apiVersion": ADMISSION_API, "kind": "AdmissionReview", "response": response}


def _line(p: Any) -> str:
    # Admission messages have no file: resource and path say where.
    where = p.resource
    body = f"{p.path}: {p.message}" if p.path else p.message
    return f"{where}: {body}" if where else body


def _ident(obj: dict[str, Any]) -> str:
    raw = obj.get("metadata")
    meta: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return f"{obj.get('kind')} {meta.get('namespace', 'default')}/{meta.get('name')}"


class _Handler(BaseHTTPRequestHandler):
    server_version = "meshcore-webhook"
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._reply(
                HTTPStatus.BAD_REQUEST, {"error": "a JSON body with Content-Length is required"}
            )
            return
        raw = self.rfile.read(length)
        try:
            answer = review(json.loads(raw))
        except json.JSONDecodeError as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": f"invalid JSON: {exc}"})
            return
        except BadReview as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        self._reply(HTTPStatus.OK, answer)

    def do_GET(self) -> None:
        if self.path in ("/healthz", "/readyz"):
            self._reply(HTTPStatus.OK, {"status": "ok"})
        else:
            self._reply(HTTPStatus.NOT_FOUND, {"error": "POST an AdmissionReview"})

    def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class WebhookServer(ThreadingHTTPServer):
    """HTTPS with the TLS handshake in each connection's own thread, so that a slow or
    plaintext client cannot stall the accept loop."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(address, _Handler)
        self.context = context

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(CLIENT_TIMEOUT_S)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


def make_server(cert: str, key: str, port: int, host: str = "127.0.0.1") -> WebhookServer:
    """An HTTPS server bound to host:port (port 0 picks a free one); call serve_forever()."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return WebhookServer((host, port), context)


def serve_in_thread(server: WebhookServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="meshcore-webhook", daemon=True)
    thread.start()
    return thread
