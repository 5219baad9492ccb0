"""MemoryStore: an ObjectStore in a dict, for tests and as the reference for the contract.

It keeps everything in RAM and is safe for concurrent use by coroutines of one event loop.
"""

import logging
import time
from collections.abc import AsyncIterator

from shared.errors import ObjectNotFound
from shared.ids import ObjectInfo, ObjectKey, ObjectKind
from shared.storage.base import ObjectData, check_range, iter_bytes

logger = logging.getLogger(__name__)


class MemoryStore:
    """Objects held as bytes in a dict, with the time they were stored."""

    def __init__(self) -> None:
        self._objects: dict[ObjectKey, tuple[bytes, float]] = {}

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        if key in self._objects:
            return
        blob = b"".join([chunk async for chunk in iter_bytes(data)])
        # Decide only now, after the last await: a concurrent put of the same key may have won.
        self._objects.setdefault(key, (blob, time.time()))

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        blob = self._find(key)[0]
        length = check_range(key, len(blob), offset, length)
        if offset == 0 and length == len(blob):
            return blob
        return blob[offset : offset + length]

    async def stat(self, key: ObjectKey) -> ObjectInfo:
        blob, mtime = self._find(key)
        return ObjectInfo(key, len(blob), mtime)

    async def list(self, kind: ObjectKind) -> AsyncIterator[ObjectInfo]:
        # A snapshot, so puts and deletes while the caller iterates do not break the loop.
        found = [
            ObjectInfo(key, len(blob), mtime)
            for key, (blob, mtime) in self._objects.items()
            if key.kind == kind
        ]
        for info in found:
            yield info

    async def delete(self, key: ObjectKey) -> None:
        self._find(key)
        del self._objects[key]

    async def close(self) -> None:
        pass

    def _find(self, key: ObjectKey) -> tuple[bytes, float]:
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFound(f"{key} not found") from None
