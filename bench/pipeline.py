"""The 2-core pipeline limit: what Cairn's own building blocks from `shared/` (FastCDC, keyed
BLAKE3, zstd, XChaCha20-Poly1305) cost on this machine, in-process, on the benchmark's trees.

Each stage (read, chunk, hash, compress, encrypt) is timed alone, then the whole chain runs on
one and on two threads. No scanning, packing, index, metadata or writes: a floor for a backup,
not a backup. One file is in memory per thread at a time. Imports `shared`, never the engine.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.dataset import Dataset, read_all
from shared.chunking import ChunkerParams, FastCdcChunker
from shared.compression import DEFAULT_BLOB_LEVEL, compress
from shared.crypto.aead import seal
from shared.format.blob import blob_aad
from shared.hashing import keyed_id
from shared.ids import BlobType, ObjectId

logger = logging.getLogger(__name__)

STAGES = ("read", "chunk", "hash", "compress", "encrypt")
# The benchmark machine has 2 cores; the limit assumes both are busy all the time.
CORES = 2


@dataclass(frozen=True, slots=True)
class StageTime:
    """One stage alone, one thread: the seconds spent in its own calls and the bytes it took in."""

    stage: str
    seconds: float
    bytes: int

    def to_json(self) -> dict[str, Any]:
        mib_s = self.bytes / 2**20 / self.seconds if self.seconds > 0 else None
        return {**asdict(self), "mib_s": None if mib_s is None else round(mib_s, 1)}


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainTime:
    """The whole chain (read -> chunk -> hash -> dedup -> compress -> encrypt): wall time."""

    threads: int
    seconds: float
    files: int
    bytes: int
    chunks: int
    distinct_chunks: int
    distinct_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineResult:
    """What `measure` found; `to_json` is the results document's "pipeline" entry."""

    cores: int
    files: int
    bytes: int
    stages: tuple[StageTime, ...]
    chains: tuple[ChainTime, ...]  # the home tree, 1 and `cores` threads
    small: ChainTime | None  # the many-small-files tree, `cores` threads

    @property
    def limit_seconds(self) -> float:
        return sum(s.seconds for s in self.stages) / self.cores

    def to_json(self) -> dict[str, Any]:
        return {"cores": self.cores, "files": self.files, "bytes": self.bytes,
                "stages": [s.to_json() for s in self.stages],
                "chains": [asdict(c) for c in self.chains],
                "limit_seconds": round(self.limit_seconds, 6),  # a tiny tree: well under 1 ms
                "small": asdict(self.small) if self.small is not None else None}


class _Ledger:
    """The distinct chunk IDs seen so far, shared by the threads of one measurement."""

    def __init__(self) -> None:
        self._seen: set[ObjectId] = set()
        self._lock = threading.Lock()
        self.bytes = 0

    def claim(self, blob_id: ObjectId, size: int) -> bool:
        """True the first time `blob_id` is seen: the caller compresses and encrypts it."""
        with self._lock:
            if blob_id in self._seen:
                return False
            self._seen.add(blob_id)
            self.bytes += size
            return True

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True, slots=True)
class _Keys:
    chunker: ChunkerParams
    id_key: bytes
    data_key: bytes


def _keys(seed: int) -> _Keys:
    rng = random.Random(f"{seed}:pipeline")  # neither speed nor dedup depends on the keys
    return _Keys(ChunkerParams(seed=rng.getrandbits(63)), rng.randbytes(32), rng.randbytes(32))


def list_files(root: Path) -> list[Path]:
    """The regular files under `root` (symlinks left out), in a fixed order."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder, name)
            if not path.is_symlink() and path.is_file():
                files.append(path)
    return files


class _Reader:
    """Reads each whole file into one buffer, reused from file to file (one per thread).

    A new bytes object per file would put the kernel's zeroing of fresh memory for every large
    file into the read stage (~3× slower for the VM images here), a cost a streaming backup does
    not pay. A view is valid until the next `read`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def read(self, path: Path) -> memoryview:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            if size > len(self._buffer):
                self._buffer = bytearray(size)  # views of the old buffer keep it alive
            view = memoryview(self._buffer)
            done = 0
            while done < size and (n := f.readinto(view[done:size])):
                done += n
            return view[:done]


def _payload(chunk: memoryview) -> bytes:
    """What the AEAD seals: the compression method byte, then the (maybe) compressed chunk."""
    method, packed = compress(chunk, DEFAULT_BLOB_LEVEL)
    return bytes([method]) + packed


