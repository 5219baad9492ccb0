"""Argon2id key derivation from passphrases (libsodium via PyNaCl).

Parameters live in each key slot, so they can be raised later without a format change.
"""

import os
import unicodedata
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
    """Derive a key-encryption key from a passphrase (UTF-8, NFC-normalised)."""
    pw = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    key: bytes = argon2id.kdf(size, pw, params.salt, opslimit=params.ops, memlimit=params.mem)
    return key
