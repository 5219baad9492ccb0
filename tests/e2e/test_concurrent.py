"""Lock-free concurrency of the real CLI: backups running at the same time into one vault
(different data, or the very same blobs) and a prune racing a backup all succeed, every
snapshot restores byte for byte, `cairn check --read-data` passes, and a later
`forget --prune --grace 0` reclaims the space without damage.
"""

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client_gui.engine.prune import DEFAULT_REPACK_THRESHOLD
from tests.e2e.conftest import (
    Cli,
    Job,
    assert_same_tree,
    make_source,
    pack_sizes,
    restored,
    summary,
)

MiB = 1 << 20


def finish(job: Job, timeout: float = 120) -> dict[str, Any]:
    res = job.wait(timeout)
    assert res.code == 0, (res.code, res.stderr[-3000:])
    return summary(res.stdout)


def backups_at_once(cli: Cli, *sources: tuple[Path, ...]) -> list[dict[str, Any]]:
    """One `cairn backup` process per entry, all started before any is waited for."""
    jobs = [cli.start("--json", "backup", *map(str, paths)) for paths in sources]
    return [finish(job) for job in jobs]


def forget_and_prune(cli: Cli, snapshot_id: str) -> dict[str, Any]:
    res = cli.ok("--json", "forget", snapshot_id, "--prune", "--grace", "0")
    payload: dict[str, Any] = json.loads(res.stdout.splitlines()[-1])
    assert payload["removed"] == [snapshot_id]
    prune: dict[str, Any] = payload["prune"]
    return prune


def test_concurrent_backups_of_different_trees(
    make_cli: Callable[[str], Cli], tmp_path: Path
) -> None:
    a = make_source(tmp_path / "a", 32 * MiB, seed=11, max_file=4 * MiB)
    b = make_source(tmp_path / "b", 32 * MiB, seed=12, max_file=4 * MiB)
    cli = make_cli("vault")
    cli.init()
    sa, sb = backups_at_once(cli, (a,), (b,))
    snaps = {s["id"]: s for s in cli.snapshots()}
    assert set(snaps) == {sa["snapshot_id"], sb["snapshot_id"]}
    assert snaps[sa["snapshot_id"]]["paths"] == [str(a)]
    assert snaps[sb["snapshot_id"]]["paths"] == [str(b)]
    for s, src in ((sa, a), (sb, b)):
        target = tmp_path / f"restore-{src.name}"
        cli.restore(s["snapshot_id"], target)
        assert_same_tree(restored(target, src), src)
    cli.check_clean(quick=False)

    before = sum(pack_sizes(cli.vault).values())
    pr = forget_and_prune(cli, sa["snapshot_id"])
    after = sum(pack_sizes(cli.vault).values())
    print(f"\nforget a + prune: {before / MiB:.1f} -> {after / MiB:.1f} MiB of packs ({pr})")
    assert pr["deleted_bytes"] > 0 and after < before
    # a's data blobs were all unique to a: nearly all of its stored size is gone.
    assert before - after >= sa["stored_bytes"] // 2
    cli.check_clean(quick=False)
    target = tmp_path / "restore-b-after-prune"
    cli.restore(sb["snapshot_id"], target)
    assert_same_tree(restored(target, b), b)


