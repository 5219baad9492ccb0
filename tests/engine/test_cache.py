"""The local cache: tree packs of remote vaults are fetched whole once, then read locally."""

from pathlib import Path

import pytest

from client_gui.engine.backup import BackupPlan, backup
from client_gui.engine.cache import CachingStore
from client_gui.engine.walk import walk
from shared.errors import IntegrityError
from shared.ids import ObjectKey, ObjectKind
from shared.storage.base import ObjectStore
from shared.storage.wrappers import ForwardingStore


class CountingStore(ForwardingStore):
    """Counts the pack reads that reach the vault: (whole reads, ranged reads)."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.whole = 0
        self.ranged = 0

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        if key.kind is ObjectKind.PACK:
            if offset == 0 and length is None:
                self.whole += 1
            else:
                self.ranged += 1
        return await super().get(key, offset=offset, length=length)


async def _tree_with_many_folders(vault_factory, tmp_path: Path):
    src = tmp_path / "src"
    for i in range(30):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "f.txt").write_text(f"file {i}")
    vault, root = await vault_factory.create()
    result = await backup(vault, BackupPlan(paths=(str(src),)))
    await vault.close()
    return root, result.snapshot.tree


async def _walk_all(vault, tree) -> int:
    return sum([1 async for _ in walk(vault, tree)])


def _counted_cache(tmp_path: Path, *, remote: bool):
    """A store wrapper for vault_factory.open: the local cache over a CountingStore (one per
    vault opened, in `counting`); `remote` caches tree packs on disk as for a server vault."""
    counting: list[CountingStore] = []

    def wrap(store: ObjectStore) -> ObjectStore:
        counting.append(CountingStore(store))
        return CachingStore(counting[-1], tmp_path / "cache", cache_tree_packs=remote)

    return counting, wrap


async def test_tree_packs_are_fetched_whole_once_then_read_locally(vault_factory,
                                                                   tmp_path) -> None:
    root, tree = await _tree_with_many_folders(vault_factory, tmp_path)
    counting, wrap = _counted_cache(tmp_path, remote=True)

    first = await vault_factory.open(root, wrap)
    nodes = await _walk_all(first, tree)
    assert counting[0].ranged == 0 and counting[0].whole >= 1
    second = await vault_factory.open(root, wrap)  # a later run: nothing left in memory
    assert await _walk_all(second, tree) == nodes
    assert counting[1].whole == 0 and counting[1].ranged == 0


async def test_damaged_cached_tree_pack_is_read_from_the_vault_and_dropped(vault_factory,
                                                                           tmp_path) -> None:
    root, tree = await _tree_with_many_folders(vault_factory, tmp_path)
    cache = tmp_path / "cache"

    def wrap(store: ObjectStore) -> ObjectStore:
        return CachingStore(store, cache, cache_tree_packs=True)

    nodes = await _walk_all(await vault_factory.open(root, wrap), tree)
    [cached] = list((cache / "packs").iterdir())
    cached.write_bytes(b"\0" * cached.stat().st_size)  # same size, every blob broken
    assert await _walk_all(await vault_factory.open(root, wrap), tree) == nodes
    assert not cached.exists() or cached.read_bytes() != b"\0" * cached.stat().st_size


async def test_local_vaults_keep_no_pack_copies(vault_factory, tmp_path) -> None:
    root, tree = await _tree_with_many_folders(vault_factory, tmp_path)

    def wrap(store: ObjectStore) -> ObjectStore:
        return CachingStore(store, tmp_path / "cache")

    await _walk_all(await vault_factory.open(root, wrap), tree)
    assert not (tmp_path / "cache" / "packs").exists()


async def test_local_tree_packs_are_read_whole_once_and_kept_in_memory(vault_factory,
                                                                      tmp_path) -> None:
    """A vault on this machine: each tree pack is read once per process, not once a tree."""
    root, tree = await _tree_with_many_folders(vault_factory, tmp_path)
    counting, wrap = _counted_cache(tmp_path, remote=False)

    vault = await vault_factory.open(root, wrap)
    nodes = await _walk_all(vault, tree)
    assert nodes > 30
    assert counting[0].ranged == 0 and counting[0].whole == 1  # one tree pack, read once
    vault._tree_cache.clear()  # decoded trees forgotten: the pack is still in memory
    assert await _walk_all(vault, tree) == nodes
    assert counting[0].whole == 1 and not (tmp_path / "cache" / "packs").exists()


async def test_local_tree_packs_kept_are_bounded(vault_factory, tmp_path, monkeypatch) -> None:
    import client_gui.engine.vault as vault_module

    root, tree = await _tree_with_many_folders(vault_factory, tmp_path)
    counting, wrap = _counted_cache(tmp_path, remote=False)

    monkeypatch.setattr(vault_module, "TREE_PACKS_KEPT", 1)  # less than any pack
    vault = await vault_factory.open(root, wrap)
    nodes = await _walk_all(vault, tree)
    vault._tree_cache.clear()
    assert await _walk_all(vault, tree) == nodes
    assert len(vault._tree_packs) == 1  # only the last one is kept


async def test_stored_tree_now_decodes_only_from_packs_in_memory(vault_factory,
                                                                 tmp_path) -> None:
    """`Vault.stored_tree_now` (the backup walker's way to a parent tree without a trip
    through the loop): None until the tree's pack is in memory, then the same nodes as
    `load_tree`, and damage raises as it does there."""
    root, tree = await _tree_with_many_folders(vault_factory, tmp_path)
    counting, wrap = _counted_cache(tmp_path, remote=False)
    vault = await vault_factory.open(root, wrap)
    await vault.load_index()
    assert vault.stored_tree_now(tree) is None  # nothing read yet
    assert counting[0].whole == 0
    nodes = await vault.load_tree(tree)
    subtree = nodes[0].subtree
    assert subtree is not None
    stored = vault.stored_tree_now(subtree)
    assert stored is not None
    expected = await vault.load_tree(subtree)
    assert len(stored) == len(expected)
    assert [stored.get(n.name) for n in expected] == list(expected)
    assert counting[0].whole == 1 and counting[0].ranged == 0  # no read for stored_tree_now

    [name] = list(vault._tree_packs)
    vault._tree_packs[name] = b"\0" * len(vault._tree_packs[name])
    with pytest.raises(IntegrityError):
        vault.stored_tree_now(subtree)
