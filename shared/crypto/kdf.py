"""Argon2id key derivation from passphrases (libsodium via PyNaCl).

Parameters live in each key slot, so they can be raised later without a format change.
"""

import os
import threading
import unicodedata
from concurrent.futures import Future
from dataclasses import dataclass

from nacl.pwhash import argon2id

from shared.errors import UnsupportedFormat

SALT_SIZE = argon2id.SALTBYTES  # 16
# 64 MiB and 3 passes: ~0.15 s here; memory-hard enough to make guessing expensive while
# keeping the peak RSS of every command well under restic's (FACTS.md: MODERATE is 256 MiB).
DEFAULT_OPS = 3
DEFAULT_MEM = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class KdfParams:
    algorithm: str
    ops: int
    mem: int
    salt: bytes

    def __post_init__(self) -> None:
        if self.algorithm != "argon2id":
            raise UnsupportedFormat(f"unknown key derivation {self.algorithm!r}")
        if len(self.salt) != SALT_SIZE:
            raise UnsupportedFormat("bad salt length in key slot")
        if not (argon2id.OPSLIMIT_MIN <= self.ops <= 64):
            raise UnsupportedFormat("Argon2id pass count out of range")
        if not (argon2id.MEMLIMIT_MIN <= self.mem <= 4 * 1024**3):
            raise UnsupportedFormat("Argon2id memory out of range")


def new_params(ops: int = DEFAULT_OPS, mem: int = DEFAULT_MEM) -> KdfParams:
    return KdfParams("argon2id", ops, mem, os.urandom(SALT_SIZE))


def derive(passphrase: str, params: KdfParams, size: int = 32) -> bytes:
    """Derive a key-encryption key from a passphrase (UTF-8, NFC-normalised); the result of a
    `derive_ahead` of the same passphrase and parameters if one was started."""
    pw = _encoded(passphrase)
    with _ahead_lock:
        ahead = _ahead.pop((pw, params, size), None)
    if ahead is not None:
        return ahead.result()
    return _argon2id(pw, params, size)


def derive_ahead(passphrase: str, params: KdfParams, size: int = 32) -> None:
    """Start `derive(passphrase, params, size)` on a thread of its own; that call then waits
    for this result instead of deriving again. Argon2id runs without the GIL, so a program
    that knows early which key slot it will open derives while it loads the rest of itself.
    The key is kept only until that call (or for the life of the process, if it never comes).
    """
    pw = _encoded(passphrase)
    with _ahead_lock:
        if (pw, params, size) in _ahead:
            return
        ahead: Future[bytes] = Future()
        _ahead[(pw, params, size)] = ahead

    def run() -> None:
        try:
            ahead.set_result(_argon2id(pw, params, size))
        except BaseException as exc:  # handed to the caller of derive
            ahead.set_exception(exc)

    threading.Thread(target=run, name="cairn-kdf", daemon=True).start()


_ahead: dict[tuple[bytes, KdfParams, int], Future[bytes]] = {}
_ahead_lock = threading.Lock()


def _encoded(passphrase: str) -> bytes:
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _argon2id(pw: bytes, params: KdfParams, size: int) -> bytes:
    key: bytes = argon2id.kdf(size, pw, params.salt, opslimit=params.ops, memlimit=params.mem)
    return key
