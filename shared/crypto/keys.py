"""Master keys and key slots.

A vault has one random MasterKeys (encryption key + chunk-ID key). Each key slot seals them
with a key derived from a passphrase (Argon2id) or from a printed recovery key (BLAKE3).
"""

import base64
import os
import re
from dataclasses import dataclass
from typing import Any

from shared.crypto.aead import KEY_SIZE, open_sealed, seal
from shared.crypto.kdf import KdfParams, derive, new_params
from shared.errors import IntegrityError, UnsupportedFormat, WrongPassphrase
from shared.format.codec import field, pack, unpack
from shared.hashing import derive_key, object_id

SLOT_VERSION = 1
SLOT_AAD = b"cairn key slot v1"
RECOVERY_CONTEXT = "cairn 2026-11 recovery key v1"
RECOVERY_SIZE = 32
MAX_UNLOCK_MEM = 1 << 30  # a client never spends more than 1 GiB or 16 passes to try a slot
MAX_UNLOCK_OPS = 16


@dataclass(frozen=True, slots=True)
class MasterKeys:
    """The vault's secrets. `encryption` seals everything; `chunk_id` keys blob IDs."""

    encryption: bytes
    chunk_id: bytes

    def __post_init__(self) -> None:
        if len(self.encryption) != KEY_SIZE or len(self.chunk_id) != KEY_SIZE:
            raise ValueError("master keys are 32 bytes each")

    def __repr__(self) -> str:
        return "MasterKeys(<secret>)"

    @classmethod
    def generate(cls) -> "MasterKeys":
        return cls(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))

    @property
    def chunker_seed(self) -> int:
        """Seed of the chunker's gear table: secret, so chunk sizes do not fingerprint files."""
        raw = derive_key("cairn 2026-11 chunker seed v1", self.chunk_id, 8)
        return int.from_bytes(raw, "little") & ((1 << 63) - 1)

    @property
    def config_mac(self) -> bytes:
        return derive_key("cairn 2026-11 config mac v1", self.encryption + self.chunk_id)


class SlotType:
    PASSPHRASE = "passphrase"
    RECOVERY = "recovery"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySlot:
    slot_type: str
    kdf: KdfParams | None
    created_ns: int
    hostname: str
    label: str
    sealed: bytes


def _slot_meta(slot_type: str, kdf: KdfParams | None, created_ns: int, hostname: str,
               label: str) -> dict[str, Any]:
    """Everything in a slot but the sealed keys, in encoding order (authenticated as AD)."""
    kdf_map: dict[str, Any] | None = None
    if kdf is not None:
        kdf_map = {"alg": kdf.algorithm, "ops": kdf.ops, "mem": kdf.mem, "salt": kdf.salt}
    return {"magic": "cairn-key", "v": SLOT_VERSION, "type": slot_type, "kdf": kdf_map,
            "created": created_ns, "host": hostname, "label": label}


def _slot_aad(vault_id: bytes, meta: dict[str, Any]) -> bytes:
    return SLOT_AAD + vault_id + object_id(pack(meta)).raw


def _recovery_kek(secret: bytes) -> bytes:
    return derive_key(RECOVERY_CONTEXT, secret)


def make_passphrase_slot(
    master: MasterKeys, vault_id: bytes, passphrase: str, *, created_ns: int, hostname: str,
    label: str = "", kdf: KdfParams | None = None,
) -> KeySlot:
    if not passphrase:
        raise WrongPassphrase("an empty passphrase is not allowed")
    params = kdf or new_params()
    meta = _slot_meta(SlotType.PASSPHRASE, params, created_ns, hostname, label)
    sealed = seal(derive(passphrase, params), master.encryption + master.chunk_id,
                  _slot_aad(vault_id, meta))
    return KeySlot(slot_type=SlotType.PASSPHRASE, kdf=params, created_ns=created_ns,
                   hostname=hostname, label=label, sealed=sealed)


