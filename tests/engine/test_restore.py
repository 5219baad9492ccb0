"""Restore tests: real trees in tmp_path, backed up with backup() and restored into another
folder, then compared entry by entry (type, contents, mode, mtime in ns, links, xattrs).
"""

import asyncio
import errno
import hashlib
import os
import random
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_gui.engine import restore_writer
from client_gui.engine.backup import BackupPlan, backup
from client_gui.engine.progress import CancelToken, ItemProblem, Progress, RestoreProgress
from client_gui.engine.restore import TEMP_MARK, RestoreError, RestorePlan, restore
from client_gui.engine.restore_writer import OPEN_FILES, FileWriter, TargetFile
from client_gui.engine.vault import SnapshotRef, Vault
from client_gui.engine.walk import display, walk
from shared.errors import Cancelled, UsageError
from shared.format.tree import Node, NodeType
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind
from shared.storage import direct
from shared.storage.base import ObjectStore
from shared.storage.wrappers import ForwardingStore
from tests.conftest import REPO, make_tree
from tests.engine.conftest import PASSPHRASE, VaultFactory
from tests.support.direct_io import FAILURES, direct_works, watch_direct_writes

T0 = 1_600_000_000_123_456_789  # a mtime with every nanosecond digit set


# ---- helpers --------------------------------------------------------------------------------


def below(target: Path, src: Path) -> Path:
    """Where `src` lands inside a restore target (restic-style full paths)."""
    return target / str(src).lstrip("/")


def _user_xattrs(path: bytes) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                        for n in names if n.startswith("user.")))


def tree_state(root: Path | bytes) -> dict[bytes, tuple[object, ...]]:
    """Everything restore must reproduce, per path relative to `root` (b"" is root itself)."""
    base = os.fsencode(root)
    out: dict[bytes, tuple[object, ...]] = {}

    def visit(rel: bytes) -> None:
        path = base + b"/" + rel if rel else base
        s = os.lstat(path)
        mode, perm = s.st_mode, stat.S_IMODE(s.st_mode)
        if stat.S_ISDIR(mode):
            out[rel] = ("dir", perm, s.st_mtime_ns, _user_xattrs(path))
            for name in sorted(os.listdir(path)):
                visit(rel + b"/" + name if rel else name)
        elif stat.S_ISREG(mode):
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[rel] = ("file", perm, s.st_mtime_ns, s.st_size, digest, _user_xattrs(path))
        elif stat.S_ISLNK(mode):
            out[rel] = ("symlink", os.readlink(path), s.st_mtime_ns)
        elif stat.S_ISFIFO(mode):
            out[rel] = ("fifo", perm, s.st_mtime_ns)
        else:
            out[rel] = ("other", stat.S_IFMT(mode), s.st_rdev, perm, s.st_mtime_ns)

    visit(b"")
    return out


def link_groups(root: Path) -> set[frozenset[bytes]]:
    """Paths (relative to `root`) that are names of one file, for files with several names."""
    base = os.fsencode(root)
    groups: dict[int, set[bytes]] = {}
    for folder, _, names in os.walk(base):
        for name in names:
            path = os.path.join(folder, name)
            s = os.lstat(path)
            if stat.S_ISREG(s.st_mode) and s.st_nlink > 1:
                groups.setdefault(s.st_ino, set()).add(os.path.relpath(path, base))
    return {frozenset(g) for g in groups.values()}


def temp_files(root: Path) -> list[bytes]:
    found = []
    for folder, dirs, names in os.walk(os.fsencode(root)):
        found += [os.path.join(folder, n) for n in names + dirs if TEMP_MARK in n]
    return found


def set_times(root: Path, start: int = T0) -> None:
    """Give every entry below `root` (and root) its own mtime, children before parents."""
    n = start
    for folder, dirs, names in os.walk(os.fsencode(root), topdown=False):
        for name in sorted(names + dirs):
            n += 1_000_000_007
            os.utime(os.path.join(folder, name), ns=(n, n), follow_symlinks=False)
        n += 1_000_000_007
        os.utime(folder, ns=(n, n))


async def backed_up(factory: VaultFactory, src: Path, *,
                    pack_size: int | None = None) -> tuple[Vault, Path, SnapshotRef]:
    """Back `src` up into a new vault; return it reopened (index loaded) and the snapshot."""
    vault, root = await (factory.create(pack_size=pack_size) if pack_size else factory.create())
    result = await backup(vault, BackupPlan(paths=(str(src),)))
    assert result.problems == ()
    return await factory.open(root), root, SnapshotRef(result.snapshot_id, result.snapshot)


