"""Backends for the storage contract suite: every factory here runs every contract test.

To add a backend (e.g. HttpStore against an aiohttp test server), write one async context
manager that yields a `Backend` and append it to FACTORIES; a backend is done when the suite
passes for it.
"""

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.ids import ObjectKey, ObjectKind
from shared.storage.base import ObjectStore
from shared.storage.local import LocalStore
from shared.storage.memory import MemoryStore
from shared.storage.wrappers import RetryingStore, VerifyingStore

JUNK_NAME = "ab" + "0" * 62  # a valid object name, planted where it is not an object


@dataclass(frozen=True)
class Backend:
    """A store under test, plus ways to look and reach behind its back."""

    store: ObjectStore
    temp_files: Callable[[], list[str]]  # temp files left in the backend
    plant_junk: Callable[[], None]  # stray temp files and non-objects where list() looks
    damage: Callable[[ObjectKey], Awaitable[None]]  # change a stored object's bytes in place


def _flipped(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


def _memory_backend(store: ObjectStore, raw: MemoryStore) -> Backend:
    async def damage(key: ObjectKey) -> None:
        data = await raw.get(key)
        await raw.delete(key)
        await raw.put(key, _flipped(data))

    return Backend(store, temp_files=list, plant_junk=lambda: None, damage=damage)


def _local_backend(store: ObjectStore, root: Path) -> Backend:
    def temp_files() -> list[str]:
        return sorted(os.listdir(root / "tmp"))

    def plant_junk() -> None:
        (root / "tmp" / "0123abcd.tmp").write_bytes(b"left by a crash")
        for kind in ObjectKind:
            folder = root / kind.value
            (folder / "README.txt").write_bytes(b"junk")
            (folder / f"{JUNK_NAME}.tmp").write_bytes(b"junk")
            (folder / JUNK_NAME.upper()).write_bytes(b"junk")
        (root / "index" / JUNK_NAME).mkdir()  # a folder with an object's name
        (root / "packs" / "zz").mkdir()  # not a shard
        (root / "packs" / "zz" / JUNK_NAME).write_bytes(b"junk")
        (root / "packs" / "cd").mkdir()  # a pack in the wrong shard
        (root / "packs" / "cd" / JUNK_NAME).write_bytes(b"junk")

    async def damage(key: ObjectKey) -> None:
        [path] = (root / key.kind.value).rglob(key.name)
        path.write_bytes(_flipped(path.read_bytes()))

    return Backend(store, temp_files, plant_junk, damage)


@asynccontextmanager
async def memory(tmp_path: Path) -> AsyncIterator[Backend]:
    store = MemoryStore()
    yield _memory_backend(store, store)


@asynccontextmanager
async def local(tmp_path: Path) -> AsyncIterator[Backend]:
    store = await LocalStore.create(tmp_path / "vault")
    yield _local_backend(store, tmp_path / "vault")
    await store.close()


@asynccontextmanager
async def local_without_fsync(tmp_path: Path) -> AsyncIterator[Backend]:
    store = await LocalStore.create(tmp_path / "vault", fsync=False)
    yield _local_backend(store, tmp_path / "vault")
    await store.close()


@asynccontextmanager
async def verifying_local(tmp_path: Path) -> AsyncIterator[Backend]:
    store = VerifyingStore(await LocalStore.create(tmp_path / "vault"))
    yield _local_backend(store, tmp_path / "vault")
    await store.close()


@asynccontextmanager
async def retrying_memory(tmp_path: Path) -> AsyncIterator[Backend]:
    raw = MemoryStore()
    store = RetryingStore(raw, base_delay=0)
    yield _memory_backend(store, raw)
    await store.close()


FACTORIES: dict[str, Callable[[Path], AbstractAsyncContextManager[Backend]]] = {
    "memory": memory,
    "local": local,
    "local-without-fsync": local_without_fsync,
    "verifying-local": verifying_local,
    "retrying-memory": retrying_memory,
}


@pytest.fixture(params=list(FACTORIES))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with FACTORIES[request.param](tmp_path) as backend:
        yield backend


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.store
