"""Tests for `check`: real backups in a LocalStore under tmp_path, then damage on disk.

The vault's files: packs/<xx>/<name>, index/<name>, snapshots/<name>, keys/<name>.
"""

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from client_gui.engine.backup import BackupPlan, backup
from client_gui.engine.check import PATHS_SHOWN, CheckReport, Damage, DamageKind, check
from client_gui.engine.progress import CancelToken, CheckProgress, ItemProblem, Progress
from client_gui.engine.vault import BlobLocation, Vault
from client_gui.engine.walk import lookup
from shared.crypto.kdf import new_params
from shared.errors import Cancelled
from shared.format.deletion import DeletionMarker, encode_deletion
from shared.ids import BlobType, ObjectId, ObjectKind
from shared.storage.local import LocalStore

PASSPHRASE = "correct horse"
PACK_SIZE = 256 * 1024  # small packs: the random file spreads over several


@dataclass(frozen=True, slots=True)
class Made:
    root: Path  # the vault folder
    src: Path  # the backed-up folder
    snap1: ObjectId  # a.txt, b.txt, sub/c.txt, big.bin (random, several chunks)
    snap2: ObjectId  # the same plus d.txt

    def shown(self, rel: str) -> str:
        """A source path as check displays it."""
        return str(self.src / rel)

    def pack_file(self, pack: ObjectId) -> Path:
        return self.root / "packs" / pack.hex()[:2] / pack.hex()

    def objects(self, kind: ObjectKind) -> set[Path]:
        return set((self.root / kind.value).iterdir())


async def _open(root: Path) -> Vault:
    return await Vault.open(LocalStore(root, fsync=False), PASSPHRASE)


async def _create(root: Path) -> None:
    await LocalStore.create(root, fsync=False)
    await Vault.create(
        LocalStore(root, fsync=False), PASSPHRASE, kdf=new_params(1, 8 << 20), pack_size=PACK_SIZE
    )


async def _backup(root: Path, src: Path) -> ObjectId:
    vault = await _open(root)
    return (await backup(vault, BackupPlan(paths=(str(src),)))).snapshot_id


@pytest.fixture
async def made(tmp_path: Path) -> Made:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n" * 200)
    (src / "b.txt").write_text("bravo\n" * 300)
    (src / "sub" / "c.txt").write_text("charlie\n" * 100)
    # Larger than the biggest chunk (4 MiB): always at least two chunks, so two packs.
    (src / "big.bin").write_bytes(random.Random(7).randbytes(4608 * 1024))
    root = tmp_path / "vault"
    await _create(root)
    snap1 = await _backup(root, src)
    (src / "d.txt").write_text("delta\n" * 50)
    snap2 = await _backup(root, src)
    return Made(root, src, snap1, snap2)


async def _check(
    made: Made, *, read_data: bool = False, verify_pack_hashes: bool = False
) -> CheckReport:
    vault = await _open(made.root)
    return await check(vault, read_data=read_data, verify_pack_hashes=verify_pack_hashes)


async def _locate(made: Made, rel: str, chunk: int = 0) -> BlobLocation:
    """Where the `chunk`-th data blob of the file `rel` (in snapshot 2) is stored."""
    vault = await _open(made.root)
    await vault.load_index()
    loc = vault.index.get(await _blob(made, rel, chunk))
    assert loc is not None
    return loc


async def _blob(made: Made, rel: str, chunk: int = 0) -> ObjectId:
    """The `chunk`-th data blob of the file `rel` in snapshot 2."""
    vault = await _open(made.root)
    await vault.load_index()
    snap = await vault.load_snapshot(made.snap2)
    node = await lookup(vault, snap.tree, str(made.src / rel))
    assert node is not None
    return node.content[chunk]


async def _tree_location(made: Made) -> tuple[ObjectId, BlobLocation]:
    """The tree of the backed-up folder in snapshot 2 (a tree only that snapshot has)."""
    vault = await _open(made.root)
    await vault.load_index()
    snap = await vault.load_snapshot(made.snap2)
    node = await lookup(vault, snap.tree, str(made.src))
    assert node is not None and node.subtree is not None
    loc = vault.index.get(node.subtree)
    assert loc is not None
    return node.subtree, loc


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


