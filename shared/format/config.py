"""The vault config object: format version, vault ID and the settings every writer must share.

Stored in plain (so an unknown newer version is refused before any key is asked for) and
authenticated with a MAC from the master keys (so a server cannot change the settings).
"""

import hmac
from dataclasses import dataclass
from typing import Any

from shared import FORMAT_VERSION
from shared.chunking import ChunkerParams
from shared.errors import IntegrityError, NotAVault, UnsupportedFormat
from shared.format.codec import field, pack, unpack
from shared.hashing import keyed_id

MAGIC = "cairn-vault"
CHUNKER_ALGORITHM = "fastcdc2020-nc1"


@dataclass(frozen=True, slots=True, kw_only=True)
class VaultConfig:
    vault_id: bytes
    created_ns: int
    chunk_avg: int
    chunk_min: int
    chunk_max: int
    pack_size: int
    zstd_level: int
    version: int = FORMAT_VERSION

    def chunker_params(self, seed: int) -> ChunkerParams:
        return ChunkerParams(self.chunk_avg, self.chunk_min, self.chunk_max, seed)


def _body(cfg: VaultConfig) -> dict[str, Any]:
    return {
        "magic": MAGIC, "v": cfg.version, "id": cfg.vault_id, "created": cfg.created_ns,
        "chunker": {"alg": CHUNKER_ALGORITHM, "avg": cfg.chunk_avg, "min": cfg.chunk_min,
                    "max": cfg.chunk_max},
        "pack_size": cfg.pack_size, "zstd": cfg.zstd_level,
    }


def _mac(mac_key: bytes, body: dict[str, Any]) -> bytes:
    return keyed_id(mac_key, pack(body)).raw


def encode_config(cfg: VaultConfig, mac_key: bytes) -> bytes:
    body = _body(cfg)
    return pack({**body, "mac": _mac(mac_key, body)})


def decode_config(data: bytes) -> VaultConfig:
    """Parse and version-check a config (the MAC is checked by `verify_config` once unlocked)."""
    try:
        body = unpack(data, "vault config")
    except IntegrityError as exc:
        raise NotAVault("not a Cairn vault (its config object is unreadable)") from exc
    if not isinstance(body, dict) or body.get("magic") != MAGIC:
        raise NotAVault("not a Cairn vault (unknown config object)")
    version = field(body, "v", int, "vault config")
    if version > FORMAT_VERSION:
        raise UnsupportedFormat(
            f"this vault uses format version {version}, but this cairn reads only up to "
            f"version {FORMAT_VERSION}: upgrade cairn"
        )
    if version < 1:
        raise UnsupportedFormat(f"unknown vault format version {version}")
    what = "vault config"
    chunker = field(body, "chunker", dict, what)
    if field(chunker, "alg", str, what) != CHUNKER_ALGORITHM:
        raise UnsupportedFormat(f"unknown chunker {chunker['alg']!r}")
    vault_id = field(body, "id", bytes, what)
    if len(vault_id) != 32:
        raise IntegrityError("vault config is damaged: bad vault ID")
    field(body, "mac", bytes, what)
    avg, low, high = (field(chunker, n, int, what) for n in ("avg", "min", "max"))
    try:
        ChunkerParams(avg, low, high)
    except ValueError as exc:
        raise UnsupportedFormat(f"vault config: {exc}") from exc
    return VaultConfig(
        vault_id=vault_id, created_ns=field(body, "created", int, what),
        chunk_avg=field(chunker, "avg", int, what), chunk_min=field(chunker, "min", int, what),
        chunk_max=field(chunker, "max", int, what), pack_size=field(body, "pack_size", int, what),
        zstd_level=field(body, "zstd", int, what), version=version,
    )


def verify_config(data: bytes, mac_key: bytes) -> None:
    """Check the MAC over the config exactly as stored (unknown fields are covered too)."""
    body = unpack(data, "vault config")
    if not isinstance(body, dict):
        raise IntegrityError("vault config is damaged: not a map")
    mac = body.pop("mac", None)
    if not isinstance(mac, bytes) or not hmac.compare_digest(mac, _mac(mac_key, body)):
        raise IntegrityError("vault config is damaged or was altered: its MAC does not match")
