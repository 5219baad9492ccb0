"""Backup tests: real trees in tmp_path backed up into LocalStore vaults.

Contents are checked by walking the snapshot trees and joining each file's chunks (not through
restore), so these tests pin down what backup records independently of the restore code.
"""

import asyncio
import errno
import os
import pwd
import random
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import client_gui.engine.backup as backup_module
import client_gui.engine.backup_reader as backup_reader_module
from client_gui.engine.backup import BackupPlan, BackupResult, backup, find_parent
from client_gui.engine.backup_reader import FileReader
from client_gui.engine.exclude import CACHEDIR_SIGNATURE
from client_gui.engine.packer import Packer
from client_gui.engine.priority import PIPELINE_NICE
from client_gui.engine.progress import BackupProgress, CancelToken, ItemProblem, Progress
from client_gui.engine.scan import open_file
from client_gui.engine.vault import Vault
from client_gui.engine.walk import lookup, walk
from shared.chunking import ChunkerParams, FastCdcChunker
from shared.errors import Cancelled, NoSuchSnapshot, StorageError, UsageError
from shared.format.deletion import DeletionMarker, encode_deletion
from shared.format.snapshot import Snapshot
from shared.format.tree import Node, NodeType
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind
from shared.storage.base import ObjectData, ObjectStore
from shared.storage.local import LocalStore
from shared.storage.wrappers import AppendOnlyStore, ForwardingStore
from tests.conftest import make_tree
from tests.engine.conftest import VaultFactory

T0 = 1_600_000_000_123_456_789  # an mtime with every nanosecond digit set
RECORD = 4096  # the unit files that change during a backup grow by
# Records in a file larger than the chunker's minimum: read through the chunker (smaller files
# are read in one go, see test_a_small_file_changed_before_its_read_is_read_again).
CHUNKED = 70
THREADS = ("cairn-walk", "cairn-read", "cairn-seal")  # the backup's own thread names


# ---- helpers --------------------------------------------------------------------------------


def rel(path: Path | bytes) -> bytes:
    """A path as the snapshot names it: raw bytes relative to the root."""
    return os.fsencode(path).lstrip(b"/")


async def nodes_of(vault: Vault, tree: ObjectId) -> dict[bytes, Node]:
    return {path: node async for path, node in walk(vault, tree)}


async def below(vault: Vault, tree: ObjectId, src: Path) -> dict[bytes, Node]:
    """Every node under `src` in the snapshot tree, keyed by its path relative to `src`."""
    prefix = rel(src) + b"/"
    return {p[len(prefix):]: n for p, n in (await nodes_of(vault, tree)).items()
            if p.startswith(prefix)}


async def content(vault: Vault, node: Node) -> bytes:
    assert node.type == NodeType.FILE
    data = b"".join([await vault.load_blob(c, BlobType.DATA) for c in node.content])
    assert len(data) == node.size
    return data


async def contents(vault: Vault, tree: ObjectId, src: Path) -> dict[bytes, bytes]:
    """The stored bytes of every file under `src`."""
    return {p: await content(vault, n) for p, n in (await below(vault, tree, src)).items()
            if n.type == NodeType.FILE}


def disk_contents(src: Path) -> dict[bytes, bytes]:
    out = {}
    base = os.fsencode(src)
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, base)] = f.read()
    return out


async def assert_complete(vault: Vault, tree: ObjectId) -> int:
    """Every tree and data blob the snapshot needs is readable; returns the file count."""
    files = 0
    for node in (await nodes_of(vault, tree)).values():
        if node.type == NodeType.FILE:
            await content(vault, node)
            files += 1
    return files


async def assert_packs_listed(vault: Vault, snap: Snapshot) -> None:
    """Every blob the snapshot reaches lives in a pack of its plain pack list."""
    listed: set[bytes] = set()
    for pid in snap.packs:
        listed |= {e.id.raw for e in vault.index.packs[pid]}
    needed = {snap.tree.raw}
    for node in (await nodes_of(vault, snap.tree)).values():
        needed |= {c.raw for c in node.content}
        if node.subtree is not None:
            needed.add(node.subtree.raw)
    assert needed <= listed


async def mark_for_deletion(vault: Vault, packs: set[ObjectId]) -> None:
    """What phase one of a prune writes: a deletion marker naming `packs`."""
    marker = DeletionMarker(time.time_ns(), tuple(sorted(packs)))
    await vault.put_object(ObjectKind.DELETION, encode_deletion(marker))


async def snapshot_ids(root: Path) -> set[str]:
    return {info.key.name async for info in LocalStore(root).list(ObjectKind.SNAPSHOT)}