def _kinds(report: CheckReport) -> list[str]:
    return [d.kind for d in report.damage]


def _only(report: CheckReport, kind: DamageKind) -> Damage:
    found = [d for d in report.damage if d.kind == kind]
    assert len(found) == 1, report.damage
    return found[0]


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[Progress] = []

    def progress(self, p: Progress) -> None:
        self.seen.append(p)

    def problem(self, item: ItemProblem) -> None:
        raise AssertionError(item)


async def test_check_clean_vault_is_ok(made: Made) -> None:
    report = await _check(made)
    assert report.ok
    assert report.damage == () and report.warnings == ()
    assert report.snapshots == 2
    assert report.packs == len(list((made.root / "packs").glob("*/*")))
    assert report.trees >= 6  # root, tmp..., src and sub, in two versions
    assert report.blobs >= 6  # a, b, c, d and at least two chunks of big.bin
    assert report.bytes_read > 0


async def test_check_clean_vault_is_ok_when_reading_everything(made: Made) -> None:
    report = await _check(made, read_data=True, verify_pack_hashes=True)
    assert report.ok, report.damage
    packs_bytes = sum(p.stat().st_size for p in (made.root / "packs").glob("*/*"))
    assert report.bytes_read >= packs_bytes


async def test_check_pack_hash_finds_flipped_data_byte(made: Made) -> None:
    loc = await _locate(made, "big.bin")
    _flip(made.pack_file(loc.pack), loc.offset + loc.length // 2)

    assert (await _check(made)).ok  # headers and trees are intact: only reading data sees it
    report = await _check(made, verify_pack_hashes=True)

    damage = _only(report, DamageKind.PACK_DAMAGED)
    assert _kinds(report) == ["pack_damaged"]
    assert damage.object == f"packs/{loc.pack.hex()}"
    assert "does not match its name" in damage.message
    assert made.shown("big.bin") in damage.paths
    assert damage.snapshots == (made.snap1.hex(), made.snap2.hex())


async def test_check_read_data_names_the_damaged_file_only(made: Made) -> None:
    loc = await _locate(made, "a.txt")
    _flip(made.pack_file(loc.pack), loc.offset + loc.length // 2)

    report = await _check(made, read_data=True)

    assert not report.ok
    blob = _only(report, DamageKind.BLOB_DAMAGED)
    assert blob.object == f"blobs/{(await _blob(made, 'a.txt')).hex()}"
    assert blob.paths == (made.shown("a.txt"),)
    assert blob.snapshots == (made.snap1.hex(), made.snap2.hex())
    # read_data reads packs whole, so the pack hash is checked too; it names no file itself.
    pack = _only(report, DamageKind.PACK_DAMAGED)
    assert pack.object == f"packs/{loc.pack.hex()}" and pack.paths == ()


async def test_check_flipped_tree_byte_is_tree_damaged_without_read_data(made: Made) -> None:
    tree_id, loc = await _tree_location(made)
    _flip(made.pack_file(loc.pack), loc.offset + loc.length // 2)

    report = await _check(made)

    damage = _only(report, DamageKind.TREE_DAMAGED)
    assert damage.object == f"trees/{tree_id.hex()}"
    assert damage.paths == (str(made.src),)
    assert damage.snapshots == (made.snap2.hex(),)
    assert "authentication failed" in damage.message


async def test_check_truncated_pack_names_lost_files(made: Made) -> None:
    loc = await _locate(made, "big.bin", chunk=1)
    path = made.pack_file(loc.pack)
    os.truncate(path, loc.offset + loc.length // 2)

    report = await _check(made)

    damage = _only(report, DamageKind.PACK_TRUNCATED)
    assert damage.object == f"packs/{loc.pack.hex()}"
    # A chunk bigger than the pack size fills its pack: it is the pack's last blob, and the
    # small files' blobs packed before it are intact.
    assert damage.paths == (made.shown("big.bin"),)
    assert damage.snapshots == (made.snap1.hex(), made.snap2.hex())


async def test_check_missing_pack_names_files_and_both_snapshots(made: Made) -> None:
    loc = await _locate(made, "a.txt")
    made.pack_file(loc.pack).unlink()

    report = await _check(made)

    damage = _only(report, DamageKind.PACK_MISSING)
    assert _kinds(report) == ["pack_missing"]
    assert damage.object == f"packs/{loc.pack.hex()}"
    assert made.shown("a.txt") in damage.paths
    assert made.shown("d.txt") not in damage.paths  # d.txt was stored by the second backup
    assert damage.snapshots == (made.snap1.hex(), made.snap2.hex())
    assert "affects" in damage.message


async def test_check_missing_index_is_damage_naming_snapshots(made: Made) -> None:
    for path in made.objects(ObjectKind.INDEX):
        path.unlink()

    report = await _check(made)

    assert not report.ok
    assert set(_kinds(report)) == {"index_missing"}
    assert all("the next `cairn backup` re-indexes it" in d.message for d in report.damage)
    assert {s for d in report.damage for s in d.snapshots} == {made.snap1.hex(), made.snap2.hex()}
    paths = {p for d in report.damage for p in d.paths}
    assert {made.shown("a.txt"), made.shown("d.txt"), made.shown("big.bin")} <= paths
    assert report.trees >= 6  # the trees were still read, from the unindexed packs


async def test_check_missing_pack_and_index_is_blob_missing(made: Made) -> None:
    loc = await _locate(made, "big.bin")
    loc_blob = await _blob(made, "big.bin")
    made.pack_file(loc.pack).unlink()
    for path in made.objects(ObjectKind.INDEX):
        path.unlink()

    report = await _check(made)

    assert set(_kinds(report)) == {"blob_missing", "index_missing"}
    missing = [d for d in report.damage if d.kind == DamageKind.BLOB_MISSING]
    damage = next(d for d in missing if d.paths == (made.shown("big.bin"),))
    assert damage.object == f"blobs/{loc_blob.hex()}"
    assert damage.snapshots == (made.snap1.hex(), made.snap2.hex())
    assert "no pack holds it" in damage.message


async def test_check_index_contradicting_pack_header_is_pack_damaged(made: Made) -> None:
    vault = await _open(made.root)
    await vault.load_index()
    blob = await _blob(made, "a.txt")
    loc = vault.index.get(blob)
    assert loc is not None
    packs = dict(vault.index.packs)
    packs[loc.pack] = tuple(
        e._replace(length=e.length - 1) if e.id == blob else e for e in packs[loc.pack]
    )
    for path in made.objects(ObjectKind.INDEX):
        path.unlink()
    await vault.save_index(packs)

    report = await _check(made)

    damage = _only(report, DamageKind.PACK_DAMAGED)
    assert _kinds(report) == ["pack_damaged"]
    assert "its header does not match the index (2 entries differ)" in damage.message
    assert damage.paths == (made.shown("a.txt"),)


async def test_check_lists_a_capped_number_of_paths(tmp_path: Path) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(PATHS_SHOWN + 5):
        (src / f"f{i:02}.txt").write_text(f"file {i}\n" * 10)
    root = tmp_path / "vault"
    await _create(root)
    snap = await _backup(root, src)
    vault = await _open(root)
    await vault.load_index()
    for pack, entries in vault.index.packs.items():
        if entries[0].type == BlobType.DATA:
            (root / "packs" / pack.hex()[:2] / pack.hex()).unlink()

    report = await check(await _open(root))

    damage = _only(report, DamageKind.PACK_MISSING)
    assert damage.paths == tuple(str(src / f"f{i:02}.txt") for i in range(PATHS_SHOWN))
    assert damage.more_paths == 5
    assert damage.snapshots == (snap.hex(),)
    assert damage.message.endswith(f"affects {PATHS_SHOWN + 5} paths in 1 snapshot")


async def test_check_damaged_snapshot_object(made: Made) -> None:
    _flip(made.root / "snapshots" / made.snap1.hex(), 10)

    report = await _check(made)

    damage = _only(report, DamageKind.SNAPSHOT_DAMAGED)
    assert _kinds(report) == ["snapshot_damaged"]
    assert damage.object == f"snapshots/{made.snap1.hex()}"
    assert damage.snapshots == (made.snap1.hex(),)
    assert report.snapshots == 1


async def test_check_damaged_key_slot(made: Made) -> None:
    vault = await _open(made.root)
    other = next(p for p in made.objects(ObjectKind.KEY) if p.name != vault.slot_name)
    _flip(other, other.stat().st_size // 2)

    report = await _check(made)

    damage = _only(report, DamageKind.KEY_DAMAGED)
    assert _kinds(report) == ["key_damaged"]
    assert damage.object == f"keys/{other.name}"


async def test_check_damaged_index_segment(made: Made) -> None:
    segment = sorted(made.objects(ObjectKind.INDEX))[0]
    _flip(segment, 40)

    report = await _check(made)

    damage = _only(report, DamageKind.INDEX_DAMAGED)
    assert damage.object == f"index/{segment.name}"
    # Its packs are now in no index: the files they hold are named under index_missing.
    assert set(_kinds(report)) == {"index_damaged", "index_missing"}


async def test_check_unindexed_pack_of_interrupted_backup_is_only_a_warning(made: Made) -> None:
    indexes = made.objects(ObjectKind.INDEX)
    (made.src / "e.txt").write_text("echo\n" * 70)
    snap3 = await _backup(made.root, made.src)
    for path in made.objects(ObjectKind.INDEX) - indexes:
        path.unlink()  # the backup stopped before writing its index and snapshot
    (made.root / "snapshots" / snap3.hex()).unlink()

    report = await _check(made)

    assert report.ok, report.damage
    assert len(report.warnings) == 1
    assert "in no index, left by an interrupted backup" in report.warnings[0]


async def test_check_unindexed_pack_needed_by_a_snapshot_is_damage(made: Made) -> None:
    indexes = made.objects(ObjectKind.INDEX)
    (made.src / "e.txt").write_text("echo\n" * 70)
    snap3 = await _backup(made.root, made.src)
    for path in made.objects(ObjectKind.INDEX) - indexes:
        path.unlink()  # the snapshot stays: it needs the packs

    report = await _check(made)

    assert set(_kinds(report)) == {"index_missing"}
    assert {s for d in report.damage for s in d.snapshots} == {snap3.hex()}
    assert made.shown("e.txt") in {p for d in report.damage for p in d.paths}


async def test_check_missing_unused_pack_is_only_a_warning(made: Made) -> None:
    loc = await _locate(made, "d.txt")
    made.pack_file(loc.pack).unlink()
    (made.root / "snapshots" / made.snap2.hex()).unlink()  # as if forgotten, then half pruned

    report = await _check(made)

    assert report.ok, report.damage
    assert any("missing, but no snapshot uses their blobs" in w for w in report.warnings)


async def test_check_warns_about_pending_deletion_markers(made: Made) -> None:
    vault = await _open(made.root)
    loc = await _locate(made, "d.txt")
    await vault.put_object(
        ObjectKind.DELETION, encode_deletion(DeletionMarker(time_ns=1, packs=(loc.pack,)))
    )

    report = await _check(made)

    assert report.ok
    assert report.warnings == (
        "1 deletion marker pending for 1 pack: prune deletes the packs "
        "still unused after the grace period",
    )


async def test_check_reports_progress_phases(made: Made) -> None:
    recorder = _Recorder()
    vault = await _open(made.root)
    report = await check(vault, verify_pack_hashes=True, progress=recorder)
    seen = [p for p in recorder.seen if isinstance(p, CheckProgress)]
    assert len(seen) == len(recorder.seen)
    assert {p.phase for p in seen} == {"snapshots", "packs", "data", "trees"}
    last = seen[-1]
    assert last.phase == "trees" and last.done == last.total == report.trees


async def test_check_honours_cancel(made: Made) -> None:
    token = CancelToken()
    token.cancel()
    vault = await _open(made.root)
    with pytest.raises(Cancelled):
        await check(vault, cancel=token)


def test_check_damage_kinds_are_stable() -> None:
    assert [k.value for k in DamageKind] == [
        "config_damaged",
        "key_damaged",
        "index_damaged",
        "snapshot_damaged",
        "pack_missing",
        "pack_truncated",
        "pack_damaged",
        "index_missing",
        "tree_damaged",
        "blob_missing",
        "blob_damaged",
    ]
