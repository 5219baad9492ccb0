"""Restore: snapshot trees back into files, reading every needed pack once, in pack order.

Plan (walk the selected trees) -> directories, symlinks, special files -> file contents pack by
pack (blobs opened on worker threads, pwritten into temp files that are renamed into place when
complete) -> directory metadata, deepest first. Never overwrites unless asked, never leaves a
temp file behind. It does not talk to the user: problems go to the ProgressSink and the result.
"""

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from client_gui.engine.progress import (
    CancelToken,
    ItemProblem,
    NullSink,
    ProgressSink,
    RestoreProgress,
    Throttle,
)
from client_gui.engine.vault import BlobLocation, SnapshotRef, Vault
from client_gui.engine.walk import display, join, split_path, walk
from shared.errors import (
    CairnError,
    Cancelled,
    IntegrityError,
    ObjectNotFound,
    RangeError,
    UsageError,
)
from shared.format.tree import Node, NodeType
from shared.hashing import keyed_id
from shared.ids import ObjectId, ObjectKey, ObjectKind

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Blobs of one pack closer than this are fetched in one read: skipping a small gap costs less
# than another request (restic uses the same idea for its pack reads).
MAX_GAP = 1 << 20
# One read is at most this long (unless a single blob is longer): with the queue and workers
# below, at most ~4 such ranges are in memory at once.
MAX_RANGE = 16 << 20
# Two workers open blobs and write them: decrypt, decompress and hash release the GIL, so both
# cores of a laptop work while the next range is read.
WORKERS = 2
# Ranges read ahead of the workers: one keeps the disk or network busy without growing memory.
RANGES_QUEUED = 1
# Temp files kept open between writes; the rest are reopened (stays far below fd limits).
OPEN_FILES = 64
# Aligned all-zero blocks of this size inside a blob are not written, so holes in the file
# (a disk image, a database) stay holes after restore even where a chunk spans data and hole.
SPARSE_BLOCK = 64 << 10
_ZERO_BLOCK = bytes(SPARSE_BLOCK)
TEMP_MARK = b".cairn-tmp-"
_NAME_KEEP = 200  # bytes of the final name kept in a temp name (NAME_MAX is usually 255)
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class RestoreError(CairnError):
    """Writing to the restore target failed (disk full, file too large, no permission ...)."""

    code = "restore_failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class RestorePlan:
    snapshot: SnapshotRef
    target: Path  # files land at target/<path inside the snapshot>, as restic does
    include: tuple[str, ...] = ()  # snapshot paths to restore; empty means everything
    overwrite: bool = False  # an existing different file is a problem unless this is set
    owners: bool | None = None  # restore uid/gid; None: only when running as root


@dataclass(frozen=True, slots=True)
class RestoreResult:
    files: int  # non-directory entries restored (or found identical)
    dirs: int
    bytes: int
    problems: tuple[ItemProblem, ...]


@dataclass(slots=True, eq=False)
class _Link:
    rel: bytes
    path: bytes


@dataclass(slots=True, eq=False)
class _File:
    """A regular file whose contents come from packs, and its progress."""

    num: int
    rel: bytes  # path inside the snapshot (for messages)
    path: bytes  # final path in the target
    node: Node
    remaining: int  # blob uses not yet written
    tmp: bytes | None = None
    failed: bool = False
    done: bool = False
    links: list[_Link] = field(default_factory=list)  # hard links made once it is complete


@dataclass(frozen=True, slots=True)
class _Range:
    """One read from one pack, covering one or more needed blobs."""

    pack: ObjectId
    start: int
    end: int
    blobs: tuple[tuple[ObjectId, BlobLocation], ...]


