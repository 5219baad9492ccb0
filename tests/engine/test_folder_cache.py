"""The folder cache (client_gui/engine/folder_cache.py): a backup that takes unchanged folders
from it must save exactly what a backup reading every parent tree saves.

Each test backs up a real tree through a CachingStore (which writes the cache), changes the
tree, and then backs it up twice against the same parent: once through the bare store (no
cache: every folder compared with the parent tree) and once through the cache. Root tree,
pack list and file counts must be equal.
"""

import logging
import os
import shutil
import socket
import stat
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

import client_gui.engine.backup_reader as backup_reader_module
from client_gui.engine.backup import BackupPlan, BackupResult, backup
from client_gui.engine.cache import CachingStore
from client_gui.engine.folder_cache import FolderCacheFile, node_entry, stat_entry
from client_gui.engine.prune import prune
from client_gui.engine.scan import OwnerNames, open_file, stat_node, virtual_paths
from client_gui.engine.vault import Vault
from shared.format.deletion import DeletionMarker, encode_deletion
from shared.format.tree import NodeType, StoredTree
from shared.ids import ObjectId, ObjectKind
from shared.storage.local import LocalStore
from tests.conftest import make_tree
from tests.engine.conftest import PASSPHRASE, VaultFactory

SPEC: dict[str, bytes | str | None] = {
    "top.txt": "top",
    "a/one.txt": "one",
    "a/two.bin": os.urandom(300_000),  # read on the reader pool (above the minimum chunk)
    "a/b/three.txt": "three",
    "a/b/c/four.txt": "four",
    "a/b/c/d/five.txt": "five",
    "a/empty": None,
    "e/six.txt": "six",
    "e/f/seven.txt": "seven",
}
COUNTED = ("files", "dirs", "bytes", "new_files", "changed_files", "unchanged_files")


def build(src: Path) -> Path:
    make_tree(src, SPEC)
    os.symlink("one.txt", src / "a" / "link")
    os.mkfifo(src / "e" / "fifo")
    return src


class Setup:
    def __init__(self, root: Path, cache: Path, src: Path) -> None:
        self.root, self.cache, self.src = root, cache, src

    async def cached(self) -> Vault:
        """The vault through a local cache folder, opened as the CLI opens it for a backup."""
        return await Vault.open(CachingStore(LocalStore(self.root, fsync=False), self.cache),
                                PASSPHRASE)

    async def bare(self) -> Vault:
        vault = await Vault.open(LocalStore(self.root, fsync=False), PASSPHRASE)
        await vault.load_index()
        return vault

    def plan(self, parent: BackupResult | None = None, **options: object) -> BackupPlan:
        return BackupPlan(paths=(str(self.src),), parent=parent.snapshot_id.hex()
                          if parent else None, **options)  # type: ignore[arg-type]


@pytest.fixture
async def setup(tmp_path: Path, vault_factory: VaultFactory) -> Setup:
    _, root = await vault_factory.create()
    return Setup(root, tmp_path / "cache", build(tmp_path / "src"))


def counted(result: BackupResult) -> dict[str, int]:
    return {k: getattr(result.snapshot.stats, k) for k in COUNTED}


async def both(setup: Setup, first: BackupResult, *, cached: bool = True, **options: object
               ) -> tuple[BackupResult, BackupResult, Vault]:
    """The same backup against `first`, without and with the folder cache."""
    full_vault, vault = await setup.bare(), await setup.cached()
    loads = {id(full_vault): 0, id(vault): 0}
    for v in (full_vault, vault):
        _count_tree_loads(v, loads)
    full = await backup(full_vault, setup.plan(first, **options))
    fast = await backup(vault, setup.plan(first, **options))
    assert fast.snapshot.tree == full.snapshot.tree
    assert fast.snapshot.packs == full.snapshot.packs
    assert counted(fast) == counted(full)
    if cached:  # some folders came from the cache
        assert loads[id(vault)] < loads[id(full_vault)]
    return full, fast, vault


