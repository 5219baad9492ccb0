"""Index segments: which pack holds each blob, at what offset and length.

An index object is sealed msgpack {"v": 1, "packs": [[pack_id, [[type, id, off, len, raw]...]]],
"supersedes": [index_id...]}. Readers take the union of all segments, minus superseded ones.
"""

from dataclasses import dataclass
from dataclasses import field as dc_field

from shared.errors import IntegrityError, UnsupportedFormat
from shared.format.blob import decode_sealed, encode_sealed
from shared.format.codec import field, id_bytes, pack, unpack
from shared.format.pack import PackEntry
from shared.ids import BlobType, ObjectId

INDEX_AAD = b"cairn index v1"
INDEX_VERSION = 1


@dataclass(frozen=True, slots=True)
class IndexSegment:
    packs: dict[ObjectId, tuple[PackEntry, ...]]
    supersedes: tuple[ObjectId, ...] = dc_field(default=())


def _uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def encode_index(key: bytes, segment: IndexSegment) -> bytes:
    body = {
        "v": INDEX_VERSION,
        "packs": [
            [pid.raw, [[int(e.type), e.id.raw, e.offset, e.length, e.raw_length] for e in entries]]
            for pid, entries in sorted(segment.packs.items())
        ],
        "supersedes": [s.raw for s in sorted(segment.supersedes)],
    }
    return encode_sealed(key, pack(body), INDEX_AAD, 3)


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
        for e in item[1]:
            if (not isinstance(e, list) or len(e) != 5 or not _uint(e[0]) or e[0] > 1
                    or not all(_uint(v) for v in (e[2], e[3], e[4])) or e[3] == 0):
                raise IntegrityError(f"{what} is damaged: bad blob entry")
            entries.append(PackEntry(BlobType(e[0]), ObjectId(id_bytes(e[1], what)), e[2], e[3],
                                     e[4]))
        packs[pid] = tuple(entries)
    supersedes = tuple(ObjectId(id_bytes(s, what)) for s in field(body, "supersedes", list, what))
    return IndexSegment(packs, supersedes)
