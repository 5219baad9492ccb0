"""Backends for the storage contract suite: every factory here runs every contract test.

To add a backend, write one async context manager that yields a `Backend` and append it to
FACTORIES (or SERVER_FACTORIES if it needs the session's real cairn-server); a backend is done
when the suite passes for it.
"""

import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from client_gui.engine.remote import RemoteServer, TokenCredentials
from shared.ids import ObjectKey, ObjectKind
from shared.storage.base import ObjectStore
from shared.storage.local import LocalStore
from shared.storage.memory import MemoryStore
from shared.storage.wrappers import RetryingStore, VerifyingStore
from tests.conftest import SERVER_PASSWORD, SERVER_USER
from tests.support.server import CairnServer

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


# --- HttpStore against a real cairn-server process (one per session, a new vault per test) ---

# A server finishes removing the temp file of an upload it refused a moment after the client
# saw the refusal: look again for this long before reporting leftovers.
_SERVER_CLEANUP_WAIT = 5.0
_vault_names = (f"contract-{n}" for n in itertools.count(1))


@dataclass(frozen=True)
class ServerSession:
    server: CairnServer
    token: str  # may back up, restore and delete (maintain)


@pytest.fixture(scope="session")
def contract_server(session_cairn_server: CairnServer) -> Iterator[ServerSession]:
    """The session's cairn-server and one device token for all contract tests (signing in
    costs an Argon2 hash, so once)."""
    response = session_cairn_server.sign_in(SERVER_USER, SERVER_PASSWORD, device="contract",
                                            scopes=("backup", "restore", "maintain"))
    yield ServerSession(session_cairn_server, response.token)


@asynccontextmanager
async def http(tmp_path: Path, session: ServerSession) -> AsyncIterator[Backend]:
    remote = RemoteServer(session.server.url, TokenCredentials(session.token))
    name = next(_vault_names)
    await remote.create_vault(name)
    root = session.server.vault_dir(SERVER_USER, name)
    local = _local_backend(LocalStore(root), root)

    def temp_files() -> list[str]:
        deadline = time.monotonic() + _SERVER_CLEANUP_WAIT
        while (left := sorted(os.listdir(root / "tmp"))) and time.monotonic() < deadline:
            time.sleep(0.01)
        return left

    def plant_junk() -> None:
        for folder in ["tmp", *(kind.value for kind in ObjectKind)]:
            (root / folder).mkdir(parents=True, exist_ok=True)
        local.plant_junk()

    store = remote.store(name)
    yield replace(local, store=store, temp_files=temp_files, plant_junk=plant_junk)
    await store.close()


SERVER_FACTORIES: dict[
    str, Callable[[Path, ServerSession], AbstractAsyncContextManager[Backend]]
] = {"http": http}


@pytest.fixture(params=[*FACTORIES, *SERVER_FACTORIES])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param in SERVER_FACTORIES:
        session: ServerSession = request.getfixturevalue("contract_server")
        async with SERVER_FACTORIES[request.param](tmp_path, session) as backend:
            yield backend
    else:
        async with FACTORIES[request.param](tmp_path) as backend:
            yield backend


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.store
