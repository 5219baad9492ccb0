"""zstd compression for blobs, "store raw if it does not shrink".

One compressor per thread (zstandard objects are not thread-safe); the codes are format.
"""

import threading
from enum import IntEnum

import zstandard

from shared.errors import IntegrityError

DEFAULT_LEVEL = 3  # pack headers, index segments and snapshot bodies (docs/FORMAT.md)
# A new vault's level for its data and tree blobs (`cairn init --compression`). On the
# benchmark's home tree level 2 took 84 % of level 3's time (3.61 s against 4.28 s for 2 GiB
# on one core) for 0.7 % more output (1,415.5 against 1,405.9 MiB); level 1 took 66 % for
# 1.8 % more; compression is the largest CPU cost of a backup.
DEFAULT_BLOB_LEVEL = 2
MAX_LEVEL = 19  # above, zstd's "ultra" levels want windows of 32 MiB and more
_local = threading.local()


class Compression(IntEnum):
    NONE = 0
    ZSTD = 1


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def compress(data: bytes | memoryview,
             level: int = DEFAULT_LEVEL) -> tuple[Compression, bytes | memoryview]:
    """Compress `data`; return it raw (Compression.NONE) when zstd does not make it smaller.

    The raw case returns `data` itself (not a copy): callers that keep it must copy it.
    """
    if level <= 0 or len(data) < 64:
        return Compression.NONE, data
    packed: bytes = _compressor(level).compress(data)
    if len(packed) >= len(data):
        return Compression.NONE, data
    return Compression.ZSTD, packed


def decompress(method: int, data: bytes | bytearray, max_size: int) -> bytes:
    """Undo `compress`; refuse output larger than `max_size` (a damaged or hostile blob)."""
    if method == Compression.NONE:
        return bytes(data)  # the same object when it is bytes
    if method == Compression.ZSTD:
        try:
            size = zstandard.frame_content_size(data)  # -1: the frame does not state it
            if size < 0 or size > max_size:
                raise IntegrityError(f"blob is damaged: bad decompressed size {size}")
            out: bytes = _decompressor().decompress(data, max_output_size=max_size,
                                                    allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"blob does not decompress: {exc}") from exc
        return out
    raise IntegrityError(f"unknown compression method {method}")
