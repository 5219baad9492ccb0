"""Tests for the lock-free two-phase prune: mark, grace period, sweep, repack, index folding.

Vaults live in tmp_path on a LocalStore; backups are real. Concurrent backups are staged with
a store wrapper whose hooks run at chosen puts/deletes (events, never sleeps).
"""

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from client_gui.engine.backup import BackupPlan, BackupResult, backup
from client_gui.engine.check import check
from client_gui.engine.forget import forget
from client_gui.engine.progress import CancelToken, CheckProgress, ItemProblem, Progress
from client_gui.engine.prune import PruneResult, prune
from client_gui.engine.restore import RestorePlan, restore
from client_gui.engine.vault import Vault
from client_gui.engine.walk import walk
from shared.crypto.kdf import new_params
from shared.errors import Cancelled, DamageFound, PermissionDenied, UsageError
from shared.format.deletion import DeletionMarker, encode_deletion
from shared.ids import BlobType, ObjectId, ObjectInfo, ObjectKey, ObjectKind
from shared.storage.base import ObjectData, ObjectStore
from shared.storage.local import LocalStore
from shared.storage.wrappers import AppendOnlyStore, ForwardingStore

PW = "correct horse"
HOUR_NS = 3600 * 10**9

Hook = Callable[[ObjectKey], Awaitable[None]]


class HookedStore(ForwardingStore):
    """Forwards to `inner`, first awaiting the hook for puts, deletes or lists (test double)."""

    def __init__(
        self,
        inner: ObjectStore,
        *,
        before_put: Hook | None = None,
        before_delete: Hook | None = None,
        before_list: Callable[[ObjectKind], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(inner)
        self.before_put = before_put
        self.before_delete = before_delete
        self.before_list = before_list

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        if self.before_put is not None:
            await self.before_put(key)
        await self.inner.put(key, data)

    async def list(self, kind: ObjectKind) -> AsyncIterator[ObjectInfo]:
        if self.before_list is not None:
            await self.before_list(kind)
        async for info in self.inner.list(kind):
            yield info

    async def delete(self, key: ObjectKey) -> None:
        if self.before_delete is not None:
            await self.before_delete(key)
        await self.inner.delete(key)


# ---- helpers ------------------------------------------------------------------------------


async def make_vault(root: Path, **kwargs: int) -> Vault:
    store = await LocalStore.create(root, fsync=False)
    vault, _ = await Vault.create(
        store, PW, kdf=new_params(1, 8 << 20), recovery_key=False, **kwargs
    )
    return vault


async def reopen(root: Path, wrap: Callable[[ObjectStore], ObjectStore] | None = None) -> Vault:
    store: ObjectStore = LocalStore(root, fsync=False)
    vault = await Vault.open(wrap(store) if wrap else store, PW)
    await vault.load_index()
    return vault


def make_tree(src: Path, files: dict[str, int], seed: int) -> None:
    rng = random.Random(seed)
    for name, size in files.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))


def expected(src: Path) -> dict[bytes, bytes]:
    base = os.fsencode(src).lstrip(b"/")
    return {
        base + b"/" + os.fsencode(p.relative_to(src)): p.read_bytes()
        for p in sorted(src.rglob("*"))
        if p.is_file()
    }


async def assert_intact(root: Path, result: BackupResult, src: Path) -> None:
    """The snapshot restores byte for byte, and `check` (reading every blob) finds no damage."""
    vault = await reopen(root)
    ref = await vault.find_snapshot(result.snapshot_id.hex())
    target = root.parent / f"restored-{result.snapshot_id.short()}"
    restored = await restore(vault, RestorePlan(snapshot=ref, target=target))
    assert restored.problems == ()
    got = {
        os.fsencode(p.relative_to(target)): p.read_bytes()
        for p in sorted(target.rglob("*"))
        if p.is_file()
    }
    assert got == expected(src)
    report = await check(await reopen(root), read_data=True)
    assert report.ok, report.damage


