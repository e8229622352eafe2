"""SPIFFE IDs as Istio uses them: ``spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshcore.errors import MeshcoreError

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+\Z")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+\Z")


class IdentityError(MeshcoreError, ValueError):
    """A malformed SPIFFE ID."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parses an Istio workload identity; IdentityError says what is wrong."""
        if not uri.startswith("spiffe://"):
            raise IdentityError(f"{uri!r} is not a SPIFFE ID (spiffe://TRUST_DOMAIN/ns/NS/sa/SA)")
        td, _, path = uri[len("spiffe://") :].partition("/")
        if not td or len(td) > 255 or not _TRUST_DOMAIN.match(td):
            raise IdentityError(
                f"{uri!r}: invalid trust domain {td!r} (lowercase letters, digits, '.', '-', '_')"
            )
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise IdentityError(f"{uri!r}: the path must be /ns/NAMESPACE/sa/SERVICE_ACCOUNT")
        ns, sa = parts[1], parts[3]
        for seg in (ns, sa):
            if not _SEGMENT.match(seg):
                raise IdentityError(f"{uri!r}: invalid path segment {seg!r}")
        return cls(td, ns, sa)

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """The form AuthorizationPolicy principals use: ``TRUST_DOMAIN/ns/NS/sa/SA``."""
        return self.uri[len("spiffe://") :]

    def __str__(self) -> str:
        return self.uri