class RecordingSink:
    def __init__(self) -> None:
        self.updates: list[Progress] = []
        self.problems: list[ItemProblem] = []

    def progress(self, p: Progress) -> None:
        self.updates.append(p)

    def problem(self, item: ItemProblem) -> None:
        self.problems.append(item)


class RecordingStore(ForwardingStore):
    """Passes everything to `inner`; remembers every get and can cancel on a chosen read."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.gets: list[tuple[ObjectKey, int, int | None]] = []
        self.cancel_on: set[ObjectId] = set()
        self.token: CancelToken | None = None

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        self.gets.append((key, offset, length))
        if self.token is not None and key.kind == ObjectKind.PACK and key.id in self.cancel_on:
            self.token.cancel()
        return await self.inner.get(key, offset=offset, length=length)



async def open_recording(vault_factory: VaultFactory, root: Path) -> tuple[Vault, RecordingStore]:
    """Reopen the vault through a RecordingStore and return both."""
    stores: list[RecordingStore] = []

    def wrap(inner: ObjectStore) -> ObjectStore:
        stores.append(RecordingStore(inner))
        return stores[-1]

    vault = await vault_factory.open(root, wrap)
    return vault, stores[0]


def data_packs(vault: Vault) -> set[ObjectId]:
    return {pid for pid, entries in vault.index.packs.items()
            if entries and entries[0].type == BlobType.DATA}


async def files_using(vault: Vault, ref: SnapshotRef, blobs: Iterable[ObjectId]) -> set[bytes]:
    wanted = set(blobs)
    return {path async for path, node in walk(vault, ref.snapshot.tree)
            if node.type == NodeType.FILE and wanted & set(node.content)}


def many_files(src: Path, count: int, size: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    spec = {f"d{i % 3}/f{i:03}": rng.randbytes(size) for i in range(count)}
    make_tree(src, spec)
    return spec


# ---- round trips ----------------------------------------------------------------------------


async def test_restore_round_trip_keeps_contents_and_metadata(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    rng = random.Random(7)
    make_tree(src, {
        "a.txt": "hello\n", "empty": b"", "big.bin": rng.randbytes((3 << 20) + 12345),
        "dup1": b"dup" * 5000, "dup2": b"dup" * 5000, "sub/deeper/deepest/f": b"x" * 1000,
        "sub/empty-dir": None,
    })
    os.symlink("a.txt", src / "link")
    os.symlink("/nonexistent/nowhere", src / "dangling")
    os.link(src / "a.txt", src / "hard-a")
    os.link(src / "sub/deeper/deepest/f", src / "sub/hard-f")
    bsrc = os.fsencode(src)
    for odd in (b"new\nline", b"caf\xe9-latin1", b" lead space", b"\xff\xfe"):
        with open(bsrc + b"/" + odd, "wb") as f:
            f.write(odd * 3)
    os.symlink(b"caf\xe9-latin1", bsrc + b"/link-\xe9")
    os.mkfifo(src / "fifo", 0o640)
    os.chmod(src / "a.txt", 0o640)
    os.chmod(src / "big.bin", 0o755)
    os.chmod(src / "empty", 0o400)
    os.chmod(src / "sub/deeper", 0o750)
    set_times(src)
    vault, _, ref = await backed_up(vault_factory, src)

    sink = RecordingSink()
    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"),
                           progress=sink)

    dst = below(tmp_path / "dst", src)
    assert result.problems == ()
    assert tree_state(dst) == tree_state(src)
    assert link_groups(dst) == link_groups(src) == {
        frozenset({b"a.txt", b"hard-a"}), frozenset({b"sub/deeper/deepest/f", b"sub/hard-f"})}
    assert temp_files(tmp_path / "dst") == []
    assert result.files == sum(1 for v in tree_state(src).values() if v[0] != "dir")
    inodes = {os.lstat(p).st_ino: os.lstat(p).st_size for p in src.rglob("*") if p.is_file()
              and not p.is_symlink()}
    assert result.bytes == sum(inodes.values())
    last = sink.updates[-1]
    assert isinstance(last, RestoreProgress)
    assert (last.files_done, last.bytes_done) == (last.files_total, last.bytes_total)


async def test_restore_keeps_sparse_file_sparse(tmp_path: Path,
                                                vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    with open(src / "sparse", "wb") as f:
        f.write(rng.randbytes(1 << 20))
        f.seek(63 << 20)
        f.write(rng.randbytes(1 << 20))
    if os.stat(src / "sparse").st_blocks * 512 > 8 << 20:
        pytest.skip("this file system does not keep holes")
    vault, _, ref = await backed_up(vault_factory, src)

    await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    out = below(tmp_path / "dst", src) / "sparse"
    assert out.stat().st_size == 64 << 20
    assert out.stat().st_blocks * 512 <= 8 << 20  # the 62 MiB hole stayed a hole
    assert out.read_bytes() == (src / "sparse").read_bytes()


async def test_restore_sets_user_xattrs(tmp_path: Path, vault_factory: VaultFactory) -> None:
    # Only files: backup.py does not record the xattrs of directories yet.
    src = make_tree(tmp_path / "src", {"f": b"data", "d/g": b"more"})
    try:
        os.setxattr(src / "f", "user.comment", b"a note")
        os.setxattr(src / "d/g", "user.tag", b"\x00\xffbinary")
    except OSError:
        pytest.skip("no user xattrs on this file system")
    set_times(src)
    vault, _, ref = await backed_up(vault_factory, src)

    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    dst = below(tmp_path / "dst", src)
    assert result.problems == ()
    assert os.getxattr(dst / "f", "user.comment") == b"a note"
    assert tree_state(dst) == tree_state(src)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change owners")
async def test_restore_owners_only_when_asked(tmp_path: Path,
                                              vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"f": b"data", "d/g": b"more"})
    for p in (src / "f", src / "d", src / "d/g"):
        os.chown(p, 1234, 5678)
    vault, _, ref = await backed_up(vault_factory, src)

    await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "as-root"))
    await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "mine", owners=False))

    owned = below(tmp_path / "as-root", src)
    assert {(p.stat().st_uid, p.stat().st_gid) for p in (owned / "f", owned / "d/g",
                                                         owned / "d")} == {(1234, 5678)}
    assert (below(tmp_path / "mine", src) / "f").stat().st_uid == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can create device files")
async def test_restore_device_files_as_root(tmp_path: Path,
                                            vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"f": b"x"})
    try:
        os.mknod(src / "null", stat.S_IFCHR | 0o644, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod not permitted here")
    set_times(src)
    vault, _, ref = await backed_up(vault_factory, src)

    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    assert result.problems == ()
    assert tree_state(below(tmp_path / "dst", src)) == tree_state(src)


# ---- property test --------------------------------------------------------------------------

NAMES = st.binary(min_size=1, max_size=8).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
MTIMES = st.integers(min_value=0, max_value=4_000_000_000 * 10**9)
FILES = st.tuples(st.just("file"), st.binary(max_size=3000),
                  st.sampled_from([0o600, 0o644, 0o400, 0o755, 0o640, 0o604]), MTIMES)
LINKS = st.tuples(st.just("symlink"), NAMES, st.just(0), MTIMES)
TREES = st.recursive(
    st.one_of(FILES, LINKS),
    lambda children: st.tuples(st.just("dir"), st.dictionaries(NAMES, children, max_size=4),
                               st.sampled_from([0o700, 0o755, 0o750, 0o711]), MTIMES),
    max_leaves=12)


def build(path: bytes, spec: tuple[str, object, int, int]) -> None:
    kind, body, mode, mtime = spec
    if kind == "file":
        assert isinstance(body, bytes)
        with open(path, "wb") as f:
            f.write(body)
        os.chmod(path, mode)
    elif kind == "symlink":
        assert isinstance(body, bytes)
        os.symlink(body, path)
    else:
        os.mkdir(path)
        assert isinstance(body, dict)
        for name, child in body.items():
            build(path + b"/" + name, child)
        os.chmod(path, mode)
    os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


@pytest.fixture(scope="module")
def shared_vault(tmp_path_factory: pytest.TempPathFactory) -> Vault:
    """One vault for every example of the property test (a new vault each costs ~10 ms)."""
    factory = VaultFactory(tmp_path_factory.mktemp("shared-vault"))
    return asyncio.run(factory.create())[0]


async def _round_trip(vault: Vault, base: Path,
                      tree: dict[bytes, tuple[str, object, int, int]]) -> None:
    src = base / "src"
    build(os.fsencode(src), ("dir", tree, 0o755, T0))
    made = await backup(vault, BackupPlan(paths=(str(src),)))
    assert made.problems == ()
    ref = SnapshotRef(made.snapshot_id, made.snapshot)
    result = await restore(vault, RestorePlan(snapshot=ref, target=base / "dst"))
    assert result.problems == ()
    assert tree_state(below(base / "dst", src)) == tree_state(src)
    assert temp_files(base / "dst") == []


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tree=st.dictionaries(NAMES, TREES, max_size=5))
def test_restore_round_trips_random_trees(shared_vault: Vault,
                                          tree: dict[bytes, tuple[str, object, int, int]]
                                          ) -> None:
    with tempfile.TemporaryDirectory() as base:
        asyncio.run(_round_trip(shared_vault, Path(base), tree))


# ---- selection and existing files -----------------------------------------------------------


async def test_restore_include_restores_only_that_subtree(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"keep/a": b"a", "keep/sub/b": b"b", "other/c": b"c",
                                       "top": b"t", "file-only": b"f"})
    vault, _, ref = await backed_up(vault_factory, src)
    relative = str(src / "file-only").lstrip("/")  # without the leading slash works too

    include = (str(src / "keep"), relative, str(src / "keep/sub/b"))  # the last is nested

    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst",
                                              include=include))

    dst = below(tmp_path / "dst", src)
    assert result.problems == ()
    assert sorted(tree_state(dst)) == [b"", b"file-only", b"keep", b"keep/a", b"keep/sub",
                                       b"keep/sub/b"]
    assert (dst / "keep/sub/b").read_bytes() == b"b"


async def test_restore_include_not_in_snapshot_is_usage_error(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": b"a"})
    vault, _, ref = await backed_up(vault_factory, src)

    with pytest.raises(UsageError, match="path not found in snapshot"):
        await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst",
                                         include=(str(src / "nope"),)))
    with pytest.raises(UsageError, match="path not found in snapshot"):
        await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst",
                                         include=(str(src / "a" / "below-a-file"),)))
    assert not (tmp_path / "dst").exists()


async def test_restore_existing_different_file_is_kept_and_reported(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": b"original", "b": b"other"})
    vault, _, ref = await backed_up(vault_factory, src)
    dst = below(tmp_path / "dst", src)
    make_tree(dst, {"a": b"local edit"})

    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    assert [(p.path, p.message, p.code) for p in result.problems] == [
        ("/" + str(src / "a").lstrip("/"), "exists, not overwritten", "exists")]
    assert (dst / "a").read_bytes() == b"local edit"
    assert (dst / "b").read_bytes() == b"other"


async def test_restore_overwrite_replaces_existing_entries(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": b"original", "b": b"other", "c": b"c"})
    os.symlink("a", src / "link")
    vault, _, ref = await backed_up(vault_factory, src)
    dst = below(tmp_path / "dst", src)
    outside = make_tree(tmp_path / "outside", {"secret": b"do not touch"})
    make_tree(dst, {"a": b"local edit", "link": b"a file where a link was", "c/keep": b"k"})
    os.symlink(outside / "secret", dst / "b")  # must be replaced, never followed

    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst",
                                              overwrite=True))

    assert [(p.path.rsplit("/", 1)[1], p.message) for p in result.problems] == [
        ("c", "exists as a directory, not replaced")]
    assert (dst / "c/keep").read_bytes() == b"k"
    assert (dst / "a").read_bytes() == b"original"
    assert not (dst / "b").is_symlink() and (dst / "b").read_bytes() == b"other"
    assert os.readlink(dst / "link") == "a"
    assert (outside / "secret").read_bytes() == b"do not touch"
    assert temp_files(tmp_path / "dst") == []


async def test_restore_again_into_same_target_finds_nothing_to_do(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": b"x" * 10000, "d/b": b"", "d/c": b"y"})
    os.symlink("a", src / "link")
    os.link(src / "a", src / "hard")
    set_times(src)
    vault, _, ref = await backed_up(vault_factory, src)
    plan = RestorePlan(snapshot=ref, target=tmp_path / "dst")

    first = await restore(vault, plan)
    second = await restore(vault, plan)

    assert first.problems == second.problems == ()
    assert first.files == second.files
    assert tree_state(below(tmp_path / "dst", src)) == tree_state(src)


async def test_restore_copies_hard_link_when_links_are_refused(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"a": b"shared content" * 100})
    os.link(src / "a", src / "b")
    set_times(src)
    vault, _, ref = await backed_up(vault_factory, src)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "hard links not supported")

    # Last resort: no file system at hand refuses hard links (vfat would, needs a loop mount).
    monkeypatch.setattr(os, "link", refuse)
    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    dst = below(tmp_path / "dst", src)
    assert result.problems == ()
    assert result.files == 2
    assert tree_state(dst) == tree_state(src)
    assert link_groups(dst) == set()
    assert temp_files(tmp_path / "dst") == []


async def test_restore_overwrite_restores_metadata_of_identical_file(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = make_tree(tmp_path / "src", {"a": b"same bytes"})
    os.chmod(src / "a", 0o640)
    set_times(src)
    vault, _, ref = await backed_up(vault_factory, src)
    dst = make_tree(below(tmp_path / "dst", src), {"a": b"same bytes"})
    os.chmod(dst / "a", 0o666)

    kept = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))
    assert kept.problems == ()
    assert stat.S_IMODE((dst / "a").stat().st_mode) == 0o666  # identical: left alone

    await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst", overwrite=True))
    assert tree_state(dst) == tree_state(src)


# ---- damage ---------------------------------------------------------------------------------


async def test_restore_deleted_pack_fails_only_files_using_it(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    spec = many_files(src, 30, 40_000, seed=11)
    vault, root, ref = await backed_up(vault_factory, src, pack_size=200_000)
    gone = sorted(data_packs(vault))[1]
    lost_blobs = [e.id for e in vault.index.packs[gone]]
    hit = await files_using(vault, ref, lost_blobs)
    await vault.store.delete(ObjectKey.of(ObjectKind.PACK, gone))
    vault = await vault_factory.open(root)

    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    assert 0 < len(hit) < len(spec)
    assert {p.path for p in result.problems} == {"/" + h.decode() for h in hit}
    assert all("missing or damaged" in p.message for p in result.problems)
    dst = below(tmp_path / "dst", src)
    for rel, content in spec.items():
        out = dst / rel
        if str(src / rel).lstrip("/").encode() in hit:
            assert not out.exists()
        else:
            assert out.read_bytes() == content
    assert result.files == len(spec) - len(hit)
    assert temp_files(tmp_path / "dst") == []


async def test_restore_damaged_blob_fails_only_files_using_it(
        tmp_path: Path, vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    spec = many_files(src, 12, 30_000, seed=5)
    make_tree(src, {"copy-of-f000": spec["d0/f000"]})  # same blob, used by two files
    vault, root, ref = await backed_up(vault_factory, src, pack_size=100_000)
    blob = (await files_nodes(vault, ref))[str(src / "d0/f000").lstrip("/").encode()]
    loc = vault.index.get(blob)
    assert loc is not None
    pack_file = root / "packs" / loc.pack.hex()[:2] / loc.pack.hex()
    data = bytearray(pack_file.read_bytes())
    data[loc.offset + loc.length // 2] ^= 0x55
    pack_file.write_bytes(bytes(data))

    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    dst = below(tmp_path / "dst", src)
    assert sorted(p.path.rsplit("/", 1)[1] for p in result.problems) == ["copy-of-f000",
                                                                          "f000"]
    assert all("damaged" in p.message for p in result.problems)
    assert not (dst / "d0/f000").exists() and not (dst / "copy-of-f000").exists()
    assert (dst / "d1/f001").read_bytes() == spec["d1/f001"]
    assert result.files == len(spec) + 1 - 2


async def files_nodes(vault: Vault, ref: SnapshotRef) -> dict[bytes, ObjectId]:
    """Snapshot path -> first content blob, for single-blob files."""
    return {path: node.content[0] async for path, node in walk(vault, ref.snapshot.tree)
            if node.type == NodeType.FILE and node.content}


# ---- write failures and cancellation --------------------------------------------------------

_RESTORE_WITH_LIMIT = textwrap.dedent("""
    import asyncio, resource, signal, sys
    from pathlib import Path
    from client_gui.engine.restore import RestoreError, RestorePlan, restore
    from client_gui.engine.vault import Vault
    from shared.storage.local import LocalStore

    async def main() -> int:
        vault = await Vault.open(LocalStore(Path(sys.argv[1]), fsync=False), sys.argv[3])
        await vault.load_index()
        ref = await vault.find_snapshot("latest")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            await restore(vault, RestorePlan(snapshot=ref, target=Path(sys.argv[2])))
        except RestoreError as exc:
            print(exc)
            return 7
        return 0

    sys.exit(asyncio.run(main()))