async def used_blobs(vault: Vault, sid: ObjectId) -> set[bytes]:
    snap = await vault.load_snapshot(sid)
    used = {snap.tree.raw}
    async for _, node in walk(vault, snap.tree):
        used.update(c.raw for c in node.content)
        if node.subtree is not None:
            used.add(node.subtree.raw)
    return used


def listing(root: Path) -> list[tuple[str, int]]:
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()
    )


def pack_files(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (root / "packs").rglob("*") if p.is_file()}


async def marked_packs(root: Path) -> set[ObjectId]:
    vault = await reopen(root)
    return {p for m in (await vault.load_deletions()).values() for p in m.packs}


async def run_backup(root: Path, src: Path) -> BackupResult:
    return await backup(await reopen(root), BackupPlan(paths=(str(src),)))


@pytest.fixture
async def forgotten(tmp_path: Path) -> tuple[Path, Path, BackupResult]:
    """A vault with two backups of different folders; the first one is forgotten."""
    root, src_a, src_b = tmp_path / "vault", tmp_path / "a", tmp_path / "b"
    make_tree(src_a, {"one.bin": 50_000, "sub/two.bin": 20_000}, seed=1)
    make_tree(src_b, {"three.bin": 40_000, "sub/four.bin": 10_000}, seed=2)
    vault = await make_vault(root)
    first = await backup(vault, BackupPlan(paths=(str(src_a),)))
    second = await backup(vault, BackupPlan(paths=(str(src_b),)))
    await forget(await reopen(root), ids=[first.snapshot_id.hex()])
    return root, src_b, second


# ---- the two phases -----------------------------------------------------------------------


