"""LocalStore: an ObjectStore in a folder (the client's external disk, the server's default).

Layout: `<root>/<kind>/<name>`, except packs in `<root>/packs/<name[:2]>/<name>`; temp files
in `<root>/tmp/*.tmp`. Every blocking call runs in a thread; OSErrors become StorageErrors.
Construction does no I/O: `LocalStore.create` makes the folders.
"""

import asyncio
import errno
import logging
import mmap
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Self

from shared.errors import ObjectNotFound, PermissionDenied, StorageError
from shared.ids import InvalidName, ObjectInfo, ObjectKey, ObjectKind
from shared.storage import direct
from shared.storage.base import ObjectData, ObjectPiece, check_range, iter_bytes

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
# Chunks are written in batches of about 4 MiB: a 64 MiB pack costs 16 thread hops, not one per
# network chunk, and a put holds at most one batch in memory beyond what its source holds.
_BATCH_SIZE = 4 << 20
_SHARD_RE = re.compile(r"[0-9a-f]{2}")
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_PERMISSION = frozenset({errno.EACCES, errno.EPERM})


class LocalStore:
    """Objects as files under `root`; `fsync=False` trades crash safety for speed (tests)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self._root = Path(root)
        self._tmp = self._root / "tmp"
        self._fsync = fsync

    @classmethod
    async def create(cls, root: Path, *, fsync: bool = True) -> Self:
        """Create the folders of a store at `root` if missing (idempotent) and return it."""
        store = cls(root, fsync=fsync)
        with _os_errors(f"create a store in {root}"):
            await asyncio.to_thread(store._make_folders)
        return store

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        path = self._path(key)
        doing = f"write {key} under {self._root}"
        with _os_errors(doing):
            if await asyncio.to_thread(path.exists):
                logger.debug("%s exists; put is a no-op", key)
                return
            tmp = self._tmp / f"{secrets.token_hex(16)}{TEMP_SUFFIX}"
            creating = asyncio.get_running_loop().run_in_executor(None, _create_new, tmp)
            try:
                file = await asyncio.shield(creating)
            except asyncio.CancelledError:
                # The thread still creates the file: close and remove it when it is done.
                def discard_created(f: asyncio.Future[_NewObject]) -> None:
                    if not f.cancelled() and f.exception() is None:
                        _discard(f.result(), tmp)

                creating.add_done_callback(discard_created)
                raise
        try:
            # Errors raised by `data` itself propagate untranslated.
            async for batch in _batches(data):
                with _os_errors(doing):
                    await asyncio.to_thread(file.write, batch)
            with _os_errors(doing):
                stored = await asyncio.to_thread(self._publish, file, tmp, path)
        except BaseException:
            await asyncio.to_thread(_discard, file, tmp)
            raise
        logger.debug("%s %s", "stored" if stored else "lost a race to store", key)

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        with _os_errors(f"read {key} under {self._root}", key):
            return await asyncio.to_thread(_read, self._path(key), key, offset, length)

    async def stat(self, key: ObjectKey) -> ObjectInfo:
        with _os_errors(f"stat {key} under {self._root}", key):
            st = await asyncio.to_thread(os.stat, self._path(key))
        return ObjectInfo(key, st.st_size, st.st_mtime)

    async def list(self, kind: ObjectKind) -> AsyncIterator[ObjectInfo]:
        folder = self._root / kind.value
        with _os_errors(f"list {folder}"):
            if kind is ObjectKind.PACK:
                shards = await asyncio.to_thread(_shard_folders, folder)
            else:
                shards = [folder]
        for shard in shards:
            with _os_errors(f"list {shard}"):
                found = await asyncio.to_thread(_scan, shard, kind)
            for info in found:
                yield info

    async def list_after(
        self, kind: ObjectKind, after: str | None = None
    ) -> AsyncGenerator[ObjectInfo, None]:
        """SupportsOrderedList: packs are read one shard folder at a time, in order, so a
        page of a listing costs one or a few shards, never a sort of the whole vault."""
        folder = self._root / kind.value
        shards = [folder]
        if kind is ObjectKind.PACK:
            with _os_errors(f"list {folder}"):
                shards = sorted(await asyncio.to_thread(_shard_folders, folder),
                                key=lambda shard: shard.name)
            if after is not None:
                shards = [shard for shard in shards if shard.name >= after[:2]]
        for shard in shards:
            with _os_errors(f"list {shard}"):
                found = await asyncio.to_thread(_scan, shard, kind)
            found.sort(key=lambda info: info.key.name)
            for info in found:
                if after is None or info.key.name > after:
                    yield info

    def path_of(self, key: ObjectKey) -> Path:
        """SupportsLocalPath: the file of `key` (it may not exist)."""
        return self._path(key)

    async def delete(self, key: ObjectKey) -> None:
        with _os_errors(f"delete {key} under {self._root}", key):
            await asyncio.to_thread(os.unlink, self._path(key))
        logger.debug("deleted %s", key)

    async def close(self) -> None:
        pass

    async def cleanup_temp(self, older_than: float) -> int:
        """Remove temp files older than `older_than` seconds (left by a crash); return how many."""
        with _os_errors(f"clean up {self._tmp}"):
            removed = await asyncio.to_thread(self._remove_temp_before, time.time() - older_than)
        if removed:
            logger.info("removed %d stale temp files from %s", removed, self._tmp)
        return removed

    def _path(self, key: ObjectKey) -> Path:
        if key.kind is ObjectKind.PACK:
            return self._root / key.kind.value / key.name[:2] / key.name
        return self._root / key.kind.value / key.name

    def _make_folders(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        for folder in [*(kind.value for kind in ObjectKind), self._tmp.name]:
            (self._root / folder).mkdir(exist_ok=True)

    def _publish(self, file: "_NewObject", tmp: Path, path: Path) -> bool:
        """Make the finished temp file visible as `path`; False if a concurrent put won."""
        file.finish()
        if self._fsync:
            os.fsync(file.fd)
            drop_cached(file.fd)  # the last partial page, or all of it without O_DIRECT
        file.close()
        if path.exists():
            # Same name, same content: keep the first copy untouched (a small window remains
            # between this check and the rename; os.replace would swap in identical bytes).
            tmp.unlink()
            return False
        if not path.parent.is_dir():  # a pack shard is created with its first pack
            path.parent.mkdir(exist_ok=True)
            self._sync_folder(path.parent.parent)
        os.replace(tmp, path)
        self._sync_folder(path.parent)
        return True

    def _sync_folder(self, folder: Path) -> None:
        """Make a rename or new entry in `folder` durable (not possible, nor needed, on Windows)."""
        if not self._fsync or sys.platform == "win32":
            return
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _remove_temp_before(self, cutoff: float) -> int:
        removed = 0
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                if not entry.name.endswith(TEMP_SUFFIX):
                    continue
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue  # its put finished or failed meanwhile
        return removed


@contextmanager
def _os_errors(doing: str, key: ObjectKey | None = None) -> Iterator[None]:
    """Translate OSError into the StorageError family; a missing file means `key` is absent."""
    try:
        yield
    except OSError as exc:
        if key is not None and isinstance(exc, FileNotFoundError):
            raise ObjectNotFound(f"{key} not found") from exc
        if exc.errno in _DISK_FULL:
            raise StorageError(f"disk full: cannot {doing}") from exc
        if exc.errno in _NO_PERMISSION:
            raise PermissionDenied(f"permission denied: cannot {doing}") from exc
        where = f" ({exc.filename})" if exc.filename else ""
        raise StorageError(f"cannot {doing}: {exc.strerror or exc}{where}") from exc


async def _batches(data: ObjectData) -> AsyncIterator[list[ObjectPiece]]:
    batch: list[ObjectPiece] = []
    size = 0
    async for chunk in iter_bytes(data):
        batch.append(chunk)
        size += len(chunk)
        if size >= _BATCH_SIZE:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def drop_cached(fd: int) -> None:
    """Tell the kernel the pages of `fd` will not be read soon, as Borg does for its segments:
    clean pages are dropped (the next writes reuse them instead of new ones, cheaper above all
    in a VM), dirty ones start their writeback. A backup or a restore then does not push the
    user's working set out of the page cache. Nothing where the call does not exist."""
    if hasattr(os, "posix_fadvise"):
        with suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


