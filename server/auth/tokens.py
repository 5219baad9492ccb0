"""Device tokens: JWT signed with EdDSA (Ed25519), verifiable with any stock JWT library.

Header: {"alg": "EdDSA", "typ": "JWT", "kid": <16 hex of the public key's SHA-256>}.
Claims: iss (server id), sub (user name), uid (user id), dev (device id), scopes, vaults,
iat, exp, jti. Destination servers will verify with the master's public key (signing.pub).
"""

import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from server.config import ServerConfig
from shared.errors import AuthError, TokenExpired, UsageError
from shared.protocol.models import (
    Scope,
    parse_scopes,
    parse_vaults,
    validate_device_id,
    validate_user_name,
)

logger = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
_LEEWAY = 30  # seconds of clock skew tolerated between servers


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    user_id: int
    device_id: str
    scopes: tuple[Scope, ...]
    vaults: tuple[str, ...]
    issued_at: int
    expires_at: int


def generate_signing_key(path: Path) -> None:
    """Write a new Ed25519 private key (PKCS#8 PEM, mode 0600) and its public key beside it."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class TokenSigner:
    def __init__(self, key: Ed25519PrivateKey, issuer: str, lifetime: int) -> None:
        self._key = key
        self._issuer = issuer
        self._lifetime = lifetime
        self._kid = key_id(key.public_key())

    def issue(self, user: str, user_id: int, device_id: str, scopes: tuple[Scope, ...],
              vaults: tuple[str, ...], *, now: float | None = None,
              lifetime: int | None = None) -> tuple[str, Claims]:
        issued = int(time.time() if now is None else now)
        expires = issued + (self._lifetime if lifetime is None else lifetime)
        payload: dict[str, Any] = {
            "iss": self._issuer, "sub": user, "uid": user_id, "dev": device_id,
            "scopes": [s.value for s in scopes], "vaults": list(vaults),
            "iat": issued, "exp": expires, "jti": secrets.token_hex(12),
        }
        token = jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self._kid})
        return token, Claims(user, user_id, device_id, scopes, vaults, issued, expires)


class TokenVerifier:
    def __init__(self, public: Ed25519PublicKey, issuer: str) -> None:
        self._public = public
        self._issuer = issuer

    def verify(self, token: str) -> Claims:
        """The claims of a valid token; AuthError if it is not one, TokenExpired if expired."""
        try:
            payload = jwt.decode(
                token, self._public, algorithms=[ALGORITHM], issuer=self._issuer, leeway=_LEEWAY,
                options={"require": ["iss", "sub", "exp", "iat"]})
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired("the device token has expired: sign in again") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError("invalid device token: sign in again") from exc
        try:
            uid = payload.get("uid")
            if not isinstance(uid, int) or isinstance(uid, bool):
                raise UsageError("bad uid")
            return Claims(validate_user_name(payload["sub"]), uid,
                          validate_device_id(payload.get("dev")),
                          parse_scopes(payload.get("scopes")), parse_vaults(payload.get("vaults")),
                          int(payload["iat"]), int(payload["exp"]))
        except (UsageError, KeyError, TypeError, ValueError) as exc:
            raise AuthError("invalid device token: malformed claims") from exc


def load_keys(config: ServerConfig) -> tuple[TokenSigner, TokenVerifier]:
    """The signer and verifier of this server, from its signing key file."""
    path = config.signing_key_path
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise UsageError(f"cannot read the signing key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise UsageError(f"{path} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 key")
    return (TokenSigner(key, config.server_id, config.token_lifetime),
            TokenVerifier(key.public_key(), config.server_id))
