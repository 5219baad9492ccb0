"""LocalStore behaviour beyond the contract: folder layout, disk full, temp file cleanup."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.hashing import object_id
from shared.ids import ObjectKey, ObjectKind
from shared.storage.local import LocalStore

REPO = Path(__file__).resolve().parents[2]

# Run in a private user + mount namespace on a 256 KiB tmpfs, so a 1 MiB put hits a real ENOSPC.
DISK_FULL_SCRIPT = """
import asyncio, json, os, sys
from pathlib import Path
from shared.errors import CairnError, ObjectNotFound
from shared.hashing import object_id
from shared.ids import ObjectKey, ObjectKind
from shared.storage.local import LocalStore

async def main(root: Path) -> None:
    store = await LocalStore.create(root)
    data = os.urandom(1 << 20)
    key = ObjectKey.of(ObjectKind.PACK, object_id(data))
    error = None
    try:
        await store.put(key, data)
    except CairnError as exc:
        error = [type(exc).__name__, str(exc)]
    try:
        await store.stat(key)
        stored = True
    except ObjectNotFound:
        stored = False
    print(json.dumps({"error": error, "stored": stored, "temp": os.listdir(root / "tmp")}))

asyncio.run(main(Path(sys.argv[1])))
"""


def key_for(data: bytes, kind: ObjectKind = ObjectKind.PACK) -> ObjectKey:
    return ObjectKey.of(kind, object_id(data))


def in_small_tmpfs(mount_point: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` with a 256 KiB tmpfs at `mount_point`; exit code 77 if it cannot be made."""
    shell = 'mount -t tmpfs -o size=256k tmpfs "$0" || exit 77; exec "$@"'
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", shell, str(mount_point)]
        + list(command),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )


@pytest.mark.skipif(
    sys.platform != "linux" or shutil.which("unshare") is None, reason="needs Linux unshare"
)
def test_local_put_disk_full_is_translated(tmp_path: Path) -> None:
    result = in_small_tmpfs(tmp_path, sys.executable, "-c", DISK_FULL_SCRIPT, str(tmp_path))
    if result.returncode == 77 or result.stderr.startswith("unshare:"):
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["error"][0] == "StorageError"
    assert outcome["error"][1].startswith("disk full: cannot write packs/")
    assert outcome["stored"] is False
    assert outcome["temp"] == []


async def test_local_pack_layout_is_sharded(tmp_path: Path) -> None:
    store = await LocalStore.create(tmp_path)
    await store.put(key_for(b"a pack"), b"a pack")
    await store.put(key_for(b"an index", ObjectKind.INDEX), b"an index")
    name = key_for(b"a pack").name
    assert (tmp_path / "packs" / name[:2] / name).read_bytes() == b"a pack"
    assert (tmp_path / "index" / key_for(b"an index").name).read_bytes() == b"an index"


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise here")
@pytest.mark.parametrize("fsync", [True, False])
async def test_local_put_drops_synced_pages_from_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool) -> None:
    """A synced object's pages are handed back to the kernel (a backup must not push the
    user's files out of the page cache); unsynced ones are not (dirty pages are not dropped)."""
    advised: list[int] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append(advice)
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    store = await LocalStore.create(tmp_path, fsync=fsync)
    data = os.urandom(1 << 20)
    await store.put(key_for(data), memoryview(data))
    assert await store.get(key_for(data)) == data
    assert advised == ([os.POSIX_FADV_DONTNEED] if fsync else [])


def test_local_construction_does_no_io(tmp_path: Path) -> None:
    LocalStore(tmp_path / "vault")
    assert not (tmp_path / "vault").exists()


async def test_local_create_is_idempotent(tmp_path: Path) -> None:
    store = await LocalStore.create(tmp_path / "vault")
    await store.put(key_for(b"kept"), b"kept")
    store = await LocalStore.create(tmp_path / "vault")
    assert await store.get(key_for(b"kept")) == b"kept"
    assert sorted(p.name for p in (tmp_path / "vault").iterdir()) == sorted(
        [*(kind.value for kind in ObjectKind), "tmp"]
    )


async def test_local_cleanup_temp_removes_only_stale_temp_files(tmp_path: Path) -> None:
    store = await LocalStore.create(tmp_path)
    stale, fresh, other = (tmp_path / "tmp" / n for n in ("old.tmp", "new.tmp", "notes.txt"))
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    os.utime(other, (an_hour_ago, an_hour_ago))

    assert await store.cleanup_temp(older_than=600) == 1
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == ["new.tmp", "notes.txt"]