""")


def assert_nothing_half_written(dst: Path, spec: dict[str, bytes]) -> None:
    for rel, content in spec.items():
        if (dst / rel).exists():
            assert (dst / rel).read_bytes() == content


async def test_restore_file_too_large_stops_cleanly(tmp_path: Path,
                                                    vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    spec = many_files(src, 10, 5_000, seed=2)
    spec["big"] = random.Random(9).randbytes(3 << 20)
    make_tree(src, {"big": spec["big"]})
    _, root, _ = await backed_up(vault_factory, src)
    target = tmp_path / "dst"

    proc = subprocess.run([sys.executable, "-c", _RESTORE_WITH_LIMIT, str(root), str(target),
                           PASSPHRASE], capture_output=True, text=True, cwd=REPO, timeout=120)

    assert proc.returncode == 7, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("file too large for the target")
    assert f"while restoring to {target}: " in lines[0]
    assert lines[0].endswith(f"of {len(spec)} files restored")
    assert temp_files(target) == []
    dst = below(target, src)
    assert not (dst / "big").exists()
    assert_nothing_half_written(dst, spec)


async def test_restore_disk_full_stops_cleanly(tmp_path: Path,
                                               vault_factory: VaultFactory) -> None:
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        src = tmp_path / "src"
        spec = many_files(src, 10, 5_000, seed=4)
        spec["big"] = random.Random(8).randbytes(4 << 20)
        make_tree(src, {"big": spec["big"]})
        vault, _, ref = await backed_up(vault_factory, src)

        with pytest.raises(RestoreError) as info:
            await restore(vault, RestorePlan(snapshot=ref, target=mnt))

        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"disk full while restoring to {mnt}: ")
        assert message.endswith(f"of {len(spec)} files restored")
        assert temp_files(mnt) == []
        assert_nothing_half_written(below(mnt, src), spec)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def test_restore_cancel_removes_temp_files(tmp_path: Path,
                                                 vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    many_files(src, 20, 50_000, seed=6)
    _, root, ref = await backed_up(vault_factory, src, pack_size=300_000)
    vault, store = await open_recording(vault_factory, root)
    token = CancelToken()
    store.token = token
    store.cancel_on = {sorted(data_packs(vault))[1]}

    with pytest.raises(Cancelled):
        await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"), cancel=token)

    assert temp_files(tmp_path / "dst") == []


# ---- reading packs --------------------------------------------------------------------------


async def test_restore_reads_each_pack_once_in_order(tmp_path: Path,
                                                     vault_factory: VaultFactory) -> None:
    src = tmp_path / "src"
    spec = many_files(src, 40, 20_000, seed=1)
    rng = random.Random(2)
    shared_block = rng.randbytes(30_000)
    make_tree(src, {f"shared{i}": shared_block for i in range(4)})  # one blob, many files
    make_tree(src, {"large": rng.randbytes(2 << 20)})
    _, root, ref = await backed_up(vault_factory, src, pack_size=150_000)
    vault, store = await open_recording(vault_factory, root)
    packs = data_packs(vault)
    store.gets.clear()

    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    assert result.problems == ()
    reads = [(k.id, off, n) for k, off, n in store.gets
             if k.kind == ObjectKind.PACK and k.id in packs]
    order = [pid for pid, _, _ in reads]
    runs = [pid for i, pid in enumerate(order) if i == 0 or order[i - 1] != pid]
    assert len(packs) > 3
    assert runs == sorted(packs)  # every pack, in ID order, in one contiguous pass
    for pid in packs:
        spans = [(off, off + (n or 0)) for p, off, n in reads if p == pid]
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert set(Counter(order).values()) == {1}  # small gaps: one read per pack
    dst = below(tmp_path / "dst", src)
    assert all((dst / rel).read_bytes() == content for rel, content in spec.items())
    assert (dst / "shared3").read_bytes() == shared_block


# ---- the file writer's descriptors, written outside the run's lock -------------------------


def _target(tmp_path: Path, num: int, size: int = 10) -> TargetFile:
    node = Node(name=b"f%d" % num, type=NodeType.FILE, size=size, mode=0o644)
    return TargetFile(num, b"f%d" % num, bytes(tmp_path / f"f{num}"), node, remaining=1)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("how", ["evicted", "failed", "discarded"])
def test_a_pinned_descriptor_outlives_whatever_closes_it(tmp_path: Path, how: str) -> None:
    """A worker writes through a pinned descriptor without the lock: the LRU of open files, a
    failure of the same file or a discard must not close it under the write (the number could
    be reused by another file and take its bytes); it is closed when unpinned."""
    problems: list[bytes] = []
    writer = FileWriter(owners=False, problem=lambda rel, msg, code: problems.append(rel),
                        placed=lambda: None)
    first = _target(tmp_path, 0)
    handle = writer.pin(first)
    if how == "evicted":
        for num in range(1, OPEN_FILES + 2):
            writer.unpin(writer.pin(_target(tmp_path, num)))
        assert first.num not in writer.handles
    elif how == "failed":
        writer.fail(first, "damaged")
    else:
        writer.discard()
    assert _is_open(handle.fd)
    FileWriter.write_at(first, handle, b"0123456789", 0, zero=False)
    writer.unpin(handle)
    assert handle.pins == 0 and not _is_open(handle.fd)  # closed by the unpin
    if how == "evicted":
        assert first.tmp is not None and Path(os.fsdecode(first.tmp)).read_bytes() == b"0123456789"


def test_restored_files_leave_the_page_cache(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of DROP_MIN bytes or more: writeback starts when each is complete, and its pages
    are dropped once DROP_AFTER more bytes of such files are complete."""
    advised: list[int] = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: advised.append(fd))
    monkeypatch.setattr(restore_writer, "DROP_AFTER", 2 * restore_writer.DROP_MIN)
    writer = FileWriter(owners=False, problem=lambda *a: None, placed=lambda: None)
    sizes = [restore_writer.DROP_MIN, 100, restore_writer.DROP_MIN, restore_writer.DROP_MIN]
    for num, size in enumerate(sizes):
        f = _target(tmp_path, num, size)
        handle = writer.pin(f)
        FileWriter.write_at(f, handle, b"x" * size, 0, zero=False)
        writer.unpin(handle)
        writer.complete(f)
    # 3 large files completed (one fadvise each), the first of them dropped again once two
    # more were complete; the 100-byte file is left alone.
    assert len(advised) == 4
    assert [p for p, _ in writer.written] == [bytes(tmp_path / "f2"), bytes(tmp_path / "f3")]