class _NewObject:
    """The temp file of a put: whole pages go to the disk with O_DIRECT through a pooled
    page-aligned buffer (shared/storage/direct.py), the last partial page through the page
    cache; without O_DIRECT, everything through the page cache. The direct descriptor is
    opened with the first whole buffer, so small objects (index, snapshots) never open one.
    Its methods are called one at a time (from threads), never at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL, 0o666)
        self.direct: int | None = None  # None: not opened yet; -1: none (refused)
        self.buffer: mmap.mmap | None = None
        if direct.O_DIRECT:
            try:
                self.buffer = direct.take_buffer()
            except BaseException:
                os.close(self.fd)
                raise
        self.filled = 0  # bytes in the buffer
        self.offset = 0  # where the buffer's first byte goes in the file

    def write(self, pieces: list[ObjectPiece]) -> None:
        for piece in pieces:
            view = memoryview(piece).cast("B")
            while view:
                if self.buffer is None:
                    direct.pwrite_all(self.fd, view, self.offset)
                    self.offset += len(view)
                    break
                n = min(len(view), direct.PIECE - self.filled)
                self.buffer[self.filled:self.filled + n] = view[:n]
                self.filled += n
                view = view[n:]
                if self.filled == direct.PIECE:
                    self._flush(direct.PIECE)

    def finish(self) -> None:
        """Write what the buffer still holds: its whole pages directly, the rest cached."""
        pages = self.filled // direct.ALIGN * direct.ALIGN
        if pages:
            self._flush(pages)
        if self.buffer is not None and self.filled:
            with memoryview(self.buffer) as whole:
                direct.pwrite_all(self.fd, whole[:self.filled], self.offset)
            self.offset += self.filled
            self.filled = 0

    def _flush(self, n: int) -> None:
        """Write the buffer's first `n` bytes (whole pages) and move the rest to its start.
        If direct writes are refused (at open or at this write) or this one is short, the
        rest of the object goes through the page cache (the buffer's remaining bytes now)."""
        assert self.buffer is not None
        if self.direct is None:
            self.direct = direct.open_direct(self.path, os.O_WRONLY | os.O_CLOEXEC)
        with memoryview(self.buffer) as whole:
            through = (self.direct >= 0
                       and direct.write_pages(self.direct, self.fd, whole[:n], self.offset))
            if not through and self.direct < 0:
                direct.pwrite_all(self.fd, whole[:n], self.offset)
            self.offset += n
            self.buffer.move(0, n, self.filled - n)
            self.filled -= n
            if not through:
                direct.pwrite_all(self.fd, whole[:self.filled], self.offset)
                self.offset += self.filled
                self.filled = 0
        if not through:
            self._give_back()

    def close(self) -> None:
        """Close both descriptors (once: a second call does nothing) and pool the buffer."""
        fds = [fd for fd in (self.fd, self.direct) if fd is not None and fd >= 0]
        self.fd = self.direct = -1
        try:
            for fd in fds:
                os.close(fd)
        finally:
            self._give_back()

    def _give_back(self) -> None:
        if self.buffer is not None:
            direct.give_back(self.buffer)
            self.buffer = None


def _create_new(path: Path) -> _NewObject:
    return _NewObject(path)  # closed by _publish or _discard


def _discard(file: _NewObject, tmp: Path) -> None:
    """Close and remove the temp file of a failed put, without hiding the original error."""
    with suppress(OSError):
        file.close()
    try:
        tmp.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("cannot remove temp file %s (cleanup_temp will): %s", tmp, exc)


def _read(path: Path, key: ObjectKey, offset: int, length: int | None) -> bytes:
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        length = check_range(key, size, offset, length)
        file.seek(offset)
        data = file.read(length)
    if len(data) != length:  # objects are immutable: only damage or tampering shrinks one
        raise StorageError(f"short read of {key}: {len(data)} of {length} bytes")
    return data


def _shard_folders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [
                Path(entry.path)
                for entry in entries
                if _SHARD_RE.fullmatch(entry.name) and entry.is_dir()
            ]
    except FileNotFoundError:
        return []  # no folder: no objects of this kind


def _scan(folder: Path, kind: ObjectKind) -> list[ObjectInfo]:
    """The objects in one folder, skipping temp files, junk and packs in the wrong shard."""
    found: list[ObjectInfo] = []
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return found  # no folder (or a shard removed meanwhile): no objects
    with entries:
        for entry in entries:
            if kind is ObjectKind.PACK and not entry.name.startswith(folder.name):
                continue
            try:
                key = ObjectKey(kind, entry.name)
                st = entry.stat()
            except (InvalidName, FileNotFoundError):
                continue  # not an object, or deleted while we listed
            if stat.S_ISREG(st.st_mode):
                found.append(ObjectInfo(key, st.st_size, st.st_mtime))
    return found