@pytest.mark.parametrize("layout", ["same-folder", "copied-folder"])
def test_concurrent_backups_of_the_same_blobs(
    make_cli: Callable[[str], Cli], tmp_path: Path, layout: str
) -> None:
    a = make_source(tmp_path / "a", 40 * MiB, seed=13, max_file=4 * MiB)
    if layout == "same-folder":
        b = a
    else:  # the same files plus one of its own: two snapshots racing on nearly every blob
        b = tmp_path / "b"
        shutil.copytree(a, b)
        (b / "own.txt").write_text("only in b\n")
    cli = make_cli("vault")
    cli.init()
    sa, sb = backups_at_once(cli, (a,), (b,))
    stored = sum(pack_sizes(cli.vault).values())
    print(
        f"\ntwo racing backups stored {sa['stored_bytes'] / MiB:.1f} + "
        f"{sb['stored_bytes'] / MiB:.1f} MiB; the vault holds {stored / MiB:.1f} MiB of packs"
    )
    assert {s["id"] for s in cli.snapshots()} == {sa["snapshot_id"], sb["snapshot_id"]}
    for s, src in ((sa, a), (sb, b)):
        target = tmp_path / f"restore-{s['short_id']}"
        cli.restore(s["snapshot_id"], target)
        assert_same_tree(restored(target, src), src)
    cli.check_clean(quick=False)

    # Forgetting one snapshot leaves the other's blobs, but duplicate copies can go.
    pr = forget_and_prune(cli, sa["snapshot_id"])
    after = sum(pack_sizes(cli.vault).values())
    once = max(sa["stored_bytes"], sb["stored_bytes"])
    print(f"forget + prune: {stored / MiB:.1f} -> {after / MiB:.1f} MiB of packs ({pr})")
    # One copy of each blob (+ trees and pack headers), in packs that prune may keep with up
    # to its repack threshold of unused bytes: which blobs share a pack depends on the race.
    # This is what shows the copies stored twice were pruned. (How much the race stored twice
    # depends on timing: a backup that loads the index after the other saved its own stores
    # nothing twice, and backups of 40 MiB are fast enough to miss each other in a loaded
    # test run, so `after < stored * 0.7` failed now and then.)
    assert after <= (once + 2 * MiB) / (1 - DEFAULT_REPACK_THRESHOLD)
    cli.check_clean(quick=False)
    target = tmp_path / "restore-after-prune"
    cli.restore(sb["snapshot_id"], target)
    assert_same_tree(restored(target, b), b)


def test_prune_during_backup_damages_nothing(
    make_cli: Callable[[str], Cli], tmp_path: Path
) -> None:
    keep = make_source(tmp_path / "keep", 8 * MiB, seed=14, max_file=2 * MiB)
    old = make_source(tmp_path / "old", 16 * MiB, seed=15, max_file=2 * MiB)
    new = make_source(tmp_path / "new", 200 * MiB, seed=16)
    cli = make_cli("vault")
    cli.init()
    s_keep = cli.backup(keep)
    s_old = cli.backup(old)
    cli.ok("forget", s_old["snapshot_id"])  # old's packs: unused, prune's work

    # The backup re-uses old's blobs (about to be marked) and uploads new ones meanwhile;
    # prunes run one after another until it ends, so they see it at different stages.
    job = cli.start("--json", "backup", str(old), str(new))
    overlapped = marked = 0
    deadline = time.monotonic() + 120
    while job.running and time.monotonic() < deadline:
        res = cli.ok("--json", "prune", "--grace", "1h")
        overlapped += job.running  # started and finished while the backup ran
        marked += json.loads(res.stdout.splitlines()[-1])["marked_packs"]
    print(f"\n{overlapped} prune(s) ran entirely during the backup; {marked} pack(s) marked")
    assert overlapped >= 1, "the backup was too quick to race a prune"
    s_new = finish(job)
    cli.check_clean(quick=False)
    for s, srcs in ((s_keep, (keep,)), (s_new, (old, new))):
        target = tmp_path / f"restore-{s['short_id']}"
        cli.restore(s["snapshot_id"], target)
        for src in srcs:
            assert_same_tree(restored(target, src), src)

    # Everything finished: forget with --grace 0 reclaims keep's space, harms nothing else.
    before = sum(pack_sizes(cli.vault).values())
    pr = forget_and_prune(cli, s_keep["snapshot_id"])
    after = sum(pack_sizes(cli.vault).values())
    print(f"forget keep + prune: {before / MiB:.1f} -> {after / MiB:.1f} MiB of packs ({pr})")
    assert pr["deleted_bytes"] > 0 and after < before
    cli.check_clean(quick=False)
    target = tmp_path / "restore-after-prune"
    cli.restore(s_new["snapshot_id"], target)
    for src in (old, new):
        assert_same_tree(restored(target, src), src)
