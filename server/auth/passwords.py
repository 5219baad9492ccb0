"""Password hashes: Argon2id (libsodium via PyNaCl) in the standard `$argon2id$...` string form.

Both calls take ~0.1 s of CPU and 64 MiB: run them in a thread (asyncio.to_thread).
"""

import functools

import nacl.exceptions
import nacl.pwhash

# 64 MiB and 3 passes: ~0.1 s here, the same cost as opening a vault key slot.
_OPS = 3
_MEM = 64 << 20
MAX_PASSWORD = 1024  # bytes; longer inputs are refused before hashing



@functools.cache
def _dummy_hash() -> bytes:
    """Verified against when the user does not exist, so an unknown name costs the same time
    (made on first use: importing this module does no work)."""
    return nacl.pwhash.argon2id.str(b"cairn-dummy-password", opslimit=_OPS, memlimit=_MEM)


def hash_password(password: str) -> str:
    data = password.encode("utf-8")
    if not data or len(data) > MAX_PASSWORD:
        raise ValueError(f"a password is 1-{MAX_PASSWORD} bytes")
    return nacl.pwhash.argon2id.str(data, opslimit=_OPS, memlimit=_MEM).decode("ascii")


def verify_password(stored: str | None, password: str) -> bool:
    """True if `password` matches `stored`; with `stored` None, spends the same time, False."""
    try:
        data = password.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON: no password has them
        return False
    if len(data) > MAX_PASSWORD:
        return False
    target = _dummy_hash() if stored is None else stored.encode("ascii")
    try:
        ok = bool(nacl.pwhash.verify(target, data))
    except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
        return False
    return ok and stored is not None
