"""LocalStore behaviour beyond the contract: folder layout, disk full, temp file cleanup."""

import asyncio
import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import StorageError
from shared.hashing import object_id
from shared.ids import ObjectKey, ObjectKind
from shared.storage import direct
from shared.storage.local import LocalStore
from tests.support.direct_io import FAILURES, direct_works, watch_direct_writes

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


# ---- direct writes (shared/storage/direct.py) -----------------------------------------------


async def _pieces(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 40_000), max_size=12), seed=st.integers(0, 1 << 30))
def test_local_put_in_odd_pieces_writes_the_object(tmp_path_factory: pytest.TempPathFactory,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   sizes: list[int], seed: int) -> None:
    """Pieces of any size (empty, unaligned, larger than the direct-write buffer) go through
    the page-aligned buffer into exactly the object: whole pages with O_DIRECT where the
    file system takes it, the last partial page through the page cache."""
    monkeypatch.setattr(direct, "PIECE", 3 * 4096)
    rng = random.Random(seed)
    chunks = [rng.randbytes(n) for n in sizes]
    data = b"".join(chunks)
    root = tmp_path_factory.mktemp("store")

    async def run() -> bytes:
        store = await LocalStore.create(root)
        await store.put(key_for(data), _pieces(chunks))
        return await store.get(key_for(data))

    assert asyncio.run(run()) == data
    assert list((root / "tmp").iterdir()) == []


@pytest.mark.parametrize("how", FAILURES)
async def test_local_put_falls_back_to_the_page_cache(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      how: str) -> None:
    """Without O_DIRECT (refused at open or at a write: EINVAL), or after a short direct
    write, the rest of the object goes through the page cache, and it is stored exactly."""
    seen = watch_direct_writes(monkeypatch, fail=how)
    store = await LocalStore.create(tmp_path)
    data = os.urandom(3 * direct.PIECE + 12345)
    await store.put(key_for(data), _pieces([data[:5000], data[5000:]]))
    assert await store.get(key_for(data)) == data
    assert (how == "open refused") == (not seen.opened)


async def test_local_put_writes_whole_pages_directly(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """All of a pack but its last partial page is written with O_DIRECT, in aligned pieces."""
    if not direct_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    seen = watch_direct_writes(monkeypatch)
    store = await LocalStore.create(tmp_path / "store")
    data = os.urandom(5 * direct.PIECE + 777)
    await store.put(key_for(data), memoryview(data))
    assert (seen.direct, seen.cached) == (len(data) - 777, 777)
    assert await store.get(key_for(data)) == data


async def test_local_put_error_after_close_closes_nothing_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A put whose publishing fails after the temp file was closed (here: the rename) closes
    its descriptors once only (a number closed twice may be another thread's file by then)
    and leaves no temp file."""
    open_fds: set[int] = set()
    twice: list[int] = []
    real_open, real_close = os.open, os.close

    def tracking_open(*args: object, **kwargs: object) -> int:
        fd = real_open(*args, **kwargs)  # type: ignore[arg-type]
        open_fds.add(fd)
        return fd

    def tracking_close(fd: int) -> None:
        if fd not in open_fds:
            twice.append(fd)
        open_fds.discard(fd)
        real_close(fd)

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    store = await LocalStore.create(tmp_path)
    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "close", tracking_close)
    monkeypatch.setattr(os, "replace", failing_replace)
    data = os.urandom(3 * direct.PIECE + 5)
    with pytest.raises(StorageError):
        await store.put(key_for(data), memoryview(data))
    assert twice == [] and open_fds == set()
    assert list((tmp_path / "tmp").iterdir()) == []
