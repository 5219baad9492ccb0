"""Restore's file writer: temp names, the open-file cache, sparse writes, metadata, the rename
into place and hard links (or copies where links are refused).

It never reads the vault and decides nothing (what to restore, whether to overwrite): the
restore run calls it, holding the run's lock around every FileWriter method but special_meta.
"""

import contextlib
import errno
import logging
import os
import secrets
import stat
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from client_gui.engine.walk import display
from shared.format.tree import Node, NodeType
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
    links: list[HardLink] = field(default_factory=list)  # hard links made once it is complete


def is_zero(data: bytes | bytearray) -> bool:
    return not data or (data[0] == 0 and data[-1] == 0 and data.count(0) == len(data))


def temp_path(path: bytes) -> bytes:
    """A fresh hidden name beside `path`, marked with TEMP_MARK (prune removes old ones)."""
    folder, _, name = path.rpartition(b"/")
    return (folder + b"/." + name[:_NAME_KEEP] + TEMP_MARK
            + secrets.token_hex(6).encode("ascii"))


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def write_sparse(fd: int, data: bytes | bytearray, offset: int) -> None:
    """Write `data` at `offset` into a file preallocated with zeros, skipping aligned zero
    blocks (they stay holes)."""
    if _ZERO_BLOCK not in data:  # fast path (~20 GB/s): no zero block anywhere
        _pwrite_all(fd, data, offset)
        return
    view = memoryview(data)
    pending: int | None = None  # start of the run of data still to be written
    pos = 0
    while pos < len(data):
        end = min(len(data), pos + SPARSE_BLOCK - (offset + pos) % SPARSE_BLOCK)
        if (end - pos == SPARSE_BLOCK and data[pos] == 0 and data[end - 1] == 0
                and data[pos:end] == _ZERO_BLOCK):
            if pending is not None:
                _pwrite_all(fd, view[pending:pos], offset + pending)
                pending = None
        elif pending is None:
            pending = pos
        pos = end
    if pending is not None:
        _pwrite_all(fd, view[pending:], offset + pending)


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
    Every method is called with the restore run's lock held, except `write_at`: a worker pins
    the file's descriptor under the lock, writes without it (side by side with the other
    worker) and unpins it under the lock. A pinned descriptor is never closed under the
    writer's feet (a closed number reused by another file would take its bytes): closing it
    waits until it is unpinned.
    """

    def __init__(self, *, owners: bool, problem: ProblemFn, placed: Callable[[], None]) -> None:
        self.owners = owners  # restore uid/gid
        self.problem = problem
        self.placed = placed
        self.closed = False  # set by discard(): nothing may be written any more
        self.fds: OrderedDict[int, int] = OrderedDict()
        self.temps: set[bytes] = set()
        self.written: deque[tuple[bytes, int]] = deque()  # complete files still in the cache
        self.written_bytes = 0
        self.pinned: dict[int, int] = {}  # descriptor -> writes in progress
        self.orphans: set[int] = set()  # pinned descriptors to close once unpinned

    def pin(self, f: TargetFile) -> int:
        """The descriptor of f's temp file (created on first use), open until `unpin`."""
        fd = self._fd(f)
        self.pinned[fd] = self.pinned.get(fd, 0) + 1
        return fd

    def unpin(self, fd: int) -> None:
        left = self.pinned[fd] - 1
        if left:
            self.pinned[fd] = left
            return
        del self.pinned[fd]
        if fd in self.orphans:
            self.orphans.discard(fd)
            os.close(fd)

    @staticmethod
    def write_at(f: TargetFile, fd: int, data: bytes | bytearray, offset: int, *,
                 zero: bool) -> None:
        """Write one blob at `offset` through a pinned descriptor of f's temp file; `zero`
        data is not written: the preallocated file reads as zeros (sparse). No lock needed."""
        if zero:
            return
        try:
            write_sparse(fd, data, offset)
        except OSError as exc:
            exc.filename = exc.filename or f.path
            raise

    def complete(self, f: TargetFile) -> None:
        """All blobs written: metadata, then rename into place, then its hard links."""
        fd = self._fd(f)
        self._file_meta(f.rel, fd, f.node)
        if f.node.size >= DROP_MIN:
            drop_cached(fd)  # dirty pages are not dropped: this starts their writeback
        self._close(f)
        assert f.tmp is not None
        try:
            os.rename(f.tmp, f.path)
        except OSError as exc:
            exc.filename = f.path
            raise
        self.temps.discard(f.tmp)
        f.done = True
        self.placed()
        for link in f.links:
            self.link(f, link)
        if f.node.size >= DROP_MIN:
            self._written(f.path, f.node.size)

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
        tmp = temp_path(link.path)
        self.temps.add(tmp)
        try:
            os.link(f.path, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EMLINK, errno.EPERM, errno.EXDEV, errno.ENOTSUP):
                exc.filename = link.path
                raise
            logger.info("%s: hard link refused (%s), copying", display(link.rel), exc.strerror)
            self._copy(f, tmp)
        os.rename(tmp, link.path)
        if os.path.lexists(tmp):  # rename between two names of one file does nothing
            os.unlink(tmp)
        self.temps.discard(tmp)
        self.placed()

    def discard(self) -> None:
        """Close every open temp file and remove every temp file not yet renamed into place."""
        self.closed = True
        for fd in self.fds.values():
            self._close_fd(fd)
        self.fds.clear()
        for tmp in self.temps:
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
        if failed:
            self.problem(rel, f"could not restore {', '.join(failed)}", "metadata")

    def _fd(self, f: TargetFile) -> int:
        fd = self.fds.get(f.num)
        if fd is not None:
            self.fds.move_to_end(f.num)
            return fd
        try:
            fd = self._open_temp(f)
        except OSError as exc:
            exc.filename = f.path  # name the file the user knows, not its temp name
            raise
        self.fds[f.num] = fd
        if len(self.fds) > OPEN_FILES:
            self._close_fd(self.fds.popitem(last=False)[1])
        return fd

    def _open_temp(self, f: TargetFile) -> int:
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        if f.tmp is not None:
            return os.open(f.tmp, flags)
        while True:
            tmp = temp_path(f.path)
            try:
                fd = os.open(tmp, flags | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                continue
        self.temps.add(tmp)
        f.tmp = tmp
        try:
            os.ftruncate(fd, f.node.size)  # holes stay holes: zero blocks are not written
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _close(self, f: TargetFile) -> None:
        fd = self.fds.pop(f.num, None)
        if fd is not None:
            self._close_fd(fd)

    def _close_fd(self, fd: int) -> None:
        if fd in self.pinned:
            self.orphans.add(fd)  # a write through it is in progress: closed by unpin
        else:
            os.close(fd)

    def _file_meta(self, rel: bytes, fd: int, node: Node) -> None:
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
        if failed:
            self.problem(rel, f"could not restore {', '.join(failed)}", "metadata")

    def _copy(self, f: TargetFile, tmp: bytes) -> None:
        src = os.open(f.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(dst, f.node.size)
                offset = 0
                while block := os.pread(src, 1 << 20, offset):
                    write_sparse(dst, block, offset)
                    offset += len(block)
                self._file_meta(f.rel, dst, f.node)
            finally:
                os.close(dst)
        finally:
            os.close(src)
