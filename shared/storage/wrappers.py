"""Cross-cutting store behaviour as wrappers that take and return an ObjectStore.

RetryingStore (backoff on StorageUnavailable), AppendOnlyStore (no deletes), VerifyingStore
(names must match content) and ThrottledStore (bandwidth limit). Backends stay simple.
"""

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

from shared.errors import IntegrityError, ObjectNotFound, PermissionDenied, StorageUnavailable
from shared.hashing import StreamHasher
from shared.ids import ObjectInfo, ObjectKey, ObjectKind
from shared.storage.base import (
    ObjectData,
    ObjectPiece,
    ObjectStore,
    SupportsMissing,
    iter_bytes,
    missing_by_stat,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Hash pieces this big in a thread (BLAKE3 releases the GIL): ~0.25 ms of CPU per MiB is the
# most we spend on the event loop at a time.
_HASH_IN_THREAD = 1 << 20
# ThrottledStore meters uploads in 64 KiB pieces, so even slow limits give a smooth rate.
_THROTTLE_PIECE = 64 << 10


class ForwardingStore:
    """Forwards every call to `inner`; subclasses override what they change (the base of
    every wrapper here, and of test doubles such as counting or fault-injecting stores)."""

    def __init__(self, inner: ObjectStore) -> None:
        self._inner = inner

    @property
    def inner(self) -> ObjectStore:
        return self._inner

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        await self._inner.put(key, data)

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        return await self._inner.get(key, offset=offset, length=length)

    async def stat(self, key: ObjectKey) -> ObjectInfo:
        return await self._inner.stat(key)

    def list(self, kind: ObjectKind) -> AsyncIterator[ObjectInfo]:
        return self._inner.list(kind)

    async def delete(self, key: ObjectKey) -> None:
        await self._inner.delete(key)

    async def missing(self, keys: Iterable[ObjectKey]) -> set[ObjectKey]:
        """The inner store's batch answer if it has one, else `stat` calls through this wrapper."""
        if isinstance(self._inner, SupportsMissing):
            return await self._inner.missing(keys)
        return await missing_by_stat(self, keys)

    async def close(self) -> None:
        await self._inner.close()


class RetryingStore(ForwardingStore):
    """Retries calls that fail with StorageUnavailable, with exponential backoff and jitter.

    A put whose data is an async iterable cannot be replayed, so only bytes puts are retried.
    A list is retried only if it failed before yielding anything (never yield twice).
    """

    def __init__(
        self,
        inner: ObjectStore,
        *,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        super().__init__(inner)
        self._attempts = attempts
        self._base_delay = base_delay
        self._max_delay = max_delay

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        if isinstance(data, bytes | memoryview):
            await self._call(f"put {key}", lambda: self._inner.put(key, data))
        else:
            await self._inner.put(key, data)

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        return await self._call(
            f"get {key}", lambda: self._inner.get(key, offset=offset, length=length)
        )

    async def stat(self, key: ObjectKey) -> ObjectInfo:
        return await self._call(f"stat {key}", lambda: self._inner.stat(key))

    async def list(self, kind: ObjectKind) -> AsyncIterator[ObjectInfo]:
        attempt = 1
        while True:
            yielded = False
            try:
                async for info in self._inner.list(kind):
                    yielded = True
                    yield info
                return
            except StorageUnavailable as exc:
                if yielded or attempt >= self._attempts:
                    raise
                await self._backoff(f"list {kind}", exc, attempt)
                attempt += 1

    async def delete(self, key: ObjectKey) -> None:
        tries = 0

        async def delete_once() -> None:
            nonlocal tries
            tries += 1
            try:
                await self._inner.delete(key)
            except ObjectNotFound:
                if tries == 1:
                    raise
                # An earlier attempt deleted it and only its answer was lost.

        await self._call(f"delete {key}", delete_once)

    async def missing(self, keys: Iterable[ObjectKey]) -> set[ObjectKey]:
        inner = self._inner
        if isinstance(inner, SupportsMissing):
            batch = tuple(keys)  # an iterator would be used up by the first attempt
            return await self._call("missing", lambda: inner.missing(batch))
        return await missing_by_stat(self, keys)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 1
        while True:
            try:
                return await call()
            except StorageUnavailable as exc:
                if attempt >= self._attempts:
                    raise
                await self._backoff(what, exc, attempt)
                attempt += 1

    async def _backoff(self, what: str, exc: StorageUnavailable, attempt: int) -> None:
        # "Equal jitter": half the exponential delay, plus a random part up to the other half,
        # so clients that failed together do not retry in lockstep.
        delay = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)
        retries = self._attempts - 1
        logger.warning(
            "%s failed (%s); retry %d of %d in %.1f s", what, exc, attempt, retries, delay
        )
        await asyncio.sleep(delay)


class AppendOnlyStore(ForwardingStore):
    """Refuses deletes: a device token that may back up but not remove (rest-server's mode)."""

    async def delete(self, key: ObjectKey) -> None:
        raise PermissionDenied(f"cannot delete {key}: this store is append-only")


class VerifyingStore(ForwardingStore):
    """Checks that every object's content hashes (unkeyed BLAKE3) to its name.

    A put hashes the data as it streams and raises IntegrityError after the last chunk, before
    the backend publishes it, so a bad upload never becomes visible. A whole-object get is
    checked too; ranged gets are not (they cannot be).
    """

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        await self._inner.put(key, _verified(key, data))

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        data = await self._inner.get(key, offset=offset, length=length)
        if offset == 0 and length is None:
            hasher = StreamHasher()
            await _hash(hasher, data)
            if hasher.object_id() != key.id:
                raise IntegrityError(f"{key} is damaged: content does not match its name")
        return data


async def _hash(hasher: StreamHasher, chunk: ObjectPiece) -> None:
    if len(chunk) >= _HASH_IN_THREAD:
        await asyncio.to_thread(hasher.update, chunk)
    else:
        hasher.update(chunk)


async def _verified(key: ObjectKey, data: ObjectData) -> AsyncIterator[ObjectPiece]:
    hasher = StreamHasher()
    async for chunk in iter_bytes(data):
        await _hash(hasher, chunk)
        yield chunk
    if hasher.object_id() != key.id:
        raise IntegrityError(f"upload of {key} rejected: content does not match its name")


class _TokenBucket:
    """Allows `rate` bytes a second on average, in bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = rate
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()  # callers wait their turn, first come first served

    async def take(self, n: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self._rate, self._tokens + (now - self._updated) * self._rate)
            self._updated = now
            self._tokens -= n
            if self._tokens < 0:  # in debt: wait until it is paid back
                await asyncio.sleep(-self._tokens / self._rate)


class ThrottledStore(ForwardingStore):
    """Limits the bytes put and the bytes got, each to `bytes_per_second` (0 or None: no limit).

    Uploads and downloads have separate budgets, as a network link does.
    """

    def __init__(self, inner: ObjectStore, *, bytes_per_second: float | None) -> None:
        super().__init__(inner)
        rate = bytes_per_second or 0
        if rate < 0:
            raise ValueError("bytes_per_second must not be negative")
        self._up = _TokenBucket(rate) if rate else None
        self._down = _TokenBucket(rate) if rate else None

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        if self._up is None:
            await self._inner.put(key, data)
        else:
            await self._inner.put(key, _metered(self._up, data))

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        data = await self._inner.get(key, offset=offset, length=length)
        if self._down is not None:
            await self._down.take(len(data))
        return data


async def _metered(
    bucket: _TokenBucket, data: ObjectData
) -> AsyncIterator[ObjectPiece]:
    async for chunk in iter_bytes(data):
        for start in range(0, len(chunk), _THROTTLE_PIECE):
            piece = chunk[start : start + _THROTTLE_PIECE]
            await bucket.take(len(piece))
            yield piece
