"""Deletion markers: phase one of the two-phase prune (lock-free concurrent writers).

A marker names packs that no snapshot needed when it was written. Phase two, after the grace
period, deletes those still unneeded. Stored in plain: pack names only, no content or paths.
"""

from dataclasses import dataclass

from shared.errors import IntegrityError, UnsupportedFormat
from shared.format.codec import field, id_bytes, pack, unpack
from shared.ids import ObjectId

MAGIC = "cairn-deletion"
VERSION = 1


@dataclass(frozen=True, slots=True)
class DeletionMarker:
    time_ns: int
    packs: tuple[ObjectId, ...]


def encode_deletion(marker: DeletionMarker) -> bytes:
    return pack({"magic": MAGIC, "v": VERSION, "time": marker.time_ns,
                 "packs": [p.raw for p in sorted(marker.packs)]})


def decode_deletion(data: bytes, what: str = "deletion marker") -> DeletionMarker:
    body = unpack(data, what)
    if not isinstance(body, dict) or body.get("magic") != MAGIC:
        raise IntegrityError(f"{what} is damaged")
    if field(body, "v", int, what) != VERSION:
        raise UnsupportedFormat(f"{what}: unknown version")
    packs = tuple(ObjectId(id_bytes(p, what)) for p in field(body, "packs", list, what))
    return DeletionMarker(field(body, "time", int, what), packs)