# ---- direct writes, whole files, fresh targets ----------------------------------------------


def _pieces(data: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    bounds = [0, *sorted({c % len(data) for c in cuts} - {0}), len(data)]
    return [(a, data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


BLOCK = restore_writer.SPARSE_BLOCK


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.sampled_from(["random", "zero", "text"]), min_size=1, max_size=6),
       head=st.integers(0, 3 * BLOCK), cuts=st.lists(st.integers(0, 1 << 22), max_size=8),
       seed=st.integers(0, 1 << 30))
def test_direct_writes_of_blobs_in_any_order_make_the_file(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        chunks: list[str], head: int, cuts: list[int], seed: int) -> None:
    """Blobs cut anywhere (unaligned edges, zero blocks, blobs within one page) and written in
    any order through a Handle with an O_DIRECT descriptor give exactly the file; aligned zero
    blocks stay holes. Small direct pieces exercise the bounce buffer's loop."""
    monkeypatch.setattr(direct, "PIECE", 3 * 4096)
    rng = random.Random(seed)
    parts = {"random": lambda: rng.randbytes(BLOCK + 777), "zero": lambda: bytes(2 * BLOCK),
             "text": lambda: b"line of text\n" * 5000}
    data = rng.randbytes(head) + b"".join(parts[c]() for c in chunks)
    folder = tmp_path_factory.mktemp("direct")
    path = folder / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.ftruncate(fd, len(data))
    handle = restore_writer.Handle(fd)
    if direct_works(folder):
        handle.direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
    pieces = _pieces(data, cuts)
    rng.shuffle(pieces)
    try:
        for offset, piece in pieces:
            restore_writer.write_direct(handle, piece, offset)
    finally:
        handle.close()
    assert path.read_bytes() == data
    assert not handle.refused


@pytest.mark.parametrize("how", FAILURES)
async def test_direct_writes_fall_back_to_the_page_cache(
        tmp_path: Path, vault_factory: VaultFactory, monkeypatch: pytest.MonkeyPatch,
        how: str) -> None:
    """Where O_DIRECT is refused (EINVAL at open or at a write: a file system or device
    wanting other alignment) or a direct write comes back short, the rest of the file goes
    through the page cache and the restore is still exact."""
    src = tmp_path / "src"
    rng = random.Random(5)
    spec = {"big": rng.randbytes(3 << 20) + bytes(200_000) + rng.randbytes(5000),
            "small": rng.randbytes(3000)}
    make_tree(src, spec)
    vault, _, ref = await backed_up(vault_factory, src)
    seen = watch_direct_writes(monkeypatch, fail=how)

    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    assert result.problems == ()
    dst = below(tmp_path / "dst", src)
    assert {rel: (dst / rel).read_bytes() for rel in spec} == spec
    assert (how == "open refused") == (not seen.opened)


async def test_restore_writes_large_files_directly(tmp_path: Path, vault_factory: VaultFactory,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of DIRECT_MIN bytes or more get an O_DIRECT descriptor; smaller ones do not."""
    if not direct_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    src = tmp_path / "src"
    rng = random.Random(6)
    spec = {"big": rng.randbytes(restore_writer.DIRECT_MIN + 12345),
            "small": rng.randbytes(restore_writer.DIRECT_MIN - 1)}
    make_tree(src, spec)
    vault, _, ref = await backed_up(vault_factory, src)
    seen = watch_direct_writes(monkeypatch)
    await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    assert [name.split(os.fsdecode(TEMP_MARK))[0] for name in seen.opened] == [".big"]
    # all of it but the unaligned edges of its blobs
    assert seen.direct > len(spec["big"]) - 64 * 4096
    dst = below(tmp_path / "dst", src)
    assert {rel: (dst / rel).read_bytes() for rel in spec} == spec


async def test_files_ending_in_a_hole_get_their_size(tmp_path: Path,
                                                     vault_factory: VaultFactory) -> None:
    """A small file is not sized before its blobs are written: one that is a single zero blob,
    or ends in one, still gets its full size (and an empty file stays empty)."""
    src = tmp_path / "src"
    rng = random.Random(7)
    spec = {"zeros": bytes(100_000), "empty": b"", "ends-in-zeros": rng.randbytes(300_000)
            + bytes(400_000), "zero-block": rng.randbytes(1000) + bytes(3 * BLOCK)}
    make_tree(src, spec)
    vault, _, ref = await backed_up(vault_factory, src)

    result = await restore(vault, RestorePlan(snapshot=ref, target=tmp_path / "dst"))

    assert result.problems == ()
    dst = below(tmp_path / "dst", src)
    assert {rel: (dst / rel).read_bytes() for rel in spec} == spec


async def test_a_fresh_target_needs_no_lstat_per_file(tmp_path: Path,
                                                      vault_factory: VaultFactory,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing can be in the way inside directories the restore created, so their entries are
    not looked up first; in an existing target they are (and what is there is kept)."""
    src = tmp_path / "src"
    spec = many_files(src, 30, 100, seed=8)
    (src / "d0" / "link").symlink_to("f000")
    vault, _, ref = await backed_up(vault_factory, src)
    real_lstat = os.lstat
    looked: list[bytes] = []

    def counting_lstat(path: bytes, *args: object, **kwargs: object) -> os.stat_result:
        looked.append(os.fsencode(path))
        return real_lstat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "lstat", counting_lstat)
    fresh = tmp_path / "fresh"
    await restore(vault, RestorePlan(snapshot=ref, target=fresh))
    assert not [p for p in looked if p.startswith(bytes(fresh) + b"/")
                and b"/.cairn-probe-" not in p]  # the one probe of how names are kept

    existing = tmp_path / "existing"
    kept = below(existing, src) / "d1" / "f001"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"mine")
    result = await restore(vault, RestorePlan(snapshot=ref, target=existing))
    assert [p.path for p in result.problems] == [display(os.fsencode(kept.relative_to(existing)))]
    assert kept.read_bytes() == b"mine"
    assert len([p for p in looked if p.startswith(bytes(existing) + b"/")]) >= len(spec) // 3
    assert tree_state(below(fresh, src)) == tree_state(src)