def make_recovery_slot(
    master: MasterKeys, vault_id: bytes, *, created_ns: int, hostname: str, label: str = ""
) -> tuple[KeySlot, str]:
    """A slot opened by a new random recovery key; returns the slot and the key's text."""
    secret = os.urandom(RECOVERY_SIZE)
    meta = _slot_meta(SlotType.RECOVERY, None, created_ns, hostname, label)
    sealed = seal(_recovery_kek(secret), master.encryption + master.chunk_id,
                  _slot_aad(vault_id, meta))
    slot = KeySlot(slot_type=SlotType.RECOVERY, kdf=None, created_ns=created_ns,
                   hostname=hostname, label=label, sealed=sealed)
    return slot, format_recovery_key(secret)


def format_recovery_key(secret: bytes) -> str:
    text = base64.b32encode(secret).decode().rstrip("=").lower()
    return "-".join(text[i:i + 4] for i in range(0, len(text), 4))


def parse_recovery_key(text: str) -> bytes | None:
    """The secret if `text` looks like a recovery key (spaces and dashes ignored), else None."""
    compact = re.sub(r"[\s-]", "", text).upper()
    if len(compact) != 52 or not re.fullmatch(r"[A-Z2-7]+", compact):
        return None
    try:
        return base64.b32decode(compact + "====")
    except ValueError:
        return None


def unlock_slot(slot: KeySlot, vault_id: bytes, secret_text: str) -> MasterKeys:
    """Open a slot with a passphrase or recovery key text; raise WrongPassphrase if it fails."""
    if slot.slot_type == SlotType.PASSPHRASE:
        assert slot.kdf is not None
        if slot.kdf.mem > MAX_UNLOCK_MEM or slot.kdf.ops > MAX_UNLOCK_OPS:
            # A server could inflate these to make unlocking take minutes and gigabytes.
            raise WrongPassphrase("key slot asks for an implausibly costly key derivation; "
                                  "skipped")
        kek = derive(secret_text, slot.kdf)
    else:
        secret = parse_recovery_key(secret_text)
        if secret is None:
            raise WrongPassphrase("not a recovery key")
        kek = _recovery_kek(secret)
    meta = _slot_meta(slot.slot_type, slot.kdf, slot.created_ns, slot.hostname, slot.label)
    try:
        raw = open_sealed(kek, slot.sealed, _slot_aad(vault_id, meta), "key slot")
    except IntegrityError as exc:
        raise WrongPassphrase("wrong passphrase") from exc
    if len(raw) != 2 * KEY_SIZE:
        raise IntegrityError("key slot is damaged: bad key length")
    return MasterKeys(raw[:KEY_SIZE], raw[KEY_SIZE:])


def encode_key_slot(slot: KeySlot) -> bytes:
    meta = _slot_meta(slot.slot_type, slot.kdf, slot.created_ns, slot.hostname, slot.label)
    return pack({**meta, "sealed": slot.sealed})


def decode_key_slot(data: bytes, what: str = "key slot") -> KeySlot:
    body = unpack(data, what)
    if not isinstance(body, dict) or body.get("magic") != "cairn-key":
        raise IntegrityError(f"{what} is damaged: not a key slot")
    if field(body, "v", int, what) != SLOT_VERSION:
        raise UnsupportedFormat(f"{what}: unknown key slot version {body['v']}")
    slot_type = field(body, "type", str, what)
    if slot_type not in (SlotType.PASSPHRASE, SlotType.RECOVERY):
        raise UnsupportedFormat(f"{what}: unknown key slot type {slot_type!r}")
    kdf = None
    if slot_type == SlotType.PASSPHRASE:
        raw = field(body, "kdf", dict, what)
        kdf = KdfParams(field(raw, "alg", str, what), field(raw, "ops", int, what),
                        field(raw, "mem", int, what), field(raw, "salt", bytes, what))
    return KeySlot(slot_type=slot_type, kdf=kdf, created_ns=field(body, "created", int, what),
                   hostname=field(body, "host", str, what), label=field(body, "label", str, what),
                   sealed=field(body, "sealed", bytes, what))
