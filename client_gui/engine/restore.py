"""Restore: snapshot trees back into files, reading every needed pack once, in pack order.

Owns the public API (RestorePlan, RestoreResult, RestoreError, restore()) and the run: plan
(walk the selected trees, compare with what the target holds) -> directories, symlinks, special
files -> file contents (restore_reader reads packs, restore_writer writes temp files) ->
directory metadata, deepest first. Never overwrites unless asked, never leaves a temp file
behind, never talks to the user: problems go to the ProgressSink and the result.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from client_gui.engine import malloc
from client_gui.engine.progress import (
    CancelToken,
    ItemProblem,
    NullSink,
    ProgressSink,
    RestoreProgress,
    Throttle,
)
from client_gui.engine.restore_reader import (
    MAX_GAP,
    MAX_RANGE,
    RANGES_QUEUED,
    WORKERS,
    read_blobs,
)
from client_gui.engine.restore_writer import (
    OPEN_FILES,
    SPARSE_BLOCK,
    TEMP_MARK,
    FileWriter,
    Handle,
    HardLink,
    TargetFile,
    create_special,
    is_zero,
    temp_path,
)
from client_gui.engine.vault import BlobLocation, SnapshotRef, Vault
from client_gui.engine.walk import display, join, split_path, walk
from shared.errors import CairnError, Cancelled, UsageError
from shared.format.tree import Node, NodeType
from shared.hashing import keyed_id
from shared.ids import ObjectId

# The tuning constants and TEMP_MARK live beside the code they tune; they stay importable here.
__all__ = [
    "MAX_GAP", "MAX_RANGE", "OPEN_FILES", "RANGES_QUEUED", "SPARSE_BLOCK", "TEMP_MARK", "WORKERS",
    "RestoreError", "RestorePlan", "RestoreResult", "restore",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")
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
    finally:
        malloc.trim()  # the ranges and blobs are free: a long-lived app gives the memory back
    run.report(force=True)
    logger.info("restored %d files, %d directories, %d bytes to %s (%d problems)",
                run.files_done, run.dirs_done, run.bytes_done, plan.target, len(run.problems))
    return RestoreResult(run.files_done, run.dirs_done, run.bytes_done, tuple(run.problems))


class _RestoreRun:
    """One restore job: its plan, counters and problems; a BlobConsumer for the pack reader."""

    def __init__(self, vault: Vault, plan: RestorePlan, sink: ProgressSink,
                 cancel: CancelToken) -> None:
        self.vault = vault
        self.plan = plan
        self.sink = sink
        self.cancel = cancel
        self.target = os.fsencode(os.path.abspath(plan.target)).rstrip(b"/")
        self.owners = plan.owners if plan.owners is not None else os.geteuid() == 0
        self.is_root = os.geteuid() == 0
        self.lock = threading.Lock()  # guards everything below (and the writer) that workers touch
        self.stop = threading.Event()  # set when the job ends early: threads stop at once
        self.writer = FileWriter(owners=self.owners, problem=self._problem, placed=self._placed)
        self.files: list[TargetFile] = []
        self.uses: dict[bytes, list[tuple[TargetFile, int]]] = {}
        self.needed: dict[bytes, BlobLocation] = {}
        self.dirs: list[tuple[bytes, Node]] = []
        # Directories (rel; b"" is the target) this run created: nothing can be in the way
        # inside them, so their entries need no lstat (one syscall less per file). Only where
        # the file system keeps names exactly (see _names_exact).
        self.fresh: set[bytes] = set()
        self.names_exact = False
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
            if not fut.cancelled():
                fut.exception()  # seen: the run's first error is the one reported
            raise

    def check(self) -> None:
        """Raise Cancelled if the job is to stop (cancelled, or ended early)."""
        if self.stop.is_set() or self.writer.closed:
            raise Cancelled("cancelled")
        self.cancel.check()

    def _problem(self, rel: bytes, message: str, code: str = "item") -> None:
        item = ItemProblem(path=display(rel), message=message, code=code)
        logger.warning("%s: %s", item.path, message)
        self.problems.append(item)
        self.sink.problem(item)

    def _placed(self) -> None:
        self.files_done += 1

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
            self.writer.discard()

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
        try:
            os.makedirs(self.target)
            created = True
        except FileExistsError:
            created = False
        self.names_exact = _names_exact(self.target)
        if created and self.names_exact:
            self.fresh.add(b"")
        self.files_total = sum(1 for _, n in entries
                               if n.type not in (NodeType.DIR, NodeType.SOCKET))
        skipped: set[bytes] = set()  # directories not restored: their contents are skipped
        files: list[tuple[bytes, bytes, Node]] = []
        for rel, node in entries:
            self.check()
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
            if self.names_exact:
                self.fresh.add(rel)
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
        self.writer.special_meta(rel, path, node)
        self.files_done += 1

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
        if rel.rpartition(b"/")[0] in self.fresh:
            create_special(node, path)
            return True
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            create_special(node, path)
            return True
        if self._same(node, path, st):
            return True
        if not self._may_replace(rel, st):
            return False
        while True:
            tmp = temp_path(path)
            try:
                create_special(node, tmp)
                break
            except FileExistsError:
                continue  # a name taken (see restore_writer._TEMP_TAG): the next one
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

    def _plan_files(self, files: list[tuple[bytes, bytes, Node]]) -> None:
        """Decide what each regular file needs: a restore, a hard link, or nothing."""
        primaries: dict[tuple[int, int], TargetFile] = {}
        for rel, path, node in files:
            self.check()
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
                    self.writer.complete(f)
        self.report()

    def _existing(self, rel: bytes, path: bytes, node: Node) -> str:
        """"new", "replace", "same" (identical file in place) or "skip" (a problem)."""
        if rel.rpartition(b"/")[0] in self.fresh:
            return "new"
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

    def _plan_file(self, rel: bytes, path: bytes, node: Node) -> TargetFile | None:
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
        f = TargetFile(len(self.files), rel, path, node, len(offsets))
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

    def _plan_link(self, first: TargetFile, rel: bytes, path: bytes, node: Node) -> None:
        state = self._existing(rel, path, node)
        if state == "skip":
            return
        if state == "same":
            self.files_done += 1
            return
        link = HardLink(rel, path)
        if first.done:
            with self.lock:
                self.writer.link(first, link)
        else:
            first.links.append(link)

    # ---- file contents (restore_reader calls deliver and blob_failed on worker threads) ---

    async def fetch(self) -> None:
        """Read the needed blobs pack by pack and write them; then fail files still missing."""
        await read_blobs(self.vault, self.needed, self)
        with self.lock:
            for f in self.files:
                if not (f.done or f.failed):
                    logger.error("%s: data never arrived", display(f.rel))
                    self.writer.fail(f, "not restored: its data was not found in the packs")

    def blob_failed(self, blob_id: ObjectId, reason: str) -> None:
        with self.lock:
            for f, _ in self.uses.pop(blob_id.raw, ()):
                self.writer.fail(f, f"not restored: {reason}")

    def deliver(self, blob_id: ObjectId, plain: bytes | bytearray) -> None:
        zero = is_zero(plain)  # not written: the file reads as zeros there (sparse)
        targets: list[tuple[TargetFile, int, Handle]] = []
        whole: list[tuple[TargetFile, int]] = []  # files made of this one blob (see write_whole)
        with self.lock:
            try:
                for f, offset in self.uses.pop(blob_id.raw, ()):
                    if self.writer.closed:
                        raise Cancelled("cancelled")
                    if f.failed:
                        continue
                    if f.remaining == 1 and f.tmp is None:  # never opened: its only blob
                        whole.append((f, offset))
                    else:
                        targets.append((f, offset, self.writer.pin(f)))
            except BaseException:
                for *_, handle in targets:
                    self.writer.unpin(handle)
                raise
        # The writes go outside the lock, so both workers write at once: writing into the
        # page cache is most of a restore's time, and under the lock it used one core.
        for i, (f, offset, handle) in enumerate(targets):
            try:
                holes = self.writer.write_at(f, handle, plain, offset, zero=zero)
            except BaseException:
                with self.lock:
                    for *_, rest in targets[i:]:
                        self.writer.unpin(rest)
                raise
            with self.lock:
                self.writer.unpin(handle)
                try:
                    if self._written(f, len(plain)):
                        f.holes |= holes
                        if f.remaining == 0:
                            self.writer.complete(f)
                except BaseException:  # cancelled or failed: unpin the targets not written
                    for *_, rest in targets[i + 1:]:
                        self.writer.unpin(rest)
                    raise
        for f, offset in whole:
            failed = self.writer.write_whole(f, plain, offset, zero=zero)
            with self.lock:
                if self._written(f, len(plain)):
                    self.writer.settle(f, failed)
        self.report()

    def _written(self, f: TargetFile, size: int) -> bool:
        """Count a blob of `f` written (under the lock); False if `f` failed meanwhile."""
        if self.writer.closed:
            raise Cancelled("cancelled")
        if f.failed:  # another of its blobs was damaged meanwhile
            return False
        f.remaining -= 1
        self.bytes_done += size
        return True

    # ---- the end (worker thread) ----------------------------------------------------------

    def finish(self) -> None:
        """Directory metadata, deepest first (creating files inside changed their times)."""
        for path, node in sorted(self.dirs, key=lambda d: d[0].count(b"/"), reverse=True):
            self.check()
            self.writer.special_meta(path[len(self.target) + 1:], path, node)
            self.dirs_done += 1


def _names_exact(folder: bytes) -> bool:
    """Whether names in `folder` are kept exactly: not folded to one case, not normalized
    (macOS, Windows, ext4 with casefold). Where they are not, two names of a snapshot can be
    one entry, so the entries of a directory the restore created must still be looked up.
    Made once per restore with a probe file; False if it cannot be made."""
    probe = folder + b"/.cairn-probe-" + secrets.token_hex(4).encode("ascii") + b"-A\xc3\xa9"
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        os.close(os.open(probe, flags, 0o600))
    except OSError:
        return False
    try:
        folded = probe[:-3] + b"a\xc3\xa9"  # another case
        decomposed = probe[:-2] + b"e\xcc\x81"  # NFD of the same letter
        return not (os.path.lexists(folded) or os.path.lexists(decomposed))
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
