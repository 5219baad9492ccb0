"""Restore's file writer: temp names, the open-file cache, sparse writes, metadata, the rename
into place and hard links (or copies where links are refused).

It never reads the vault and decides nothing (what to restore, whether to overwrite): the
restore run calls it, holding the run's lock around every FileWriter method but special_meta,
write_at and write_whole.
"""

import contextlib
import errno
import itertools
import logging
import os
import secrets
import stat
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from client_gui.engine.walk import display
from shared.errors import Cancelled
from shared.format.tree import Node, NodeType
from shared.storage import direct
from shared.storage.local import drop_cached

logger = logging.getLogger(__name__)

# Temp files kept open between writes; the rest are reopened (stays far below fd limits).
OPEN_FILES = 64
# Restored files of at least DROP_MIN bytes are handed back to the kernel once written: their
# writeback starts when the file is complete, and once DROP_AFTER more bytes of such files are
# complete (by then written back) their pages are dropped from the page cache. A restore then
# does not push the user's working set out of memory, and it writes into pages it has just
# freed: on this VM, where touching new memory is costly, writing into the page cache was most
# of a restore's time.
DROP_MIN = 1 << 20
DROP_AFTER = 64 << 20
# Files of at least DIRECT_MIN bytes are written with O_DIRECT where the system has it (see
# shared/storage/direct.py): the page-aligned middle of each blob goes to the disk through a
# pooled page-aligned buffer, and only the edges (under a page at each end of a blob) and the
# small files go through the page cache.
DIRECT_MIN = 1 << 20
_WRITE: Final = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# Aligned all-zero blocks of this size inside a blob are not written, so holes in the file
# (a disk image, a database) stay holes after restore even where a chunk spans data and hole.
SPARSE_BLOCK = 64 << 10
_ZERO_BLOCK = bytes(SPARSE_BLOCK)
TEMP_MARK = b".cairn-tmp-"
_NAME_KEEP = 200  # bytes of the final name kept in a temp name (NAME_MAX is usually 255)

# problem(snapshot path, message, code): report one item problem to the user.
ProblemFn = Callable[[bytes, str, str], None]


@dataclass(slots=True, eq=False)
class HardLink:
    """Another name of a restored file, made once the file is complete."""

    rel: bytes
    path: bytes


@dataclass(slots=True, eq=False)
class TargetFile:
    """A regular file whose contents come from packs, and its progress."""

    num: int
    rel: bytes  # path inside the snapshot (for messages)
    path: bytes  # final path in the target
    node: Node
    remaining: int  # blob uses not yet written
    tmp: bytes | None = None
    failed: bool = False
    done: bool = False
    holes: bool = False  # a zero block or blob was not written (see FileWriter._create)
    links: list[HardLink] = field(default_factory=list)  # hard links made once it is complete


def is_zero(data: bytes | bytearray) -> bool:
    return not data or (data[0] == 0 and data[-1] == 0 and data.count(0) == len(data))


# Temp names end in a random tag per process and a counter: no getrandom call per file. They
# cannot be guessed before the run starts, but once one is seen the next ones can: a name
# already taken is skipped (files are created O_EXCL; links and special files retry too).
_TEMP_TAG = secrets.token_hex(6)
_temp_numbers = itertools.count()


def temp_path(path: bytes) -> bytes:
    """A fresh hidden name beside `path`, marked with TEMP_MARK (prune removes old ones)."""
    folder, _, name = path.rpartition(b"/")
    return (folder + b"/." + name[:_NAME_KEEP] + TEMP_MARK
            + f"{_TEMP_TAG}{next(_temp_numbers):x}".encode("ascii"))


# put(view, file offset): how write_sparse writes one run of data
PutFn = Callable[[memoryview, int], None]


def to_fd(fd: int) -> PutFn:
    """Runs of write_sparse written through the descriptor `fd`."""
    return lambda run, at: direct.pwrite_all(fd, run, at)


def write_sparse(put: PutFn, data: bytes | bytearray, offset: int, lo: int = 0,
                 hi: int | None = None) -> bool:
    """Write data[lo:hi] (data's first byte belongs at `offset`) with `put` into a file that
    reads as zeros where nothing was written, skipping aligned zero blocks (they stay holes).
    True if a block was skipped."""
    hi = len(data) if hi is None else hi
    view = memoryview(data)
    pending = lo  # start of the run of data still to be written
    skipped = False
    # Aligned SPARSE_BLOCK blocks inside [lo, hi); most are not zero at both ends, so this
    # costs well under a microsecond a block (searching for a zero block cost far more).
    pos = lo + -(offset + lo) % SPARSE_BLOCK
    while pos + SPARSE_BLOCK <= hi:
        end = pos + SPARSE_BLOCK
        if data[pos] == 0 and data[end - 1] == 0 and data[pos:end] == _ZERO_BLOCK:
            if pending < pos:
                put(view[pending:pos], offset + pending)
            pending = end
            skipped = True
        pos = end
    if pending < hi:
        put(view[pending:hi], offset + pending)
    return skipped


