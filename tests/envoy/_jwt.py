"""A tiny JWT encoder for the tests (RS256 and ES256 with keys the tests generate), and the JWKS
of those keys. Tokens are what an identity provider would issue; nothing here verifies."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int, size: int | None = None) -> str:
    return b64url(n.to_bytes(size or (n.bit_length() + 7) // 8, "big"))


@dataclass
class SigningKey:
    """An RSA (RS256) or P-256 (ES256) key with its key id."""

    kid: str
    alg: str = "RS256"
    key: Any = field(default=None)

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = (
                rsa.generate_private_key(public_exponent=65537, key_size=2048)
                if self.alg == "RS256"
                else ec.generate_private_key(ec.SECP256R1())
            )

    def jwk(self) -> dict[str, str]:
        pub = self.key.public_key().public_numbers()
        if self.alg == "RS256":
            return {
                "kty": "RSA",
                "alg": "RS256",
                "kid": self.kid,
                "e": _int(pub.e),
                "n": _int(pub.n),
            }
        return {"kty": "EC", "alg": "ES256", "kid": self.kid, "crv": "P-256",
                "x": _int(pub.x, 32), "y": _int(pub.y, 32)}  # fmt: skip

    def sign(self, data: bytes) -> bytes:
        if self.alg == "RS256":
            sig: bytes = self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
            return sig
        r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def token(self, claims: dict[str, Any], *, lifetime: int = 3600) -> str:
        """A signed JWT; ``exp`` defaults to an hour from now (a negative lifetime: expired)."""
        now = int(time.time())
        body = {"iat": now, "exp": now + lifetime, **claims}
        header = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(body).encode())}"
        return f"{signing_input}.{b64url(self.sign(signing_input.encode()))}"


def jwks(*keys: SigningKey) -> str:
    return json.dumps({"keys": [k.jwk() for k in keys]})


def payload(token: str) -> dict[str, Any]:
    """The claims of a token (not verified): what Envoy's jwt_authn puts in its metadata."""
    body = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


def tamper(token: str) -> str:
    """The token with its payload changed and the signature kept: a bad signature."""
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = str(claims.get("sub", "")) + "x"
    return f"{head}.{b64url(json.dumps(claims).encode())}.{sig}"