async def object_counts(root: Path) -> dict[ObjectKind, int]:
    store = LocalStore(root)
    return {kind: len([i async for i in store.list(kind)]) for kind in ObjectKind}


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def records(first: int, count: int) -> bytes:
    """`count` distinct RECORD-sized records, numbered from `first`."""
    return b"".join(f"{i:08d}".encode() * (RECORD // 8) for i in range(first, first + count))


def ancestor_state(path: Path) -> list[tuple[int, ...]]:
    """What the snapshot records of `path`'s ancestors (other processes may change /tmp)."""
    out: list[tuple[int, ...]] = []
    for p in path.parents:
        s = os.lstat(p)
        out.append((s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns, s.st_ctime_ns, s.st_ino,
                    s.st_dev, s.st_nlink))
    return out


class Sink:
    """Records progress updates (with their time) and problems, from any thread."""

    def __init__(self, on_progress: Callable[[BackupProgress], None] | None = None) -> None:
        self.updates: list[tuple[float, BackupProgress]] = []
        self.problems: list[ItemProblem] = []
        self._on_progress = on_progress
        self._lock = threading.Lock()

    def progress(self, p: Progress) -> None:
        assert isinstance(p, BackupProgress)
        with self._lock:
            self.updates.append((time.monotonic(), p))
        if self._on_progress is not None:
            self._on_progress(p)

    def problem(self, item: ItemProblem) -> None:
        with self._lock:
            self.problems.append(item)


class ReadCounter:
    """Wraps the backup reader's `open_file` and records the inode of every file the backup
    opens to read (small files read in one go and chunked ones alike)."""

    def __init__(self) -> None:
        self.inodes: list[int] = []
        self._lock = threading.Lock()

    def open_file(self, path: bytes) -> int:
        fd = open_file(path)
        with self._lock:
            self.inodes.append(os.fstat(fd).st_ino)
        return fd

    def count(self, path: Path) -> int:
        return self.inodes.count(os.lstat(path).st_ino)


class Disturber:
    """Stands in for FastCdcChunker; on the first `times` reads of `target`, appends a record
    to it right after the first chunk was read: the file changes while it is being read."""

    def __init__(self, target: Path, times: int) -> None:
        self.target = target
        self.ino = target.stat().st_ino
        self.times = times
        self.reads = 0
        self.appended = 0
        self._lock = threading.Lock()

    def __call__(self, params: ChunkerParams) -> "_DisturbingChunker":
        return _DisturbingChunker(self, FastCdcChunker(params))

    def split(self, inner: FastCdcChunker, stream: BinaryIO) -> Iterator[memoryview]:
        disturb = False
        if os.fstat(stream.fileno()).st_ino == self.ino:
            with self._lock:
                self.reads += 1
                disturb = self.reads <= self.times
        for i, chunk in enumerate(inner.split_stream(stream)):
            yield chunk
            if i == 0 and disturb:
                size = self.target.stat().st_size
                with open(self.target, "ab") as f:
                    f.write(records(size // RECORD, 1))
                self.appended += 1


class _DisturbingChunker:
    def __init__(self, disturber: Disturber, inner: FastCdcChunker) -> None:
        self._disturber = disturber
        self._inner = inner

    def split_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        return self._disturber.split(self._inner, stream)


class WrappedStore(ForwardingStore):
    """Forwards to `inner`; subclasses count or fail calls (tests' own FaultyStore)."""


class CountingStore(WrappedStore):
    """Records the keys of every put and delete."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.puts: list[ObjectKey] = []
        self.deletes: list[ObjectKey] = []

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        await super().put(key, data)
        self.puts.append(key)

    async def delete(self, key: ObjectKey) -> None:
        await super().delete(key)
        self.deletes.append(key)

    def put_of(self, kind: ObjectKind) -> list[ObjectKey]:
        return [k for k in self.puts if k.kind == kind]


class FailingAfterSnapshot(WrappedStore):
    """Works until a snapshot is stored, then fails every pack put (a crash after a checkpoint)."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.snapshot_stored = False

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        if key.kind == ObjectKind.PACK and self.snapshot_stored:
            raise StorageError("the disk went away")
        await super().put(key, data)
        if key.kind == ObjectKind.SNAPSHOT:
            self.snapshot_stored = True


class FailingPacks(WrappedStore):
    """Stores the first `allowed` packs, then fails every pack put (a crash mid-backup)."""

    def __init__(self, inner: ObjectStore, allowed: int) -> None:
        super().__init__(inner)
        self.allowed = allowed
        self.attempts = 0

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        if key.kind == ObjectKind.PACK:
            self.attempts += 1
            if self.attempts > self.allowed:
                raise StorageError("the disk went away")
        await super().put(key, data)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> ReadCounter:
    counter = ReadCounter()
    monkeypatch.setattr(backup_reader_module, "open_file", counter.open_file)
    return counter


def plan(*paths: Path | str, **kw: Any) -> BackupPlan:
    return BackupPlan(paths=tuple(str(p) for p in paths), **kw)


# ---- contents and metadata ------------------------------------------------------------------


async def test_backup_records_regular_empty_and_multi_chunk_files(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    # Larger than the largest chunk (4 MiB): more than one chunk whatever the vault's gear
    # table (3 MiB of random data was one chunk for about one vault key in 30).
    src = make_tree(tmp_path / "src", {"a.txt": "hello\n", "empty": b"",
                                       "big.bin": random_bytes(9 << 20, 1)})
    vault, root = await vault_factory.create()
    result = await backup(vault, plan(src))

    fresh = await vault_factory.open(root)
    nodes = await below(fresh, result.snapshot.tree, src)
    assert await contents(fresh, result.snapshot.tree, src) == disk_contents(src)
    assert nodes[b"empty"].size == 0 and nodes[b"empty"].content == ()
    assert nodes[b"big.bin"].size == 9 << 20
    assert len(nodes[b"big.bin"].content) > 2
    s = result.snapshot.stats
    assert (s.files, s.new_files, s.bytes, s.problems) == (3, 3, 6 + (9 << 20), 0)
    assert result.problems == ()
    assert await snapshot_ids(root) == {result.snapshot_id.hex()}


async def test_backup_records_symlinks_without_following(tmp_path: Path,
                                                         vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"target.txt": "t", "dir/inner": "i"})
    os.symlink("target.txt", src / "link")
    os.symlink("/nowhere/at/all", src / "dangling")
    os.symlink("dir", src / "dirlink")
    os.symlink(b"caf\xe9", os.fsencode(src / "oddlink"))
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))

    nodes = await below(vault, result.snapshot.tree, src)
    for name, target in [(b"link", b"target.txt"), (b"dangling", b"/nowhere/at/all"),
                         (b"dirlink", b"dir"), (b"oddlink", b"caf\xe9")]:
        assert nodes[name].type == NodeType.SYMLINK
        assert nodes[name].target == target
        assert nodes[name].content == ()
    assert not any(p.startswith(b"dirlink/") for p in nodes)
    assert result.problems == ()


async def test_backup_records_fifo_without_opening_it(tmp_path: Path,
                                                      vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"f": "x"})
    os.mkfifo(src / "pipe", 0o640)  # reading it would block forever
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))

    node = (await below(vault, result.snapshot.tree, src))[b"pipe"]
    assert node.type == NodeType.FIFO
    assert node.mode == 0o640
    assert result.snapshot.stats.files == 1


async def test_backup_records_socket(tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    src.mkdir()
    path = src / "s"
    if len(os.fsencode(path)) > 100:
        pytest.skip("tmp path too long for a unix socket")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        vault, _ = await vault_factory.create()
        result = await backup(vault, plan(src))
    finally:
        sock.close()
    assert (await below(vault, result.snapshot.tree, src))[b"s"].type == NodeType.SOCKET


@pytest.mark.skipif(os.geteuid() != 0, reason="making device nodes needs root")
async def test_backup_records_device_node(tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    src.mkdir()
    try:
        os.mknod(src / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("no permission to make device nodes here")
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))
    node = (await below(vault, result.snapshot.tree, src))[b"null"]
    assert node.type == NodeType.CHARDEV
    assert node.rdev == os.makedev(1, 3)
    assert node.content == ()


async def test_backup_reads_hard_linked_file_once(tmp_path: Path, vault_factory: VaultFactory,
                                                  reads: ReadCounter) -> None:
    src = make_tree(tmp_path / "src", {"a": random_bytes(300_000, 2), "sub/other": "o"})
    os.link(src / "a", src / "sub" / "b")
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))

    nodes = await below(vault, result.snapshot.tree, src)
    a, b = nodes[b"a"], nodes[b"sub/b"]
    st = os.lstat(src / "a")
    assert (a.inode, a.device, a.links) == (st.st_ino, st.st_dev, 2)
    assert (b.inode, b.device, b.links) == (st.st_ino, st.st_dev, 2)
    assert a.content == b.content and a.size == b.size == 300_000
    assert await content(vault, b) == (src / "a").read_bytes()
    assert reads.count(src / "a") == 1
    s = result.snapshot.stats
    assert (s.files, s.new_files) == (3, 2)


async def test_backup_records_permissions_owner_and_mtime(tmp_path: Path,
                                                          vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"f": "data", "x": "#!/bin/sh\n", "d/g": "g"})
    os.chmod(src / "f", 0o640)
    os.chmod(src / "x", 0o4755)
    os.chmod(src / "d", 0o1750)
    os.utime(src / "f", ns=(T0, T0))
    os.utime(src / "d", ns=(T0, T0 + 7))
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        owner = (4321, 8765)
        os.chown(src / "f", *owner)
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))

    nodes = await below(vault, result.snapshot.tree, src)
    f, x, d = nodes[b"f"], nodes[b"x"], nodes[b"d"]
    assert (f.mode, f.mtime_ns, (f.uid, f.gid)) == (0o640, T0, owner)
    assert f.ctime_ns == os.lstat(src / "f").st_ctime_ns
    assert x.mode == 0o4755
    assert (d.type, d.mode, d.mtime_ns) == (NodeType.DIR, 0o1750, T0 + 7)
    me = pwd.getpwuid(os.getuid()).pw_name
    assert x.user == me
    if os.geteuid() == 0:
        expected_user = ""
        try:
            expected_user = pwd.getpwuid(4321).pw_name
        except KeyError:
            pass
        assert f.user == expected_user


def _set_user_xattr(path: Path, name: str, value: bytes) -> None:
    try:
        os.setxattr(path, name, value)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            pytest.skip(f"no user xattrs here: {exc}")
        raise


async def test_backup_records_xattrs_of_files_and_folders(tmp_path: Path,
                                                          vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"f": "data", "d/g": "g"})
    _set_user_xattr(src / "f", "user.b", b"\x00\xffbinary")
    _set_user_xattr(src / "f", "user.a", b"text")
    _set_user_xattr(src / "d", "user.folder", b"yes")
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))

    nodes = await below(vault, result.snapshot.tree, src)
    user = [(k, v) for k, v in nodes[b"f"].xattrs if k.startswith(b"user.")]
    assert user == [(b"user.a", b"text"), (b"user.b", b"\x00\xffbinary")]
    assert (b"user.folder", b"yes") in nodes[b"d"].xattrs


