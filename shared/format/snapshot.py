"""Snapshot objects: a root tree plus host, paths, tags, time and stats.

    object = msgpack ["cairn-snapshot", 1, [pack_id...], sealed]
    sealed = AEAD(msgpack {...}) with AD = "cairn snapshot v1" || BLAKE3(msgpack pack list)
The plain pack list lets a server find unused packs without keys (docs/FORMAT.md, threat model).
"""

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from shared.compression import DEFAULT_LEVEL
from shared.errors import IntegrityError, UnsupportedFormat
from shared.format.blob import decode_sealed, encode_sealed
from shared.format.codec import field, id_bytes, opt_field, pack, unpack
from shared.hashing import object_id
from shared.ids import ObjectId

MAGIC = "cairn-snapshot"
SNAPSHOT_VERSION = 1
SNAPSHOT_AAD = b"cairn snapshot v1"
_STAT_FIELDS = ("files", "dirs", "bytes", "new_files", "changed_files", "unchanged_files",
                "new_blobs", "new_bytes", "stored_bytes", "problems", "seconds_ms")


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotStats:
    files: int = 0
    dirs: int = 0
    bytes: int = 0  # plaintext bytes of all files in the snapshot
    new_files: int = 0
    changed_files: int = 0
    unchanged_files: int = 0
    new_blobs: int = 0
    new_bytes: int = 0  # plaintext bytes of blobs added by this backup
    stored_bytes: int = 0  # bytes uploaded (sealed, compressed)
    problems: int = 0
    seconds_ms: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    time_ns: int  # UTC, ns since the epoch
    tz_offset: int  # seconds east of UTC where the backup ran, for display
    hostname: str
    username: str
    paths: tuple[bytes, ...]  # absolute paths as given, raw bytes
    tree: ObjectId
    tags: tuple[str, ...] = ()
    parent: ObjectId | None = None
    checkpoint: bool = False
    excludes: tuple[str, ...] = ()
    program: str = ""
    stats: SnapshotStats = dc_field(default_factory=SnapshotStats)
    packs: tuple[ObjectId, ...] = ()  # every pack the snapshot needs (stored in plain)


def encode_snapshot(key: bytes, snap: Snapshot) -> bytes:
    body: dict[str, Any] = {
        "v": SNAPSHOT_VERSION,
        "time": snap.time_ns,
        "tz": snap.tz_offset,
        "host": snap.hostname,
        "user": snap.username,
        "paths": list(snap.paths),
        "tree": snap.tree.raw,
        "tags": list(snap.tags),
        "parent": snap.parent.raw if snap.parent else None,
        "checkpoint": snap.checkpoint,
        "excludes": list(snap.excludes),
        "program": snap.program,
        "stats": {name: getattr(snap.stats, name) for name in _STAT_FIELDS},
    }
    plain_packs = pack([p.raw for p in sorted(set(snap.packs))])
    aad = SNAPSHOT_AAD + object_id(plain_packs).raw
    sealed = encode_sealed(key, pack(body), aad, DEFAULT_LEVEL)
    return pack([MAGIC, SNAPSHOT_VERSION, [p.raw for p in sorted(set(snap.packs))], sealed])


def decode_snapshot_packs(data: bytes, what: str = "snapshot") -> tuple[ObjectId, ...]:
    """The plain pack list, readable without keys (what a server uses for garbage collection)."""
    return _outer(data, what)[0]


def _outer(data: bytes, what: str) -> tuple[tuple[ObjectId, ...], bytes, bytes]:
    outer = unpack(data, what)
    if not isinstance(outer, list) or len(outer) != 4 or outer[0] != MAGIC:
        raise IntegrityError(f"{what} is damaged: not a snapshot")
    if outer[1] != SNAPSHOT_VERSION:
        raise UnsupportedFormat(f"{what}: unknown snapshot version {outer[1]}")
    if not isinstance(outer[2], list) or not isinstance(outer[3], bytes):
        raise IntegrityError(f"{what} is damaged: bad layout")
    packs = tuple(ObjectId(id_bytes(p, what)) for p in outer[2])
    return packs, pack(outer[2]), outer[3]


def decode_snapshot(key: bytes, data: bytes, what: str = "snapshot") -> Snapshot:
    packs, plain_packs, sealed = _outer(data, what)
    aad = SNAPSHOT_AAD + object_id(plain_packs).raw
    body = unpack(decode_sealed(key, sealed, aad, what), what)
    if field(body, "v", int, what) != SNAPSHOT_VERSION:
        raise UnsupportedFormat(f"{what}: unknown snapshot version")
    paths = field(body, "paths", list, what)
    tags = field(body, "tags", list, what)
    excludes = field(body, "excludes", list, what)
    if not all(isinstance(p, bytes) for p in paths) or not all(
        isinstance(t, str) for t in tags + excludes
    ):
        raise IntegrityError(f"{what} is damaged: bad paths or tags")
    raw_stats = field(body, "stats", dict, what)
    stats = SnapshotStats(**{
        n: v for n in _STAT_FIELDS if isinstance(v := raw_stats.get(n, 0), int)
    })
    parent = opt_field(body, "parent", bytes, what)
    return Snapshot(
        time_ns=field(body, "time", int, what),
        tz_offset=field(body, "tz", int, what),
        hostname=field(body, "host", str, what),
        username=field(body, "user", str, what),
        paths=tuple(paths),
        tree=ObjectId(id_bytes(field(body, "tree", bytes, what), what)),
        tags=tuple(tags),
        parent=ObjectId(id_bytes(parent, what)) if parent is not None else None,
        checkpoint=field(body, "checkpoint", bool, what),
        excludes=tuple(excludes),
        program=field(body, "program", str, what),
        stats=stats,
        packs=packs,
    )
