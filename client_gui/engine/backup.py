"""Backup: scan -> read -> chunk -> hash -> skip known -> compress + encrypt -> pack -> upload.

One walker thread builds trees in name order; file workers read, chunk and hash; a CPU pool
seals new blobs; packs are uploaded on the asyncio loop. Write order is packs -> index ->
snapshot, with checkpoint snapshots every few minutes, so a crash never leaves a broken vault.
"""

import asyncio
import grp
import logging
import os
import pwd
import stat
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from client_gui.engine.exclude import Excluder, is_cache_dir
from client_gui.engine.progress import (
    BackupProgress,
    CancelToken,
    ItemProblem,
    NullSink,
    ProgressSink,
    Throttle,
)
from client_gui.engine.vault import SnapshotRef, Vault, hostname, username
from shared.chunking import FastCdcChunker
from shared.errors import CairnError, Cancelled, InternalError, PermissionDenied, UsageError
from shared.format.blob import encode_blob
from shared.format.deletion import DeletionMarker
from shared.format.pack import PackEntry, PackWriter
from shared.format.snapshot import Snapshot, SnapshotStats
from shared.format.tree import Node, NodeType, encode_tree
from shared.hashing import keyed_id
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind

logger = logging.getLogger(__name__)
T = TypeVar("T")

PROGRAM = "cairn 0.1.0"
# Two file readers keep one read ahead while the other chunks and hashes (both release the
# GIL); two sealers match the two cores (zstd + XChaCha20 are the costly stages).
FILE_WORKERS = 2
SEAL_WORKERS = os.cpu_count() or 2
# Blobs being sealed at once, per sealer: bounds memory to ~4 x 4 MiB chunks per core.
SEALS_IN_FLIGHT_PER_WORKER = 4
# Packs uploading at once: one on the wire while the next is filled; ~2 x pack size of RAM.
UPLOADS_IN_FLIGHT = 2
# Files queued ahead of the walker: enough to keep the readers busy on small files.
FILES_IN_FLIGHT = 64
CHECKPOINT_INTERVAL = 300.0  # seconds; must stay well below the prune grace period
READ_RETRIES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupPlan:
    paths: tuple[str, ...]
    excludes: tuple[str, ...] = ()
    exclude_paths: tuple[str, ...] = ()  # exact paths never backed up (e.g. the vault itself)
    exclude_caches: bool = True
    one_file_system: bool = False
    tags: tuple[str, ...] = ()
    hostname: str = ""
    parent: str | None = None  # snapshot spec; default: latest of this host with these paths
    checkpoint_interval: float = CHECKPOINT_INTERVAL
    read_retries: int = READ_RETRIES  # reads after the first of a file that changed while read


@dataclass(frozen=True, slots=True)
class BackupResult:
    snapshot_id: ObjectId
    snapshot: Snapshot
    problems: tuple[ItemProblem, ...]


@dataclass
class _Frame:
    """A directory being built: its finished nodes (or futures of file nodes) so far."""

    name: bytes
    path: bytes
    st: os.stat_result | None
    items: list["Node | Future[Node | None]"] = field(default_factory=list)


@dataclass
class _Stats:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    new_files: int = 0
    changed_files: int = 0
    unchanged_files: int = 0
    new_blobs: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    bytes_read: int = 0


def _abs_paths(paths: tuple[str, ...]) -> list[bytes]:
    """Absolute, normalised byte paths; nested duplicates dropped; missing ones refused."""
    out: list[bytes] = []
    for given in paths:
        raw = os.path.normpath(os.path.abspath(os.fsencode(given)))
        if not os.path.lexists(raw):
            raise UsageError(f"path not found: {given}")
        out.append(raw)
    # Sort by components, not bytes: b"/a-b" sorts between b"/a" and b"/a/b" as bytes, which
    # hid b"/a/b" from the check against the last kept path.
    out.sort(key=lambda p: p.split(b"/"))
    kept: list[bytes] = []
    for p in out:
        if kept and (p == kept[-1] or p.startswith(kept[-1].rstrip(b"/") + b"/")):
            continue
        kept.append(p)
    return kept


async def find_parent(vault: Vault, refs: list[SnapshotRef], host: str,
                      paths: list[bytes]) -> SnapshotRef | None:
    same = [r for r in refs if r.snapshot.hostname == host
            and sorted(r.snapshot.paths) == sorted(paths)]
    return same[-1] if same else None