async def test_backup_keeps_odd_names(tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    src.mkdir()
    base = os.fsencode(src)
    names = [b"new\nline", b"caf\xe9", b"\xff\xfe", b"sp ace ", b"-dash", b"*star?", b"\\back"]
    for i, name in enumerate(names):
        with open(base + b"/" + name, "wb") as f:
            f.write(b"content %d" % i)
    os.mkdir(base + b"/dir\xe9")
    with open(base + b"/dir\xe9/in\nside", "wb") as f:
        f.write(b"deep")
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))

    stored = await contents(vault, result.snapshot.tree, src)
    expected = {name: b"content %d" % i for i, name in enumerate(names)}
    expected[b"dir\xe9/in\nside"] = b"deep"
    assert stored == expected
    assert result.problems == ()


async def test_backup_keeps_nested_empty_folders(tmp_path: Path,
                                                 vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"e/f/g": None, "h": None, "file": "x"})
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))

    nodes = await below(vault, result.snapshot.tree, src)
    assert {p for p, n in nodes.items() if n.type == NodeType.DIR} == {b"e", b"e/f", b"e/f/g",
                                                                       b"h"}
    assert await vault.load_tree(nodes[b"e/f/g"].subtree) == ()  # type: ignore[arg-type]
    assert result.snapshot.stats.dirs == 5  # src and its four folders


async def test_backup_snapshot_holds_absolute_path_below_root(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"a": "a"})
    make_tree(tmp_path, {"sibling/x": "not backed up"})
    vault, _ = await vault_factory.create()
    monkeypatch.chdir(tmp_path)
    result = await backup(vault, BackupPlan(paths=("src",)))

    assert result.snapshot.paths == (os.fsencode(src),)
    # The root tree holds the path's first component; each folder on the way down holds only
    # the next one, with that folder's real metadata; src holds its contents.
    tree: ObjectId | None = result.snapshot.tree
    parts = rel(src).split(b"/")
    for depth, part in enumerate(parts):
        assert tree is not None
        nodes = await vault.load_tree(tree)
        assert [n.name for n in nodes] == [part]
        here = Path("/" + "/".join(p.decode() for p in parts[:depth + 1]))
        st = os.lstat(here)
        assert (nodes[0].type, nodes[0].mode, nodes[0].inode) == (
            NodeType.DIR, stat.S_IMODE(st.st_mode), st.st_ino)
        tree = nodes[0].subtree
    assert tree is not None
    assert [n.name for n in await vault.load_tree(tree)] == [b"a"]
    assert await lookup(vault, result.snapshot.tree, os.fsencode(src) + b"/a") is not None
    assert await lookup(vault, result.snapshot.tree, os.fsencode(tmp_path / "sibling")) is None


async def test_backup_records_plan_details_in_snapshot(tmp_path: Path,
                                                       vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": "a"})
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src, tags=("daily", "laptop"), hostname="box",
                                      excludes=("*.tmp",)))
    snap = result.snapshot
    assert (snap.hostname, snap.tags, snap.excludes) == ("box", ("daily", "laptop"), ("*.tmp",))
    assert not snap.checkpoint and snap.parent is None
    assert snap.program.startswith("cairn")
    loaded = await vault.load_snapshot(result.snapshot_id)
    assert loaded == snap
    await assert_packs_listed(vault, snap)  # the plain pack list names every pack needed


# ---- incremental backups --------------------------------------------------------------------


async def test_backup_again_unchanged_reads_no_file(tmp_path: Path, vault_factory: VaultFactory,
                                                    reads: ReadCounter) -> None:
    src = make_tree(tmp_path / "src", {"a": "a", "b": random_bytes(600_000, 3),
                                       "d/e/f": "f", "d/g": "", "empty/": None})
    vault, root = await vault_factory.create()
    first = await backup(vault, plan(src))
    ancestors = ancestor_state(src)
    reads.inodes.clear()

    again = await vault_factory.open(root)
    second = await backup(again, plan(src))

    s = second.snapshot.stats
    assert s.files == first.snapshot.stats.files == 4
    assert (s.unchanged_files, s.new_files, s.changed_files) == (4, 0, 0)
    assert reads.inodes == []
    assert second.snapshot.parent == first.snapshot_id
    src_first = await lookup(again, first.snapshot.tree, rel(src))
    src_second = await lookup(again, second.snapshot.tree, rel(src))
    assert src_first == src_second  # same node, so the same subtree ID
    if ancestor_state(src) == ancestors:  # nothing else touched the folders above src
        assert second.snapshot.tree == first.snapshot.tree
        assert s.new_bytes == 0 and s.new_blobs == 0
    else:
        assert s.new_bytes < 16 * 1024  # only the trees of the folders above src
    assert s.stored_bytes < 16 * 1024


