"""meshcore's SPIFFE certificate authority: X.509-SVIDs from CSRs, Istio's plug-in CA layout."""

from meshcore._extras import require

require("all", "meshcore.ca")

from meshcore.ca.authority import (
    DEFAULT_TTL,
    MAX_TTL,
    CAError,
    CertificateAuthority,
    IdentityMismatchError,
)
from meshcore.ca.spiffe import IdentityError, SpiffeId

__all__ = [
    "DEFAULT_TTL",
    "MAX_TTL",
    "CAError",
    "CertificateAuthority",
    "IdentityError",
    "IdentityMismatchError",
    "SpiffeId",
]