@dataclass(slots=True, eq=False)
class Handle:
    """The open descriptors of one temp file: `fd` through the page cache, and `direct`
    (O_DIRECT, -1 when there is none) for the page-aligned middle of its blobs. `pins` counts
    the writes in progress; an `orphan` is closed by the last unpin."""

    fd: int
    direct: int = -1
    pins: int = 0
    orphan: bool = False
    refused: bool = False  # a direct write was refused: the rest goes through the page cache

    def close(self) -> None:
        try:
            os.close(self.fd)
        finally:
            if self.direct >= 0:
                os.close(self.direct)


def _put_direct(handle: Handle, run: memoryview, offset: int) -> None:
    """Write a page-aligned run (aligned offset and length) with O_DIRECT, direct.PIECE bytes
    at a time through a pooled buffer. Once a direct write is refused or short (write_pages),
    the rest of the file goes through the page cache."""
    buffer = direct.take_buffer()
    try:
        done = 0
        while done < len(run):
            n = min(direct.PIECE, len(run) - done)
            if handle.refused:
                direct.pwrite_all(handle.fd, run[done:], offset + done)
                return
            buffer[:n] = run[done:done + n]
            with memoryview(buffer) as whole:
                if not direct.write_pages(handle.direct, handle.fd, whole[:n], offset + done):
                    handle.refused = True  # not closed: another worker may write through it
            done += n
    finally:
        direct.give_back(buffer)