async def test_backup_touched_file_is_the_only_one_read(
        tmp_path: Path, vault_factory: VaultFactory, reads: ReadCounter) -> None:
    src = make_tree(tmp_path / "src", {"a": "a", "b": "b", "sub/c": "c", "other/d": "d"})
    vault, root = await vault_factory.create()
    first = await backup(vault, plan(src))
    st = os.stat(src / "sub" / "c")
    os.utime(src / "sub" / "c", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    reads.inodes.clear()

    again = await vault_factory.open(root)
    second = await backup(again, plan(src))

    assert reads.inodes == [st.st_ino]
    s = second.snapshot.stats
    assert (s.changed_files, s.unchanged_files, s.new_files) == (1, 3, 0)
    before = await below(again, first.snapshot.tree, src)
    after = await below(again, second.snapshot.tree, src)
    assert after[b"other"].subtree == before[b"other"].subtree  # untouched folder reused
    assert after[b"sub"].subtree != before[b"sub"].subtree
    assert after[b"sub/c"].content == before[b"sub/c"].content  # same bytes, same chunks
    assert after[b"sub/c"].mtime_ns == st.st_mtime_ns + 1_000_000_000


async def test_backup_stores_new_content_of_changed_file(tmp_path: Path,
                                                         vault_factory: VaultFactory) -> None:
    old, new = random_bytes(500_000, 4), random_bytes(700_000, 5)
    src = make_tree(tmp_path / "src", {"f": old, "g": "same"})
    vault, root = await vault_factory.create()
    first = await backup(vault, plan(src))
    (src / "f").write_bytes(new)

    again = await vault_factory.open(root)
    second = await backup(again, plan(src))

    assert second.snapshot.stats.changed_files == 1
    assert second.snapshot.stats.new_bytes >= len(new)
    fresh = await vault_factory.open(root)
    assert (await contents(fresh, second.snapshot.tree, src))[b"f"] == new
    assert (await contents(fresh, first.snapshot.tree, src))[b"f"] == old


async def test_backup_replaced_file_with_same_size_and_mtime_is_read(
        tmp_path: Path, vault_factory: VaultFactory, reads: ReadCounter) -> None:
    src = make_tree(tmp_path / "src", {"f": "aaaa"})
    os.utime(src / "f", ns=(T0, T0))
    vault, root = await vault_factory.create()
    await backup(vault, plan(src))
    (src / "f").unlink()
    (src / "g").write_text("bbbb")  # new inode, same size and mtime once renamed
    os.utime(src / "g", ns=(T0, T0))
    os.rename(src / "g", src / "f")
    reads.inodes.clear()

    again = await vault_factory.open(root)
    second = await backup(again, plan(src))
    assert reads.count(src / "f") == 1
    assert (await contents(again, second.snapshot.tree, src))[b"f"] == b"bbbb"


async def test_backup_parent_is_latest_of_same_host_and_paths(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": "a", "b": "b"})
    other = make_tree(tmp_path / "other", {"c": "c"})
    vault, root = await vault_factory.create()

    h1 = await backup(vault, plan(src, hostname="h1"))
    h2 = await backup(vault, plan(src, hostname="h2"))
    both = await backup(vault, plan(src, other, hostname="h1"))
    assert h1.snapshot.parent is None
    assert h2.snapshot.parent is None and h2.snapshot.stats.new_files == 2
    assert both.snapshot.parent is None and both.snapshot.stats.new_files == 3

    h1_again = await backup(vault, plan(src, hostname="h1"))
    assert h1_again.snapshot.parent == h1.snapshot_id
    assert h1_again.snapshot.stats.unchanged_files == 2
    h2_again = await backup(vault, plan(src, hostname="h2"))
    assert h2_again.snapshot.parent == h2.snapshot_id
    both_again = await backup(vault, plan(other, src, hostname="h1"))  # order does not matter
    assert both_again.snapshot.parent == both.snapshot_id

    refs = await (await vault_factory.open(root)).list_snapshots()
    found = await find_parent(vault, refs, "h1", [os.fsencode(src)])
    assert found is not None and found.id == h1_again.snapshot_id
    assert await find_parent(vault, refs, "h3", [os.fsencode(src)]) is None


async def test_backup_parent_override(tmp_path: Path, vault_factory: VaultFactory,
                                      reads: ReadCounter) -> None:
    src = make_tree(tmp_path / "src", {"a": "a", "b": "b"})
    vault, _ = await vault_factory.create()
    first = await backup(vault, plan(src, hostname="h1"))
    reads.inodes.clear()

    second = await backup(vault, plan(src, hostname="h2", parent=first.snapshot_id.hex()[:8]))
    assert second.snapshot.parent == first.snapshot_id
    assert second.snapshot.stats.unchanged_files == 2 and reads.inodes == []
    third = await backup(vault, plan(src, hostname="h3", parent="latest"))
    assert third.snapshot.parent == second.snapshot_id

    with pytest.raises(NoSuchSnapshot):
        await backup(vault, plan(src, parent="abcdef12"))


async def test_backup_progress_total_comes_from_parent(tmp_path: Path,
                                                       vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": "aa", "b": "bbb"})
    vault, _ = await vault_factory.create()
    sink = Sink()
    await backup(vault, plan(src), progress=sink)
    assert sink.updates[-1][1].files_total is None
    sink = Sink()
    await backup(vault, plan(src), progress=sink)
    last = sink.updates[-1][1]
    assert (last.files_total, last.bytes_total) == (2, 5)
    assert (last.files_done, last.bytes_done) == (2, 5)


# ---- deduplication --------------------------------------------------------------------------


async def test_backup_stores_identical_files_once(tmp_path: Path,
                                                  vault_factory: VaultFactory) -> None:
    data = random_bytes(3 << 20, 6)
    src = make_tree(tmp_path / "src", {"one": data, "sub/two": data})
    vault, root = await vault_factory.create()
    result = await backup(vault, plan(src))

    s = result.snapshot.stats
    assert len(data) <= s.new_bytes < len(data) + 16 * 1024
    assert s.stored_bytes < len(data) * 1.05 + 16 * 1024  # random data: no compression
    nodes = await below(vault, result.snapshot.tree, src)
    assert nodes[b"one"].content == nodes[b"sub/two"].content
    fresh = await vault_factory.open(root)
    data_blobs = [e for entries in fresh.index.packs.values() for e in entries
                  if e.type == BlobType.DATA]
    assert sorted(e.id for e in data_blobs) == sorted(set(nodes[b"one"].content))


async def test_backup_of_copied_file_adds_no_data(tmp_path: Path,
                                                  vault_factory: VaultFactory) -> None:
    data = random_bytes(2 << 20, 7)
    src = make_tree(tmp_path / "src", {"one": data})
    vault, root = await vault_factory.create()
    await backup(vault, plan(src))
    shutil.copyfile(src / "one", src / "copy")

    second = await backup(await vault_factory.open(root), plan(src))
    assert second.snapshot.stats.new_files == 1
    assert second.snapshot.stats.new_bytes < 16 * 1024  # trees only


# ---- excludes -------------------------------------------------------------------------------


async def test_backup_skips_excluded_patterns(tmp_path: Path,
                                              vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {
        "keep.txt": "k", "a.tmp": "t", "sub/b.tmp": "t", "sub/keep2": "k", "skip/x": "x",
        "build/main.o": "o", "build/lib/z.o": "o", "build/readme": "r",
    })
    vault, _ = await vault_factory.create()
    excludes = ("*.tmp", str(src / "skip"), "build/**/*.o")
    result = await backup(vault, plan(src, excludes=excludes))

    nodes = await below(vault, result.snapshot.tree, src)
    assert set(nodes) == {b"keep.txt", b"sub", b"sub/keep2", b"build", b"build/readme",
                          b"build/lib"}
    assert result.snapshot.excludes == excludes
    assert result.snapshot.stats.files == 3


async def test_backup_skips_vault_folder_inside_backed_up_tree(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": "a", "sub/b": "b"})
    factory = VaultFactory(src / "vaults")
    vault, root = await factory.create()
    result = await backup(vault, plan(src, exclude_paths=(str(root),)))

    nodes = await below(vault, result.snapshot.tree, src)
    assert set(nodes) == {b"a", b"sub", b"sub/b", b"vaults"}
    assert await vault.load_tree(nodes[b"vaults"].subtree) == ()  # type: ignore[arg-type]


async def test_backup_keeps_only_the_tag_of_cache_folders(tmp_path: Path,
                                                          vault_factory: VaultFactory) -> None:
    tag = CACHEDIR_SIGNATURE + b"\n# made by a test\n"
    src = make_tree(tmp_path / "src", {
        "cache/CACHEDIR.TAG": tag, "cache/big.bin": random_bytes(1000, 8), "cache/sub/x": "x",
        "notcache/CACHEDIR.TAG": b"Signature: not the right one", "notcache/y": "y",
        "plain/z": "z",
    })
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))

    nodes = await below(vault, result.snapshot.tree, src)
    assert set(nodes) == {b"cache", b"cache/CACHEDIR.TAG", b"notcache",
                          b"notcache/CACHEDIR.TAG", b"notcache/y", b"plain", b"plain/z"}
    assert await content(vault, nodes[b"cache/CACHEDIR.TAG"]) == tag


async def test_backup_keeps_cache_folders_when_asked(tmp_path: Path,
                                                     vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"cache/CACHEDIR.TAG": CACHEDIR_SIGNATURE,
                                       "cache/big.bin": "b", "cache/sub/x": "x"})
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src, exclude_caches=False))
    nodes = await below(vault, result.snapshot.tree, src)
    assert set(nodes) == {b"cache", b"cache/CACHEDIR.TAG", b"cache/big.bin", b"cache/sub",
                          b"cache/sub/x"}


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted inside tmp_path (root only; skipped where mounting is not allowed)."""
    point = tmp_path / "src" / "mnt"
    point.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "cairn-test", str(point)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


async def test_backup_one_file_system_keeps_mount_point_but_not_its_contents(
        tmp_path: Path, vault_factory: VaultFactory, mount_point: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, {"outer": "o"})
    (mount_point / "inner").write_text("i")
    assert os.lstat(mount_point).st_dev != os.lstat(src).st_dev
    vault, _ = await vault_factory.create()

    result = await backup(vault, plan(src, one_file_system=True))
    nodes = await below(vault, result.snapshot.tree, src)
    assert set(nodes) == {b"outer", b"mnt"}
    assert nodes[b"mnt"].type == NodeType.DIR
    assert nodes[b"mnt"].device == os.lstat(mount_point).st_dev

    crossing = await backup(vault, plan(src))
    assert set(await below(vault, crossing.snapshot.tree, src)) == {b"outer", b"mnt",
                                                                   b"mnt/inner"}


class _OnOtherDevice:
    """An lstat result that claims another device (a mount point, without mounting)."""

    def __init__(self, st: os.stat_result) -> None:
        self._st = st

    def __getattr__(self, name: str) -> Any:
        return getattr(self._st, name)

    @property
    def st_dev(self) -> int:
        return self._st.st_dev + 1


@pytest.mark.parametrize("one_file_system", [True, False])
async def test_backup_one_file_system_stops_at_other_device(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch,
        one_file_system: bool) -> None:
    src = make_tree(tmp_path / "src", {"same/x": "x", "other/inner/y": "y", "z": "z"})
    vault, _ = await vault_factory.create()
    other = os.fsencode(src / "other")
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kwargs: Any) -> Any:
        st = real_lstat(path, *args, **kwargs)
        return _OnOtherDevice(st) if os.fsencode(path) == other else st

    monkeypatch.setattr(os, "lstat", lstat)
    result = await backup(vault, plan(src, one_file_system=one_file_system))
    monkeypatch.undo()

    nodes = await below(vault, result.snapshot.tree, src)
    assert nodes[b"other"].type == NodeType.DIR
    assert nodes[b"other"].device == real_lstat(src).st_dev + 1
    inside = {b"other/inner", b"other/inner/y"}
    assert set(nodes) == {b"same", b"same/x", b"z", b"other"} | (
        set() if one_file_system else inside)


# ---- per-file problems ----------------------------------------------------------------------


async def test_backup_reports_unreadable_file_and_saves_the_rest(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"a": "a", "secret": "s", "sub/b": "b"})
    secret = os.fsencode(src / "secret")
    if os.geteuid() == 0:
        # root reads a mode 000 file anyway: make its open fail instead (and only its).
        real_open = os.open

        def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if isinstance(path, (str, bytes, os.PathLike)) and os.fsencode(path) == secret:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
    else:
        os.chmod(secret, 0)
    vault, root = await vault_factory.create()
    sink = Sink()
    result = await backup(vault, plan(src), progress=sink)
    monkeypatch.undo()

    assert len(result.problems) == 1
    problem = result.problems[0]
    assert (problem.path, problem.code) == (str(src / "secret"), "unreadable")
    assert "Permission denied" in problem.message
    assert sink.problems == [problem]
    s = result.snapshot.stats
    # The stats count what the snapshot holds: not the file that could not be read.
    assert (s.problems, s.files, s.new_files, s.bytes) == (1, 2, 2, 2)
    assert await snapshot_ids(root) == {result.snapshot_id.hex()}
    stored = await contents(await vault_factory.open(root), result.snapshot.tree, src)
    assert stored == {b"a": b"a", b"sub/b": b"b"}


async def test_backup_reports_unlistable_folder_and_keeps_it_empty(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"a": "a", "locked/x": "x", "open/y": "y"})
    locked = os.fsencode(src / "locked")
    real_listdir = os.listdir

    def listdir(path: Any) -> Any:
        if path == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))
    monkeypatch.undo()

    assert [(p.path, p.code) for p in result.problems] == [(str(src / "locked"), "unreadable")]
    nodes = await below(vault, result.snapshot.tree, src)
    assert set(nodes) == {b"a", b"locked", b"open", b"open/y"}


async def test_backup_reads_again_a_file_that_changed_while_read(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"log": records(0, 100), "other": "o"})
    disturber = Disturber(src / "log", times=1)
    monkeypatch.setattr(backup_module, "FastCdcChunker", disturber)
    monkeypatch.setattr(backup_module, "SCOUT_FOLDERS", 0)  # the walker's own reads counted
    vault, root = await vault_factory.create()
    result = await backup(vault, plan(src, read_retries=1))

    assert (disturber.reads, disturber.appended) == (2, 1)
    assert result.problems == ()
    stored = await contents(await vault_factory.open(root), result.snapshot.tree, src)
    assert stored[b"log"] == records(0, 101) == (src / "log").read_bytes()
    node = (await below(vault, result.snapshot.tree, src))[b"log"]
    assert node.size == 101 * RECORD
    assert node.mtime_ns == os.lstat(src / "log").st_mtime_ns


def _change_on_first_open(monkeypatch: pytest.MonkeyPatch, target: Path,
                          change: Callable[[Path], None]) -> list[bytes]:
    """`change(target)` right after the backup first opens it (after the walker's lstat, before
    the read); returns the paths of every file the backup opens to read."""
    opened: list[bytes] = []
    wanted = os.fsencode(target)

    def opening(path: bytes) -> int:
        fd = open_file(path)
        opened.append(path)
        if path == wanted and opened.count(path) == 1:
            change(target)
        return fd

    monkeypatch.setattr(backup_reader_module, "open_file", opening)
    return opened


def _append(data: bytes) -> Callable[[Path], None]:
    def append(path: Path) -> None:
        with open(path, "ab") as f:
            f.write(data)
    return append


async def test_a_small_file_changed_before_its_read_is_read_again(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file smaller than a chunk is read in one go; if the fstat after that read is not the
    walker's lstat, the file is read again the general way: what is stored is consistent."""
    src = make_tree(tmp_path / "src", {"note": records(0, 3), "other": "o"})
    opened = _change_on_first_open(monkeypatch, src / "note", _append(records(3, 1)))
    vault, root = await vault_factory.create()
    result = await backup(vault, plan(src))
    assert opened.count(os.fsencode(src / "note")) == 2
    assert result.problems == ()
    stored = await contents(await vault_factory.open(root), result.snapshot.tree, src)
    assert stored == {b"note": records(0, 4), b"other": b"o"}
    node = (await below(vault, result.snapshot.tree, src))[b"note"]
    assert (node.size, node.mtime_ns) == (4 * RECORD, os.lstat(src / "note").st_mtime_ns)
    s = result.snapshot.stats
    assert (s.files, s.new_files, s.bytes) == (2, 2, 4 * RECORD + 1)


