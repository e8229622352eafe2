"""TLS on gateway servers: the DownstreamTlsContext of a terminating server, and the
``credentialName`` secrets a gateway proxy is given over SDS.

Secrets follow Istio's names and rules: a server's ``credentialName: NAME`` is the SDS resource
``kubernetes://NAME`` (the certificate and key of the Secret ``NAME``, from ``tls.crt`` and
``tls.key``, or the generic ``cert`` and ``key``); for MUTUAL and OPTIONAL_MUTUAL the client CA
is ``kubernetes://NAME-cacert`` (``ca.crt`` or ``cacert`` of the same Secret, else of the Secret
``NAME-cacert``). A gateway proxy gets only the secrets its own servers name, and only from its
own namespace (Istio's rule: a gateway reads the Secrets of the namespace it runs in); sidecars
get none. ISTIO_MUTUAL servers use the proxy's mesh certificate from its agent (``default`` and
``ROOTCA``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshcore.config.gateway import CA_KEYS, CERT_KEYS, CIPHER_SUITES, KEY_KEYS
from meshcore.config.model import MeshModel, Secret
from meshcore.names import SDS_CERT, SDS_ROOT
from meshcore.xds.common import sds
from meshcore.xds.node import Proxy
from meshcore.xds.problems import ProblemLog

if TYPE_CHECKING:
    from meshcore.xds.gateway import Server

__all__ = ["CREDENTIAL_PREFIX", "downstream_tls", "server_secrets"]

CREDENTIAL_PREFIX = "kubernetes://"
CA_SUFFIX = "-cacert"
_VERSIONS = {
    "TLS_AUTO": common_pb2.TlsParameters.TLS_AUTO,
    "TLSV1_0": common_pb2.TlsParameters.TLSv1_0,
    "TLSV1_1": common_pb2.TlsParameters.TLSv1_1,
    "TLSV1_2": common_pb2.TlsParameters.TLSv1_2,
    "TLSV1_3": common_pb2.TlsParameters.TLSv1_3,
}


def _credential(name: str) -> secret_pb2.SdsSecretConfig:
    """A credentialName secret: from the control plane, on the ADS stream (as istiod serves
    them), waited for as long as it takes."""
    source = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )
    source.initial_fetch_timeout.SetInParent()
    return secret_pb2.SdsSecretConfig(name=CREDENTIAL_PREFIX + name, sds_config=source)


def credential_names(tls: Mapping[str, Any]) -> list[str]:
    names = [str(tls["credentialName"])] if tls.get("credentialName") else []
    return names + [str(n) for n in tls.get("credentialNames") or ()]


def downstream_tls(tls: Mapping[str, Any], *, http: bool) -> tls_pb2.DownstreamTlsContext:
    """The DownstreamTlsContext of a server terminating TLS (SIMPLE, MUTUAL, OPTIONAL_MUTUAL,
    ISTIO_MUTUAL), as Istio builds it."""
    mode = str(tls.get("mode", "SIMPLE"))
    ctx = tls_pb2.DownstreamTlsContext()
    common = ctx.common_tls_context
    if http:
        common.alpn_protocols.extend(("h2", "http/1.1"))
    params = common.tls_params
    params.tls_minimum_protocol_version = _VERSIONS[str(tls.get("minProtocolVersion", "TLSV1_2"))]
    if tls.get("maxProtocolVersion"):
        params.tls_maximum_protocol_version = _VERSIONS[str(tls["maxProtocolVersion"])]
    # Istio's FilterCipherSuites: the names Envoy knows (and operators such as "-X"), once each
    suites = [
        str(c) for c in tls.get("cipherSuites") or ()
        if str(c) in CIPHER_SUITES or not str(c)[:1].isalnum()
    ]  # fmt: skip
    params.cipher_suites.extend(dict.fromkeys(suites))
    names = credential_names(tls)
    if mode == "ISTIO_MUTUAL":
        common.tls_certificate_sds_secret_configs.append(sds(SDS_CERT))
        validation = common.combined_validation_context
        validation.default_validation_context.SetInParent()
        validation.validation_context_sds_secret_config.CopyFrom(sds(SDS_ROOT))
        ctx.require_client_certificate.value = True
        _verify(validation.default_validation_context, tls)
        return ctx
    if names:
        common.tls_certificate_sds_secret_configs.extend(_credential(n) for n in names)
    else:  # files on the gateway's host
        pairs = list(tls.get("tlsCertificates") or ()) or [tls]
        for pair in pairs:
            cert = common.tls_certificates.add()
            cert.certificate_chain.filename = str(pair.get("serverCertificate", ""))
            cert.private_key.filename = str(pair.get("privateKey", ""))
    if mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
        ctx.require_client_certificate.value = mode == "MUTUAL"
        if names:
            validation = common.combined_validation_context
            validation.default_validation_context.SetInParent()
            validation.validation_context_sds_secret_config.CopyFrom(
                _credential(names[0] + CA_SUFFIX)
            )
            _verify(validation.default_validation_context, tls)
        else:
            ca = tls.get("caCertificates") or next(
                (p.get("caCertificates") for p in tls.get("tlsCertificates") or () if p.get("caCertificates")),
                "",
            )  # fmt: skip
            common.validation_context.trusted_ca.filename = str(ca)
            _verify(common.validation_context, tls)
    return ctx


def _verify(ctx: common_pb2.CertificateValidationContext, tls: Mapping[str, Any]) -> None:
    """subjectAltNames, verifyCertificateSpki and verifyCertificateHash: what a client
    certificate must also have."""
    for san in tls.get("subjectAltNames") or ():
        for kind in (common_pb2.SubjectAltNameMatcher.DNS, common_pb2.SubjectAltNameMatcher.URI):
            ctx.match_typed_subject_alt_names.add(
                san_type=kind, matcher=string_pb2.StringMatcher(exact=str(san))
            )
    ctx.verify_certificate_spki.extend(str(v) for v in tls.get("verifyCertificateSpki") or ())
    ctx.verify_certificate_hash.extend(str(v) for v in tls.get("verifyCertificateHash") or ())


def _first(secret: Secret | None, keys: tuple[str, ...]) -> bytes | None:
    if secret is None:
        return None
    for key in keys:
        value = secret.value(key)
        if value is not None:
            return value
    return None


def server_secrets(
    server: Server, mesh: MeshModel, proxy: Proxy, log: ProblemLog
) -> dict[str, secret_pb2.Secret]:
    """The SDS secrets of one server's ``credentialName``s, from the Secrets of the proxy's
    namespace; a missing Secret or key is a problem on the server (its filter chain then waits
    for the secret, as Envoy does for one istiod cannot find)."""
    tls = server.tls
    mode = str(tls.get("mode", "SIMPLE"))
    out: dict[str, secret_pb2.Secret] = {}
    path = server.path + ".tls.credentialName"
    for k, name in enumerate(credential_names(tls)):
        if not tls.get("credentialName"):
            path = f"{server.path}.tls.credentialNames[{k}]"
        found = mesh.get("Secret", proxy.namespace, name)
        secret = found if isinstance(found, Secret) else None
        cert, key = _first(secret, CERT_KEYS), _first(secret, KEY_KEYS)
        if cert is None or key is None:
            what = (
                f"Secret {proxy.namespace}/{name} is not in the config"
                if secret is None
                else f"Secret {proxy.namespace}/{name} has no tls.crt and tls.key"
            )
            log.problem(
                server.gateway,
                path,
                f"{what} (a gateway reads the Secrets of its own namespace, {proxy.namespace}):"
                " the server's listener waits for it",
                "warning",
            )
        else:
            s = secret_pb2.Secret(name=CREDENTIAL_PREFIX + name)
            s.tls_certificate.certificate_chain.inline_bytes = cert
            s.tls_certificate.private_key.inline_bytes = key
            out[s.name] = s
        if mode in ("MUTUAL", "OPTIONAL_MUTUAL") and k == 0:
            other = mesh.get("Secret", proxy.namespace, name + CA_SUFFIX)
            ca = _first(secret, CA_KEYS) or _first(
                other if isinstance(other, Secret) else None, (*CA_KEYS, *CERT_KEYS)
            )
            if ca is None:
                log.problem(
                    server.gateway,
                    path,
                    f"{mode} needs the client CA: ca.crt in Secret {proxy.namespace}/{name}, or"
                    f" a Secret {proxy.namespace}/{name}{CA_SUFFIX}; the server's listener"
                    " waits for it",
                    "warning",
                )
            else:
                v = secret_pb2.Secret(name=CREDENTIAL_PREFIX + name + CA_SUFFIX)
                v.validation_context.trusted_ca.inline_bytes = ca
                out[v.name] = v
    return out