async def restore(vault: Vault, plan: RestorePlan, *, progress: ProgressSink | None = None,
                  cancel: CancelToken | None = None) -> RestoreResult:
    """Restore `plan.snapshot` (or the `plan.include` paths of it) below `plan.target`.

    Per-item problems (existing files, damaged data) are reported and returned; a failure to
    write to the target raises RestoreError after removing every unfinished temp file.
    """
    if not vault.index.packs and not vault.index.segments:
        await vault.load_index()
    run = _RestoreRun(vault, plan, progress or NullSink(), cancel or CancelToken())
    logger.info("restoring snapshot %s to %s", plan.snapshot.id.short(), plan.target)
    entries = await run.collect()
    try:
        await run.in_thread(run.make, entries)
        await run.fetch()
        await run.in_thread(run.finish)
    except OSError as exc:
        run.cleanup()
        message = run.describe(exc)
        logger.info("restore failed: %s", message)  # the caller reports it to the user
        raise RestoreError(message) from exc
    except BaseException:
        run.cleanup()
        raise
    run.report(force=True)
    logger.info("restored %d files, %d directories, %d bytes to %s (%d problems)",
                run.files_done, run.dirs_done, run.bytes_done, plan.target, len(run.problems))
    return RestoreResult(run.files_done, run.dirs_done, run.bytes_done, tuple(run.problems))


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        return exc
    return group


def _is_zero(data: bytes) -> bool:
    return not data or (data[0] == 0 and data[-1] == 0 and data.count(0) == len(data))


def _temp_path(path: bytes) -> bytes:
    folder, _, name = path.rpartition(b"/")
    return (folder + b"/." + name[:_NAME_KEEP] + TEMP_MARK
            + secrets.token_hex(6).encode("ascii"))


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _write_sparse(fd: int, data: bytes, offset: int) -> None:
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


