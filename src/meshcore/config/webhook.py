"""A Kubernetes validating admission webhook: AdmissionReview v1 in, AdmissionReview v1 out.

The same validation as ``meshcore validate`` (one resource at a time, as the API server sends
them), served over HTTPS with the standard library so the base install can run it.

Every request gets an answer. A body that is not an AdmissionReview (not UTF-8, not JSON,
nested deeper than Python's parser goes, a number no JSON decoder can hold, not an object, no
``request.uid``) gets HTTP 400 with the reason; a review gets an AdmissionReview, denied with
the reason when the object cannot be validated (nested deeper than ``MAX_DEPTH``, or the
validator failed): never allowed by default. Each request must arrive whole within
``REQUEST_DEADLINE_S`` (a client trickling bytes is cut off there, answered 408 when its
headers came), bodies over ``MAX_BODY`` get 413, at most ``MAX_CONNECTIONS`` connections are
served at once (more are closed at once), and a client that hangs up costs one debug line, no
traceback.
"""

from __future__ import annotations

import io
import json
import logging
import math
import socket
import ssl
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from meshcore._text import shown
from meshcore.config import validate_object

log = logging.getLogger("meshcore.webhook")

ADMISSION_API = "admission.k8s.io/v1"
MAX_BODY = 3 * 1024 * 1024  # the API server's own request size limit
REQUEST_DEADLINE_S = 10.0  # the API server's default webhook timeout: the whole request
MAX_CONNECTIONS = 64
MAX_DEPTH = 100  # nesting of the reviewed object (Istio resources nest about 10 deep)


class BadReview(ValueError):
    """The request is not an AdmissionReview we can answer (HTTP 400)."""


def parse(raw: bytes) -> Any:
    """The JSON document of a request body; BadReview says why there is none."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadReview(f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadReview(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise BadReview("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # a number out of range (parse_float, Python's int digit limit)
        raise BadReview(f"invalid JSON: {exc}") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {shown(text, 40)} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` deep (no recursion)."""
    level: list[tuple[Any, int]] = [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        level.extend((child, depth + 1) for child in children)
    return False


def review(body: Any) -> dict[str, Any]:
    """Answers one AdmissionReview request (a parsed JSON document)."""
    if not isinstance(body, dict):
        raise BadReview("the body must be a JSON object (an AdmissionReview)")
    if body.get("kind") != "AdmissionReview" or body.get("apiVersion") != ADMISSION_API:
        raise BadReview(f"expected kind AdmissionReview and apiVersion {ADMISSION_API}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise BadReview("request.uid is required")
    try:
        response = _response(request)
    except Exception as exc:  # the validator failed: say so, and deny (fail closed)
        log.error("cannot validate %s: %s", _ident(request.get("object")), shown(repr(exc)))
        response = _denied(
            request["uid"], f"meshcore could not validate this object: {shown(repr(exc))}"
        )
    return {"apiVersion": ADMISSION_API, "kind": "AdmissionReview", "response": response}


def _denied(uid: str, message: str) -> dict[str, Any]:
    status = {"code": 400, "reason": "Invalid", "message": message}
    return {"uid": uid, "allowed": False, "status": status}


def _response(request: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    obj = request.get("object")
    if request.get("operation") != "DELETE" and obj is not None:
        if not isinstance(obj, dict):
            return _denied(request["uid"], "request.object must be a JSON object")
        if _depth_over(obj, MAX_DEPTH):
            return _denied(request["uid"], f"the object is nested deeper than {MAX_DEPTH} levels")
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
    return response


def _line(p: Any) -> str:
    # Admission messages have no file: resource and path say where.
    where = p.resource
    body = f"{p.path}: {p.message}" if p.path else p.message
    return f"{where}: {body}" if where else body


def _ident(obj: Any) -> str:
    if not isinstance(obj, dict):
        return "an object"
    raw = obj.get("metadata")
    meta: dict[str, Any] = raw if isinstance(raw, dict) else {}
    ident = f"{obj.get('kind')} {meta.get('namespace', 'default')}/{meta.get('name')}"
    return shown(ident)


class _DeadlineReader(io.RawIOBase):
    """A connection's reads, each waiting no longer than what is left of the request's
    deadline (a per-read timeout alone would let a client trickling bytes hold the thread)."""

    def __init__(self, sock: socket.socket, handler: _Handler) -> None:
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    server_version = "meshcore-webhook"
    protocol_version = "HTTP/1.1"
    deadline = 0.0  # when the request being read must have arrived (time.monotonic)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain reader; reads go through the deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        self.deadline = time.monotonic() + self.server.request_deadline
        super().handle_one_request()

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "send the body with Content-Length"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length > MAX_BODY:
            self.close_connection = True
            self._reply(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": f"the body is over the limit of {MAX_BODY} bytes"},
            )
            return
        if length <= 0:
            self.close_connection = True
            self._reply(
                HTTPStatus.BAD_REQUEST, {"error": "a JSON body with Content-Length is required"}
            )
            return
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            self._reply(
                HTTPStatus.REQUEST_TIMEOUT,
                {"error": f"the request did not arrive within {self.server.request_deadline:g} s"},
            )
            return
        if len(raw) < length:  # the client hung up in the middle of its body
            self.close_connection = True
            return
        try:
            answer = review(parse(raw))
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
        # The answer gets what is left of the deadline, and at least a second.
        self.connection.settimeout(max(1.0, self.deadline - time.monotonic()))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), shown(format % args))


class WebhookServer(ThreadingHTTPServer):
    """HTTPS with the TLS handshake in each connection's own thread, so that a slow or
    plaintext client cannot stall the accept loop."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        context: ssl.SSLContext,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline: float = REQUEST_DEADLINE_S,
    ) -> None:
        super().__init__(address, _Handler)
        self.context = context
        self.request_deadline = request_deadline
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused_connections = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused_connections += 1
            log.debug("too many connections: closing the one from %s", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake as a whole gets the request deadline (Python's TLS calls count their
        # timeout for the whole call, not per read).
        request.settimeout(self.request_deadline)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # hung up, reset, timed out: the client's business
            log.debug("connection from %s ended: %s", client_address[0], exc)
        else:
            log.error("request from %s failed: %s", client_address[0], shown(repr(exc)))


def make_server(
    cert: str, key: str, port: int, host: str = "127.0.0.1", **limits: Any
) -> WebhookServer:
    """An HTTPS server bound to host:port (port 0 picks a free one); call serve_forever().
    ``limits``: ``max_connections``, ``request_deadline`` (see :class:`WebhookServer`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return WebhookServer((host, port), context, **limits)


def serve_in_thread(server: WebhookServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="meshcore-webhook", daemon=True)
    thread.start()
    return thread
