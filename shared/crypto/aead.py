"""XChaCha20-Poly1305 (IETF) authenticated encryption via libsodium (PyNaCl).

Layout of a sealed box: nonce (24 bytes, random) || ciphertext || tag (16 bytes).

`seal_in_place` and `open_sealed_buffer` (which `open_sealed` uses too) call libsodium through
PyNaCl's own cffi module (`nacl._sodium`, what `nacl.bindings` is built on): PyNaCl's binding
returns a new bytes object, and a backup moved every blob through three copies of it while
holding the GIL. libsodium encrypts with the ciphertext at the plaintext's address (the stream
cipher XORs block by block); the test suite checks the result against `seal`/`open_sealed`.
"""

import os

from nacl._sodium import ffi as _ffi
from nacl._sodium import lib as _lib
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt
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


def seal_in_place(key: bytes, box: memoryview, aad: bytes) -> None:
    """Seal `box[NONCE_SIZE:-TAG_SIZE]` where it lies: `box` is a writable view holding room
    for the nonce, then the plaintext, then room for the tag; afterwards it is a sealed box.

    libsodium runs without the GIL, so several threads may seal into one buffer at once.
    """
    _check_key(key)
    size = len(box) - OVERHEAD
    if size < 0:
        raise ValueError("box too small for a sealed payload")
    nonce = os.urandom(NONCE_SIZE)
    box[:NONCE_SIZE] = nonce
    text = _ffi.from_buffer(box, require_writable=True) + NONCE_SIZE
    if _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
            text, _ffi.NULL, text, size, aad, len(aad), _ffi.NULL, nonce, key) != 0:
        raise CryptoError("encryption failed")


def open_sealed_buffer(key: bytes, sealed: bytes | memoryview, aad: bytes,
                       what: str = "object") -> bytearray:
    """`open_sealed` into a new bytearray, straight from `sealed` (a view of a pack range
    needs no copy first): restore opens every blob of a vault this way."""
    _check_key(key)
    size = len(sealed) - OVERHEAD
    if size < 0:
        raise IntegrityError(f"{what} is damaged: too short to be encrypted data")
    out = bytearray(size)
    box = _ffi.from_buffer(sealed)
    if _lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            _ffi.from_buffer(out, require_writable=True), _ffi.NULL, _ffi.NULL,
            box + NONCE_SIZE, size + TAG_SIZE, aad, len(aad), box, key) != 0:
        raise IntegrityError(f"{what} is damaged: authentication failed")
    return out


def open_sealed(key: bytes, sealed: bytes | memoryview, aad: bytes, what: str = "object") -> bytes:
    """Decrypt a sealed box; raise IntegrityError if it was altered or the key/aad is wrong."""
    return bytes(open_sealed_buffer(key, sealed, aad, what))


def _check_key(key: bytes) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError("key must be 32 bytes")