def _count_tree_loads(vault: Vault, loads: dict[int, int]) -> None:
    """Count the parent trees a backup through `vault` loads, either way it loads them."""
    load, now = vault.load_stored_tree, vault.stored_tree_now

    async def load_stored_tree(tree_id: ObjectId) -> StoredTree:
        loads[id(vault)] += 1
        return await load(tree_id)

    def stored_tree_now(tree_id: ObjectId) -> StoredTree | None:
        tree = now(tree_id)
        loads[id(vault)] += tree is not None
        return tree

    vault.load_stored_tree = load_stored_tree  # type: ignore[method-assign]
    vault.stored_tree_now = stored_tree_now  # type: ignore[method-assign]


# ---- the changes a day of work makes ---------------------------------------------------------


def _append(src: Path) -> None:
    with open(src / "a/b/c/d/five.txt", "ab") as f:
        f.write(b" and more")


def _same_size(src: Path) -> None:
    path = src / "a/b/three.txt"
    st = path.stat()
    path.write_bytes(b"THREE")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # only ctime tells


def _touch(src: Path) -> None:
    os.utime(src / "e/six.txt", ns=(1, 1_600_000_000_000_000_000))


def _chmod(src: Path) -> None:
    os.chmod(src / "a/one.txt", 0o600)


def _chmod_dir(src: Path) -> None:
    os.chmod(src / "a/b/c", 0o700)


def _add(src: Path) -> None:
    (src / "a/b/c/new.txt").write_text("new")


def _delete(src: Path) -> None:
    (src / "e/f/seven.txt").unlink()


def _rename(src: Path) -> None:
    os.rename(src / "a/one.txt", src / "a/uno.txt")


def _move(src: Path) -> None:
    os.rename(src / "a/b/c/four.txt", src / "e/four.txt")


def _new_dir(src: Path) -> None:
    (src / "a/b/c/d/g").mkdir()


def _remove_dir(src: Path) -> None:
    shutil.rmtree(src / "a/b/c/d")


def _to_symlink(src: Path) -> None:
    (src / "top.txt").unlink()
    os.symlink("a/one.txt", src / "top.txt")


def _retarget(src: Path) -> None:
    (src / "a/link").unlink()
    os.symlink("two.bin", src / "a/link")


def _hard_link(src: Path) -> None:
    os.link(src / "a/b/three.txt", src / "e/three-again.txt")


def _big_file(src: Path) -> None:
    with open(src / "a/two.bin", "r+b") as f:
        f.seek(100_000)
        f.write(b"edited")


def _xattr(src: Path) -> None:
    try:
        os.setxattr(src / "a/b", "user.cairn-test", b"x")
    except OSError as exc:
        pytest.skip(f"no user xattrs here: {exc}")


def _nothing(src: Path) -> None:
    pass


CHANGES: list[Callable[[Path], None]] = [
    _nothing, _append, _same_size, _touch, _chmod, _chmod_dir, _add, _delete, _rename, _move,
    _new_dir, _remove_dir, _to_symlink, _retarget, _hard_link, _big_file, _xattr,
]


@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__.strip("_") for c in CHANGES])
async def test_cached_backup_saves_what_a_full_one_saves(setup: Setup,
                                                        change: Callable[[Path], None]) -> None:
    first = await backup(await setup.cached(), setup.plan())
    change(setup.src)
    full, fast, vault = await both(setup, first)
    if change is _nothing:
        assert fast.snapshot.tree == first.snapshot.tree
        assert fast.snapshot.packs == first.snapshot.packs
        assert len(vault.index) == 0  # nothing changed: the index was never loaded
    else:
        assert fast.snapshot.tree != first.snapshot.tree
        assert len(vault.index) > 0


async def test_changes_over_several_runs(setup: Setup) -> None:
    """Each run's cache serves the next (the cache follows the chain of snapshots)."""
    parent = await backup(await setup.cached(), setup.plan())
    for change in CHANGES[1:-1]:
        change(setup.src)
        _, parent, _ = await both(setup, parent)


async def test_checkpoints_build_the_cached_folders(setup: Setup) -> None:
    """A checkpoint needs the trees of the folders being walked, cached or not."""
    first = await backup(await setup.cached(), setup.plan())
    _add(setup.src)
    full, fast, _ = await both(setup, first, checkpoint_interval=0.0)