async def backup(vault: Vault, plan: BackupPlan, *, progress: ProgressSink | None = None,
                 cancel: CancelToken | None = None) -> BackupResult:
    """Back up `plan.paths` into `vault`; returns the new snapshot and per-file problems."""
    paths = _abs_paths(plan.paths)
    run = _BackupRun(vault, plan, paths, asyncio.get_running_loop(), progress or NullSink(),
                     cancel or CancelToken())
    try:
        await run.prepare()
        run.walk = run.control_pool.submit(run.run)
        return await asyncio.wrap_future(run.walk)
    except BaseException:
        run.stop()  # also when this task is cancelled: the threads must not go on alone
        raise
    finally:
        # Waiting for the threads happens off the loop, which they may need to finish a step.
        await asyncio.wrap_future(run.control_pool.submit(run.shutdown))
        run.control_pool.shutdown(wait=True)  # both its threads are idle by now


class _BackupRun:
    def __init__(self, vault: Vault, plan: BackupPlan, paths: list[bytes],
                 loop: asyncio.AbstractEventLoop, sink: ProgressSink,
                 cancel: CancelToken) -> None:
        self.vault = vault
        self.plan = plan
        self.paths = paths
        self.loop = loop
        self.sink = sink
        self.cancel = cancel
        self.host = plan.hostname or hostname()
        self.enc_key = vault.keys.encryption
        self.id_key = vault.keys.chunk_id
        self.level = vault.config.zstd_level
        self.pack_size = vault.config.pack_size
        self.chunker_params = vault.config.chunker_params(vault.keys.chunker_seed)
        self.excluder = Excluder(plan.excludes, [os.fsencode(os.path.abspath(p))
                                                 for p in plan.exclude_paths])
        self.parent: SnapshotRef | None = None
        self.known: set[bytes] = set()
        self.known_lock = threading.Lock()
        self.marked_packs: set[ObjectId] = set()
        self.used: set[bytes] = set()
        self.stats = _Stats()
        self.stats_lock = threading.Lock()
        self.problems: list[ItemProblem] = []
        self.writers = {BlobType.DATA: PackWriter(BlobType.DATA),
                        BlobType.TREE: PackWriter(BlobType.TREE)}
        self.pack_lock = threading.Lock()
        self.pending_index: dict[ObjectId, tuple[PackEntry, ...]] = {}
        self.index_lock = threading.Lock()
        self.uploads: set[Future[None]] = set()
        self.seals: set[Future[None]] = set()
        self.futures_lock = threading.Lock()
        self.upload_slots = threading.BoundedSemaphore(UPLOADS_IN_FLIGHT)
        self.seal_slots = threading.BoundedSemaphore(SEAL_WORKERS * SEALS_IN_FLIGHT_PER_WORKER)
        self.file_slots = threading.BoundedSemaphore(FILES_IN_FLIGHT)
        self.error: BaseException | None = None
        # The walk and the final shutdown get threads of their own, not the loop's default
        # executor: they wait for coroutines (uploads, tree loads) that may need that executor.
        self.control_pool = ThreadPoolExecutor(2, thread_name_prefix="cairn-walk")
        self.walk: Future[BackupResult] | None = None
        self.file_pool = ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="cairn-read")
        self.seal_pool = ThreadPoolExecutor(SEAL_WORKERS, thread_name_prefix="cairn-seal")
        self.stack: list[_Frame] = []
        self.hardlinks: dict[tuple[int, int], Future[Node | None] | Node] = {}
        self.checkpoints: list[ObjectId] = []
        self.start = time.monotonic()
        self.last_checkpoint = self.start
        self.throttle = Throttle()
        self.estimate: tuple[int, int] | None = None
        self.current = b""
        self.root_dev: int | None = None
        self.users: dict[int, str] = {}
        self.groups: dict[int, str] = {}

    # ---- set-up on the event loop ---------------------------------------------------------

    async def prepare(self) -> None:
        # Markers before the index: a sweep finishing in between deletes a pack and its
        # marker, and an index read first would still name the pack.
        markers = await self.vault.load_deletions()
        await self.vault.load_index()
        recovered = {pid: self.vault.index.packs[pid] for pid in self.vault.unindexed_packs
                     if pid in self.vault.index.packs}
        self.pending_index.update(recovered)
        self._apply_markers(markers)
        refs = await self.vault.list_snapshots()
        if self.plan.parent:
            self.parent = await self.vault.find_snapshot(self.plan.parent, refs)
        else:
            self.parent = await find_parent(self.vault, refs, self.host, self.paths)
        if self.parent is not None:
            s = self.parent.snapshot.stats
            self.estimate = (s.files, s.bytes)

    async def _load_markers(self) -> None:
        self._apply_markers(await self.vault.load_deletions())

    def _apply_markers(self, markers: dict[ObjectId, DeletionMarker]) -> None:
        # Accumulate: once swept, a pack's marker is gone too, but the pack stays untrusted.
        self.marked_packs |= {p for m in markers.values() for p in m.packs}
        known: set[bytes] = set()
        for pid, entries in self.vault.index.packs.items():
            if pid not in self.marked_packs:
                known.update(e.id.raw for e in entries)
        with self.known_lock:
            # Blobs this run added stay known (their packs are new and unmarked).
            self.known = known | (self.known - self.vault.index.raw_ids())

    def stop(self) -> None:
        """Make every thread of this run stop at its next check.

        The caller's CancelToken is left alone: it belongs to the caller.
        """
        self._fail(Cancelled("the backup was stopped"))

    def shutdown(self) -> None:
        """Wait until the walk, every worker thread and every upload have ended.

        Uploads in flight (at most UPLOADS_IN_FLIGHT packs) are let finish, not cancelled: a
        stored pack is recovered by the next backup, and no put outlives backup().
        """
        if self.walk is not None:
            wait([self.walk])
        self.file_pool.shutdown(wait=True, cancel_futures=True)
        self.seal_pool.shutdown(wait=True, cancel_futures=True)
        with self.futures_lock:
            uploads = set(self.uploads)
        wait(uploads)

    # ---- helpers across threads -----------------------------------------------------------

    def _await(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the job's event loop from a worker thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        self.cancel.check()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    def _problem(self, path: bytes, message: str, code: str = "item") -> None:
        item = ItemProblem(path=path.decode("utf-8", "backslashreplace"), message=message,
                           code=code)
        logger.warning("%s: %s", item.path, message)
        with self.stats_lock:
            self.problems.append(item)
        self.sink.problem(item)

    def _report(self, force: bool = False) -> None:
        if not (force or self.throttle.ready()):
            return
        s = self.stats
        files_total, bytes_total = self.estimate if self.estimate else (None, None)
        self.sink.progress(BackupProgress(
            files_done=s.files, dirs_done=s.dirs, bytes_done=s.bytes, bytes_total=bytes_total,
            files_total=files_total, bytes_new=s.new_bytes, bytes_uploaded=s.stored_bytes,
            elapsed=time.monotonic() - self.start,
            current=self.current.decode("utf-8", "backslashreplace")))

    def _claim(self, blob_id: ObjectId) -> bool:
        """True if the blob is new and this caller must store it (once per run)."""
        with self.known_lock:
            if blob_id.raw in self.known:
                return False
            self.known.add(blob_id.raw)
            return True

    def _reuse(self, node: Node) -> bool:
        """True if every chunk of `node` is stored (or being stored); marks them used."""
        with self.known_lock:
            if not all(c.raw in self.known for c in node.content):
                return False
        self.used.update(c.raw for c in node.content)
        return True

    def _owner(self, st: os.stat_result) -> tuple[str, str]:
        user = self.users.get(st.st_uid)
        if user is None:
            try:
                user = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                user = ""
            self.users[st.st_uid] = user
        group = self.groups.get(st.st_gid)
        if group is None:
            try:
                group = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                group = ""
            self.groups[st.st_gid] = group
        return user, group

    def _node(self, name: bytes, ntype: NodeType, st: os.stat_result, **extra: Any) -> Node:
        user, group = self._owner(st)
        return Node(name=name, type=ntype, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                    gid=st.st_gid, user=user, group=group, mtime_ns=st.st_mtime_ns,
                    ctime_ns=st.st_ctime_ns, inode=st.st_ino, device=st.st_dev,
                    links=st.st_nlink, **extra)

    @staticmethod
    def _xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            return ()
        out = []
        for n in sorted(names):
            try:
                out.append((os.fsencode(n), os.getxattr(path, n, follow_symlinks=False)))
            except OSError:
                continue
        return tuple(out)

    # ---- blobs and packs ------------------------------------------------------------------

    def _seal(self, blob_type: BlobType, blob_id: ObjectId, data: bytes) -> None:
        try:
            sealed = encode_blob(self.enc_key, blob_type, blob_id, data, self.level)
            self._add_to_pack(blob_type, blob_id, sealed, len(data))
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self.seal_slots.release()

    def _submit_seal(self, blob_type: BlobType, blob_id: ObjectId, data: bytes) -> None:
        while not self.seal_slots.acquire(timeout=0.5):
            self._check()
        fut = self.seal_pool.submit(self._seal, blob_type, blob_id, data)
        with self.futures_lock:
            self.seals.add(fut)
        fut.add_done_callback(self._seal_done)
        with self.stats_lock:
            self.stats.new_blobs += 1
            self.stats.new_bytes += len(data)

    def _seal_done(self, fut: Future[None]) -> None:
        with self.futures_lock:
            self.seals.discard(fut)

    def _add_to_pack(self, blob_type: BlobType, blob_id: ObjectId, sealed: bytes,
                     raw_length: int) -> None:
        full = None
        with self.pack_lock:
            writer = self.writers[blob_type]
            writer.add(blob_id, sealed, raw_length)
            if writer.size >= self.pack_size:
                full = writer
                self.writers[blob_type] = PackWriter(blob_type)
        if full is not None:
            self._upload(full)

    def _upload(self, writer: PackWriter) -> None:
        pack_id, data, entries = writer.finish(self.enc_key)
        while not self.upload_slots.acquire(timeout=0.5):
            self._check()
        try:
            fut = asyncio.run_coroutine_threadsafe(self._put_pack(pack_id, data, entries),
                                                   self.loop)
        except BaseException:
            self.upload_slots.release()
            raise
        with self.futures_lock:
            self.uploads.add(fut)
        fut.add_done_callback(self._upload_done)

    async def _put_pack(self, pack_id: ObjectId, data: bytes, entries: list[PackEntry]) -> None:
        await self.vault.store.put(ObjectKey.of(ObjectKind.PACK, pack_id), data)
        with self.index_lock:
            self.pending_index[pack_id] = tuple(entries)
            self.vault.index.add_pack(pack_id, entries)
        with self.stats_lock:
            self.stats.stored_bytes += len(data)
        logger.debug("uploaded pack %s (%d bytes, %d blobs)", pack_id.short(), len(data),
                     len(entries))

    def _upload_done(self, fut: Future[None]) -> None:
        self.upload_slots.release()
        with self.futures_lock:
            self.uploads.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self._fail(fut.exception())  # type: ignore[arg-type]

    def _wait_all(self, which: set[Future[None]]) -> None:
        while True:
            with self.futures_lock:
                pending = set(which)
            if not pending:
                break
            wait(pending, timeout=0.5)
            self._check()
        self._check()

    def _flush(self) -> None:
        """Seal, pack, upload and index everything produced so far (packs before index)."""
        self._wait_all(self.seals)
        with self.pack_lock:
            full = [w for w in self.writers.values() if w.count]
            for w in full:
                self.writers[w.blob_type] = PackWriter(w.blob_type)
        for w in full:
            self._upload(w)
        self._wait_all(self.uploads)
        with self.index_lock:
            pending, self.pending_index = self.pending_index, {}
        if pending:
            self._await(self.vault.save_index(pending))
            self.vault.unindexed_packs.difference_update(pending)  # indexed now

    def _save_tree(self, nodes: list[Node]) -> ObjectId:
        data = encode_tree(nodes)
        tree_id = keyed_id(self.id_key, data)
        self.used.add(tree_id.raw)
        if self._claim(tree_id):
            with self.stats_lock:
                self.stats.new_blobs += 1
                self.stats.new_bytes += len(data)
            sealed = encode_blob(self.enc_key, BlobType.TREE, tree_id, data, self.level)
            self._add_to_pack(BlobType.TREE, tree_id, sealed, len(data))
        return tree_id

    # ---- files ----------------------------------------------------------------------------

    def _open(self, path: bytes) -> int:
        # O_NONBLOCK: if a FIFO took the file's place since lstat, open must not wait for a
        # writer (the type check after it reports the change); regular files ignore it.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        noatime = getattr(os, "O_NOATIME", 0)
        if noatime:
            try:
                return os.open(path, flags | noatime)
            except PermissionError:
                pass  # O_NOATIME needs ownership; fall back to a plain open
        return os.open(path, flags)

    def _read_file(self, path: bytes, name: bytes, parent: Node | None) -> Node | None:
        try:
            node = self._read_file_inner(path, name, parent)
            if node is not None:  # files that could not be read are not in the snapshot
                with self.stats_lock:
                    self._count_file(node)
                    if parent is None:
                        self.stats.new_files += 1
                    else:
                        self.stats.changed_files += 1
            return node
        except (Cancelled, CairnError):
            raise
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self.file_slots.release()

    def _read_file_inner(self, path: bytes, name: bytes, parent: Node | None) -> Node | None:
        chunker = FastCdcChunker(self.chunker_params)
        for attempt in range(1 + max(0, self.plan.read_retries)):
            try:
                fd = self._open(path)
            except OSError as exc:
                self._problem(path, f"cannot read: {exc.strerror}", "unreadable")
                return None
            try:
                with open(fd, "rb", buffering=0, closefd=True) as f:
                    before = os.fstat(fd)
                    if not stat.S_ISREG(before.st_mode):
                        self._problem(path, "is no longer a regular file", "changed")
                        return None
                    content: list[ObjectId] = []
                    size = 0
                    for chunk in chunker.split_stream(f):
                        self._check()
                        blob_id = keyed_id(self.id_key, chunk)
                        content.append(blob_id)
                        self.used.add(blob_id.raw)
                        size += len(chunk)
                        if self._claim(blob_id):
                            self._submit_seal(BlobType.DATA, blob_id, bytes(chunk))
                        with self.stats_lock:
                            self.stats.bytes_read += len(chunk)
                        self._report()
                    after = os.fstat(fd)
            except OSError as exc:
                self._problem(path, f"read error: {exc.strerror}", "unreadable")
                return None
            if (size == after.st_size == before.st_size
                    and before.st_mtime_ns == after.st_mtime_ns
                    and before.st_ctime_ns == after.st_ctime_ns):
                return self._node(name, NodeType.FILE, after, size=size, content=tuple(content),
                                  xattrs=self._xattrs(path))
            logger.info("%s changed while read (attempt %d), reading again", path, attempt + 1)
        if parent is not None and parent.type == NodeType.FILE and self._reuse(parent):
            self._problem(path, "kept changing while being read; the previous version is kept",
                          "changed")
            return parent
        self._problem(path, "kept changing while being read; not backed up", "changed")
        return None

    def _count_file(self, node: Node) -> None:
        """Count a file going into the snapshot (the stats count what the snapshot holds).

        Call with `stats_lock` held.
        """
        self.stats.files += 1
        self.stats.bytes += node.size

    def _file(self, path: bytes, name: bytes, st: os.stat_result,
              parent: Node | None) -> "Node | Future[Node | None]":
        if (parent is not None and parent.type == NodeType.FILE and parent.size == st.st_size
                and parent.mtime_ns == st.st_mtime_ns and parent.ctime_ns == st.st_ctime_ns
                and parent.inode == st.st_ino and self._reuse(parent)):
            with self.stats_lock:
                self._count_file(parent)
                self.stats.unchanged_files += 1
            if st.st_nlink > 1:
                self.hardlinks.setdefault((st.st_dev, st.st_ino), parent)
            return parent
        link_key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and link_key in self.hardlinks:
            first = self.hardlinks[link_key]
            first_node = first.result() if isinstance(first, Future) else first
            if first_node is not None:
                with self.stats_lock:
                    self._count_file(first_node)  # another name of a file read once
                return self._node(name, NodeType.FILE, st, size=first_node.size,
                                  content=first_node.content, xattrs=first_node.xattrs)
        while not self.file_slots.acquire(timeout=0.5):
            self._check()
        try:
            fut = self.file_pool.submit(self._read_file, path, name, parent)
        except BaseException:
            self.file_slots.release()
            raise
        if st.st_nlink > 1:
            self.hardlinks[link_key] = fut
        return fut

    # ---- the walk -------------------------------------------------------------------------

    def _load_parent_tree(self, parent: Node | None) -> dict[bytes, Node]:
        if parent is None or parent.type != NodeType.DIR or parent.subtree is None:
            return {}
        try:
            nodes = self._await(self.vault.load_tree(parent.subtree))
        except CairnError as exc:
            logger.warning("parent tree %s unreadable (%s); reading files again",
                           parent.subtree.short(), exc)
            return {}
        return {n.name: n for n in nodes}

    def _entry(self, frame: _Frame, path: bytes, name: bytes, parent: Node | None) -> None:
        """Back up one path (any type) into `frame`."""
        self._check()
        self._maybe_checkpoint()
        if self.excluder.excluded(path):
            return
        try:
            st = os.lstat(path)
        except OSError as exc:
            self._problem(path, f"cannot stat: {exc.strerror}", "unreadable")
            return
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            frame.items.append(self._directory(path, name, st, parent))
        elif stat.S_ISREG(mode):
            frame.items.append(self._file(path, name, st, parent))
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                self._problem(path, f"cannot read link: {exc.strerror}", "unreadable")
                return
            frame.items.append(self._node(name, NodeType.SYMLINK, st, target=target))
        elif stat.S_ISFIFO(mode):
            frame.items.append(self._node(name, NodeType.FIFO, st))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ntype = NodeType.CHARDEV if stat.S_ISCHR(mode) else NodeType.BLOCKDEV
            frame.items.append(self._node(name, ntype, st, rdev=st.st_rdev))
        elif stat.S_ISSOCK(mode):
            frame.items.append(self._node(name, NodeType.SOCKET, st))
        self._report()

    def _directory(self, path: bytes, name: bytes, st: os.stat_result,
                   parent: Node | None) -> Node:
        self.current = path
        parent_nodes = self._load_parent_tree(parent)
        frame = _Frame(name, path, st)
        self.stack.append(frame)
        try:
            if self.plan.one_file_system and self.root_dev is not None \
                    and st.st_dev != self.root_dev:
                names: list[bytes] = []  # a mount point: kept, its contents not crossed
            else:
                try:
                    names = sorted(os.listdir(path))
                except OSError as exc:
                    self._problem(path, f"cannot list directory: {exc.strerror}", "unreadable")
                    names = []
                if self.plan.exclude_caches and b"CACHEDIR.TAG" in names and is_cache_dir(path):
                    names = [b"CACHEDIR.TAG"]
            for child in names:
                self._entry(frame, path.rstrip(b"/") + b"/" + child, child,
                            parent_nodes.get(child))
        finally:
            self.stack.pop()
        nodes = self._resolve(frame)
        with self.stats_lock:
            self.stats.dirs += 1
        with self.known_lock:  # a tree in a pack marked for deletion is stored again
            parent_tree_known = parent is not None and parent.subtree is not None and \
                parent.subtree.raw in self.known
        if parent is not None and parent.subtree is not None and parent_tree_known and len(
                nodes) == len(parent_nodes) and all(n is parent_nodes.get(n.name) for n in nodes):
            tree_id = parent.subtree
            self.used.add(tree_id.raw)
        else:
            tree_id = self._save_tree(nodes)
        return self._node(name, NodeType.DIR, st, subtree=tree_id, xattrs=self._xattrs(path))

    def _resolve(self, frame: _Frame) -> list[Node]:
        nodes = []
        for item in frame.items:
            if isinstance(item, Future):
                while True:
                    try:
                        node = item.result(timeout=0.5)
                        break
                    except TimeoutError:
                        self._check()
                if node is not None:
                    nodes.append(node)
            else:
                nodes.append(item)
        return nodes

    def _virtual(self, frame: _Frame, trie: dict[bytes, Any], prefix: bytes,
                 parent: dict[bytes, Node]) -> None:
        """The directories above the backed-up paths: real metadata, only the chosen children."""
        for name in sorted(trie):
            path = prefix + b"/" + name
            sub = trie[name]
            if sub is None:
                self.root_dev = os.lstat(path).st_dev
                self._entry(frame, path, name, parent.get(name))
                continue
            st = os.lstat(path)
            pnode = parent.get(name)
            child = _Frame(name, path, st)
            self.stack.append(child)
            try:
                self._virtual(child, sub, path, self._load_parent_tree(pnode))
            finally:
                self.stack.pop()
            tree_id = self._save_tree(self._resolve(child))
            frame.items.append(self._node(name, NodeType.DIR, st, subtree=tree_id))

    def _trie(self) -> dict[bytes, Any]:
        trie: dict[bytes, Any] = {}
        for p in self.paths:
            parts = [c for c in p.split(b"/") if c]
            node = trie
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = None
        return trie

    # ---- checkpoints ----------------------------------------------------------------------

    def _partial_root(self) -> ObjectId:
        """Trees for the directories in progress, holding what is finished so far."""
        child: Node | None = None
        for frame in reversed(self.stack):
            nodes = self._resolve(frame)
            if child is not None:
                nodes = [n for n in nodes if n.name != child.name] + [child]
            tree_id = self._save_tree(nodes)
            if frame.st is None:
                return tree_id
            child = self._node(frame.name, NodeType.DIR, frame.st, subtree=tree_id)
        raise InternalError("checkpoint outside the walk")

    def _maybe_checkpoint(self) -> None:
        if time.monotonic() - self.last_checkpoint < self.plan.checkpoint_interval:
            return
        root = self._partial_root()
        self._flush()
        snap = self._snapshot(root, checkpoint=True)
        sid = self._await(self.vault.save_snapshot(snap))
        self.checkpoints.append(sid)
        logger.info("checkpoint snapshot %s written", sid.short())
        self._await(self._load_markers())
        self.last_checkpoint = time.monotonic()

    def _used_packs(self) -> set[ObjectId]:
        """The packs holding the blobs used so far (the snapshot's plain pack list).

        The index gives one location per blob, maybe in a pack marked for deletion while the
        blob was stored again elsewhere: name the unmarked copy then. A blob found only in
        marked packs was used before the marker was seen; its pack is named (FORMAT.md §16.4).
        """
        index = self.vault.index
        packs: set[ObjectId] = set()
        in_marked: dict[bytes, ObjectId] = {}
        for raw in self.used:
            loc = index.get(ObjectId(raw))
            if loc is None:
                continue
            if loc.pack in self.marked_packs:
                in_marked[raw] = loc.pack
            else:
                packs.add(loc.pack)
        if in_marked:
            for pid, entries in index.packs.items():
                if pid in self.marked_packs:
                    continue
                found = [e.id.raw for e in entries if e.id.raw in in_marked]
                if found:
                    packs.add(pid)
                    for raw in found:
                        in_marked.pop(raw, None)
            packs.update(in_marked.values())
        return packs

    def _snapshot(self, root: ObjectId, *, checkpoint: bool) -> Snapshot:
        packs = self._used_packs()
        s = self.stats
        now = time.time()
        offset = int(time.localtime(now).tm_gmtoff)
        return Snapshot(
            time_ns=time.time_ns(), tz_offset=offset, hostname=self.host, username=username(),
            paths=tuple(self.paths), tree=root, tags=tuple(self.plan.tags),
            parent=self.parent.id if self.parent else None, checkpoint=checkpoint,
            excludes=tuple(self.plan.excludes), program=PROGRAM,
            stats=SnapshotStats(
                files=s.files, dirs=s.dirs, bytes=s.bytes, new_files=s.new_files,
                changed_files=s.changed_files, unchanged_files=s.unchanged_files,
                new_blobs=s.new_blobs, new_bytes=s.new_bytes, stored_bytes=s.stored_bytes,
                problems=len(self.problems),
                seconds_ms=int((time.monotonic() - self.start) * 1000)),
            packs=tuple(sorted(packs)),
        )

    # ---- the job --------------------------------------------------------------------------

    def run(self) -> BackupResult:
        try:
            root_frame = _Frame(b"", b"", None)
            self.stack.append(root_frame)
            root_parent: dict[bytes, Node] = {}
            if self.parent is not None:
                root_parent = {n.name: n for n in self._await(
                    self.vault.load_tree(self.parent.snapshot.tree))}
            self._virtual(root_frame, self._trie(), b"", root_parent)
            self.stack.pop()
            root = self._save_tree(self._resolve(root_frame))
            self._flush()
            snap = self._snapshot(root, checkpoint=False)
            sid = self._await(self.vault.save_snapshot(snap))
            self._report(force=True)
            for cid in self.checkpoints:
                try:
                    self._await(self.vault.store.delete(ObjectKey.of(ObjectKind.SNAPSHOT, cid)))
                except PermissionDenied:
                    break  # append-only: `forget` removes superseded checkpoints later
            logger.info("snapshot %s saved: %d files, %d new bytes, %d problems", sid.short(),
                        snap.stats.files, snap.stats.new_bytes, len(self.problems))
            return BackupResult(sid, snap, tuple(self.problems))
        except BaseException:
            self.stop()  # stop the readers and sealers promptly
            raise

