"""The client's local cache of immutable metadata objects (index, snapshots, key slots) and,
for vaults on a server, of the packs that hold trees.

Only a cache: every entry is checked against its name (BLAKE3) when written or read whole,
a damaged tree pack shows up as a blob that fails its AEAD check and is fetched again, and
deleting the whole folder is always safe.

Tree packs matter for remote vaults: a backup compares every folder with its parent
snapshot's tree, and reading each tree with its own ranged request costs one round trip per
folder (thousands per backup). A tree pack is fetched whole once and then read locally.
"""

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from client_gui.engine.exclude import CACHEDIR_SIGNATURE
from shared.hashing import object_id
from shared.ids import ObjectInfo, ObjectKey, ObjectKind
from shared.storage.base import ObjectData, ObjectStore

logger = logging.getLogger(__name__)

CACHED_KINDS = frozenset({ObjectKind.INDEX, ObjectKind.SNAPSHOT, ObjectKind.KEY})
CACHEDIR_TAG = CACHEDIR_SIGNATURE + b"\n# This file is a cache directory tag created by cairn.\n"


class CachingStore:
    """Wraps a vault's store; whole reads of CACHED_KINDS are served from `root` when valid.

    With `cache_tree_packs`, `tree_pack_range` serves tree blobs from whole local copies of
    their packs (for stores where each read is a network round trip)."""

    def __init__(self, inner: ObjectStore, root: Path, *, cache_tree_packs: bool = False) -> None:
        self.inner = inner
        self.root = root
        self.cache_tree_packs = cache_tree_packs

    async def tree_pack_range(self, key: ObjectKey, offset: int, length: int) -> bytes | None:
        """`length` bytes at `offset` of tree pack `key`, from a local copy of the whole pack
        (fetched and checked against its name on first use); None when packs are not cached
        here or the pack cannot be cached (the caller then reads the range from the vault)."""
        if not self.cache_tree_packs:
            return None
        data = await asyncio.to_thread(self._read_range, key, offset, length)
        if data is not None:
            return data
        whole = await self.inner.get(key)
        if object_id(whole).hex() != key.name:
            return None  # let the ranged read from the vault report the damage
        await asyncio.to_thread(self._write, key, whole)
        part = whole[offset:offset + length]
        return part if len(part) == length else None

    async def forget_tree_pack(self, key: ObjectKey) -> None:
        """Drop the local copy of a pack (one of its blobs failed its check)."""
        await asyncio.to_thread(self._unlink, key)

    def _read_range(self, key: ObjectKey, offset: int, length: int) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(offset)
                data = f.read(length)
        except OSError:
            return None
        return data if len(data) == length else None

    def _unlink(self, key: ObjectKey) -> None:
        try:
            self._path(key).unlink()
        except OSError:
            pass

    def _path(self, key: ObjectKey) -> Path:
        return self.root / key.kind.value / key.name

    def _read(self, key: ObjectKey) -> bytes | None:
        try:
            data = self._path(key).read_bytes()
        except OSError:
            return None
        if object_id(data).hex() != key.name:
            logger.info("cache entry %s is damaged; fetching it again", key)
            return None
        return data

    def _write(self, key: ObjectKey, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tag = self.root.parent / "CACHEDIR.TAG"
            if not tag.exists():
                tag.write_bytes(CACHEDIR_TAG)
            tmp = path.with_name(f".{key.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:  # a cache that cannot be written is no reason to fail
            logger.debug("cannot write cache entry %s: %s", key, exc)

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        await self.inner.put(key, data)
        if key.kind in CACHED_KINDS and isinstance(data, bytes):
            await asyncio.to_thread(self._write, key, data)

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        whole = offset == 0 and length is None
        if whole and key.kind in CACHED_KINDS:
            cached = await asyncio.to_thread(self._read, key)
            if cached is not None:
                return cached
            data = await self.inner.get(key)
            if object_id(data).hex() == key.name:
                await asyncio.to_thread(self._write, key, data)
            return data
        return await self.inner.get(key, offset=offset, length=length)

    async def stat(self, key: ObjectKey) -> ObjectInfo:
        return await self.inner.stat(key)

    async def list(self, kind: ObjectKind) -> AsyncIterator[ObjectInfo]:
        names = set()
        async for info in self.inner.list(kind):
            names.add(info.key.name)
            yield info
        if kind in CACHED_KINDS or kind is ObjectKind.PACK and self.cache_tree_packs:
            await asyncio.to_thread(self._forget_except, kind, names)

    def _forget_except(self, kind: ObjectKind, names: set[str]) -> None:
        """Drop cache entries of objects the vault no longer has."""
        folder = self.root / kind.value
        try:
            entries = list(folder.iterdir())
        except OSError:
            return
        for entry in entries:
            if entry.name not in names:
                try:
                    entry.unlink()
                except OSError:
                    pass

    async def delete(self, key: ObjectKey) -> None:
        await self.inner.delete(key)
        if key.kind in CACHED_KINDS or key.kind is ObjectKind.PACK:
            await asyncio.to_thread(self._unlink, key)

    async def close(self) -> None:
        await self.inner.close()