async def test_a_small_file_grown_past_a_chunk_before_its_read_is_chunked(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"log": records(0, 1)})
    # Larger than the largest chunk (4 MiB): several chunks whatever the vault's gear table.
    grown = random_bytes(5 << 20, 21)
    opened = _change_on_first_open(monkeypatch, src / "log", _append(grown))
    vault, root = await vault_factory.create()
    result = await backup(vault, plan(src))
    assert opened.count(os.fsencode(src / "log")) == 2
    assert result.problems == ()
    stored = await contents(await vault_factory.open(root), result.snapshot.tree, src)
    assert stored == {b"log": records(0, 1) + grown}
    node = (await below(vault, result.snapshot.tree, src))[b"log"]
    assert len(node.content) > 1


async def test_a_small_file_gone_before_its_read_is_not_in_the_snapshot(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"gone": "g", "other": "o"})
    _change_on_first_open(monkeypatch, src / "gone", os.unlink)
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))
    assert [(p.path, p.code) for p in result.problems] == [(str(src / "gone"), "unreadable")]
    assert await contents(vault, result.snapshot.tree, src) == {b"other": b"o"}
    assert (result.snapshot.stats.files, result.snapshot.stats.problems) == (1, 1)


async def test_backup_skips_a_new_file_that_keeps_changing(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"log": records(0, CHUNKED), "other": "o"})
    disturber = Disturber(src / "log", times=1000)
    monkeypatch.setattr(backup_module, "FastCdcChunker", disturber)
    monkeypatch.setattr(backup_module, "SCOUT_FOLDERS", 0)  # the walker's own reads counted
    vault, root = await vault_factory.create()
    result = await backup(vault, plan(src, read_retries=2))

    assert disturber.reads == 3  # the first read and two retries
    assert [(p.path, p.code) for p in result.problems] == [(str(src / "log"), "changed")]
    assert await contents(vault, result.snapshot.tree, src) == {b"other": b"o"}
    assert (result.snapshot.stats.files, result.snapshot.stats.bytes) == (1, 1)
    assert await snapshot_ids(root) == {result.snapshot_id.hex()}