def _whole_target(tmp_path: Path) -> tuple[FileWriter, TargetFile]:
    writer = FileWriter(owners=False, problem=lambda *a: None, placed=lambda: None)
    return writer, _target(tmp_path, 0)


def test_a_whole_file_started_after_discard_leaves_nothing(tmp_path: Path) -> None:
    """write_whole runs without the lock: if discard() ran before its temp file existed, it
    removes the file itself and reports the cancellation."""
    writer, f = _whole_target(tmp_path)
    writer.discard()
    with pytest.raises(Cancelled):
        writer.write_whole(f, b"0123456789", 0, zero=False)
    assert list(tmp_path.iterdir()) == []


def test_a_whole_file_discarded_before_its_rename_is_a_cancellation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """discard() during write_whole removes the temp file; the rename that then fails is the
    run being cancelled, not a write error, and nothing is left."""
    writer, f = _whole_target(tmp_path)
    real_seal = FileWriter._seal

    def seal_then_discard(self: FileWriter, target: TargetFile, fd: int) -> list[str]:
        failed = real_seal(self, target, fd)
        self.discard()
        return failed

    monkeypatch.setattr(FileWriter, "_seal", seal_then_discard)
    with pytest.raises(Cancelled):
        writer.write_whole(f, b"0123456789", 0, zero=False)
    assert list(tmp_path.iterdir()) == []


def test_temp_names_are_unique_without_a_random_call_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_random(*args: object) -> None:
        raise AssertionError("getrandom per temp name")

    monkeypatch.setattr(restore_writer.secrets, "token_hex", no_random)
    names = {restore_writer.temp_path(b"/t/" + b"n" * 300) for _ in range(1000)}
    assert len(names) == 1000
    assert all(len(n.rpartition(b"/")[2]) <= 255 and TEMP_MARK in n for n in names)


def test_names_exact_probes_case_and_normalization(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Where another case or the decomposed form of a name finds the same entry (macOS,
    Windows, ext4 casefold), entries of new directories are still looked up; the probe
    leaves nothing behind, and an unwritable target just means "look everything up"."""
    from client_gui.engine.restore import _names_exact

    folder = os.fsencode(tmp_path)
    assert _names_exact(folder)  # this machine's ext4 keeps names exactly
    real = os.path.lexists
    for alias in (b"a\xc3\xa9", b"Ae\xcc\x81"):
        monkeypatch.setattr(os.path, "lexists",
                            lambda p, alias=alias: p.endswith(alias) or real(p))
        assert not _names_exact(folder)
    assert not _names_exact(folder + b"/missing")
    assert list(tmp_path.iterdir()) == []
