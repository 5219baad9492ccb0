"""Pack files: sealed blobs back to back, then a sealed header, then the header's length.

    pack   = blob_0 || ... || blob_n-1 || sealed_header || u32le(len(sealed_header))
    header = msgpack {"v": 1, "blobs": [[type, id, offset, length, raw_length], ...]}

The pack's name is the unkeyed BLAKE3 of all its bytes. No I/O here.
"""

import mmap
import struct
import sys
from typing import NamedTuple

from shared.compression import DEFAULT_LEVEL
from shared.errors import IntegrityError, UnsupportedFormat
from shared.format.blob import decode_sealed, encode_sealed
from shared.format.codec import field, id_bytes, pack, unpack
from shared.hashing import object_id
from shared.ids import BlobType, ObjectId

HEADER_AAD = b"cairn pack header v1"
TRAILER_SIZE = 4
PACK_VERSION = 1
# Default target size: the lower end of the 16-64 MiB range keeps the memory of packs being
# assembled and uploaded small (at most ~4 in flight), while still few objects per GiB.
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
MAX_HEADER = 64 * 1024 * 1024


class PackEntry(NamedTuple):
    """Where one blob sits inside a pack (a tuple: the index holds one for every blob, and a
    frozen dataclass cost 2.5 times as much to make)."""

    type: BlobType
    id: ObjectId
    offset: int
    length: int  # sealed bytes in the pack
    raw_length: int  # plaintext bytes (before compression)


class PackWriter:
    """Assembles one pack in memory; `finish` returns its name, bytes and entries.

    By default the pack grows in a bytearray and `finish` returns bytes. Given a `buffer` of
    fixed size (e.g. an anonymous mmap reused from pack to pack), blobs are written into it and
    `finish` returns a view of it, valid until the buffer is reused: no copy of the pack, no
    new pages per pack. `reserve` hands out the region of the next blob for the caller to seal
    into; regions do not overlap, so several threads may fill theirs at once (outside whatever
    lock guards `reserve`), and `finish` must wait until every region is filled.
    """

    __slots__ = ("_entries", "_fixed", "_grown", "_used", "blob_type")

    def __init__(self, blob_type: BlobType, buffer: bytearray | mmap.mmap | None = None) -> None:
        self.blob_type = blob_type
        self._fixed = buffer
        self._grown = bytearray()  # the pack, when there is no fixed buffer
        self._used = 0
        self._entries: list[PackEntry] = []

    @property
    def buffer(self) -> bytearray | mmap.mmap | None:
        """The fixed buffer given at construction (None for a growing writer)."""
        return self._fixed

    def room(self) -> int:
        """Bytes a blob may still take (a growing writer has no limit)."""
        return sys.maxsize if self._fixed is None else len(self._fixed) - self._used

    def reserve(self, blob_id: ObjectId, length: int, raw_length: int) -> memoryview:
        """Append an entry and return the writable region (`length` bytes) of its sealed blob."""
        start = self._used
        if self._fixed is None:
            self._grown += bytes(length)
            buf: bytearray | mmap.mmap = self._grown
        elif start + length > len(self._fixed):
            raise ValueError("no room for the blob in the pack buffer")
        else:
            buf = self._fixed
        self._used = start + length
        self._entries.append(PackEntry(self.blob_type, blob_id, start, length, raw_length))
        return memoryview(buf)[start : start + length]

    def add(self, blob_id: ObjectId, sealed: bytes | memoryview, raw_length: int) -> PackEntry:
        if self._fixed is None:
            entry = PackEntry(self.blob_type, blob_id, self._used, len(sealed), raw_length)
            self._grown += sealed
            self._used = len(self._grown)
            self._entries.append(entry)
            return entry
        with self.reserve(blob_id, len(sealed), raw_length) as region:
            region[:] = sealed
        return self._entries[-1]

    @property
    def size(self) -> int:
        return self._used

    @property
    def count(self) -> int:
        return len(self._entries)

    def finish(self, key: bytes) -> tuple[ObjectId, bytes | memoryview, list[PackEntry]]:
        header = encode_header(key, self._entries)
        tail = header + struct.pack("<I", len(header))
        data: bytes | memoryview
        if self._fixed is None:
            self._grown += tail
            data = bytes(self._grown)
            self._grown = bytearray()
        elif self._used + len(tail) <= len(self._fixed):
            end = self._used + len(tail)
            data = memoryview(self._fixed)[:end]
            data[self._used : end] = tail
        else:  # a header too big for the buffer's spare room: one copy
            data = b"".join((memoryview(self._fixed)[: self._used], tail))
        return object_id(data), data, self._entries


def encode_header(key: bytes, entries: list[PackEntry]) -> bytes:
    body = {
        "v": PACK_VERSION,
        "blobs": [[int(e.type), e.id.raw, e.offset, e.length, e.raw_length] for e in entries],
    }
    return encode_sealed(key, pack(body), HEADER_AAD, DEFAULT_LEVEL)


def header_length(trailer: bytes) -> int:
    """The sealed header's length, from the pack's last 4 bytes."""
    if len(trailer) != TRAILER_SIZE:
        raise IntegrityError("pack is damaged: truncated trailer")
    n: int = struct.unpack("<I", trailer)[0]
    if n > MAX_HEADER:
        raise IntegrityError("pack is damaged: implausible header length")
    return n


def decode_header(key: bytes, sealed: bytes, pack_size: int, what: str) -> list[PackEntry]:
    """Decrypt and validate a pack header; every entry must lie inside the blob area."""
    body = unpack(decode_sealed(key, sealed, HEADER_AAD, f"{what} header"), f"{what} header")
    version = field(body, "v", int, what)
    if version != PACK_VERSION:
        raise UnsupportedFormat(f"{what}: unknown pack version {version}")
    blobs = field(body, "blobs", list, what)
    limit = pack_size - len(sealed) - TRAILER_SIZE
    entries = []
    for item in blobs:
        if not isinstance(item, list) or len(item) != 5:
            raise IntegrityError(f"{what} header is damaged: bad entry")
        btype, bid, offset, length, raw = item
        if not all(isinstance(v, int) and not isinstance(v, bool)
                   for v in (btype, offset, length, raw)) or btype not in (0, 1) or raw < 0:
            raise IntegrityError(f"{what} header is damaged: bad entry")
        if offset < 0 or length <= 0 or offset + length > limit:
            raise IntegrityError(f"{what} header is damaged: entry outside the pack")
        entries.append(PackEntry(BlobType(btype), ObjectId(id_bytes(bid, what)), offset, length,
                                 raw))
    return entries