def measure_stages(files: Sequence[Path], keys: _Keys) -> tuple[StageTime, ...]:
    """One pass, one thread, one file in memory: perf_counter around each stage's own calls."""
    clock = time.perf_counter
    chunker = FastCdcChunker(keys.chunker)
    reader = _Reader()
    ledger = _Ledger()
    spent = dict.fromkeys(STAGES, 0.0)
    took = dict.fromkeys(STAGES, 0)
    for path in files:
        t0 = clock()
        data = reader.read(path)
        t1 = clock()
        chunks = list(chunker.split_buffer(data))
        t2 = clock()
        ids = [keyed_id(keys.id_key, c) for c in chunks]
        t3 = clock()
        spent["read"] += t1 - t0
        spent["chunk"] += t2 - t1
        spent["hash"] += t3 - t2
        took["read"] += len(data)
        took["chunk"] += len(data)
        took["hash"] += len(data)
        for blob_id, chunk in zip(ids, chunks, strict=True):
            if not ledger.claim(blob_id, len(chunk)):
                continue
            t4 = clock()
            payload = _payload(chunk)
            t5 = clock()
            seal(keys.data_key, payload, blob_aad(BlobType.DATA, blob_id))
            t6 = clock()
            spent["compress"] += t5 - t4
            spent["encrypt"] += t6 - t5
            took["compress"] += len(chunk)
            took["encrypt"] += len(payload)
    return tuple(StageTime(s, round(spent[s], 6), took[s]) for s in STAGES)


def _chain_file(data: memoryview, chunker: FastCdcChunker, keys: _Keys, ledger: _Ledger
                ) -> tuple[int, int]:
    """The whole chain on one file's bytes; returns (bytes, chunks)."""
    chunks = 0
    for chunk in chunker.split_buffer(data):
        chunks += 1
        blob_id = keyed_id(keys.id_key, chunk)
        if ledger.claim(blob_id, len(chunk)):
            seal(keys.data_key, _payload(chunk), blob_aad(BlobType.DATA, blob_id))
    return len(data), chunks


def _worker(next_file: Callable[[], Path | None], keys: _Keys, ledger: _Ledger
            ) -> tuple[int, int]:
    chunker = FastCdcChunker(keys.chunker)  # pyfastcdc objects are not thread-safe
    reader = _Reader()
    total = chunks = 0
    while (path := next_file()) is not None:
        size, n = _chain_file(reader.read(path), chunker, keys, ledger)
        total += size
        chunks += n
    return total, chunks


def measure_chain(files: Sequence[Path], threads: int, keys: _Keys) -> ChainTime:
    """Wall time of the chain over `files` on a ThreadPoolExecutor of `threads` workers, each
    taking the next file from the shared list (the C libraries release the GIL)."""
    ledger = _Ledger()
    pending = iter(files)
    lock = threading.Lock()

    def next_file() -> Path | None:
        with lock:
            return next(pending, None)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="pipeline") as pool:
        futures = [pool.submit(_worker, next_file, keys, ledger) for _ in range(threads)]
        parts = [f.result() for f in futures]
    seconds = time.perf_counter() - started
    return ChainTime(threads=threads, seconds=round(seconds, 3), files=len(files),
                     bytes=sum(p[0] for p in parts), chunks=sum(p[1] for p in parts),
                     distinct_chunks=len(ledger), distinct_bytes=ledger.bytes)


def _log_chain(what: str, chain: ChainTime) -> None:
    logger.info("pipeline: %s, chain on %d thread(s): %.2f s (%.0f MiB/s)", what, chain.threads,
                chain.seconds, chain.bytes / 2**20 / chain.seconds if chain.seconds else 0.0)


def measure(home: Dataset, small: Dataset | None, seed: int = 42) -> PipelineResult:
    """Measures the stages alone and the chain on `home`, and the chain on `small` if given."""
    keys = _keys(seed)
    files = list_files(home.root)
    read_all(home.root)  # untimed: every stage then reads from a warm page cache
    stages = measure_stages(files, keys)
    for s in stages:
        logger.info("pipeline: %-8s %7.2f s  %6.0f MiB/s", s.stage, s.seconds,
                    s.bytes / 2**20 / s.seconds if s.seconds else 0.0)
    chains = tuple(measure_chain(files, n, keys) for n in (1, CORES))
    for chain in chains:
        _log_chain("home tree", chain)
    small_chain = None
    if small is not None:
        small_files = list_files(small.root)
        read_all(small.root)
        small_chain = measure_chain(small_files, CORES, keys)
        _log_chain(f"{len(small_files):,} small files", small_chain)
    return PipelineResult(cores=CORES, files=len(files), bytes=stages[0].bytes, stages=stages,
                          chains=chains, small=small_chain)
