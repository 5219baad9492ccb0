"""Index segments: which pack holds each blob, at what offset and length.

An index object is sealed msgpack {"v": 1, "packs": [[pack_id, [[type, id, off, len, raw]...]]],
"supersedes": [index_id...]}. Readers take the union of all segments, minus superseded ones.
"""

from dataclasses import dataclass
from dataclasses import field as dc_field

from shared.compression import DEFAULT_LEVEL
from shared.errors import IntegrityError, UnsupportedFormat
from shared.format.blob import decode_sealed, encode_sealed
from shared.format.codec import field, id_bytes, pack, unpack
from shared.format.pack import PackEntry
from shared.ids import ID_SIZE, BlobType, ObjectId

INDEX_AAD = b"cairn index v1"
_BLOB_TYPES = {t.value: t for t in BlobType}
INDEX_VERSION = 1


@dataclass(frozen=True, slots=True)
class IndexSegment:
    packs: dict[ObjectId, tuple[PackEntry, ...]]
    supersedes: tuple[ObjectId, ...] = dc_field(default=())


def encode_index(key: bytes, segment: IndexSegment) -> bytes:
    body = {
        "v": INDEX_VERSION,
        "packs": [
            [pid.raw, [[int(e.type), e.id.raw, e.offset, e.length, e.raw_length] for e in entries]]
            for pid, entries in sorted(segment.packs.items())
        ],
        "supersedes": [s.raw for s in sorted(segment.supersedes)],
    }
    return encode_sealed(key, pack(body), INDEX_AAD, DEFAULT_LEVEL)


def decode_index(key: bytes, data: bytes, what: str = "index") -> IndexSegment:
    body = unpack(decode_sealed(key, data, INDEX_AAD, what), what)
    version = field(body, "v", int, what)
    if version != INDEX_VERSION:
        raise UnsupportedFormat(f"{what}: unknown index version {version}")
    packs: dict[ObjectId, tuple[PackEntry, ...]] = {}
    for item in field(body, "packs", list, what):
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[1], list):
            raise IntegrityError(f"{what} is damaged: bad pack entry")
        pid = ObjectId(id_bytes(item[0], what))
        entries = []
        # The hot loop of every command's start: one pass per blob, exact type checks (msgpack
        # yields exact ints and bytes; a bool is no int here).
        for e in item[1]:
            if (type(e) is not list or len(e) != 5 or type(e[0]) is not int
                    or (btype := _BLOB_TYPES.get(e[0])) is None
                    or type(e[1]) is not bytes or len(e[1]) != ID_SIZE
                    or type(e[2]) is not int or type(e[3]) is not int
                    or type(e[4]) is not int or e[2] < 0 or e[3] <= 0 or e[4] < 0):
                raise IntegrityError(f"{what} is damaged: bad blob entry")
            entries.append(PackEntry(btype, ObjectId(e[1]), e[2], e[3], e[4]))
        packs[pid] = tuple(entries)
    supersedes = tuple(ObjectId(id_bytes(s, what)) for s in field(body, "supersedes", list, what))
    return IndexSegment(packs, supersedes)