class _RestoreRun:
    def __init__(self, vault: Vault, plan: RestorePlan, sink: ProgressSink,
                 cancel: CancelToken) -> None:
        self.vault = vault
        self.plan = plan
        self.sink = sink
        self.cancel = cancel
        self.target = os.fsencode(os.path.abspath(plan.target)).rstrip(b"/")
        self.owners = plan.owners if plan.owners is not None else os.geteuid() == 0
        self.is_root = os.geteuid() == 0
        self.lock = threading.Lock()  # guards everything below that workers touch
        self.stop = threading.Event()  # set when the job ends early: threads stop at once
        self.closed = False
        self.files: list[_File] = []
        self.uses: dict[bytes, list[tuple[_File, int]]] = {}
        self.needed: dict[bytes, BlobLocation] = {}
        self.fds: OrderedDict[int, int] = OrderedDict()
        self.temps: set[bytes] = set()
        self.dirs: list[tuple[bytes, Node]] = []
        self.problems: list[ItemProblem] = []
        self.files_total = 0
        self.files_done = 0
        self.dirs_done = 0
        self.bytes_total = 0
        self.bytes_done = 0
        self.throttle = Throttle()
        self.start = time.monotonic()

    # ---- helpers --------------------------------------------------------------------------

    async def in_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on a worker thread; if this task is cancelled, wait for the thread to stop."""
        fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            self.stop.set()
            await asyncio.wait({fut})
            raise

    def _check(self) -> None:
        if self.stop.is_set() or self.closed:
            raise Cancelled("cancelled")
        self.cancel.check()

    def _problem(self, rel: bytes, message: str, code: str = "item") -> None:
        item = ItemProblem(path=display(rel), message=message, code=code)
        logger.warning("%s: %s", item.path, message)
        self.problems.append(item)
        self.sink.problem(item)

    def report(self, force: bool = False) -> None:
        if not (force or self.throttle.ready()):
            return
        self.sink.progress(RestoreProgress(
            files_done=self.files_done, files_total=self.files_total,
            bytes_done=self.bytes_done, bytes_total=self.bytes_total,
            elapsed=time.monotonic() - self.start))

    def describe(self, exc: OSError) -> str:
        """One line for a failed write: what went wrong, where, and how far the job got."""
        where = os.fsdecode(self.target)
        done = f"{self.files_done} of {self.files_total} files restored"
        if exc.errno in _DISK_FULL:
            return f"disk full while restoring to {where}: {done}"
        if exc.errno == errno.EFBIG:
            reason = "file too large for the target"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            reason = "permission denied"
        elif exc.errno == errno.EROFS:
            reason = "read-only file system"
        else:
            reason = exc.strerror or str(exc)
        name = exc.filename
        if isinstance(name, bytes):
            name = name.decode("utf-8", "backslashreplace")
        at = f" ({name})" if name else ""
        return f"{reason}{at} while restoring to {where}: {done}"

    def cleanup(self) -> None:
        """Close every open temp file and remove every temp file not yet renamed into place."""
        self.stop.set()
        with self.lock:
            self.closed = True
            for fd in self.fds.values():
                os.close(fd)
            self.fds.clear()
            for tmp in self.temps:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    logger.error("cannot remove temp file %r: %s", tmp, exc.strerror)
            self.temps.clear()

    # ---- plan -----------------------------------------------------------------------------

    async def collect(self) -> list[tuple[bytes, Node]]:
        """(snapshot path, node) of everything to restore, every directory before its contents."""
        root = self.plan.snapshot.snapshot.tree
        wanted = sorted({tuple(split_path(p)) for p in self.plan.include})
        if not wanted or () in wanted:
            return [item async for item in walk(self.vault, root)]
        kept: list[tuple[bytes, ...]] = []
        for parts in wanted:
            if not any(parts[:len(k)] == k for k in kept):
                kept.append(parts)
        out: list[tuple[bytes, Node]] = []
        seen: set[bytes] = set()
        for parts in kept:
            chain = await self._chain(root, parts)
            path = b""
            for node in chain:
                path = join(path, node.name)
                if path not in seen:
                    seen.add(path)
                    out.append((path, node))
            last = chain[-1]
            if last.type == NodeType.DIR and last.subtree is not None:
                async for item in walk(self.vault, last.subtree, path):
                    out.append(item)
        return out

    async def _chain(self, root: ObjectId, parts: tuple[bytes, ...]) -> list[Node]:
        """The nodes from the root down to `parts`; UsageError if it is not in the snapshot."""
        chain: list[Node] = []
        tree: ObjectId | None = root
        for part in parts:
            found = None
            if tree is not None:
                found = next((n for n in await self.vault.load_tree(tree) if n.name == part),
                             None)
            if found is None:
                raise UsageError("path not found in snapshot "
                                 f"{self.plan.snapshot.id.short()}: {display(b'/'.join(parts))}")
            chain.append(found)
            tree = found.subtree if found.type == NodeType.DIR else None
        return chain

    # ---- directories, links, special files, file set-up (worker thread) -------------------

    def make(self, entries: list[tuple[bytes, Node]]) -> None:
        os.makedirs(self.target, exist_ok=True)
        self.files_total = sum(1 for _, n in entries
                               if n.type not in (NodeType.DIR, NodeType.SOCKET))
        skipped: set[bytes] = set()  # directories not restored: their contents are skipped
        files: list[tuple[bytes, bytes, Node]] = []
        for rel, node in entries:
            self._check()
            if rel.rpartition(b"/")[0] in skipped:
                if node.type == NodeType.DIR:
                    skipped.add(rel)
                continue
            path = self.target + b"/" + rel
            if node.type == NodeType.DIR:
                if self._make_dir(rel, path):
                    self.dirs.append((path, node))
                else:
                    skipped.add(rel)
            elif node.type == NodeType.FILE:
                files.append((rel, path, node))
            elif node.type == NodeType.SOCKET:
                logger.debug("skipping socket %s", display(rel))
            else:
                self._make_special(rel, path, node)
        self.report()
        self._plan_files(files)

    def _make_dir(self, rel: bytes, path: bytes) -> bool:
        try:
            os.mkdir(path, 0o700)  # the real mode is set at the end, deepest first
            return True
        except FileExistsError:
            st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            return True
        if not self.plan.overwrite:
            self._problem(rel, "exists, not overwritten", "exists")
            return False
        os.unlink(path)
        os.mkdir(path, 0o700)
        return True

    def _make_special(self, rel: bytes, path: bytes, node: Node) -> None:
        if node.type in (NodeType.CHARDEV, NodeType.BLOCKDEV) and not self.is_root:
            self._problem(rel, "device file not restored: only root can create it",
                          "unsupported")
            return
        if not self._place(rel, path, node):
            return
        self._special_meta(rel, path, node)
        self.files_done += 1

    @staticmethod
    def _create(node: Node, path: bytes) -> None:
        if node.type == NodeType.SYMLINK:
            os.symlink(node.target, path)  # raw bytes, never followed
        elif node.type == NodeType.FIFO:
            os.mkfifo(path, 0o600)
        else:
            kind = stat.S_IFCHR if node.type == NodeType.CHARDEV else stat.S_IFBLK
            os.mknod(path, kind | 0o600, node.rdev)

    @staticmethod
    def _same(node: Node, path: bytes, st: os.stat_result) -> bool:
        """True if the existing entry at `path` already is what `node` describes."""
        if node.type == NodeType.SYMLINK:
            return stat.S_ISLNK(st.st_mode) and os.readlink(path) == node.target
        if node.type == NodeType.FIFO:
            return stat.S_ISFIFO(st.st_mode)
        kind = stat.S_IFCHR if node.type == NodeType.CHARDEV else stat.S_IFBLK
        return stat.S_IFMT(st.st_mode) == kind and st.st_rdev == node.rdev

    def _place(self, rel: bytes, path: bytes, node: Node) -> bool:
        """Create a non-regular entry at `path`, replacing an existing one only if asked."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._create(node, path)
            return True
        if self._same(node, path, st):
            return True
        if not self._may_replace(rel, st):
            return False
        tmp = _temp_path(path)
        self._create(node, tmp)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return True

    def _may_replace(self, rel: bytes, st: os.stat_result) -> bool:
        if stat.S_ISDIR(st.st_mode):
            self._problem(rel, "exists as a directory, not replaced", "exists")
            return False
        if not self.plan.overwrite:
            self._problem(rel, "exists, not overwritten", "exists")
            return False
        return True

    def _special_meta(self, rel: bytes, path: bytes, node: Node) -> None:
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
            self._problem(rel, f"could not restore {', '.join(failed)}", "metadata")

    def _plan_files(self, files: list[tuple[bytes, bytes, Node]]) -> None:
        """Decide what each regular file needs: a restore, a hard link, or nothing."""
        primaries: dict[tuple[int, int], _File] = {}
        for rel, path, node in files:
            self._check()
            key = (node.device, node.inode) if node.links > 1 and node.inode else None
            first = primaries.get(key) if key is not None else None
            if first is not None and first.node.content == node.content \
                    and first.node.size == node.size:
                self._plan_link(first, rel, path, node)
                continue
            f = self._plan_file(rel, path, node)
            if f is not None and key is not None:
                primaries[key] = f
        for f in self.files:
            if f.remaining == 0 and not f.done:
                with self.lock:
                    self._complete(f)
        self.report()

    def _existing(self, rel: bytes, path: bytes, node: Node) -> str:
        """"new", "replace", "same" (identical file in place) or "skip" (a problem)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "new"
        # An identical file is left alone; with overwrite, only if its metadata matches too.
        matches = not self.plan.overwrite or (stat.S_IMODE(st.st_mode) == node.mode
                                              and st.st_mtime_ns == node.mtime_ns)
        if stat.S_ISREG(st.st_mode) and matches and self._same_content(path, node, st):
            return "same"
        return "replace" if self._may_replace(rel, st) else "skip"

    def _same_content(self, path: bytes, node: Node, st: os.stat_result) -> bool:
        """True if the file at `path` holds exactly the file's contents (hashed per blob)."""
        if st.st_size != node.size:
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        with open(fd, "rb", buffering=0) as f:
            for blob_id in node.content:
                loc = self.vault.index.get(blob_id)
                if loc is None:
                    return False
                data = f.read(loc.raw_length)
                if len(data) != loc.raw_length or keyed_id(self.vault.keys.chunk_id,
                                                            data) != blob_id:
                    return False
            return True

    def _plan_file(self, rel: bytes, path: bytes, node: Node) -> _File | None:
        state = self._existing(rel, path, node)
        if state == "skip":
            return None
        offsets: list[tuple[ObjectId, BlobLocation, int]] = []
        offset = 0
        for blob_id in node.content:
            loc = self.vault.index.get(blob_id)
            if loc is None:
                self._problem(rel, f"not restored: its data is missing or damaged (blob "
                              f"{blob_id.short()} is in no pack of the vault; run "
                              "`cairn check`)", "damaged")
                return None
            offsets.append((blob_id, loc, offset))
            offset += loc.raw_length
        if offset != node.size:
            self._problem(rel, "not restored: the snapshot is damaged (file size does not "
                          "match its data)", "damaged")
            return None
        f = _File(len(self.files), rel, path, node, len(offsets))
        self.files.append(f)
        if state == "same":
            f.remaining = 0
            f.done = True
            self.files_done += 1
            self.bytes_done += node.size
            self.bytes_total += node.size
            return f
        self.bytes_total += node.size
        for blob_id, loc, off in offsets:
            self.uses.setdefault(blob_id.raw, []).append((f, off))
            self.needed[blob_id.raw] = loc
        return f

    def _plan_link(self, first: _File, rel: bytes, path: bytes, node: Node) -> None:
        state = self._existing(rel, path, node)
        if state == "skip":
            return
        if state == "same":
            self.files_done += 1
            return
        link = _Link(rel, path)
        if first.done:
            with self.lock:
                self._link(first, link)
        else:
            first.links.append(link)

    # ---- file contents --------------------------------------------------------------------

    def _ranges(self) -> list[_Range]:
        by_pack: dict[ObjectId, list[tuple[ObjectId, BlobLocation]]] = {}
        for raw, loc in self.needed.items():
            by_pack.setdefault(loc.pack, []).append((ObjectId(raw), loc))
        out: list[_Range] = []
        for pack in sorted(by_pack):
            blobs = sorted(by_pack[pack], key=lambda b: b[1].offset)
            current: list[tuple[ObjectId, BlobLocation]] = []
            start = end = 0
            for blob_id, loc in blobs:
                stop = loc.offset + loc.length
                if current and loc.offset - end < MAX_GAP and stop - start <= MAX_RANGE:
                    current.append((blob_id, loc))
                    end = max(end, stop)
                    continue
                if current:
                    out.append(_Range(pack, start, end, tuple(current)))
                current, start, end = [(blob_id, loc)], loc.offset, stop
            if current:
                out.append(_Range(pack, start, end, tuple(current)))
        return out

    async def fetch(self) -> None:
        """Read the needed ranges pack by pack, in order; workers open and write the blobs."""
        ranges = self._ranges()
        logger.debug("reading %d blobs in %d ranges", len(self.needed), len(ranges))
        queue: asyncio.Queue[tuple[_Range, bytes | CairnError] | None] = asyncio.Queue(
            maxsize=RANGES_QUEUED)

        async def read() -> None:
            unreadable: dict[ObjectId, CairnError] = {}
            for rng in ranges:
                self._check()
                data: bytes | CairnError | None = unreadable.get(rng.pack)
                if data is None:
                    try:
                        data = await self.vault.store.get(ObjectKey.of(ObjectKind.PACK, rng.pack),
                                                          offset=rng.start,
                                                          length=rng.end - rng.start)
                    except (ObjectNotFound, RangeError, IntegrityError) as exc:
                        logger.warning("pack %s unreadable: %s", rng.pack.short(), exc)
                        unreadable[rng.pack] = data = exc
                await queue.put((rng, data))
            for _ in range(WORKERS):
                await queue.put(None)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                await self.in_thread(self._process, *item)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(read())
                for _ in range(WORKERS):
                    group.create_task(work())
        except BaseExceptionGroup as failures:
            first = _first_error(failures)
            raise first from first.__cause__
        with self.lock:
            for f in self.files:
                if not (f.done or f.failed):
                    logger.error("%s: data never arrived", display(f.rel))
                    self._fail(f, "not restored: its data was not found in the packs")

    def _process(self, rng: _Range, data: bytes | CairnError) -> None:
        """Open each blob of a range and write it wherever it is used (worker thread)."""
        for blob_id, loc in rng.blobs:
            self._check()
            if isinstance(data, CairnError):
                self._blob_failed(blob_id, f"pack {rng.pack.short()} is missing or damaged "
                                  f"({data})")
                continue
            start = loc.offset - rng.start
            try:
                plain = self.vault.open_blob(blob_id, loc.type,
                                             data[start:start + loc.length])
                if len(plain) != loc.raw_length:
                    raise IntegrityError(f"blob {blob_id.short()} is damaged: wrong length")
            except IntegrityError as exc:
                logger.warning("%s", exc)
                self._blob_failed(blob_id, f"damaged data ({exc})")
                continue
            self._deliver(blob_id, plain)
            self.report()

    def _blob_failed(self, blob_id: ObjectId, reason: str) -> None:
        with self.lock:
            for f, _ in self.uses.pop(blob_id.raw, ()):
                self._fail(f, f"not restored: {reason}")

    def _deliver(self, blob_id: ObjectId, plain: bytes) -> None:
        zero = _is_zero(plain)  # not written: the preallocated file reads as zeros (sparse)
        with self.lock:
            for f, offset in self.uses.pop(blob_id.raw, ()):
                if self.closed:
                    raise Cancelled("cancelled")
                if f.failed:
                    continue
                fd = self._fd(f)
                if not zero:
                    try:
                        _write_sparse(fd, plain, offset)
                    except OSError as exc:
                        exc.filename = exc.filename or f.path
                        raise
                f.remaining -= 1
                self.bytes_done += len(plain)
                if f.remaining == 0:
                    self._complete(f)

    # The methods below run with self.lock held.

    def _fd(self, f: _File) -> int:
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
            os.close(self.fds.popitem(last=False)[1])
        return fd

    def _open_temp(self, f: _File) -> int:
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        if f.tmp is not None:
            return os.open(f.tmp, flags)
        while True:
            tmp = _temp_path(f.path)
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

    def _close(self, f: _File) -> None:
        fd = self.fds.pop(f.num, None)
        if fd is not None:
            os.close(fd)

    def _complete(self, f: _File) -> None:
        """All blobs written: metadata, then rename into place, then its hard links."""
        fd = self._fd(f)
        self._file_meta(f.rel, fd, f.node)
        self._close(f)
        assert f.tmp is not None
        try:
            os.rename(f.tmp, f.path)
        except OSError as exc:
            exc.filename = f.path
            raise
        self.temps.discard(f.tmp)
        f.done = True
        self.files_done += 1
        for link in f.links:
            self._link(f, link)

    def _fail(self, f: _File, message: str) -> None:
        if f.failed or f.done:
            return
        f.failed = True
        self._close(f)
        if f.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f.tmp)
            self.temps.discard(f.tmp)
        self._problem(f.rel, message, "damaged")
        for link in f.links:
            self._problem(link.rel, message, "damaged")

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
            self._problem(rel, f"could not restore {', '.join(failed)}", "metadata")

    def _link(self, f: _File, link: _Link) -> None:
        """Make `link` another name of the restored file `f` (a copy if links are refused)."""
        tmp = _temp_path(link.path)
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
        self.files_done += 1

    def _copy(self, f: _File, tmp: bytes) -> None:
        src = os.open(f.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(dst, f.node.size)
                offset = 0
                while block := os.pread(src, 1 << 20, offset):
                    _write_sparse(dst, block, offset)
                    offset += len(block)
                self._file_meta(f.rel, dst, f.node)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    # ---- the end (worker thread) ----------------------------------------------------------

    def finish(self) -> None:
        """Directory metadata, deepest first (creating files inside changed their times)."""
        for path, node in sorted(self.dirs, key=lambda d: d[0].count(b"/"), reverse=True):
            self._check()
            self._special_meta(path[len(self.target) + 1:], path, node)
            self.dirs_done += 1
