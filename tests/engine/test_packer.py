"""The packer on its own: blobs sealed in place by several threads into shared packs, pack
buffers kept and reused, and a failed upload that leaves no pack and no index entry.

A real vault on a LocalStore; the packer's callers run in threads, its uploads on the loop.
"""

import asyncio
import mmap
import random
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from client_gui.engine import packer as packer_module
from client_gui.engine.backup_state import BackupState
from client_gui.engine.packer import Packer
from client_gui.engine.progress import CancelToken
from client_gui.engine.vault import Vault
from shared.errors import StorageUnavailable
from shared.format.blob import sealed_size
from shared.hashing import keyed_id
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind
from shared.storage.base import ObjectData, ObjectStore
from shared.storage.wrappers import ForwardingStore
from tests.engine.conftest import VaultFactory

PACK_SIZE = 256 << 10


def _blobs(count: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    blobs = []
    for i in range(count):
        size = rnd.choice([10, 700, 5000, 60_000, 200_000])
        blobs.append(rnd.randbytes(size) if i % 2 else (b"text %d " % i) * (size // 8 + 1))
    return blobs


def _packer(vault: Vault, uploads: int = 1) -> Packer:
    return Packer(vault, asyncio.get_running_loop(), BackupState(CancelToken()),
                  seal_workers=2, seals_in_flight=4, uploads_in_flight=uploads,
                  inline_below=1024)


def _feed(packer: Packer, vault: Vault, blobs: list[bytes], threads: int,
          *, pool: bool = True) -> list[ObjectId]:
    """Every blob into `packer` from `threads` threads at once, half through the sealing pool
    (if `pool`) and the rest sealed in the calling thread; then a flush. Runs in a worker
    thread."""
    ids = [keyed_id(vault.keys.chunk_id, b) for b in blobs]

    def one(i: int) -> None:
        if pool and i % 2:
            packer.submit_seal(BlobType.DATA, ids[i], memoryview(blobs[i]))
        else:
            packer.seal_now(BlobType.DATA, ids[i], blobs[i])

    try:
        with ThreadPoolExecutor(threads) as feeders:
            list(feeders.map(one, range(len(blobs))))
        packer.flush()
    finally:
        packer.shutdown()
    return ids


async def test_blobs_sealed_side_by_side_read_back(vault_factory: VaultFactory) -> None:
    vault, root = await vault_factory.create(pack_size=PACK_SIZE)
    blobs = _blobs(120, seed=1)
    packer = _packer(vault, uploads=2)
    ids = await asyncio.to_thread(_feed, packer, vault, blobs, 4)
    reopened = await vault_factory.open(root)
    for blob_id, blob in zip(ids, blobs, strict=True):
        assert await reopened.load_blob(blob_id, BlobType.DATA) == blob
    sizes = (await reopened.list_packs()).values()
    assert len(sizes) > 5
    largest_blob = sealed_size(max(len(b) for b in blobs))
    assert all(size < PACK_SIZE + largest_blob + packer.header_room for size in sizes)


async def test_pack_buffers_are_kept_and_reused(vault_factory: VaultFactory,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    vault, _ = await vault_factory.create(pack_size=PACK_SIZE)
    made: list[int] = []
    real = packer_module.anonymous_buffer

    def counted(size: int) -> mmap.mmap:
        made.append(size)
        return real(size)

    monkeypatch.setattr(packer_module, "anonymous_buffer", counted)
    packer = _packer(vault)
    await asyncio.to_thread(partial(_feed, packer, vault, _blobs(200, seed=2), 1, pool=False))
    assert len(await vault.list_packs()) > 10
    # One sealing thread: the pack uploading, a full one waiting for the upload slot, and the
    # next one being filled; then the buffers take turns.
    assert len(made) <= packer.buffers_kept + 1
    assert len(packer.free_buffers) <= packer.buffers_kept


async def test_tree_packs_get_their_own_buffer(vault_factory: VaultFactory) -> None:
    vault, root = await vault_factory.create(pack_size=PACK_SIZE)
    packer = _packer(vault)
    tree = b"a tree's bytes" * 100
    tree_id = keyed_id(vault.keys.chunk_id, tree)

    def feed() -> None:
        packer.seal_now(BlobType.TREE, tree_id, tree)
        _feed(packer, vault, _blobs(40, seed=3), 2)

    await asyncio.to_thread(feed)
    assert all(len(b) == packer.buffer_size for b in packer.free_buffers)
    reopened = await vault_factory.open(root)
    assert await reopened.load_blob(tree_id, BlobType.TREE) == tree


class _FailingPuts(ForwardingStore):
    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.failed = 0

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        if key.kind is ObjectKind.PACK:
            self.failed += 1
            raise StorageUnavailable("the disk went away")
        await self._inner.put(key, data)


async def test_a_failed_upload_stops_the_run_and_keeps_no_buffer(
        vault_factory: VaultFactory, tmp_path: Path) -> None:
    _, root = await vault_factory.create(pack_size=PACK_SIZE)
    failing: list[_FailingPuts] = []

    def wrap(store: ObjectStore) -> ObjectStore:
        failing.append(_FailingPuts(store))
        return failing[0]

    vault = await vault_factory.open(root, wrap)
    packer = _packer(vault)
    with pytest.raises(StorageUnavailable):
        await asyncio.to_thread(_feed, packer, vault, _blobs(60, seed=4), 2)
    assert failing[0].failed >= 1
    assert packer.free_buffers == []  # a store's thread might still read a failed put's buffer
    assert await vault.list_packs() == {} and len(vault.index) == 0
