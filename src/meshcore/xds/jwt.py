"""RequestAuthentication -> Envoy's ``envoy.filters.http.jwt_authn`` filter, as istiod builds it
(pilot/pkg/security/authn ``convertToEnvoyJwtConfig``), and the JWKS fetcher istiod runs.

Istio's meaning: a request carrying an invalid token (bad signature, expired, wrong issuer or
audience) is rejected with 401; a request without a token passes the JWT filter (it is an
AuthorizationPolicy with ``requestPrincipals`` that demands one). One provider per JWT rule of
the RequestAuthentications selecting the workload, sorted by issuer, named ``origins-N``; a
single provider is required as ``{provider OR allow_missing}``, several as
``{P1 OR P2 ... OR AND(P1 OR allow_missing, P2 OR allow_missing, ...)}``. Each provider puts the
verified payload in the filter's dynamic metadata under ``payload``, where the RBAC matchers
of :mod:`meshcore.security._model` read ``iss``, ``sub``, ``aud``, ``azp`` and the claims (the
same metadata Istio's own RBAC reads, so no istio_authn filter is needed).

JWKS are inlined (``local_jwks``): a rule's ``jwks``, or what the control plane fetched from
``jwksUri`` (or the issuer's OpenID discovery document). When a fetch fails the provider gets a
JWKS that no token can match, as istiod does: tokens are rejected, never accepted, and the
failure is reported.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from meshcore.config.model import Checked
from meshcore.config.requestauthn import jwks_problem, jwks_uri_problem
from meshcore.names import JWT_AUTHN_NAME, JWT_PAYLOAD_KEY
from meshcore.xds.common import Invalid, checked_of, duration, pack
from meshcore.xds.problems import ProblemLog

__all__ = ["FAIL_CLOSED_JWKS", "JwksFetcher", "jwt_filter"]

log = logging.getLogger("meshcore.xds.jwt")

# An RSA public key whose private half was discarded when it was generated: no token verifies
# with it. Served in place of a JWKS that could not be fetched (istiod's "fake JWKS").
FAIL_CLOSED_JWKS = json.dumps(
    {
        "keys": [
            {
                "kty": "RSA",
                "alg": "RS256",
                "kid": "meshcore-jwks-unavailable",
                "e": "AQAB",
                "n": (
                    "wfEX3jD_seGx06HL6KoWGz7Ozezv-4xzPDfPzm5VnujrSAPAuWG8xaiZ4B7uL1j7sT_lDBFBG5_Q"
                    "YJX7E8kJE_veUldtTwOdnd6gRvOZ4Suka2o7mWFbsIZg7Fzfv2mBx5Qv9E5baxnqt0kCwSyF-muF"
                    "ctOUuZobcH7_d27PUwg4v4M7nOkYjQ3Bq-Lb_BxyuPxX8tVwYIpATIdUgVAKbSTeTIqFqNo-BqYz"
                    "5Q7BA6qbBKCLMUM5M433hnA4tiDq834ZYewcgeU_DUF0LZe03YoljPQPGrb-_PM0fVf3f8M-mC2j"
                    "SPbLacbbHiDAJssAw9iysC4wNPO-0XAHBnVg2Q"
                ),
            }
        ]
    },
    sort_keys=True,
)
DEFAULT_TIMEOUT_S = 5.0  # Istio's default JWT rule timeout
# Istio's JWT claims split on spaces in the metadata (OAuth scopes), always included.
SPACE_DELIMITED_CLAIMS = ("permission", "scope")


@dataclass(frozen=True, slots=True)
class _Entry:
    jwks: str | None
    error: str | None
    at: float
    request: tuple[str, str, float]  # (uri, issuer, timeout): how to fetch it again


class JwksFetcher:
    """Fetches and caches JWKS for the control plane (istiod's JwksResolver), bounded: each
    fetch has a timeout and a size cap; a JWKS is kept ``refresh_interval`` seconds, a failure
    ``retry_interval`` seconds (then fetched again at the next translation). Owned by a
    :class:`~meshcore.xds.translator.Translator`; thread-safe."""

    def __init__(
        self,
        *,
        max_bytes: int = 1 << 20,
        refresh_interval: float = 20 * 60.0,
        retry_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        fetch_on_miss: bool = True,
    ) -> None:
        # fetch_on_miss=False: a JWKS never fetched is not fetched by the translation (which
        # may run in an event loop) but left to the next refresh(), failing closed meanwhile
        # (istiod: "not yet fetched, using a fake JWKS for now").
        self.fetch_on_miss = fetch_on_miss
        self.max_bytes = max_bytes
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def jwks(self, uri: str, issuer: str, timeout: float) -> tuple[str | None, str | None]:
        """(the JWKS text, None) or (None, why it could not be had). With no ``uri``, the
        issuer's OpenID discovery document names it, as in Istio."""
        key = uri or f"discovery:{issuer}"
        request = (uri, issuer, timeout)
        with self._lock:
            found = self._cache.get(key)
        if found is not None and (not self.fetch_on_miss or not self._due(found, self._clock())):
            return found.jwks, found.error
        if found is None and not self.fetch_on_miss:
            found = _Entry(None, "not fetched yet", -math.inf, request)
            with self._lock:
                self._cache.setdefault(key, found)
            return found.jwks, found.error
        return self._fetch(key, request, found)

    def _fetch(
        self, key: str, request: tuple[str, str, float], found: _Entry | None
    ) -> tuple[str | None, str | None]:
        jwks, error = self._resolve(*request)
        if error is not None and found is not None and found.jwks is not None:
            # A refresh failed: keep serving the keys we had (istiod keeps its last JWKS).
            log.warning("JWKS refresh from %s failed (%s); keeping the last keys", key, error)
            jwks, error = found.jwks, None
        with self._lock:
            self._cache[key] = _Entry(jwks, error, self._clock(), request)
        return jwks, error

    def _due(self, entry: _Entry, now: float) -> bool:
        age = now - entry.at
        return age >= (self.refresh_interval if entry.error is None else self.retry_interval)

    def refresh(self) -> bool:
        """Fetches again every JWKS that is due (kept past its interval, failed and past the
        retry interval, or never fetched); True when the keys of one of them changed (rotated,
        or a failed fetch now succeeds): the listeners using it must be built again. Fetches
        block: call it from a worker thread (:meth:`ControlPlane.run
        <meshcore.xds.controlplane.ControlPlane.run>` does)."""
        now = self._clock()
        with self._lock:
            due = [(k, e) for k, e in self._cache.items() if self._due(e, now)]
        changed = False
        for key, entry in due:
            # Only the keys matter to the proxies (a failure is the fail-closed JWKS whatever
            # its reason): a failure that fails again differently changes nothing.
            changed |= self._fetch(key, entry.request, entry)[0] != entry.jwks
        return changed

    def _resolve(self, uri: str, issuer: str, timeout: float) -> tuple[str | None, str | None]:
        if not uri:
            disc = issuer.rstrip("/") + "/.well-known/openid-configuration"
            if jwks_uri_problem(disc) is not None:
                return None, f"no jwksUri, and the issuer {issuer!r} is not a URL to discover"
            text, error = self._get(disc, timeout)
            if text is None:
                return None, f"OpenID discovery at {disc}: {error}"
            try:
                found = json.loads(text).get("jwks_uri")
            except (ValueError, AttributeError):
                found = None
            if not isinstance(found, str) or jwks_uri_problem(found) is not None:
                return None, f"OpenID discovery at {disc} names no valid jwks_uri"
            uri = found
        text, error = self._get(uri, timeout)
        if text is None:
            return None, f"fetching {uri}: {error}"
        problem = jwks_problem(text)
        if problem is not None:
            return None, f"{uri} did not return a JWKS ({problem})"
        return text, None

    def _get(self, url: str, timeout: float) -> tuple[str | None, str | None]:
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read(self.max_bytes + 1)
        except urllib.error.HTTPError as exc:
            return None, f"HTTP status {exc.code}"
        except (OSError, ValueError) as exc:
            return None, str(exc) or type(exc).__name__
        if len(body) > self.max_bytes:
            return None, f"response larger than {self.max_bytes} bytes"
        try:
            return body.decode("utf-8"), None
        except UnicodeDecodeError:
            return None, "response is not UTF-8"


def _timeout_s(rule: Mapping[str, Any], checked: Checked, path: str) -> float:
    """The rule's JWKS fetch timeout, as the loader parsed it."""
    if rule.get("timeout") is None:
        return DEFAULT_TIMEOUT_S
    d = duration(rule["timeout"], path + ".timeout", checked)
    return d.seconds + d.nanos / 1e9 or DEFAULT_TIMEOUT_S


def _inline_jwks(text: str) -> str:
    doc = json.loads(text)
    if isinstance(doc, dict) and "keys" not in doc:
        doc = {"keys": [doc]}  # one JWK: Envoy reads key sets
    return json.dumps(doc, sort_keys=True)


def jwt_rules(policies: Sequence[Any]) -> list[tuple[Any, int, Mapping[str, Any]]]:
    """(policy, index, rule) of every JWT rule of ``policies``, in Istio's order (by issuer)."""
    found = [(pol, i, rule) for pol in policies for i, rule in enumerate(pol.jwt_rules)]
    return sorted(found, key=lambda e: str(e[2].get("issuer") or ""))


def jwt_filter(
    policies: Sequence[Any], fetcher: JwksFetcher, problems: ProblemLog
) -> hcm_pb2.HttpFilter | None:
    """The jwt_authn filter for a workload selected by ``policies`` (RequestAuthentications);
    None when they have no JWT rule. Fetch failures are reported on the rule (fail closed)."""
    rules = jwt_rules(policies)
    if not rules:
        return None
    cfg = jwt_pb2.JwtAuthentication(bypass_cors_preflight=True)
    inner: list[jwt_pb2.JwtRequirement] = []
    outer: list[jwt_pb2.JwtRequirement] = []
    for i, (pol, idx, rule) in enumerate(rules):
        name = f"origins-{i}"
        cfg.providers[name].CopyFrom(_provider(pol, idx, rule, fetcher, problems))
        one = jwt_pb2.JwtRequirement(provider_name=name)
        either = jwt_pb2.JwtRequirement()
        either.requires_any.requirements.append(one)
        either.requires_any.requirements.add().allow_missing.SetInParent()
        inner.append(either)
        outer.append(one)
    req = cfg.rules.add()
    req.match.prefix = "/"
    if len(inner) == 1:
        req.requires.CopyFrom(inner[0])
    else:
        req.requires.requires_any.requirements.extend(outer)
        req.requires.requires_any.requirements.add().requires_all.requirements.extend(inner)
    return hcm_pb2.HttpFilter(name=JWT_AUTHN_NAME, typed_config=pack(cfg))


def _provider(
    pol: Any, idx: int, rule: Mapping[str, Any], fetcher: JwksFetcher, problems: ProblemLog
) -> jwt_pb2.JwtProvider:
    issuer = str(rule.get("issuer") or "")
    p = jwt_pb2.JwtProvider(
        issuer=issuer,
        audiences=[str(a) for a in rule.get("audiences") or ()],
        forward=bool(rule.get("forwardOriginalToken")),
        forward_payload_header=str(rule.get("outputPayloadToHeader") or ""),
        payload_in_metadata=JWT_PAYLOAD_KEY,
    )
    claims = {str(c) for c in rule.get("spaceDelimitedClaims") or ()} | set(SPACE_DELIMITED_CLAIMS)
    p.normalize_payload_in_metadata.space_delimited_claims.extend(sorted(claims))
    try:
        checked = checked_of(pol)  # a RequestAuthentication built by hand is checked here
    except Invalid as bad:
        problems.problem(pol, bad.path, f"{bad.message}; tokens of issuer {issuer!r} are rejected")
        p.local_jwks.inline_string = FAIL_CLOSED_JWKS
        return p
    for out in rule.get("outputClaimToHeaders") or ():
        p.claim_to_headers.add(header_name=str(out["header"]), claim_name=str(out["claim"]))
    for loc in rule.get("fromHeaders") or ():
        p.from_headers.add(name=str(loc["name"]), value_prefix=str(loc.get("prefix") or ""))
    p.from_params.extend(str(x) for x in rule.get("fromParams") or ())
    p.from_cookies.extend(str(x) for x in rule.get("fromCookies") or ())
    inline = rule.get("jwks")
    if inline:
        jwks: str = _inline_jwks(str(inline))
    else:
        uri = str(rule.get("jwksUri") or "")
        fetched, error = fetcher.jwks(
            uri, issuer, _timeout_s(rule, checked, f"spec.jwtRules[{idx}]")
        )
        if fetched is None:
            field = "jwksUri" if uri else "issuer"
            problems.problem(
                pol,
                f"spec.jwtRules[{idx}].{field}",
                f"JWKS unavailable ({error}): tokens of issuer {issuer!r} are rejected until it"
                " can be fetched",
                "warning",
            )
            jwks = FAIL_CLOSED_JWKS
        else:
            jwks = _inline_jwks(fetched)
    p.local_jwks.inline_string = jwks
    return p