def write_direct(handle: Handle, data: bytes | bytearray, offset: int) -> bool:
    """Write blob `data` at `offset`: its page-aligned middle with O_DIRECT, the edges (and a
    blob too small to have a whole aligned page) through the page cache. The two never share a
    page, and concurrent writers of neighbouring blobs only meet in the page cache. True if
    a zero block was skipped (see write_sparse)."""
    start = -(-offset // direct.ALIGN) * direct.ALIGN - offset
    stop = (offset + len(data)) // direct.ALIGN * direct.ALIGN - offset
    if handle.direct < 0 or handle.refused or stop <= start:
        return write_sparse(to_fd(handle.fd), data, offset)
    skipped = write_sparse(lambda run, at: _put_direct(handle, run, at), data, offset,
                           start, stop)
    # Short edges, not blocks of SPARSE_BLOCK: never skipped.
    if start:
        direct.pwrite_all(handle.fd, memoryview(data)[:start], offset)
    if stop < len(data):
        direct.pwrite_all(handle.fd, memoryview(data)[stop:], offset + stop)
    return skipped


def create_special(node: Node, path: bytes) -> None:
    """Create the symlink, FIFO or device file `node` describes at `path`."""
    if node.type == NodeType.SYMLINK:
        os.symlink(node.target, path)  # raw bytes, never followed
    elif node.type == NodeType.FIFO:
        os.mkfifo(path, 0o600)
    else:
        kind = stat.S_IFCHR if node.type == NodeType.CHARDEV else stat.S_IFBLK
        os.mknod(path, kind | 0o600, node.rdev)


class FileWriter:
    """Temp files of one restore run: written, completed (metadata, rename, links) or failed.

    `placed()` is called once for every name put in place (a file or one of its hard links).
    Every method is called with the restore run's lock held, except `write_at` and
    `write_whole`: a worker pins the file's descriptors under the lock, writes without it
    (side by side with the other worker) and unpins them under the lock. A pinned descriptor
    is never closed under the writer's feet (a closed number reused by another file would take
    its bytes): closing it waits until it is unpinned. `write_whole` restores a file no other
    worker can touch, from creation to rename (see there).
    """

    def __init__(self, *, owners: bool, problem: ProblemFn, placed: Callable[[], None]) -> None:
        self.owners = owners  # restore uid/gid
        self.problem = problem
        self.placed = placed
        self.closed = False  # set by discard(): nothing may be written any more
        self.handles: OrderedDict[int, Handle] = OrderedDict()  # TargetFile.num -> open
        self.temps: set[bytes] = set()
        self.written: deque[tuple[bytes, int]] = deque()  # complete files still in the cache
        self.written_bytes = 0

    def pin(self, f: TargetFile) -> Handle:
        """The descriptors of f's temp file (created on first use), open until `unpin`."""
        handle = self._handle(f)
        handle.pins += 1
        return handle

    @staticmethod
    def unpin(handle: Handle) -> None:
        handle.pins -= 1
        if not handle.pins and handle.orphan:
            handle.close()

    @staticmethod
    def write_at(f: TargetFile, handle: Handle, data: bytes | bytearray, offset: int, *,
                 zero: bool) -> bool:
        """Write one blob at `offset` through the pinned descriptors of f's temp file; `zero`
        data is not written: the file reads as zeros there (sparse). True if some of the blob
        was left as a hole: the caller sets f.holes, under the lock. No lock needed."""
        if zero:
            return True
        try:
            return write_direct(handle, data, offset)
        except OSError as exc:
            exc.filename = exc.filename or f.path
            raise

    def complete(self, f: TargetFile) -> None:
        """All blobs written: metadata, then rename into place, then its hard links."""
        failed = self._seal(f, self._handle(f).fd)
        self._close(f)
        self._rename(f)
        self.settle(f, failed)

    def write_whole(self, f: TargetFile, data: bytes | bytearray, offset: int, *,
                    zero: bool) -> list[str]:
        """Restore `f` from its last blob to its final name, without the run's lock: `f` was
        never opened (so this is the only blob it has), and no other worker touches it. The
        caller reports the metadata that could not be restored with `settle`, under the lock.

        This is how most files are restored (small files are a single blob), and their half
        dozen syscalls each no longer wait for the other worker's lock."""
        handle = self._create(f)
        try:
            f.holes = self.write_at(f, handle, data, offset, zero=zero)
            failed = self._seal(f, handle.fd)
        finally:
            handle.close()
        self._rename(f)
        return failed

    def settle(self, f: TargetFile, failed: list[str]) -> None:
        """`f` is at its final name: report its metadata problems and make its hard links."""
        self._report(f.rel, failed)
        assert f.tmp is not None
        self.temps.discard(f.tmp)
        f.done = True
        self.placed()
        for link in f.links:
            self.link(f, link)
        if f.node.size >= DROP_MIN:
            self._written(f.path, f.node.size)

    def _seal(self, f: TargetFile, fd: int) -> list[str]:
        """Size and metadata of a written temp file; what could not be restored."""
        if f.holes and f.node.size < DIRECT_MIN:
            os.ftruncate(fd, f.node.size)  # a hole at its end: the file is still too short
        failed = self._file_meta(fd, f.node)
        if f.node.size >= DROP_MIN:
            drop_cached(fd)  # dirty pages are not dropped: this starts their writeback
        return failed

    def _rename(self, f: TargetFile) -> None:
        assert f.tmp is not None
        try:
            os.rename(f.tmp, f.path)
        except OSError as exc:
            if self.closed:  # discard() took the temp file away: the run is ending
                raise Cancelled("cancelled") from exc
            exc.filename = f.path
            raise

    def _written(self, path: bytes, size: int) -> None:
        """Drop the cached pages of files completed DROP_AFTER bytes ago (see DROP_MIN)."""
        self.written.append((path, size))
        self.written_bytes += size
        while self.written_bytes - self.written[0][1] >= DROP_AFTER:
            old, old_size = self.written.popleft()
            self.written_bytes -= old_size
            try:
                # Not blocking: whatever took the name since (a FIFO) must not stall us.
                fd = os.open(old, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue  # gone or replaced since: nothing of ours to drop
            try:
                drop_cached(fd)
            finally:
                os.close(fd)

    def fail(self, f: TargetFile, message: str) -> None:
        """Give up on `f`: remove its temp file and report it (and its links) as a problem."""
        if f.failed or f.done:
            return
        f.failed = True
        self._close(f)
        if f.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f.tmp)
            self.temps.discard(f.tmp)
        self.problem(f.rel, message, "damaged")
        for link in f.links:
            self.problem(link.rel, message, "damaged")

    def link(self, f: TargetFile, link: HardLink) -> None:
        """Make `link` another name of the restored file `f` (a copy if links are refused)."""
        tmp = self._link_temp(f, link)
        os.rename(tmp, link.path)
        if os.path.lexists(tmp):  # rename between two names of one file does nothing
            os.unlink(tmp)
        self.temps.discard(tmp)
        self.placed()

    def _link_temp(self, f: TargetFile, link: HardLink) -> bytes:
        """A new temp name beside `link` that is another name of `f`, or a copy of it."""
        while True:
            tmp = temp_path(link.path)
            self.temps.add(tmp)
            try:
                os.link(f.path, tmp)
                return tmp
            except FileExistsError:
                self.temps.discard(tmp)  # a name taken (see _TEMP_TAG): the next one
            except OSError as exc:
                if exc.errno not in (errno.EMLINK, errno.EPERM, errno.EXDEV, errno.ENOTSUP):
                    exc.filename = link.path
                    raise
                logger.info("%s: hard link refused (%s), copying", display(link.rel),
                            exc.strerror)
                self._copy(f, tmp)
                return tmp

    def discard(self) -> None:
        """Close every open temp file and remove every temp file not yet renamed into place."""
        self.closed = True
        for handle in self.handles.values():
            self._release(handle)
        self.handles.clear()
        # A copy: write_whole adds names without the lock (and removes its own file if it
        # was created after this).
        for tmp in list(self.temps):
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.error("cannot remove temp file %r: %s", tmp, exc.strerror)
        self.temps.clear()

    def special_meta(self, rel: bytes, path: bytes, node: Node) -> None:
        """Owner, mode, times and xattrs of a directory, symlink or special file, by path."""
        is_link = node.type == NodeType.SYMLINK
        failed: list[str] = []
        for name, value in node.xattrs:
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError:
                failed.append("extended attributes")
                break
        if self.owners:
            try:
                os.chown(path, node.uid, node.gid, follow_symlinks=False)
            except OSError:
                failed.append("owner")
        if not is_link:
            try:
                os.chmod(path, node.mode)
            except OSError:
                failed.append("mode")
        if not is_link or os.utime in os.supports_follow_symlinks:
            try:
                os.utime(path, ns=(node.atime_ns or node.mtime_ns, node.mtime_ns),
                         follow_symlinks=False)
            except OSError:
                failed.append("times")
        self._report(rel, failed)

    def _report(self, rel: bytes, failed: list[str]) -> None:
        if failed:
            self.problem(rel, f"could not restore {', '.join(failed)}", "metadata")

    def _handle(self, f: TargetFile) -> Handle:
        handle = self.handles.get(f.num)
        if handle is not None:
            self.handles.move_to_end(f.num)
            return handle
        try:
            handle = self._open_temp(f)
        except OSError as exc:
            exc.filename = f.path  # name the file the user knows, not its temp name
            raise
        self.handles[f.num] = handle
        if len(self.handles) > OPEN_FILES:
            self._release(self.handles.popitem(last=False)[1])
        return handle

    def _open_temp(self, f: TargetFile) -> Handle:
        if f.tmp is None:
            return self._create(f)
        handle = Handle(os.open(f.tmp, _WRITE))
        self._open_direct(f, handle)
        return handle

    def _create(self, f: TargetFile) -> Handle:
        """Create f's temp file (safe without the run's lock: see discard). Errors name the
        file the user knows, not its temp name."""
        while True:
            tmp = temp_path(f.path)
            self.temps.add(tmp)
            try:
                fd = os.open(tmp, _WRITE | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                self.temps.discard(tmp)
            except OSError as exc:
                exc.filename = f.path
                raise
        f.tmp = tmp
        handle = Handle(fd)
        try:
            if self.closed:  # discard() ran before the file existed: nobody else removes it
                with contextlib.suppress(FileNotFoundError):  # unless it ran since
                    os.unlink(tmp)
                raise Cancelled("cancelled")
            # Holes stay holes: zero blocks are not written. A small file (most often a single
            # blob) gets its size from its writes, or from _seal if it ends in a hole.
            if f.node.size >= DIRECT_MIN:
                os.ftruncate(fd, f.node.size)
            self._open_direct(f, handle)
        except BaseException as exc:
            handle.close()
            if isinstance(exc, OSError):
                exc.filename = f.path
            raise
        return handle

    @staticmethod
    def _open_direct(f: TargetFile, handle: Handle) -> None:
        if f.node.size >= DIRECT_MIN:
            assert f.tmp is not None
            handle.direct = direct.open_direct(f.tmp, _WRITE)

    def _close(self, f: TargetFile) -> None:
        handle = self.handles.pop(f.num, None)
        if handle is not None:
            self._release(handle)

    @staticmethod
    def _release(handle: Handle) -> None:
        if handle.pins:
            handle.orphan = True  # a write through it is in progress: closed by unpin
        else:
            handle.close()

    def _file_meta(self, fd: int, node: Node) -> list[str]:
        """Restore a file's xattrs, owner, mode and times; what could not be restored."""
        failed: list[str] = []
        for name, value in node.xattrs:
            try:
                os.setxattr(fd, name, value)
            except OSError:
                failed.append("extended attributes")
                break
        if self.owners:
            try:
                os.fchown(fd, node.uid, node.gid)
            except OSError:
                failed.append("owner")
        try:
            os.fchmod(fd, node.mode)  # after chown, which may clear set-id bits
        except OSError:
            failed.append("mode")
        try:
            os.utime(fd, ns=(node.atime_ns or node.mtime_ns, node.mtime_ns))
        except OSError:
            failed.append("times")
        return failed

    def _copy(self, f: TargetFile, tmp: bytes) -> None:
        src = os.open(f.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(dst, f.node.size)
                offset = 0
                while block := os.pread(src, 1 << 20, offset):
                    write_sparse(to_fd(dst), block, offset)
                    offset += len(block)
                self._report(f.rel, self._file_meta(dst, f.node))
            finally:
                os.close(dst)
        finally:
            os.close(src)