async def test_backup_keeps_previous_version_of_a_file_that_keeps_changing(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"log": records(0, CHUNKED), "other": "o"})
    vault, root = await vault_factory.create()
    first = await backup(vault, plan(src))
    with open(src / "log", "ab") as f:  # changed since: the next backup must read it
        f.write(records(CHUNKED, 1))
    disturber = Disturber(src / "log", times=1000)
    monkeypatch.setattr(backup_module, "FastCdcChunker", disturber)
    monkeypatch.setattr(backup_module, "SCOUT_FOLDERS", 0)  # the walker's own reads counted

    again = await vault_factory.open(root)
    second = await backup(again, plan(src, read_retries=1))

    assert disturber.reads == 2
    assert [(p.path, p.code) for p in second.problems] == [(str(src / "log"), "changed")]
    old = (await below(again, first.snapshot.tree, src))[b"log"]
    kept = (await below(again, second.snapshot.tree, src))[b"log"]
    assert kept == old
    fresh = await vault_factory.open(root)
    assert await content(fresh, kept) == records(0, CHUNKED)
    s = second.snapshot.stats
    assert (s.problems, s.files, s.bytes) == (1, 2, CHUNKED * RECORD + 1)


async def test_backup_of_file_growing_in_background_is_never_torn(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"log": records(0, 512)})  # 2 MiB: several chunks
    vault, root = await vault_factory.create()
    start = threading.Event()

    def grow() -> None:  # bounded: stops by itself
        start.wait()
        fd = os.open(src / "log", os.O_WRONLY | os.O_APPEND)
        try:
            for i in range(512, 512 + 400):
                os.write(fd, records(i, 1))
        finally:
            os.close(fd)

    writer = threading.Thread(target=grow)
    writer.start()
    sink = Sink(on_progress=lambda p: start.set())
    try:
        result = await backup(vault, plan(src, read_retries=1), progress=sink)
    finally:
        start.set()
        writer.join()

    final = (src / "log").read_bytes()
    assert final == records(0, 912)
    stored = await contents(await vault_factory.open(root), result.snapshot.tree, src)
    if result.problems:
        assert [(p.path, p.code) for p in result.problems] == [(str(src / "log"), "changed")]
        assert b"log" not in stored
    else:
        assert len(stored[b"log"]) % RECORD == 0
        assert final.startswith(stored[b"log"])


async def test_backup_does_not_hang_on_file_replaced_by_fifo(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"a": "a", "swap": "s"})
    swap = os.fsencode(src / "swap")
    vault, _ = await vault_factory.create()
    real_lstat = os.lstat

    def lstat(path: Any, *args: Any, **kwargs: Any) -> Any:
        st = real_lstat(path, *args, **kwargs)
        if os.fsencode(path) == swap and stat.S_ISREG(st.st_mode):
            os.unlink(swap)  # replaced by a FIFO right after the walk looked at it
            os.mkfifo(swap)
        return st

    hung: list[bool] = []

    def unblock() -> None:  # a safety net only: fires if a reader waits for a FIFO writer
        hung.append(True)
        try:
            os.close(os.open(swap, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(backup_module, "SCOUT_FOLDERS", 0)  # only the walker may lstat here
    watchdog = threading.Timer(30, unblock)
    watchdog.start()
    try:
        result = await backup(vault, plan(src))
    finally:
        watchdog.cancel()
        monkeypatch.undo()
    assert not hung
    assert [(p.path, p.code) for p in result.problems] == [(str(src / "swap"), "changed")]
    assert await contents(vault, result.snapshot.tree, src) == {b"a": b"a"}


async def test_backup_of_missing_path_writes_nothing(tmp_path: Path,
                                                     vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": "a"})
    vault, root = await vault_factory.create()
    before = await object_counts(root)
    with pytest.raises(UsageError, match="path not found"):
        await backup(vault, plan(src, tmp_path / "missing"))
    assert await object_counts(root) == before


async def test_backup_with_bad_exclude_pattern_writes_nothing(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": "a"})
    vault, root = await vault_factory.create()
    before = await object_counts(root)
    with pytest.raises(UsageError, match="bad exclude pattern"):
        await backup(vault, plan(src, excludes=("*.tmp", "file[z-a]")))
    assert await object_counts(root) == before


async def test_backup_drops_paths_inside_other_paths(tmp_path: Path,
                                                     vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a.txt": "a", "sub/b": "b"})
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src / "sub", src, src / "a.txt", f"{src}/",
                                      f"{src}/sub/../sub"))
    assert result.snapshot.paths == (os.fsencode(src),)
    assert await contents(vault, result.snapshot.tree, src) == {b"a.txt": b"a", b"sub/b": b"b"}
    assert result.snapshot.stats.files == 2


async def test_backup_keeps_sibling_paths_sharing_a_prefix(tmp_path: Path,
                                                           vault_factory: VaultFactory) -> None:
    # As bytes, "a-b" sorts between "a" and "a/b": the nested "a/b" must still be dropped.
    src = make_tree(tmp_path / "src", {"a/b/f": "f", "a-b/g": "g", "a.c": "c"})
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src / "a", src / "a-b", src / "a" / "b", src / "a.c"))
    assert result.snapshot.paths == tuple(os.fsencode(src / n) for n in ("a", "a-b", "a.c"))
    assert await contents(vault, result.snapshot.tree, src) == {
        b"a/b/f": b"f", b"a-b/g": b"g", b"a.c": b"c"}


async def test_backup_of_single_file_path(tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"only.txt": "o", "not-me": "n"})
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src / "only.txt"))
    assert await contents(vault, result.snapshot.tree, src) == {b"only.txt": b"o"}


# ---- checkpoints ----------------------------------------------------------------------------


def _tree_with_shared_chunks(src: Path, dirs: int = 6, files: int = 4) -> None:
    """Several folders whose files share chunks, so readers race to store the same blobs."""
    shared = random_bytes(300_000, 9)
    spec: dict[str, bytes | str | None] = {}
    for d in range(dirs):
        for f in range(files):
            spec[f"d{d}/f{f}"] = shared if f % 2 else b"%d-%d" % (d, f) + shared
    make_tree(src, spec)