async def test_prune_marks_first_and_deletes_only_after_the_grace_period(
    forgotten: tuple[Path, Path, BackupResult],
) -> None:
    root, src_b, second = forgotten
    packs_before = pack_files(root)
    now = time.time_ns()

    first = await prune(await reopen(root), now_ns=now)
    assert first.marked_packs == 2  # the forgotten snapshot's data pack and tree pack
    assert first.marked_bytes > 0
    assert (first.deleted_packs, first.pending_packs) == (0, 2)
    assert pack_files(root) == packs_before

    early = await prune(await reopen(root), now_ns=now + HOUR_NS // 2)
    assert (early.marked_packs, early.deleted_packs, early.pending_packs) == (0, 0, 2)
    assert pack_files(root) == packs_before

    late = await prune(await reopen(root), now_ns=now + 2 * HOUR_NS)
    assert late.deleted_packs == 2
    assert late.deleted_bytes == first.marked_bytes
    assert (late.marked_packs, late.pending_packs) == (0, 0)
    assert len(pack_files(root)) == len(packs_before) - 2
    assert await marked_packs(root) == set()
    await assert_intact(root, second, src_b)


async def test_prune_grace_zero_reclaims_in_one_run(
    forgotten: tuple[Path, Path, BackupResult],
) -> None:
    root, src_b, second = forgotten
    packs_before = pack_files(root)

    result = await prune(await reopen(root), grace=timedelta(0))

    assert (result.marked_packs, result.deleted_packs, result.pending_packs) == (2, 2, 0)
    assert result.deleted_bytes == result.marked_bytes
    assert len(pack_files(root)) == len(packs_before) - 2
    assert await marked_packs(root) == set()
    fresh = await reopen(root)
    assert fresh.unindexed_packs == set()
    await assert_intact(root, second, src_b)


async def test_prune_counts_a_markers_age_from_when_it_was_stored(
    forgotten: tuple[Path, Path, BackupResult],
) -> None:
    """A marker from a device whose clock runs 10 hours behind is not due at once."""
    root, src_b, second = forgotten
    vault = await reopen(root)
    unused = [pid for pid in vault.index.packs if pid not in second.snapshot.packs]
    now = time.time_ns()
    marker = DeletionMarker(now - 10 * HOUR_NS, tuple(unused))
    await vault.put_object(ObjectKind.DELETION, encode_deletion(marker))

    early = await prune(await reopen(root), now_ns=now)
    assert (early.marked_packs, early.deleted_packs, early.pending_packs) == (0, 0, 2)

    late = await prune(await reopen(root), now_ns=now + 2 * HOUR_NS)
    assert (late.deleted_packs, late.pending_packs) == (2, 0)
    await assert_intact(root, second, src_b)


async def test_prune_with_nothing_unused_deletes_nothing(tmp_path: Path) -> None:
    root, src = tmp_path / "vault", tmp_path / "src"
    make_tree(src, {"x.bin": 30_000}, seed=3)
    vault = await make_vault(root)
    result = await backup(vault, BackupPlan(paths=(str(src),)))
    before = listing(root)

    pruned = await prune(await reopen(root), grace=timedelta(0))

    assert pruned == PruneResult(
        marked_packs=0,
        marked_bytes=0,
        deleted_packs=0,
        deleted_bytes=0,
        repacked_packs=0,
        repacked_bytes=0,
        pending_packs=0,
        index_segments_before=1,
        index_segments_after=1,
    )
    assert listing(root) == before
    await assert_intact(root, result, src)


async def test_prune_folds_index_segments_into_one(tmp_path: Path) -> None:
    root, src = tmp_path / "vault", tmp_path / "src"
    make_tree(src, {"x.bin": 30_000}, seed=4)
    vault = await make_vault(root)
    await backup(vault, BackupPlan(paths=(str(src),)))
    (src / "y.bin").write_bytes(random.Random(5).randbytes(30_000))
    last = await backup(vault, BackupPlan(paths=(str(src),)))

    result = await prune(await reopen(root))

    assert (result.index_segments_before, result.index_segments_after) == (2, 1)
    fresh = await reopen(root)
    assert len(fresh.index.segments) == 1 and fresh.unindexed_packs == set()
    await assert_intact(root, last, src)


# ---- repacking ----------------------------------------------------------------------------


async def test_prune_repacks_a_partly_used_pack(tmp_path: Path) -> None:
    root, src = tmp_path / "vault", tmp_path / "src"
    # Files below the minimum chunk size are one blob each: 4 of them fill a 256 KiB pack.
    make_tree(src, {f"f{i}.bin": 64 * 1024 for i in range(8)}, seed=6)
    vault = await make_vault(root, pack_size=256 * 1024)
    first = await backup(vault, BackupPlan(paths=(str(src),)))
    for i in range(3):
        (src / f"f{i}.bin").unlink()
    second = await backup(vault, BackupPlan(paths=(str(src),)))
    await forget(await reopen(root), ids=[first.snapshot_id.hex()])
    bytes_before = sum(pack_files(root).values())

    result = await prune(await reopen(root), grace=timedelta(0))

    assert result.repacked_packs >= 1
    assert result.repacked_bytes > 0
    assert result.deleted_packs == result.marked_packs >= result.repacked_packs
    # The three deleted files (~192 KiB) are gone; what is left is the five kept files.
    assert sum(pack_files(root).values()) < bytes_before - 150 * 1024
    fresh = await reopen(root)
    await assert_intact(root, second, src)
    stored = {
        e.id.raw
        for entries in fresh.index.packs.values()
        for e in entries
        if e.type == BlobType.DATA
    }
    assert len(stored) == 5 and stored <= await used_blobs(fresh, second.snapshot_id)

    again = await prune(await reopen(root), grace=timedelta(0))
    assert (again.marked_packs, again.repacked_packs, again.deleted_packs) == (0, 0, 0)


async def test_prune_repack_threshold_one_never_repacks(tmp_path: Path) -> None:
    root, src = tmp_path / "vault", tmp_path / "src"
    make_tree(src, {f"f{i}.bin": 64 * 1024 for i in range(4)}, seed=7)
    vault = await make_vault(root, pack_size=256 * 1024)
    first = await backup(vault, BackupPlan(paths=(str(src),)))
    (src / "f0.bin").unlink()
    await backup(vault, BackupPlan(paths=(str(src),)))
    await forget(await reopen(root), ids=[first.snapshot_id.hex()])

    result = await prune(await reopen(root), grace=timedelta(0), repack_threshold=1.0)

    assert result.repacked_packs == 0


# ---- concurrent backups -------------------------------------------------------------------


async def test_prune_sweep_keeps_packs_a_backup_started_before_the_marker_uses(
    tmp_path: Path,
) -> None:
    """THE safety test: a backup that loaded its index before the marker was written dedups
    against the marked packs; the sweep must see its snapshot and keep those packs."""
    root, src = tmp_path / "vault", tmp_path / "src"
    make_tree(src, {"one.bin": 50_000, "sub/two.bin": 20_000}, seed=8)
    vault = await make_vault(root)
    first = await backup(vault, BackupPlan(paths=(str(src),)))
    await forget(await reopen(root), ids=[first.snapshot_id.hex()])  # everything is unused

    reached, gate = asyncio.Event(), asyncio.Event()

    async def hold_snapshot(key: ObjectKey) -> None:
        if key.kind == ObjectKind.SNAPSHOT:
            reached.set()
            await gate.wait()

    late = await Vault.open(
        HookedStore(LocalStore(root, fsync=False), before_put=hold_snapshot), PW
    )
    running = asyncio.create_task(backup(late, BackupPlan(paths=(str(src),))))
    await reached.wait()  # index loaded, packs uploaded and indexed: only the snapshot is left

    now = time.time_ns()
    marking = await prune(await reopen(root), now_ns=now)
    marked = await marked_packs(root)
    markers = set(await (await reopen(root)).load_deletions())
    assert marking.marked_packs == len(marked) >= 2
    gate.set()
    second = await running
    # It reused the forgotten snapshot's blobs, which sit in marked packs.
    used = await used_blobs(late, second.snapshot_id)
    holders = {
        pid
        for pid, entries in (await reopen(root)).index.packs.items()
        for e in entries
        if e.id.raw in used
    }
    assert holders & marked

    sweep = await prune(await reopen(root), now_ns=now + 2 * HOUR_NS)

    assert sweep.deleted_packs < len(marked)
    assert holders <= {ObjectId.from_hex(name) for name in pack_files(root)}
    assert not markers & set(await (await reopen(root)).load_deletions())  # swept markers go
    await assert_intact(root, second, src)


async def test_prune_backup_started_after_the_marker_uploads_again(tmp_path: Path) -> None:
    root, src = tmp_path / "vault", tmp_path / "src"
    make_tree(src, {"one.bin": 50_000, "sub/two.bin": 20_000}, seed=9)
    vault = await make_vault(root)
    first = await backup(vault, BackupPlan(paths=(str(src),)))
    await forget(await reopen(root), ids=[first.snapshot_id.hex()])
    now = time.time_ns()
    marking = await prune(await reopen(root), now_ns=now)
    marked = await marked_packs(root)

    second = await run_backup(root, src)

    assert second.snapshot.stats.new_blobs > 0
    fresh = await reopen(root)
    for blob in await used_blobs(fresh, second.snapshot_id):
        holders = {
            pid for pid, entries in fresh.index.packs.items() for e in entries if e.id.raw == blob
        }
        assert holders - marked, "a new backup must not rely on a marked pack"
    sweep = await prune(await reopen(root), now_ns=now + 2 * HOUR_NS)
    assert sweep.deleted_packs == marking.marked_packs
    await assert_intact(root, second, src)


async def test_prune_takes_in_a_snapshot_written_during_the_run(tmp_path: Path) -> None:
    """grace=0 is unsafe with concurrent backups, but a snapshot that lands before the
    deletions start is still seen (prune lists snapshots again before deleting)."""
    root, src = tmp_path / "vault", tmp_path / "src"
    make_tree(src, {"one.bin": 50_000}, seed=10)
    vault = await make_vault(root)
    first = await backup(vault, BackupPlan(paths=(str(src),)))
    await forget(await reopen(root), ids=[first.snapshot_id.hex()])

    reached, gate = asyncio.Event(), asyncio.Event()

    async def hold_snapshot(key: ObjectKey) -> None:
        if key.kind == ObjectKind.SNAPSHOT:
            reached.set()
            await gate.wait()

    late = await Vault.open(
        HookedStore(LocalStore(root, fsync=False), before_put=hold_snapshot), PW
    )
    running = asyncio.create_task(backup(late, BackupPlan(paths=(str(src),))))
    await reached.wait()

    async def finish_backup_when_marking(key: ObjectKey) -> None:
        if key.kind == ObjectKind.DELETION and not gate.is_set():
            gate.set()
            await running

    pruner = await Vault.open(
        HookedStore(LocalStore(root, fsync=False), before_put=finish_backup_when_marking), PW
    )
    result = await prune(pruner, grace=timedelta(0))

    second = running.result()
    assert result.marked_packs >= 2
    assert result.deleted_packs < result.marked_packs
    await assert_intact(root, second, src)


async def test_prune_keeps_the_packs_a_checkpoint_lists(tmp_path: Path) -> None:
    """A running backup's checkpoint lists the packs of a file still being read (no tree
    names them yet): prune must neither mark nor sweep them while the checkpoint exists."""
    root, src_a, src_b = tmp_path / "vault", tmp_path / "a", tmp_path / "b"
    make_tree(src_a, {"x.bin": 30_000}, seed=40)
    make_tree(src_b, {"y.bin": 30_000}, seed=41)
    vault = await make_vault(root)
    first = await backup(vault, BackupPlan(paths=(str(src_a),)))
    second = await backup(vault, BackupPlan(paths=(str(src_b),)))
    await forget(vault, ids=[first.snapshot_id.hex()])
    [in_flight] = [
        pid for pid in first.snapshot.packs if vault.index.packs[pid][0].type == BlobType.DATA
    ]
    checkpoint = await vault.save_snapshot(
        replace(second.snapshot, checkpoint=True, packs=(*second.snapshot.packs, in_flight))
    )

    result = await prune(await reopen(root), grace=timedelta(0))

    assert (result.marked_packs, result.deleted_packs) == (1, 1)  # the old tree pack only
    assert in_flight.hex() in pack_files(root)
    await forget(await reopen(root), ids=[checkpoint.hex()])
    after = await prune(await reopen(root), grace=timedelta(0))
    assert (after.marked_packs, after.deleted_packs) == (1, 1)
    assert in_flight.hex() not in pack_files(root)
    await assert_intact(root, second, src_b)


async def test_prune_folding_leaves_a_concurrently_written_segment_alone(tmp_path: Path) -> None:
    root, src_a, src_b, src_c = (tmp_path / n for n in ("vault", "a", "b", "c"))
    for i, src in enumerate((src_a, src_b, src_c)):
        make_tree(src, {"x.bin": 30_000 + i}, seed=20 + i)
    vault = await make_vault(root)
    first = await backup(vault, BackupPlan(paths=(str(src_a),)))
    kept = await backup(vault, BackupPlan(paths=(str(src_b),)))
    await forget(vault, ids=[first.snapshot_id.hex()])
    segments_before = {p for p in (root / "index").rglob("*") if p.is_file()}
    concurrent: list[BackupResult] = []

    async def back_up_meanwhile(key: ObjectKey) -> None:
        if key.kind == ObjectKind.DELETION and not concurrent:
            concurrent.append(await run_backup(root, src_c))

    # The hook runs when prune writes its marker: after it read the index, before it folds it.
    pruner = await Vault.open(
        HookedStore(LocalStore(root, fsync=False), before_put=back_up_meanwhile), PW
    )
    result = await prune(pruner)

    assert concurrent, "the hook ran while prune worked"
    assert (result.index_segments_before, result.index_segments_after) == (2, 2)
    remaining = {p for p in (root / "index").rglob("*") if p.is_file()}
    assert len(remaining) == 2 and not remaining & segments_before
    fresh = await reopen(root)
    assert len(fresh.index.segments) == 2 and fresh.unindexed_packs == set()
    await assert_intact(root, concurrent[0], src_c)
    await assert_intact(root, kept, src_b)


# Two holes on the backup side (client_gui/engine/backup.py, not prune): a backup must never
# trust a pack again once it has seen it marked, and must read the markers before the index.
# Each test stages its race exactly (they were strict xfails until backup.py was fixed).


async def _forgotten_blob(root: Path, tmp_path: Path) -> bytes:
    """A vault whose only snapshot was forgotten; returns the content of its one file."""
    old = tmp_path / "old"
    make_tree(old, {"x.bin": 40_000}, seed=30)
    vault = await make_vault(root)
    first = await backup(vault, BackupPlan(paths=(str(old),)))
    await forget(vault, ids=[first.snapshot_id.hex()])
    return (old / "x.bin").read_bytes()


async def test_prune_sweep_during_a_long_backup_keeps_its_snapshot_whole(tmp_path: Path) -> None:
    root, src = tmp_path / "vault", tmp_path / "src"
    content = await _forgotten_blob(root, tmp_path)
    make_tree(src, {"a.bin": 1000, "b.bin": 1000}, seed=31)
    (src / "zz.bin").write_bytes(content)  # read last, after the sweep
    now = time.time_ns()
    checkpoints = 0

    async def prune_at_checkpoints(key: ObjectKey) -> None:
        nonlocal checkpoints
        if key.kind != ObjectKind.SNAPSHOT:
            return
        checkpoints += 1
        if checkpoints == 1:  # the backup sees this marker at its first checkpoint
            await prune(await reopen(root), now_ns=now)
        elif checkpoints == 2:  # a grace period later: swept before the backup reads zz.bin
            await prune(await reopen(root), now_ns=now + 2 * HOUR_NS)

    long = await Vault.open(
        HookedStore(LocalStore(root, fsync=False), before_put=prune_at_checkpoints), PW
    )
    result = await backup(long, BackupPlan(paths=(str(src),), checkpoint_interval=0))

    await assert_intact(root, result, src)


async def test_prune_sweep_while_a_backup_starts_keeps_its_snapshot_whole(tmp_path: Path) -> None:
    root, src = tmp_path / "vault", tmp_path / "src"
    content = await _forgotten_blob(root, tmp_path)
    make_tree(src, {"a.bin": 1000}, seed=32)
    (src / "x.bin").write_bytes(content)
    now = time.time_ns()
    await prune(await reopen(root), now_ns=now)  # marks the forgotten pack
    swept = False

    async def sweep_before_markers(kind: ObjectKind) -> None:
        nonlocal swept
        if kind == ObjectKind.DELETION and not swept:
            swept = True
            await prune(await reopen(root), now_ns=now + 2 * HOUR_NS)

    starting = await Vault.open(
        HookedStore(LocalStore(root, fsync=False), before_list=sweep_before_markers), PW
    )
    result = await backup(starting, BackupPlan(paths=(str(src),)))

    assert swept
    await assert_intact(root, result, src)


# ---- dry run, refusals, append-only -------------------------------------------------------


async def test_prune_dry_run_changes_nothing_and_predicts_the_real_run(tmp_path: Path) -> None:
    root, src = tmp_path / "vault", tmp_path / "src"
    make_tree(src, {f"f{i}.bin": 64 * 1024 for i in range(8)}, seed=11)
    vault = await make_vault(root, pack_size=256 * 1024)
    first = await backup(vault, BackupPlan(paths=(str(src),)))
    (src / "f0.bin").unlink()
    (src / "f5.bin").unlink()
    await backup(vault, BackupPlan(paths=(str(src),)))
    await forget(await reopen(root), ids=[first.snapshot_id.hex()])
    before = listing(root)

    dry = await prune(await reopen(root), grace=timedelta(0), dry_run=True)
    dry_marking = await prune(await reopen(root), dry_run=True)

    assert listing(root) == before
    assert dry.deleted_packs > 0 and dry.repacked_packs > 0
    assert dry_marking.marked_packs == dry.marked_packs and dry_marking.deleted_packs == 0
    real = await prune(await reopen(root), grace=timedelta(0))
    assert real == dry


async def test_prune_refuses_when_a_pack_a_snapshot_needs_is_missing(
    forgotten: tuple[Path, Path, BackupResult],
) -> None:
    root, _, second = forgotten
    vault = await reopen(root)
    data_pack = next(
        pid for pid in second.snapshot.packs if vault.index.packs[pid][0].type == BlobType.DATA
    )
    await vault.store.delete(ObjectKey.of(ObjectKind.PACK, data_pack))
    before = listing(root)

    with pytest.raises(DamageFound, match="cairn check"):
        await prune(await reopen(root), grace=timedelta(0))

    assert listing(root) == before


async def test_prune_refuses_when_a_snapshot_is_unreadable(
    forgotten: tuple[Path, Path, BackupResult],
) -> None:
    root, _, second = forgotten
    name = second.snapshot_id.hex()
    path = next(p for p in (root / "snapshots").rglob(name))
    path.write_bytes(b"not a snapshot")
    before = listing(root)

    with pytest.raises(DamageFound):
        await prune(await reopen(root), grace=timedelta(0))

    assert listing(root) == before


async def test_prune_on_an_append_only_store_raises_permission_denied(
    forgotten: tuple[Path, Path, BackupResult],
) -> None:
    root, src_b, second = forgotten

    with pytest.raises(PermissionDenied):
        await prune(await reopen(root, AppendOnlyStore), grace=timedelta(0))

    await assert_intact(root, second, src_b)


async def test_prune_cancelled_before_deciding_changes_nothing(
    forgotten: tuple[Path, Path, BackupResult],
) -> None:
    root, _, _ = forgotten
    before = listing(root)
    token = CancelToken()
    token.cancel()

    with pytest.raises(Cancelled):
        await prune(await reopen(root), grace=timedelta(0), cancel=token)

    assert listing(root) == before


class Recorder:
    def __init__(self) -> None:
        self.phases: list[str] = []

    def progress(self, p: Progress) -> None:
        assert isinstance(p, CheckProgress)
        self.phases.append(p.phase)

    def problem(self, item: ItemProblem) -> None:
        raise AssertionError(f"unexpected problem {item}")


async def test_prune_reports_progress(forgotten: tuple[Path, Path, BackupResult]) -> None:
    root, _, _ = forgotten
    sink = Recorder()

    await prune(await reopen(root), grace=timedelta(0), progress=sink)

    assert "prune: reading snapshots" in sink.phases


@pytest.mark.parametrize(
    ("grace", "threshold"),
    [
        (timedelta(seconds=-1), 0.2),
        (timedelta(hours=1), -0.1),
        (timedelta(hours=1), 1.5),
    ],
)
async def test_prune_rejects_bad_arguments(
    tmp_path: Path, grace: timedelta, threshold: float
) -> None:
    vault = await make_vault(tmp_path / "vault")
    with pytest.raises(UsageError):
        await prune(vault, grace=grace, repack_threshold=threshold)


async def test_prune_removes_stale_temp_files_of_killed_backups(tmp_path: Path) -> None:
    root = tmp_path / "vault"
    await make_vault(root)
    stale, fresh = root / "tmp" / ("a" * 32 + ".tmp"), root / "tmp" / ("b" * 32 + ".tmp")
    stale.write_bytes(b"half a pack")
    fresh.write_bytes(b"an upload in progress")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))

    dry = await prune(await reopen(root), dry_run=True)
    assert dry.temp_files_removed == 0 and stale.exists()
    result = await prune(await reopen(root))

    assert result.temp_files_removed == 1
    assert not stale.exists() and fresh.exists()
