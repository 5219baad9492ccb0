"""The ObjectStore protocol every storage backend implements, with its written contract.

Also the optional SupportsMissing capability and small helpers shared by backends.
Backends never retry or verify internally: that is the job of shared.storage.wrappers.
"""

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared.errors import ObjectNotFound, RangeError
from shared.ids import ObjectInfo, ObjectKey, ObjectKind

logger = logging.getLogger(__name__)

# 16 stats in flight keep a remote store's round trips overlapped (16 x ~20 ms RTT is ~800
# keys/s) without opening more connections than a server comfortably serves one client;
# a local store is bounded by the default thread pool anyway.
_STAT_CONCURRENCY = 16

# What `put` stores: the whole object in one buffer, or an async stream of its pieces. A
# memoryview is read only until `put` returns; the caller may then reuse its memory.
ObjectPiece = bytes | memoryview
ObjectData = ObjectPiece | AsyncIterable[ObjectPiece]


@runtime_checkable
class ObjectStore(Protocol):
    """Immutable, content-addressed objects of one vault. Safe for concurrent use."""

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        """Atomic: readers see the whole object or nothing (temp name, fsync, rename).
        An existing key is left untouched (objects are immutable): a repeated put is a no-op.
        If iterating `data` raises, nothing is stored and the error propagates."""

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        """Raises ObjectNotFound; a range past the end raises RangeError (never a short read)."""

    async def stat(self, key: ObjectKey) -> ObjectInfo:
        """Raises ObjectNotFound."""

    def list(self, kind: ObjectKind) -> AsyncIterator[ObjectInfo]:
        """Every stored object of `kind` exactly once, in no particular order; never temp files."""

    async def delete(self, key: ObjectKey) -> None:
        """Raises ObjectNotFound, or PermissionDenied on append-only stores."""

    async def close(self) -> None:
        """Release connections and handles; the store is not used afterwards."""


@runtime_checkable
class SupportsMissing(Protocol):
    """A store that answers "which of these keys are absent?" in one batch (e.g. one request)."""

    async def missing(self, keys: Iterable[ObjectKey]) -> set[ObjectKey]:
        """The keys of `keys` that the store does not hold."""


async def missing(store: ObjectStore, keys: Iterable[ObjectKey]) -> set[ObjectKey]:
    """The keys of `keys` that `store` does not hold, in one batch if the store supports it."""
    if isinstance(store, SupportsMissing):
        return await store.missing(keys)
    return await missing_by_stat(store, keys)


async def missing_by_stat(store: ObjectStore, keys: Iterable[ObjectKey]) -> set[ObjectKey]:
    """The keys of `keys` that `store` does not hold, by bounded-concurrency `stat` calls."""
    absent: set[ObjectKey] = set()
    slots = asyncio.Semaphore(_STAT_CONCURRENCY)

    async def check(key: ObjectKey) -> None:
        try:
            await store.stat(key)
        except ObjectNotFound:
            absent.add(key)
        finally:
            slots.release()

    try:
        async with asyncio.TaskGroup() as group:
            for key in dict.fromkeys(keys):
                await slots.acquire()  # at most _STAT_CONCURRENCY tasks exist at a time
                group.create_task(check(key))
    except BaseExceptionGroup as failures:
        # Callers expect a plain StorageError, not a group; keep the first error's own cause.
        first = failures.exceptions[0]
        raise first from first.__cause__
    return absent


async def iter_bytes(data: ObjectData) -> AsyncIterator[ObjectPiece]:
    """Yield the pieces of `data`, whether it is one buffer or an async iterable."""
    if isinstance(data, bytes | memoryview):
        yield data
        return
    async for chunk in data:
        yield chunk


def check_range(key: ObjectKey, size: int, offset: int, length: int | None) -> int:
    """How many bytes a read of `key` (`size` bytes long) returns; RangeError if out of bounds."""
    end = size if length is None else offset + length
    if offset < 0 or end < offset or end > size:
        wanted = "the rest" if length is None else f"{length} bytes"
        raise RangeError(f"cannot read {wanted} at offset {offset} of {key}: it has {size} bytes")
    return end - offset


@runtime_checkable
class SupportsLocalPath(Protocol):
    """A store whose objects are plain files, so a server can send them with sendfile."""

    def path_of(self, key: ObjectKey) -> Path:
        """The file that holds `key` once it is stored (it may not exist); no I/O."""
        ...


@runtime_checkable
class SupportsOrderedList(Protocol):
    """A store that lists in name order without sorting everything (one page at a time)."""

    def list_after(self, kind: ObjectKind, after: str | None = None) -> AsyncIterator[ObjectInfo]:
        """Every stored object of `kind` whose name sorts after `after` (all if None), in
        ascending name order, produced lazily: stopping early costs only what was read."""
        ...


@runtime_checkable
class SupportsTempCleanup(Protocol):
    """Stores that keep temporary files (uploads in progress) and can remove stale ones."""

    async def cleanup_temp(self, older_than: float) -> int:
        """Remove temporary files older than `older_than` seconds; return how many."""
        ...


async def cleanup_temp(store: object, older_than: float) -> int:
    """Remove stale temp files of the first store in a wrapper chain (`.inner`) that keeps
    any; 0 if none does."""
    seen = 0
    while store is not None and seen < 16:
        if isinstance(store, SupportsTempCleanup):
            return await store.cleanup_temp(older_than)
        store = getattr(store, "inner", getattr(store, "_inner", None))
        seen += 1
    return 0
