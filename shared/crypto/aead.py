"""XChaCha20-Poly1305 (IETF) authenticated encryption via libsodium (PyNaCl).

Layout of a sealed box: nonce (24 bytes, random) || ciphertext || tag (16 bytes).
"""

import os

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from shared.errors import IntegrityError

KEY_SIZE = 32
NONCE_SIZE = 24
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE


def seal(key: bytes, plaintext: bytes | memoryview, aad: bytes) -> bytes:
    """Encrypt and authenticate `plaintext`, binding `aad` (not stored) to it."""
    nonce = os.urandom(NONCE_SIZE)
    return nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(bytes(plaintext), aad, nonce, key)


def open_sealed(key: bytes, sealed: bytes | memoryview, aad: bytes, what: str = "object") -> bytes:
    """Decrypt a sealed box; raise IntegrityError if it was altered or the key/aad is wrong."""
    if len(sealed) < OVERHEAD:
        raise IntegrityError(f"{what} is damaged: too short to be encrypted data")
    sealed = bytes(sealed)
    try:
        out: bytes = crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[NONCE_SIZE:], aad, sealed[:NONCE_SIZE], key
        )
    except CryptoError as exc:
        raise IntegrityError(f"{what} is damaged: authentication failed") from exc
    return out
