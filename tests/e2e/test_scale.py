"""Many small files through the real CLI: the first backup succeeds, a backup with nothing
changed reads no file again and finishes in seconds, and one folder restores on its own.
"""

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, assert_same_tree, make_small_files, restored

NO_CHANGE_LIMIT = 15.0  # seconds for a no-change backup of 100,000 files (target: a few)


def backup_twice(cli: Cli, src: Path, files: int) -> tuple[float, float]:
    """First and no-change backup of `src`; returns both wall times (process start to exit)."""
    cli.init()
    start = time.monotonic()
    first = cli.backup(src, timeout=1800)
    first_s = time.monotonic() - start
    assert first["files"] == files and first["problems"] == 0, first
    start = time.monotonic()
    again = cli.backup(src, timeout=600)
    again_s = time.monotonic() - start
    assert again["unchanged_files"] == files, again
    assert again["new_files"] == again["changed_files"] == 0, again
    # No data is new. Only the trees of the folders above `src` may be (their mtime is
    # recorded, and /tmp changes all the time): one small tree per level at most.
    ancestors = len(src.absolute().parts) - 1
    assert again["new_blobs"] <= ancestors, again
    assert again["new_bytes"] <= 512 * again["new_blobs"], again
    print(
        f"\n{files} files: first backup {first_s:.1f} s, no-change backup {again_s:.2f} s "
        f"(engine: {first['seconds_ms'] / 1000:.1f} s, {again['seconds_ms'] / 1000:.2f} s)"
    )
    return first_s, again_s


def restore_one_folder(cli: Cli, src: Path, folder: Path, target: Path) -> None:
    start = time.monotonic()
    cli.restore("latest", target, str(folder))
    print(f"restore of {folder.relative_to(src)}: {time.monotonic() - start:.2f} s")
    got = restored(target, src)
    assert_same_tree(got / folder.relative_to(src), folder)
    assert [p.name for p in got.iterdir()] == [folder.parent.name]  # nothing else restored


def test_no_change_backup_of_5000_files_reads_nothing(
    make_cli: Callable[[str], Cli], tmp_path: Path
) -> None:
    src = make_small_files(tmp_path / "src", files=5000, folders=50, seed=21)
    cli = make_cli("vault")
    backup_twice(cli, src, 5000)
    restore_one_folder(cli, src, src / "g00" / "dir0017", tmp_path / "out")


@pytest.mark.slow
def test_no_change_backup_of_100000_files_takes_seconds(
    make_cli: Callable[[str], Cli], tmp_path: Path
) -> None:
    start = time.monotonic()
    src = make_small_files(tmp_path / "src", files=100_000, folders=1000, seed=22)
    print(f"\ngenerated 100,000 files in {time.monotonic() - start:.1f} s")
    cli = make_cli("vault")
    _, again = backup_twice(cli, src, 100_000)
    assert again < NO_CHANGE_LIMIT
    restore_one_folder(cli, src, src / "g07" / "dir0742", tmp_path / "out")