async def test_several_paths_and_a_single_file(setup: Setup) -> None:
    """Folders above the backed-up paths (and a backed-up file) are cached too."""
    paths = (str(setup.src / "a" / "b"), str(setup.src / "e"), str(setup.src / "top.txt"))
    vault = await setup.cached()
    first = await backup(vault, BackupPlan(paths=paths))
    again = await backup(await setup.cached(), BackupPlan(paths=paths))
    assert again.snapshot.tree == first.snapshot.tree
    (setup.src / "top.txt").write_text("changed top")
    full = await backup(await setup.bare(), BackupPlan(paths=paths, parent=again.snapshot_id.hex()))
    fast = await backup(await setup.cached(), BackupPlan(paths=paths,
                                                         parent=again.snapshot_id.hex()))
    assert fast.snapshot.tree == full.snapshot.tree
    assert fast.snapshot.packs == full.snapshot.packs


# ---- moved and renamed folders ---------------------------------------------------------------


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The paths of the files backups open to read from now on."""
    read: list[bytes] = []

    def counting(path: bytes) -> int:
        read.append(path)
        return open_file(path)

    monkeypatch.setattr(backup_reader_module, "open_file", counting)
    return read


async def _full_then_cached(setup: Setup, first: BackupResult, monkeypatch: pytest.MonkeyPatch
                            ) -> tuple[BackupResult, BackupResult, list[bytes]]:
    """A backup reading every parent tree, then one with the cache (and the files it read)."""
    full = await backup(await setup.bare(), setup.plan(first))
    read = _reads(monkeypatch)
    fast = await backup(await setup.cached(), setup.plan(first))
    assert fast.snapshot.tree == full.snapshot.tree
    assert fast.snapshot.packs == full.snapshot.packs
    f, s = full.snapshot.stats, fast.snapshot.stats
    assert (s.files, s.dirs, s.bytes) == (f.files, f.dirs, f.bytes)
    return full, fast, read


async def test_a_moved_folder_is_not_read_again(setup: Setup,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder moved elsewhere (its subfolders with it) keeps its entries' inodes and times:
    found by its signature, its trees are reused and none of its files is read."""
    first = await backup(await setup.cached(), setup.plan())
    os.rename(setup.src / "a/b", setup.src / "e/moved")
    full, fast, read = await _full_then_cached(setup, first, monkeypatch)
    assert not [p for p in read if b"/moved/" in p]
    assert fast.snapshot.stats.unchanged_files == full.snapshot.stats.unchanged_files + 3
    assert full.snapshot.stats.new_files == 3  # without the cache: three.txt, four, five read


