"""SDS: the workload's certificate and trust bundle served to its local Envoy, as Istio's agent
does (``envoy.service.secret.v3.SecretDiscoveryService``).

Two secrets, by Istio's names: ``default`` (``tls_certificate``: the X.509-SVID chain and its
private key) and ``ROOTCA`` (``validation_context.trusted_ca``: the trust bundle). They are fed
by a :class:`~meshcore.dataplane.certs.CertificateClient`: every new certificate becomes a new
version that is pushed at once to every connected Envoy, which swaps it in without restarting.

The streams are meshcore's ADS streams (:class:`~meshcore.xds.server.AdsServer`), so nonces,
ACK/NACK, versions and subscription changes behave exactly as they do for the control plane's
resources: StreamSecrets is state of the world, DeltaSecrets is incremental. A secret name the
agent does not have is answered at once rather than left hanging: in delta it comes back in
``removed_resources`` (the protocol's "does not exist"); in state of the world the response
carries only the secrets that exist (Envoy reports a missing secret as a rejected update and
stops waiting for it). FetchSecrets answers the same from the current secrets.

The private key only ever exists in memory here and in the bytes sent to Envoy; it is never
logged (``WorkloadSecret`` keeps it out of its repr).

Envoy reaches the server over a Unix domain socket (Istio's ``workload-spiffe-uds/socket``) or a
loopback TCP port; the bootstrap's ``sds-grpc`` cluster
(:func:`meshcore.dataplane.bootstrap.ads_bootstrap` with ``sds_address``) points there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshcore.names import SDS_CERT as WORKLOAD_CERT
from meshcore.names import SDS_CLUSTER
from meshcore.names import SDS_ROOT as ROOT_CERT
from meshcore.xds import types
from meshcore.xds.cache import SnapshotCache
from meshcore.xds.server import AdsServer

if TYPE_CHECKING:
    from meshcore.dataplane.certs import WorkloadSecret

log = logging.getLogger("meshcore.ca.sds")

SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"

# Unix socket paths are limited to 108 bytes (sun_path), including the terminating NUL.
MAX_UDS_PATH = 100


def workload_secrets(secret: WorkloadSecret) -> dict[str, secret_pb2.Secret]:
    """Istio's two SDS secrets for one workload certificate."""
    cert = secret_pb2.Secret(name=WORKLOAD_CERT)
    cert.tls_certificate.certificate_chain.inline_string = secret.cert_chain_pem
    cert.tls_certificate.private_key.inline_bytes = secret.private_key_pem
    root = secret_pb2.Secret(name=ROOT_CERT)
    root.validation_context.trusted_ca.inline_string = secret.roots_pem
    return {WORKLOAD_CERT: cert, ROOT_CERT: root}


class SdsServer(AdsServer):
    """Serves the current secrets to every Envoy that connects (one workload's agent).

    Call :meth:`update` (or subscribe it to a CertificateClient) with each new certificate.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._current: Any = None  # the Snapshot of the latest secrets, for any node
        super().__init__(SnapshotCache(source=lambda node: self._current), **kwargs)
        self.version = 0
        self.serial: int | None = None

    def update(self, secret: WorkloadSecret) -> None:
        """Makes ``secret`` the served certificate; connected Envoys get it pushed at once."""
        self._current = self.cache.snapshot({types.SECRET: workload_secrets(secret)})
        self.version += 1
        self.serial = secret.serial
        # Every node that has connected so far: the same secrets, a new version. (Envoy opens
        # one SDS stream per secret, all with the same node: the node stays connected until
        # its last stream ends; see AdsServer.)
        for node_id in set(self.cache.nodes()) | set(self.proxies):
            self.cache.set(node_id, self._current)
        log.info(
            "SDS: serving certificate serial %x for %s (update %d)",
            secret.serial,
            secret.identity,
            self.version,
        )

    service = SERVICE
    sotw_method = "StreamSecrets"
    delta_method = "DeltaSecrets"

    def rpc_handlers(self) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
        handlers = super().rpc_handlers()
        handlers["FetchSecrets"] = grpc.unary_unary_rpc_method_handler(
            self.fetch_secrets,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=bytes,
        )
        return handlers

    async def fetch_secrets(
        self, request: discovery_pb2.DiscoveryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        if request.type_url and request.type_url != types.SECRET:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"type_url: SDS serves {types.SECRET} only"
            )
        snap = self._current
        if snap is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no certificate yet")
            raise AssertionError("unreachable")  # pragma: no cover
        names = sorted(set(request.resource_names)) or None
        data, _ = snap.sotw_response(types.SECRET, str(snap.version(types.SECRET)), "", names)
        return bytes(data)


def uds_path(workdir: str | os.PathLike[str], name: str = "sds.sock") -> Path:
    """Where an agent's socket goes (SDS's by default): ``WORKDIR/NAME``, or a short path
    under the runtime directory when the workdir is too deep for a Unix socket path."""
    path = Path(workdir).absolute() / name
    if len(os.fsencode(path)) <= MAX_UDS_PATH:
        return path
    import hashlib
    import tempfile

    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"meshcore-{Path(name).stem}-{digest}.sock"


async def start_sds_server(
    *, uds: str | os.PathLike[str] | None = None, port: int | None = None, host: str = "127.0.0.1"
) -> tuple[grpc.aio.Server, SdsServer, str]:
    """Starts an SDS server on a Unix socket (``uds``) or on host:port (0 picks a port).

    Returns the server, the :class:`SdsServer` (feed it with ``update``) and the address it
    listens on: ``unix:PATH`` or ``HOST:PORT``."""
    if (uds is None) == (port is None):
        raise ValueError("start_sds_server: give exactly one of uds= or port=")
    sds = SdsServer()
    server = grpc.aio.server()
    sds.add_to_server(server)
    if uds is not None:
        path = Path(uds)
        if len(os.fsencode(path)) > MAX_UDS_PATH:
            raise ValueError(f"uds: {path} is too long for a Unix socket path")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        server.add_insecure_port(f"unix:{path}")
        address = f"unix:{path}"
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
        address = f"{host}:{bound}"
    await server.start()
    if uds is not None:
        os.chmod(uds, 0o600)  # only the workload's user may ask for its key
    return server, sds, address


__all__ = [
    "ROOT_CERT",
    "SDS_CLUSTER",
    "WORKLOAD_CERT",
    "SdsServer",
    "start_sds_server",
    "uds_path",
    "workload_secrets",
]
