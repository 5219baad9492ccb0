"""Content-defined chunking: the Chunker protocol and our FastCDC (pyfastcdc) wrapper.

The chunker, its sizes and its seed are part of the vault format (docs/FORMAT.md).
Callers never import pyfastcdc directly.
"""

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from pyfastcdc import FastCDC

# FACTS.md: avg 768 KiB + min 256 KiB gives a real mean of ~1.04 MiB; 4 MiB caps a blob.
DEFAULT_AVG = 768 * 1024
DEFAULT_MIN = 256 * 1024
DEFAULT_MAX = 4 * 1024 * 1024
SEED_MASK = (1 << 63) - 1  # pyfastcdc takes a C unsigned long; we keep 63 bits


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    """The chunker settings stored in a vault's config."""

    avg_size: int = DEFAULT_AVG
    min_size: int = DEFAULT_MIN
    max_size: int = DEFAULT_MAX
    seed: int = 0

    def __post_init__(self) -> None:
        # pyfastcdc's own limits: avg 256 B-4 MiB, min 64 B-1 MiB, max 1 KiB-16 MiB.
        if not (256 <= self.avg_size <= 4 << 20 and 64 <= self.min_size <= 1 << 20
                and 1024 <= self.max_size <= 16 << 20
                and self.min_size <= self.avg_size <= self.max_size):
            raise ValueError("chunker sizes out of range (avg 256 B-4 MiB, min 64 B-1 MiB, "
                             "max 1 KiB-16 MiB, min <= avg <= max)")
        if not 0 <= self.seed <= SEED_MASK:
            raise ValueError("chunker seed out of range")


class Chunker(Protocol):
    def split_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Yield consecutive chunks; each view is valid only until the next one is yielded."""
        ...

    def split_buffer(self, data: bytes | memoryview) -> Iterator[memoryview]: ...


class FastCdcChunker:
    """FastCDC 2020 (normalized chunking level 1) with a seeded gear table."""

    __slots__ = ("_cdc", "_local", "params")

    def __init__(self, params: ChunkerParams) -> None:
        self.params = params
        self._cdc = FastCDC(
            params.avg_size, min_size=params.min_size, max_size=params.max_size, seed=params.seed
        )
        self._local = threading.local()  # each thread's read buffer, and whether it is in use

    def split_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        # Read through buffers that each thread keeps: pyfastcdc's stream cutter allocates
        # and zero-fills a new 2 x max_size buffer per stream, which cost more than the cutting
        # for files of a few hundred KiB to a few MiB, and left the heap fragmented.
        # A stream shorter than the minimum chunk size is one chunk whatever the gear table:
        # it is read into a buffer of that size, so a thread that only reads small files (the
        # backup's walker) never holds the large one.
        if getattr(self._local, "busy", False):  # a second stream open in this thread
            for chunk in self._cdc.cut_stream(stream):
                yield chunk.data
            return
        self._local.busy = True
        try:
            small = self._buffer("small", self.params.min_size)
            filled, eof = _fill(stream, small, 0)
            if eof and filled < self.params.min_size:
                if filled:
                    yield small[:filled]
                return
            # Twice the largest chunk: a full window always holds at least one final chunk.
            view = self._buffer("large", 2 * self.params.max_size)
            view[:filled] = small[:filled]
            yield from self._split_buffered(stream, view, filled, eof)
        finally:
            self._local.busy = False

    def _buffer(self, name: str, size: int) -> memoryview:
        buf: memoryview | None = getattr(self._local, name, None)
        if buf is None:
            buf = memoryview(bytearray(size))
            setattr(self._local, name, buf)
        return buf

    def _split_buffered(self, stream: BinaryIO, view: memoryview, filled: int,
                        eof: bool) -> Iterator[memoryview]:
        max_size = self.params.max_size
        while True:
            if not eof:
                filled, eof = _fill(stream, view, filled)
            # A cut depends on at most max_size bytes from the chunk's start: every chunk that
            # starts at least max_size before the end of what was read is final; the rest is
            # moved to the front and cut again once more is read.
            start = 0
            for chunk in self._cdc.cut_buf(view[:filled]):
                if not eof and start + max_size > filled:
                    break
                yield chunk.data
                start += chunk.length
            if eof and start >= filled:
                return
            rest = filled - start
            view[:rest] = view[start:filled]
            filled = rest

    def split_buffer(self, data: bytes | memoryview) -> Iterator[memoryview]:
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data


def _fill(stream: BinaryIO, view: memoryview, filled: int) -> tuple[int, bool]:
    """Read into `view` from `filled` until it is full or the stream ends: (filled, at end)."""
    while filled < len(view):
        n = stream.readinto(view[filled:])  # type: ignore[attr-defined]
        if not n:
            return filled, True
        filled += n
    return filled, False
