"""Content-defined chunking: the Chunker protocol and our FastCDC (pyfastcdc) wrapper.

The chunker, its sizes and its seed are part of the vault format (docs/FORMAT.md).
Callers never import pyfastcdc directly.
"""

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

    __slots__ = ("_cdc", "params")

    def __init__(self, params: ChunkerParams) -> None:
        self.params = params
        self._cdc = FastCDC(
            params.avg_size, min_size=params.min_size, max_size=params.max_size, seed=params.seed
        )

    def split_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        # A stream shorter than the minimum chunk size is one chunk whatever the gear table:
        # read it in one call instead of setting up a cut (~80 us each, which dominated the
        # backup of many small files). A seekable stream that turns out longer is rewound.
        if stream.seekable():
            start = stream.tell()
            head = stream.read(self.params.min_size)
            if len(head) < self.params.min_size:
                if head:
                    yield memoryview(head)
                return
            stream.seek(start)
        for chunk in self._cdc.cut_stream(stream):
            yield chunk.data

    def split_buffer(self, data: bytes | memoryview) -> Iterator[memoryview]:
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data
