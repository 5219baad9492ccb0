"""zstd compression for blobs, "store raw if it does not shrink".

One compressor per thread (zstandard objects are not thread-safe); the codes are format.
"""

import threading
from enum import IntEnum

import zstandard

from shared.errors import IntegrityError

DEFAULT_LEVEL = 3
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