async def test_a_moved_folder_with_a_changed_file(setup: Setup,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    first = await backup(await setup.cached(), setup.plan())
    os.rename(setup.src / "a/b", setup.src / "top-level-b")
    _append_to = setup.src / "top-level-b/c/d/five.txt"
    with open(_append_to, "ab") as f:
        f.write(b" and more")
    _, _, read = await _full_then_cached(setup, first, monkeypatch)
    assert [p for p in read if b"/top-level-b/" in p] == [os.fsencode(_append_to)]


async def test_two_folders_swapping_names(setup: Setup,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = await backup(await setup.cached(), setup.plan())
    os.rename(setup.src / "a", setup.src / "swap")
    os.rename(setup.src / "e", setup.src / "a")
    os.rename(setup.src / "swap", setup.src / "e")
    _, fast, read = await _full_then_cached(setup, first, monkeypatch)
    assert read == []
    assert fast.snapshot.stats.unchanged_files == fast.snapshot.stats.files


def test_folders_above_the_backed_up_paths(tmp_path: Path) -> None:
    """The folders a backup walks above its paths; their cache records, holding only the
    chosen entries, are never taken for a moved folder."""
    got = virtual_paths([b"/x/y/z", b"/x/w", b"/top"])
    assert sorted(got) == [b"", b"/x", b"/x/y"]
    assert virtual_paths([b"/top"]) == [b""]


# ---- when the cache is not used --------------------------------------------------------------


async def no_change_loads_index(setup: Setup, **options: object) -> bool:
    vault = await setup.cached()
    result = await backup(vault, setup.plan(**options))
    assert result.snapshot.stats.unchanged_files == result.snapshot.stats.files
    return len(vault.index) > 0


async def test_not_used_after_a_prune(setup: Setup) -> None:
    await backup(await setup.cached(), setup.plan())
    _add(setup.src)
    await backup(await setup.cached(), setup.plan())  # a second index segment
    await prune(await setup.bare(), grace=timedelta(0))  # folds the index into one segment
    assert await no_change_loads_index(setup)
    assert not await no_change_loads_index(setup)  # rewritten by that run: used again


async def test_not_used_while_a_deletion_marker_exists(setup: Setup) -> None:
    await backup(await setup.cached(), setup.plan())
    vault = await setup.bare()
    await vault.put_object(ObjectKind.DELETION, encode_deletion(DeletionMarker(1, ())))
    assert await no_change_loads_index(setup)
    assert await no_change_loads_index(setup)


async def test_not_used_for_another_parent(setup: Setup) -> None:
    first = await backup(await setup.cached(), setup.plan())
    await backup(await setup.bare(), setup.plan())  # a newer snapshot the cache is not of
    assert await no_change_loads_index(setup)
    vault = await setup.cached()
    await backup(vault, setup.plan(first))
    assert len(vault.index) > 0


async def test_other_options_have_their_own_cache(setup: Setup) -> None:
    await backup(await setup.cached(), setup.plan())
    assert await no_change_loads_index(setup, excludes=("*.bin",))
    assert not await no_change_loads_index(setup, excludes=("*.bin",))
    assert len(list((setup.cache / "folders").iterdir())) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
async def test_damaged_cache_is_ignored(setup: Setup, damage: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    first = await backup(await setup.cached(), setup.plan())
    (path,) = (setup.cache / "folders").iterdir()
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 1
    elif damage == "truncate":
        del data[len(data) // 2:]
    else:
        data = bytearray(b"not a cache at all")
    path.write_bytes(bytes(data))
    _add(setup.src)
    with caplog.at_level(logging.INFO, logger="client_gui.engine.folder_cache"):
        full, fast, vault = await both(setup, first, cached=False)
    assert "folder cache" in caplog.text and "unusable" in caplog.text
    assert len(vault.index) > 0


async def test_cache_names_no_paths(setup: Setup) -> None:
    await backup(await setup.cached(), setup.plan())
    (path,) = (setup.cache / "folders").iterdir()
    data = path.read_bytes()
    for name in (b"three.txt", b"src", os.fsencode(setup.src)):
        assert name not in data


async def test_unwritable_cache_folder_only_logs(setup: Setup) -> None:
    setup.cache.mkdir()
    (setup.cache / "folders").write_text("a file where the folder should be")
    first = await backup(await setup.cached(), setup.plan())
    again = await backup(await setup.cached(), setup.plan())
    assert again.snapshot.tree == first.snapshot.tree


# ---- the signature entries -------------------------------------------------------------------


def test_node_entry_equals_stat_entry_for_every_type(tmp_path: Path) -> None:
    """The premise of the cache: a node saved from an lstat signs like that lstat."""
    (tmp_path / "file").write_bytes(b"x" * 10)
    (tmp_path / "dir").mkdir()
    os.symlink("file", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    owners = OwnerNames()
    kinds = {"file": NodeType.FILE, "dir": NodeType.DIR, "link": NodeType.SYMLINK,
             "fifo": NodeType.FIFO, "sock": NodeType.SOCKET}
    try:
        for name, ntype in kinds.items():
            st = os.lstat(tmp_path / name)
            extra: dict[str, object] = {}
            if ntype == NodeType.FILE:
                extra["size"] = st.st_size
            if ntype == NodeType.DIR:
                extra["subtree"] = ObjectId(bytes(32))
            node = stat_node(name.encode(), ntype, st, owners, **extra)
            assert node_entry(node) == stat_entry(name.encode(), st), name
            other = stat_node(b"other", ntype, st, owners, **extra)
            assert node_entry(other) != stat_entry(name.encode(), st)
    finally:
        sock.close()
    assert stat_entry(b"x", os.lstat("/dev/null")) == node_entry(stat_node(
        b"x", NodeType.CHARDEV, os.lstat("/dev/null"), owners,
        rdev=os.lstat("/dev/null").st_rdev))
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_cache_file_names_folders_by_keyed_hash(tmp_path: Path) -> None:
    from shared.crypto.keys import MasterKeys
    a = FolderCacheFile(tmp_path, MasterKeys.generate(), b"options")
    b = FolderCacheFile(tmp_path, MasterKeys.generate(), b"options")
    assert a.key(b"/home/x") != b.key(b"/home/x")
    assert a.path != b.path
    assert a.load() is None  # no file yet