async def test_backup_removes_its_checkpoints_when_done(tmp_path: Path,
                                                        vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    _tree_with_shared_chunks(src)
    _, root = await vault_factory.create()
    counting: list[CountingStore] = []

    def wrap(store: ObjectStore) -> ObjectStore:
        counting.append(CountingStore(store))
        return counting[0]

    vault = await vault_factory.open(root, wrap)
    result = await backup(vault, plan(src, checkpoint_interval=0.0001))

    store = counting[0]
    snapshot_puts = store.put_of(ObjectKind.SNAPSHOT)
    assert len(snapshot_puts) > 2  # checkpoints were written ...
    assert sorted(store.deletes) == sorted(k for k in snapshot_puts
                                           if k.name != result.snapshot_id.hex())
    assert await snapshot_ids(root) == {result.snapshot_id.hex()}  # ... and removed
    assert not result.snapshot.checkpoint
    fresh = await vault_factory.open(root)
    assert await contents(fresh, result.snapshot.tree, src) == disk_contents(src)


async def test_backup_checkpoints_stay_on_append_only_store_and_are_complete(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    _tree_with_shared_chunks(src)
    _, root = await vault_factory.create()
    vault = await vault_factory.open(root, AppendOnlyStore)
    result = await backup(vault, plan(src, checkpoint_interval=0.0001))

    fresh = await vault_factory.open(root)
    refs = await fresh.list_snapshots()
    assert len(refs) > 2
    assert refs[-1].id == result.snapshot_id and not refs[-1].snapshot.checkpoint
    for ref in refs[:-1]:
        assert ref.snapshot.checkpoint
        assert await assert_complete(fresh, ref.snapshot.tree) <= 24
    assert await contents(fresh, result.snapshot.tree, src) == disk_contents(src)
    # The next backup builds on the final snapshot (the latest), not on a checkpoint.
    again = await backup(fresh, plan(src))
    assert again.snapshot.parent == result.snapshot_id


async def test_backup_crash_after_checkpoint_leaves_a_usable_checkpoint(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    _tree_with_shared_chunks(src)
    _, root = await vault_factory.create()
    crashing = await vault_factory.open(root, FailingAfterSnapshot)
    with pytest.raises(StorageError, match="went away"):
        await backup(crashing, plan(src, checkpoint_interval=0.0001))

    fresh = await vault_factory.open(root)
    refs = await fresh.list_snapshots()
    assert len(refs) == 1 and refs[0].snapshot.checkpoint
    checkpoint = refs[0]
    files = await assert_complete(fresh, checkpoint.snapshot.tree)
    await assert_packs_listed(fresh, checkpoint.snapshot)

    result = await backup(fresh, plan(src))
    assert result.snapshot.parent == checkpoint.id
    assert result.snapshot.stats.unchanged_files == files
    final = await vault_factory.open(root)
    assert await contents(final, result.snapshot.tree, src) == disk_contents(src)


# ---- deletion markers -----------------------------------------------------------------------


async def test_backup_stores_again_blobs_held_only_in_marked_packs(
        tmp_path: Path, vault_factory: VaultFactory, reads: ReadCounter) -> None:
    src = make_tree(tmp_path / "src", {"a": random_bytes(300_000, 50), "sub/b": "b"})
    vault, root = await vault_factory.create()
    await backup(vault, plan(src))
    marked = set(await vault.list_packs())
    await mark_for_deletion(vault, marked)
    reads.inodes.clear()

    again = await vault_factory.open(root)
    second = await backup(again, plan(src))

    assert len(reads.inodes) == 2  # their contents were only in marked packs
    assert not marked & set(second.snapshot.packs)
    fresh = await vault_factory.open(root)
    await assert_packs_listed(fresh, second.snapshot)
    assert await contents(fresh, second.snapshot.tree, src) == disk_contents(src)


async def test_backup_does_not_reuse_folder_tree_from_marked_pack(
        tmp_path: Path, vault_factory: VaultFactory, reads: ReadCounter) -> None:
    src = make_tree(tmp_path / "src", {"a": "a", "b": "b"})  # files only: its tree is reusable
    vault, root = await vault_factory.create()
    first = await backup(vault, plan(src))
    tree_packs = {pid for pid, entries in vault.index.packs.items()
                  if entries[0].type == BlobType.TREE}
    await mark_for_deletion(vault, tree_packs)
    reads.inodes.clear()

    again = await vault_factory.open(root)
    second = await backup(again, plan(src))

    assert reads.inodes == []  # the data packs are not marked: files are unchanged
    assert not tree_packs & set(second.snapshot.packs)
    fresh = await vault_factory.open(root)
    await assert_packs_listed(fresh, second.snapshot)
    # The same tree (same ID), stored again in a pack the snapshot lists.
    src_node = await lookup(fresh, second.snapshot.tree, rel(src))
    assert src_node == await lookup(fresh, first.snapshot.tree, rel(src))


# ---- reading the last large files ahead (backups without a parent) ---------------------------


def _read_ahead(monkeypatch: pytest.MonkeyPatch,
                then: Callable[[bytes], None] = lambda path: None
                ) -> tuple[list[bytes], threading.Event]:
    """The files read ahead (each followed by `then(path)`), and an event set after each."""
    done: list[bytes] = []
    finished = threading.Event()
    inner = FileReader._read_ahead

    def read_ahead(self: FileReader, path: bytes, name: bytes) -> Node | None:
        try:
            return inner(self, path, name)
        finally:
            then(path)
            done.append(path)
            finished.set()

    monkeypatch.setattr(FileReader, "_read_ahead", read_ahead)
    return done, finished


def _hold_walker(monkeypatch: pytest.MonkeyPatch, folder: Path, until: threading.Event) -> None:
    """The walker waits at `folder` (at most 10 s) until `until` is set."""
    inner = backup_module._BackupRun._directory
    held = os.fsencode(folder)

    def directory(self: Any, path: bytes, name: bytes, st: os.stat_result,
                  parent: Node | None) -> Any:
        if path == held:
            until.wait(10)
        return inner(self, path, name, st, parent)

    monkeypatch.setattr(backup_module._BackupRun, "_directory", directory)


AHEAD_TREE = {"a/small.txt": "small", "z/big.bin": random_bytes(600_000, 3),
              "z/also.txt": "also"}


async def test_backup_reads_the_last_large_files_ahead(
        tmp_path: Path, vault_factory: VaultFactory, reads: ReadCounter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the walker is in the first folder, the large file of the last one is read; the
    walker takes that read when it gets there: read once, counted once."""
    src = make_tree(tmp_path / "src", AHEAD_TREE)
    ahead, finished = _read_ahead(monkeypatch)
    _hold_walker(monkeypatch, src / "a", finished)
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))
    assert ahead == [os.fsencode(src / "z/big.bin")]
    assert reads.count(src / "z/big.bin") == 1
    assert await contents(vault, result.snapshot.tree, src) == disk_contents(src)
    s = result.snapshot.stats
    assert (s.files, s.new_files, s.bytes, s.problems) == (3, 3, 600_009, 0)


async def test_a_file_changed_after_its_read_ahead_is_read_again(
        tmp_path: Path, vault_factory: VaultFactory, reads: ReadCounter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", AHEAD_TREE)
    big = src / "z/big.bin"

    def append(path: bytes) -> None:
        with open(path, "ab") as f:
            f.write(b"written after the read ahead")

    _, finished = _read_ahead(monkeypatch, append)
    _hold_walker(monkeypatch, src / "a", finished)
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))
    assert reads.count(big) == 2
    assert await contents(vault, result.snapshot.tree, src) == disk_contents(src)
    assert disk_contents(src)[b"z/big.bin"].endswith(b"after the read ahead")
    s = result.snapshot.stats
    assert (s.files, s.new_files, s.problems) == (3, 3, 0)


async def test_a_file_gone_after_its_read_ahead_is_not_in_the_snapshot(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", AHEAD_TREE)
    _, finished = _read_ahead(monkeypatch, os.unlink)
    _hold_walker(monkeypatch, src / "a", finished)
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))
    assert set(await contents(vault, result.snapshot.tree, src)) == {b"a/small.txt",
                                                                     b"z/also.txt"}
    s = result.snapshot.stats
    assert (s.files, s.new_files, s.bytes, s.problems) == (2, 2, 9, 0)
    assert result.problems == ()


async def test_excluded_files_are_not_read_ahead(
        tmp_path: Path, vault_factory: VaultFactory, reads: ReadCounter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {**AHEAD_TREE, "z/skip.iso": random_bytes(600_000, 4),
            "z/cache/CACHEDIR.TAG": CACHEDIR_SIGNATURE, "z/cache/big.bin": random_bytes(600_000, 5)}
    src = make_tree(tmp_path / "src", spec)
    ahead, finished = _read_ahead(monkeypatch)
    _hold_walker(monkeypatch, src / "a", finished)
    vault, _ = await vault_factory.create()
    await backup(vault, plan(src, excludes=("*.iso",)))
    assert ahead == [os.fsencode(src / "z/big.bin")]
    assert reads.count(src / "z/skip.iso") == 0 and reads.count(src / "z/cache/big.bin") == 0


async def test_reads_ahead_go_in_reverse_walk_order(
        tmp_path: Path, vault_factory: VaultFactory, reads: ReadCounter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A subfolder's files come at the subfolder's place, as in the walk (backwards)."""
    src = make_tree(tmp_path / "src", {"0first/small.txt": "s",
                                       "a.bin": random_bytes(300_000, 7),
                                       "b/big.bin": random_bytes(300_000, 8),
                                       "z.bin": random_bytes(300_000, 9)})
    started: list[bytes] = []
    inner = FileReader.read_ahead

    def read_ahead(self: FileReader, path: bytes, name: bytes,
                   still_ahead: Callable[[], bool]) -> None:
        started.append(path)
        inner(self, path, name, still_ahead)

    monkeypatch.setattr(FileReader, "read_ahead", read_ahead)
    done, finished = _read_ahead(monkeypatch)
    all_done = threading.Event()
    monkeypatch.setattr(finished, "set", lambda: len(done) == 3 and all_done.set())
    _hold_walker(monkeypatch, src / "0first", all_done)
    vault, _ = await vault_factory.create()
    result = await backup(vault, plan(src))
    assert started == [os.fsencode(src / p) for p in ("z.bin", "b/big.bin", "a.bin")]
    assert all(reads.count(src / p) == 1 for p in ("z.bin", "b/big.bin", "a.bin"))
    assert await contents(vault, result.snapshot.tree, src) == disk_contents(src)


async def test_no_reading_ahead_with_a_parent(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a parent most files are unchanged: only the walker knows which to read."""
    src = make_tree(tmp_path / "src", AHEAD_TREE)
    vault, _ = await vault_factory.create()
    await backup(vault, plan(src))
    ahead, _ = _read_ahead(monkeypatch)
    (src / "z/big.bin").write_bytes(random_bytes(600_000, 6))
    await backup(vault, plan(src))
    assert ahead == []


# ---- thread priority -------------------------------------------------------------------------


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
async def test_readers_and_sealers_run_nicer_than_the_walker(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walker is the critical path: the pipeline threads yield the CPU to it."""
    src = make_tree(tmp_path / "src", {"big.bin": random_bytes(3 << 20, 31), "small": "s"})
    seen: dict[str, set[int]] = {"walk": set(), "read": set(), "seal": set()}
    walk, read, seal = (backup_module._BackupRun._walk, FileReader._read_file_inner,
                        Packer.seal_now)

    def walking(self: Any, *args: Any) -> Any:
        seen["walk"].add(_nice())
        return walk(self, *args)

    def reading(self: FileReader, *args: Any, **kwargs: Any) -> Any:
        seen["read"].add(_nice())
        return read(self, *args, **kwargs)

    def sealing(self: Packer, *args: Any) -> Any:
        if threading.current_thread().name.startswith("cairn-seal"):
            seen["seal"].add(_nice())
        return seal(self, *args)

    monkeypatch.setattr(backup_module._BackupRun, "_walk", walking)
    monkeypatch.setattr(FileReader, "_read_file_inner", reading)
    monkeypatch.setattr(Packer, "seal_now", sealing)
    vault, _ = await vault_factory.create()
    await backup(vault, plan(src))
    (walker,) = seen["walk"]
    assert seen["read"] == seen["seal"] == {min(19, walker + PIPELINE_NICE)}


# ---- interrupted backups --------------------------------------------------------------------


async def test_backup_after_failed_run_reuses_its_uploaded_packs(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {f"f{i}": random_bytes(600_000, 10 + i) for i in range(6)})
    _, root = await vault_factory.create(pack_size=256 << 10)
    failing = await vault_factory.open(root, lambda s: FailingPacks(s, allowed=3))
    token = CancelToken()
    with pytest.raises(StorageError, match="went away"):
        await backup(failing, plan(src), cancel=token)
    assert not token.cancelled  # the caller's token is the caller's
    counts = await object_counts(root)
    assert (counts[ObjectKind.PACK], counts[ObjectKind.INDEX], counts[ObjectKind.SNAPSHOT]) == (
        3, 0, 0)  # the uploads in flight when the fourth failed were let finish

    counting: list[CountingStore] = []

    def wrap(store: ObjectStore) -> ObjectStore:
        counting.append(CountingStore(store))
        return counting[0]

    vault = await vault_factory.open(root, wrap)
    recovered = set(vault.unindexed_packs)
    assert len(recovered) == 3
    assert vault.index.packs.keys() == recovered  # found from their headers alone
    old_blobs = {e.id for pid in recovered for e in vault.index.packs[pid]}
    result = await backup(vault, plan(src))

    new_packs = counting[0].put_of(ObjectKind.PACK)
    assert not recovered & {k.id for k in new_packs}
    new_blobs = set()
    for key in new_packs:
        info = await vault.store.stat(key)
        new_blobs |= {e.id for e in await vault.read_pack_header(key.id, info.size)}
    assert old_blobs and not old_blobs & new_blobs  # nothing stored twice
    assert vault.unindexed_packs == set()

    fresh = await vault_factory.open(root)
    assert fresh.unindexed_packs == set()  # the recovered packs are indexed now
    assert recovered <= set(fresh.index.packs)
    assert await contents(fresh, result.snapshot.tree, src) == disk_contents(src)


async def test_backup_cancelled_from_progress_saves_no_snapshot(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {f"f{i}": b"%d" % i for i in range(20)})
    vault, root = await vault_factory.create()
    token = CancelToken()
    sink = Sink(on_progress=lambda p: token.cancel())
    with pytest.raises(Cancelled):
        await backup(vault, plan(src), progress=sink, cancel=token)
    assert await snapshot_ids(root) == set()
    assert not [t for t in threading.enumerate() if t.name.startswith(THREADS)]

    result = await backup(await vault_factory.open(root), plan(src))  # the vault is fine
    assert result.snapshot.stats.files == 20


async def test_backup_task_cancelled_stops_its_threads(tmp_path: Path,
                                                       vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {f"f{i}": random_bytes(300_000, 20 + i)
                                       for i in range(8)})
    vault, root = await vault_factory.create(pack_size=256 << 10)
    loop = asyncio.get_running_loop()
    task: asyncio.Task[BackupResult] | None = None

    def cancel_task(p: BackupProgress) -> None:
        assert task is not None
        loop.call_soon_threadsafe(task.cancel)

    task = asyncio.create_task(backup(vault, plan(src), progress=Sink(cancel_task)))
    with pytest.raises(asyncio.CancelledError):
        await task
    # When the task ends, so has every thread of the backup: nothing is written later.
    assert not [t for t in threading.enumerate() if t.name.startswith(THREADS)]
    assert await snapshot_ids(root) == set()


async def test_backup_runs_with_a_one_thread_default_executor(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": "a", "d/b": "b"})
    vault, _ = await vault_factory.create()
    # The store's calls use the default executor; the walk must not sit in its only thread.
    pool = ThreadPoolExecutor(1)
    asyncio.get_running_loop().set_default_executor(pool)
    result = await asyncio.wait_for(backup(vault, plan(src)), timeout=60)
    assert result.snapshot.stats.files == 2


# ---- concurrency and progress ---------------------------------------------------------------


async def test_backup_two_vault_objects_on_one_folder_at_once(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    shared = random_bytes(400_000, 30)
    one = make_tree(tmp_path / "one", {"a": shared, "x/b": random_bytes(200_000, 31)})
    two = make_tree(tmp_path / "two", {"a": shared, "y/c": random_bytes(200_000, 32)})
    _, root = await vault_factory.create(pack_size=256 << 10)
    first, second = await vault_factory.open(root), await vault_factory.open(root)

    r1, r2 = await asyncio.gather(backup(first, plan(one)), backup(second, plan(two)))

    fresh = await vault_factory.open(root)
    assert {r.id for r in await fresh.list_snapshots()} == {r1.snapshot_id, r2.snapshot_id}
    assert await contents(fresh, r1.snapshot.tree, one) == disk_contents(one)
    assert await contents(fresh, r2.snapshot.tree, two) == disk_contents(two)


async def test_backup_progress_is_throttled(tmp_path: Path, vault_factory: VaultFactory) -> None:
    spec: dict[str, bytes | str | None] = {f"d{i // 50}/f{i}": b"%d" % i for i in range(300)}
    spec["big"] = random_bytes(4 << 20, 40)
    src = make_tree(tmp_path / "src", spec)
    vault, _ = await vault_factory.create()
    sink = Sink()
    started = time.monotonic()
    result = await backup(vault, plan(src), progress=sink)
    elapsed = time.monotonic() - started

    assert sink.updates
    times = [t for t, _ in sink.updates]
    assert len(times) <= 10 * elapsed + 2  # ~10 a second, plus the final one
    last = sink.updates[-1][1]
    s = result.snapshot.stats
    assert (last.files_done, last.dirs_done, last.bytes_done) == (s.files, s.dirs, s.bytes)
    assert last.bytes_new == s.new_bytes and last.bytes_uploaded == s.stored_bytes
