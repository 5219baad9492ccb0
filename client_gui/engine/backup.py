"""Backup: scan -> read -> chunk -> hash -> skip known -> compress + encrypt -> pack -> upload.

One walker thread (here) builds trees in name order; file workers (backup_reader.py) read,
chunk and hash; a CPU pool seals new blobs and packs go up on the asyncio loop (packer.py).
Write order is packs -> index -> snapshot, with checkpoints every few minutes, so a crash never
leaves a broken vault. This module must not seal, pack or read file contents itself.
"""

import asyncio
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

from client_gui.engine.backup_reader import FileReader
from client_gui.engine.backup_state import BackupState
from client_gui.engine.cache import CachingStore
from client_gui.engine.dedup import BlobLedger
from client_gui.engine.exclude import Excluder, is_cache_dir
from client_gui.engine.folder_cache import (
    FolderCache,
    FolderCacheFile,
    FolderRecord,
    node_entry,
    signature,
    stat_entry,
)
from client_gui.engine.packer import Packer
from client_gui.engine.progress import (
    BackupProgress,
    CancelToken,
    ItemProblem,
    NullSink,
    ProgressSink,
    Throttle,
)
from client_gui.engine.scan import (
    OwnerNames,
    abs_paths,
    path_trie,
    read_xattrs,
    stat_node,
    virtual_paths,
)
from client_gui.engine.vault import SnapshotRef, Vault, hostname, username
from shared.chunking import Chunker, FastCdcChunker
from shared.errors import CairnError, Cancelled, InternalError, PermissionDenied
from shared.format.codec import pack
from shared.format.deletion import DeletionMarker
from shared.format.snapshot import Snapshot, SnapshotStats
from shared.format.tree import Node, NodeType, StoredNode, StoredTree, encode_tree
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
SEALS_IN_FLIGHT_PER_WORKER = 2
# Packs uploading at once: one on the wire while the next is filled; ~2 x pack size of RAM.
# A vault on this machine takes one (a write and an fsync keep up with the sealers, and each
# pack held costs its size in memory).
UPLOADS_IN_FLIGHT = 2
LOCAL_UPLOADS_IN_FLIGHT = 1
# Large files handed to the readers and not done yet. The walker reads small files itself:
# with room for many large ones queued it goes on to the next folders of small files instead
# of waiting for readers busy with a folder of videos (with 64, it waited ~0.4 s of a 6 s
# initial backup, and the tree's large files were read at the end: 8 % more wall time).
# A queued file costs a path and a future; the pending folders are bounded below.
FILES_IN_FLIGHT = 1024
# Walked directories whose files are still being read: the walker goes on to the next
# directory instead of waiting (a tree of small folders would drain the readers at each one).
DIRS_IN_FLIGHT = 1024
# Trees of the parent snapshot loaded ahead of the walker (the subfolders of the folders it
# entered): a no-change backup otherwise waits on one tree load at a time.
TREES_AHEAD = 256
# A backup without a parent reads the large files the walk reaches last while the walker is
# still in folders of small files (see _scout); the scout gives up after this many folders in
# a row without a large file (0: no reading ahead).
SCOUT_FOLDERS = 64
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


_Kid = tuple[bytes, bytes, os.stat_result]  # a directory entry: name, path, lstat
_NO_TREE = StoredTree(encode_tree([]))  # no parent tree (never changed: it has no names)


@dataclass
class _Frame:
    """A directory being built: its finished nodes (or futures of file nodes) so far."""

    name: bytes
    path: bytes
    st: os.stat_result | None
    virtual: bool = False  # above the backed-up paths: only the chosen entries, no xattrs
    items: list["Node | StoredNode | Future[Node | None] | _PendingDir"] = field(
        default_factory=list)
    prev_tree: ObjectId | None = None  # the folder's tree in the parent snapshot
    parent_nodes: StoredTree = field(default_factory=lambda: _NO_TREE)  # that tree's nodes
    # The folder cache's record when the entries' signature matched it. Its entries other
    # than subfolders are then only listed in `deferred`: no node is built for them unless a
    # subfolder turns out changed (or a checkpoint needs this folder's tree).
    record: FolderRecord | None = None
    deferred: list[_Kid] | None = None
    up: "_Frame | None" = None  # the folder this one is in
    tree_load: Future[StoredTree] | None = None  # of prev_tree, when loaded ahead


@dataclass
class _PendingDir:
    """A walked directory whose tree is saved once all its files are read (in walk order)."""

    frame: _Frame
    parent: Node | None
    node: Node | None = None  # set when finished (None for the root)
    tree: ObjectId | None = None  # set when finished
    unchanged: bool = False  # finished from the folder cache: the same tree as last time
    checked: int = 0  # items known to be done

    def ready(self) -> bool:
        if self.frame.deferred is not None and self.frame.record is None:
            return False  # a changed folder whose entries wait for its parent tree
        items = self.frame.items
        while self.checked < len(items):
            item = items[self.checked]
            if isinstance(item, Future) and not item.done():
                return False
            self.checked += 1
        return True


def _name(node: Node | StoredNode) -> bytes:
    return node.name


def _same(node: Node, before: Node | None) -> bool:
    return node is before or node == before


async def find_parent(vault: Vault, refs: list[SnapshotRef], host: str,
                      paths: list[bytes]) -> SnapshotRef | None:
    same = [r for r in refs if r.snapshot.hostname == host
            and sorted(r.snapshot.paths) == sorted(paths)]
    return same[-1] if same else None


async def backup(vault: Vault, plan: BackupPlan, *, progress: ProgressSink | None = None,
                 cancel: CancelToken | None = None) -> BackupResult:
    """Back up `plan.paths` into `vault`; returns the new snapshot and per-file problems."""
    paths = abs_paths(plan.paths)
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
        run.control_pool.shutdown(wait=True)  # its threads are idle by now


class _BackupRun:
    def __init__(self, vault: Vault, plan: BackupPlan, paths: list[bytes],
                 loop: asyncio.AbstractEventLoop, sink: ProgressSink,
                 cancel: CancelToken) -> None:
        self.vault = vault
        self.plan = plan
        self.paths = paths
        self.loop = loop
        self.sink = sink
        self.host = plan.hostname or hostname()
        self.id_key = vault.keys.chunk_id
        self.chunker_params = vault.config.chunker_params(vault.keys.chunker_seed)
        self.excluder = Excluder(plan.excludes, [os.fsencode(os.path.abspath(p))
                                                 for p in plan.exclude_paths])
        self.parent: SnapshotRef | None = None
        self.state = BackupState(cancel)
        self.stats = self.state.stats
        self.ledger = BlobLedger()
        self.packer = Packer(vault, loop, self.state, seal_workers=SEAL_WORKERS,
                             seals_in_flight=SEAL_WORKERS * SEALS_IN_FLIGHT_PER_WORKER,
                             uploads_in_flight=(LOCAL_UPLOADS_IN_FLIGHT if vault.on_this_machine
                                                else UPLOADS_IN_FLIGHT),
                             inline_below=self.chunker_params.min_size)
        # The walk, the scout (see _scout) and the final shutdown get threads of their own, not
        # the loop's default executor: they wait for coroutines (uploads, tree loads) that may
        # need that executor.
        self.control_pool = ThreadPoolExecutor(3, thread_name_prefix="cairn-walk")
        self.walk: Future[BackupResult] | None = None
        self.scout: Future[None] | None = None
        self.scout_stop = False
        self.stack: list[_Frame] = []
        # Directories walked but not finished, in walk (post-)order: a directory comes after
        # all of its subdirectories, so finishing from the front never meets an unfinished one.
        self.pending: deque[_PendingDir] = deque()
        self.tree_loads: dict[bytes, Future[StoredTree]] = {}
        self.markers: dict[ObjectId, DeletionMarker] = {}
        self.index_loaded = False
        self.index_task: asyncio.Future[None] | None = None
        self.index_asked = False  # the walker has asked the loop to load it
        # Changed folders (with the folder cache) whose parent trees are loading: their entries
        # are looked at once the tree is there, so the walk never waits for one.
        self.loading: deque[_Frame] = deque()
        # The folder cache (with a local cache folder): the last run's records while they may
        # be trusted, this run's, and the packs of the folders taken from it.
        self.folder_file = (FolderCacheFile(vault.store.root / "folders", vault.keys,
                                            self._options())
                            if isinstance(vault.store, CachingStore) else None)
        self.folders: FolderCache | None = None
        self.moved_sigs: dict[bytes, FolderRecord] | None = None  # see _moved_folder
        self.trusted_segments: set[ObjectId] = set()
        # This run's records, each with the blobs not in a stored pack yet (resolved at the end).
        self.new_records: dict[bytes, tuple[FolderRecord, list[ObjectId]]] = {}
        self.cached_packs: set[ObjectId] = set()
        self.checkpoints: list[ObjectId] = []
        self.start = time.monotonic()
        self.last_checkpoint = self.start
        self.throttle = Throttle()
        self.estimate: tuple[int, int] | None = None
        self.current = b""
        self.at = b""  # the entry the walker took last (see _walked_past)
        self.root_dev: int | None = None
        self.owners = OwnerNames()
        self.reader = FileReader(self.state, self.ledger, self.packer, self.owners,
                                 id_key=self.id_key, read_retries=plan.read_retries,
                                 new_chunker=self._new_chunker, problem=self._problem,
                                 report=self._report, workers=FILE_WORKERS,
                                 files_in_flight=FILES_IN_FLIGHT,
                                 inline_below=self.chunker_params.min_size)

    def _options(self) -> bytes:
        """What makes two runs' walks comparable: the folder cache of one is not the other's."""
        p = self.plan
        return pack([list(self.paths), list(p.excludes), list(p.exclude_paths),
                     p.exclude_caches, p.one_file_system])

    # ---- set-up on the event loop ---------------------------------------------------------

    async def prepare(self) -> None:
        # Markers before the index: a sweep finishing in between deletes a pack and its
        # marker, and an index read first would still name the pack.
        self.markers = await self.vault.load_deletions()
        refs = await self.vault.list_snapshots()
        if self.plan.parent:
            self.parent = await self.vault.find_snapshot(self.plan.parent, refs)
        else:
            self.parent = await find_parent(self.vault, refs, self.host, self.paths)
        if self.parent is not None:
            s = self.parent.snapshot.stats
            self.estimate = (s.files, s.bytes)
        self.folders = await self._open_folder_cache()
        if self.folders is None:
            await self._index_ready()  # else only once a folder changed

    async def _open_folder_cache(self) -> FolderCache | None:
        """The last run's folder cache, if it may be trusted now (see folder_cache.py)."""
        if self.folder_file is None or self.parent is None or self.markers:
            return None
        cache = await asyncio.to_thread(self.folder_file.load)
        if cache is None or cache.snapshot != self.parent.id:
            return None
        listed = {info.key.id async for info in self.vault.store.list(ObjectKind.INDEX)}
        if not cache.segments <= listed:
            logger.info("the index changed since the last backup; not using the folder cache")
            return None
        self.trusted_segments = set(cache.segments)
        return cache

    async def _load_index(self) -> None:
        await self.vault.load_index()
        recovered = {pid: self.vault.index.packs[pid] for pid in self.vault.unindexed_packs
                     if pid in self.vault.index.packs}
        self.packer.recover(recovered)
        self._apply_markers(self.markers)
        self.index_loaded = True

    async def _index_ready(self) -> None:
        """Load the index once (on the loop; later callers wait for the same load)."""
        if self.index_task is None:
            self.index_task = asyncio.ensure_future(self._load_index())
        await asyncio.shield(self.index_task)

    def _ensure_index(self) -> None:
        """Load the index (from the walker) before the first blob is looked up or stored."""
        if not self.index_loaded:
            self._await(self._index_ready())

    async def _load_markers(self) -> None:
        self.markers = await self.vault.load_deletions()
        if self.markers:
            self.folders = None  # the packs it names may be going: trust only the index now
        if self.index_loaded:
            self._apply_markers(self.markers)
        elif self.markers:
            await self._index_ready()

    def _apply_markers(self, markers: dict[ObjectId, DeletionMarker]) -> None:
        self.ledger.apply_markers(self.vault.index, markers)

    def stop(self) -> None:
        """Make every thread of this run stop at its next check.

        The caller's CancelToken is left alone: it belongs to the caller.
        """
        self.state.fail(Cancelled("the backup was stopped"))

    def shutdown(self) -> None:
        """Wait until the walk, every worker thread and every upload have ended.

        Uploads in flight (at most UPLOADS_IN_FLIGHT packs) are let finish, not cancelled: a
        stored pack is recovered by the next backup, and no put outlives backup().
        """
        if self.walk is not None:
            wait([self.walk])
        self.scout_stop = True
        if self.scout is not None:
            wait([self.scout])
        for fut in self.tree_loads.values():  # loads ahead the walk did not get to
            fut.cancel()
        wait(self.tree_loads.values())
        self.reader.shutdown()
        self.packer.shutdown()

    # ---- helpers across threads -----------------------------------------------------------

    def _await(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the job's event loop from a worker thread and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _problem(self, path: bytes, message: str, code: str = "item") -> None:
        item = ItemProblem(path=path.decode("utf-8", "backslashreplace"), message=message,
                           code=code)
        logger.warning("%s: %s", item.path, message)
        with self.state.stats_lock:
            self.state.problems.append(item)
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

    def _new_chunker(self) -> Chunker:
        # Looked up here at each file, so a test can replace this module's FastCdcChunker.
        return FastCdcChunker(self.chunker_params)

    def _node(self, name: bytes, ntype: NodeType, st: os.stat_result, **extra: Any) -> Node:
        return stat_node(name, ntype, st, self.owners, **extra)

    def _save_tree(self, nodes: Sequence[Node | StoredNode]) -> ObjectId:
        self._ensure_index()
        data = encode_tree(nodes)
        tree_id = keyed_id(self.id_key, data)
        self.ledger.use(tree_id)
        if self.ledger.claim(tree_id):
            with self.state.stats_lock:
                self.stats.new_blobs += 1
                self.stats.new_bytes += len(data)
            self.packer.seal_now(BlobType.TREE, tree_id, data)
        return tree_id

    # ---- the walk -------------------------------------------------------------------------

    def _prefetch_tree(self, tree_id: ObjectId) -> Future[StoredTree]:
        fut = self.tree_loads.get(tree_id.raw)
        if fut is None:
            fut = self.tree_loads[tree_id.raw] = self._tree_now(tree_id) or \
                asyncio.run_coroutine_threadsafe(self._load_tree(tree_id), self.loop)
        return fut

    def _tree_now(self, tree_id: ObjectId) -> Future[StoredTree] | None:
        """A tree decoded here, when its pack is in memory already (most are: a tree pack
        holds hundreds): no trip through the loop for it."""
        if not self.index_loaded:
            return None
        fut: Future[StoredTree] = Future()
        try:
            tree = self.vault.stored_tree_now(tree_id)
        except CairnError as exc:
            fut.set_exception(exc)
            return fut
        if tree is None:
            return None
        fut.set_result(tree)
        return fut

    async def _load_tree(self, tree_id: ObjectId) -> StoredTree:
        await self._index_ready()  # where the tree is
        return await self.vault.load_stored_tree(tree_id)

    def _load_parent_tree(self, tree_id: ObjectId | None) -> StoredTree:
        if tree_id is None:
            return _NO_TREE
        fut = self._prefetch_tree(tree_id)
        try:
            tree = fut.result()
        except CairnError as exc:
            logger.warning("parent tree %s unreadable (%s); reading files again",
                           tree_id.short(), exc)
            return _NO_TREE
        finally:
            self.tree_loads.pop(tree_id.raw, None)
        if self.folders is None:  # with the folder cache, subfolders are most likely in it
            for subtree in tree.subtrees():
                if len(self.tree_loads) >= TREES_AHEAD:
                    break
                self._prefetch_tree(subtree)
        return tree

    def _list(self, path: bytes, st: os.stat_result) -> list[_Kid]:
        """The entries of directory `path` to back up, as (name, path, lstat), in name order."""
        return self._entries(path, st, self.root_dev, self._problem)

    def _entries(self, path: bytes, st: os.stat_result, root_dev: int | None,
                 problem: Callable[[bytes, str, str], None]) -> list[_Kid]:
        """`_list` for a walk below a root on device `root_dev`, reporting to `problem`."""
        if self.plan.one_file_system and root_dev is not None and st.st_dev != root_dev:
            return []  # a mount point: kept, its contents not crossed
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            problem(path, f"cannot list directory: {exc.strerror}", "unreadable")
            return []
        if self.plan.exclude_caches and b"CACHEDIR.TAG" in names and is_cache_dir(path):
            names = [b"CACHEDIR.TAG"]
        base = path.rstrip(b"/") + b"/"
        kids = []
        for name in names:
            child = base + name
            if self.excluder.excluded(child):
                continue
            try:
                kids.append((name, child, os.lstat(child)))
            except OSError as exc:
                problem(child, f"cannot stat: {exc.strerror}", "unreadable")
        return kids

    # ---- reading ahead (backups without a parent) -----------------------------------------

    def _scout(self) -> None:
        """Find the large files the walk reaches last, from its end backwards, and start
        reading each whenever a reader is free (FileReader.read_ahead); stop where the walker
        is. Only a head start: whatever goes wrong here, the walker reads the file itself.

        In the bench's initial backup the last folder holds 370 MiB of logs: read after the
        walk they took ~0.9 s; read ahead, the walk takes ~0.5 s longer (the cores are shared)
        and nothing is left after it.
        """
        try:
            for path, name in self._far_files():
                while not self.reader.may_read_ahead():
                    if not self._scouting():
                        return
                    time.sleep(0.01)
                if not self._scouting():
                    return
                self.reader.read_ahead(path, name, partial(self._ahead_of_walker, path))
        except (OSError, CairnError, RuntimeError) as exc:  # RuntimeError: the pool is down
            logger.debug("reading ahead stopped: %s", exc)

    def _scouting(self) -> bool:
        return not self.scout_stop and self.state.error is None \
            and not self.state.cancel.cancelled

    def _ahead_of_walker(self, path: bytes) -> bool:
        return not self._walked_past(path)

    def _walked_past(self, path: bytes, *, folder: bool = False) -> bool:
        """True if the walker got to `path`: it walks in name order, depth first, and `at`
        is the entry it took last. A folder it is in is not past (the rest of it is ahead)."""
        here, parts = self.at.split(b"/"), path.split(b"/")
        if folder:
            return parts < here and here[:len(parts)] != parts
        return parts <= here

    def _far_files(self) -> Iterator[tuple[bytes, bytes]]:
        """(path, name) of the large files to back up (no hard links), walk order backwards:
        listed as the walker lists them (the same excludes, mount points and cache tags)."""
        def quiet(path: bytes, message: str, code: str) -> None:
            pass  # the walker reports what it cannot list

        large = self.reader.inline_below
        barren = 0
        for root in sorted(self.paths, key=lambda p: p.split(b"/"), reverse=True):
            try:
                st = os.lstat(root)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or self.excluder.excluded(root):
                continue
            # Each folder's entries backwards, a subfolder's at its own place: the exact
            # reverse of the walk, so the first file found walked past ends the search.
            todo = [iter(reversed(self._entries(root, st, st.st_dev, quiet)))]
            while todo:
                entry = next(todo[-1], None)
                if entry is None:
                    todo.pop()
                    continue
                name, child, kid_st = entry
                mode = kid_st.st_mode
                if stat.S_ISDIR(mode):
                    if not self._scouting() or self._walked_past(child, folder=True):
                        return
                    barren += 1
                    if barren > SCOUT_FOLDERS:
                        return
                    todo.append(iter(reversed(self._entries(child, kid_st, st.st_dev, quiet))))
                elif stat.S_ISREG(mode) and kid_st.st_size >= large and kid_st.st_nlink == 1:
                    barren = 0
                    yield child, name

    def _open(self, frame: _Frame, kids: list[_Kid],
              prev_tree: ObjectId | None) -> None:
        """Decide how `frame` is walked: from the folder cache if its entries' signature
        matches, else against the parent snapshot's tree (loaded here)."""
        record = None
        if self.folders is not None and self.folder_file is not None:
            record = self.folders.records.get(self.folder_file.key(frame.path))
            sig = signature([stat_entry(name, st) for name, _, st in kids])
            if record is None or record.sig != sig:
                moved = None if frame.virtual else self._moved_folder(sig)
                if moved is not None:  # moved or renamed: its entries are as they were
                    record = moved
                    prev_tree = moved.tree
            if record is not None and record.sig == sig:
                frame.prev_tree = prev_tree if prev_tree is not None else record.tree
                frame.record = record
                frame.deferred = []
                return
        frame.prev_tree = prev_tree if prev_tree is not None or record is None else record.tree
        if self.folders is None:
            self._ensure_index()
            frame.parent_nodes = self._load_parent_tree(frame.prev_tree)
            return
        # A changed folder while the folder cache is used: its tree (and those of the folders
        # above it, which change too) load while the walk goes on; its entries other than
        # subfolders wait in `deferred` until then (_materialize). Its subfolders find their
        # old trees in the folder cache.
        frame.deferred = []
        if frame.prev_tree is not None:
            frame.tree_load = self._prefetch_tree(frame.prev_tree)
        elif not self.index_asked:
            self.index_asked = True
            asyncio.run_coroutine_threadsafe(self._index_ready(), self.loop)
        self._prefetch_up(frame.up)
        self.loading.append(frame)

    def _moved_folder(self, sig: bytes) -> FolderRecord | None:
        """The last run's record of a folder whose entries had signature `sig`, wherever it
        was: a folder moved or renamed since (or one that was, and is again, the same as
        another), whose tree is then reused instead of reading its files again.

        Entries match only with the same names, inodes, sizes and change times: the same
        files. Folders above the backed-up paths are left out: their trees hold only the
        chosen entries (and no xattrs of those leading further down).
        """
        assert self.folders is not None and self.folder_file is not None
        if self.moved_sigs is None:
            virtual = {self.folder_file.key(p) for p in virtual_paths(self.paths)}
            self.moved_sigs = {}
            for key, rec in self.folders.records.items():
                if key not in virtual:
                    self.moved_sigs.setdefault(rec.sig, rec)
        return self.moved_sigs.get(sig)

    def _prefetch_up(self, frame: _Frame | None) -> None:
        while frame is not None and frame.deferred is not None and frame.tree_load is None:
            if frame.prev_tree is not None:
                frame.tree_load = self._prefetch_tree(frame.prev_tree)
            frame = frame.up

    def _walk(self, frame: _Frame, kids: list[_Kid],
              trie: dict[bytes, Any] | None) -> None:
        """Back up the entries of `frame` (for a virtual folder, `trie` names the chosen ones:
        a name mapping to None is a backed-up path, a dict the folders leading to others)."""
        self.stack.append(frame)
        try:
            for name, path, st in kids:
                self.state.check()
                self.at = path
                sub = trie.get(name) if trie is not None else None
                if sub is not None:  # a folder leading to backed-up paths: nothing to save yet
                    frame.items.append(self._virtual(path, name, st, sub,
                                                     frame.parent_nodes.get(name)))
                    continue
                self._maybe_checkpoint()
                if frame.deferred is not None and not stat.S_ISDIR(st.st_mode):
                    frame.deferred.append((name, path, st))
                    continue
                if trie is not None:
                    self.root_dev = st.st_dev
                self._entry(frame, path, name, st)
        finally:
            self.stack.pop()

    def _entry(self, frame: _Frame, path: bytes, name: bytes, st: os.stat_result) -> None:
        """Back up one path (any type) into `frame`."""
        mode = st.st_mode
        if stat.S_ISREG(mode):
            # An unchanged file (not a hard link: those go through the reader's link table)
            # keeps its stored entry as it is; no Node is made.
            kept = frame.parent_nodes.unchanged_file(name, st) if st.st_nlink == 1 else None
            if kept is not None and self.reader.keep(kept):
                frame.items.append(kept)
            else:
                item = self.reader.save(path, name, st, frame.parent_nodes.get(name))
                if item is not None:
                    frame.items.append(item)
        elif stat.S_ISDIR(mode):
            frame.items.append(self._directory(path, name, st, frame.parent_nodes.get(name)))
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
                   parent: Node | None) -> _PendingDir:
        self.current = path
        frame = _Frame(name, path, st, up=self.stack[-1])
        kids = self._list(path, st)
        self._open(frame, kids, parent.subtree if parent is not None else None)
        self._walk(frame, kids, None)
        return self._walked(frame, parent)

    def _virtual(self, path: bytes, name: bytes, st: os.stat_result | None,
                 trie: dict[bytes, Any], parent: Node | None,
                 prev_tree: ObjectId | None = None) -> _PendingDir:
        """A directory above the backed-up paths: real metadata, only the chosen entries."""
        frame = _Frame(name, path, st, virtual=True, up=self.stack[-1] if self.stack else None)
        kids = []
        for child in sorted(trie):
            child_path = path + b"/" + child
            kids.append((child, child_path, os.lstat(child_path)))
        self._open(frame, kids, parent.subtree if parent is not None else prev_tree)
        self._walk(frame, kids, trie)
        return self._walked(frame, parent)

    def _walked(self, frame: _Frame, parent: Node | None) -> _PendingDir:
        pending = _PendingDir(frame, parent)
        self.pending.append(pending)
        self._finish_dirs(block=len(self.pending) > DIRS_IN_FLIGHT)
        return pending

    def _finish_dirs(self, *, block: bool) -> None:
        """Save the trees of walked directories whose files are all read, oldest first.

        With `block`, wait for the oldest one at least; `_finish_all_dirs` waits for all.
        """
        while self.loading:
            frame = self.loading[0]
            if frame.deferred is not None:
                if not self.index_loaded or (frame.tree_load is not None
                                             and not frame.tree_load.done()):
                    break
                self._materialize(frame)
            self.loading.popleft()
        while self.pending:
            head = self.pending[0]
            if not (block or head.ready()):
                return
            block = False  # _finish_dir waits for the files of the oldest one
            self.pending.popleft()
            self._finish_dir(head)

    def _finish_all_dirs(self) -> None:
        while self.pending:
            self._finish_dirs(block=True)

    def _finish_dir(self, pending: _PendingDir) -> None:
        frame = pending.frame
        record = frame.record
        if record is not None and frame.deferred is not None and self.folders is not None and \
                all(isinstance(i, _PendingDir) and i.unchanged for i in frame.items):
            # The folder cache: the same entries and subfolders as last time, the same tree.
            with self.state.stats_lock:
                self.stats.files += record.files
                self.stats.bytes += record.bytes
                self.stats.unchanged_files += record.files
                self.stats.dirs += 0 if frame.virtual else 1
            self.cached_packs.update(record.packs)
            if self.folder_file is not None:
                self.new_records[self.folder_file.key(frame.path)] = (record, [])
            pending.unchanged = True
            self._finished(pending, record.tree)
            self._report()
            return
        nodes = self._resolve(frame)
        if not frame.virtual:
            with self.state.stats_lock:
                self.stats.dirs += 1
        prev, parent_nodes = frame.prev_tree, frame.parent_nodes
        # A tree in a pack marked for deletion is stored again. A StoredNode is an entry of
        # this very parent tree.
        if prev is not None and self.ledger.is_known(prev) and len(nodes) == len(
                parent_nodes) and all(isinstance(n, StoredNode)
                                      or _same(n, parent_nodes.get(n.name)) for n in nodes):
            tree_id = prev
            self.ledger.use(tree_id)
        else:
            tree_id = self._save_tree(nodes)
        self._record(frame, nodes, tree_id)
        self._finished(pending, tree_id)

    def _finished(self, pending: _PendingDir, tree_id: ObjectId) -> None:
        frame, parent = pending.frame, pending.parent
        pending.tree = tree_id
        # Its entries are in the saved tree now: keep only what the folder above reads (the
        # name, node and tree), or every node of the walk stays in memory until the end.
        frame.items, frame.parent_nodes, frame.tree_load = [], _NO_TREE, None
        pending.parent = None
        if frame.st is None:
            return  # the root
        node = self._node(frame.name, NodeType.DIR, frame.st, subtree=tree_id,
                          xattrs=() if frame.virtual else read_xattrs(frame.path))
        # The same directory as last time: hand on the parent's node, so that the directory
        # above can see with `is` that nothing changed and keep its tree too.
        pending.node = parent if parent is not None and node == parent else node

    def _materialize(self, frame: _Frame) -> None:
        """Build the nodes of a folder walked from the folder cache (a subfolder changed, or a
        checkpoint needs its tree): the entries not looked at come from the parent tree."""
        deferred, frame.deferred = frame.deferred, None
        if deferred is None:
            return
        self._ensure_index()
        frame.parent_nodes = self._load_parent_tree(frame.prev_tree)
        for item in frame.items:  # subfolders were finished without their parent's node
            if isinstance(item, _PendingDir) and item.node is not None:
                before = frame.parent_nodes.get(item.frame.name)
                if before is not None and before == item.node:
                    item.node = before
        for name, path, st in deferred:
            self._entry(frame, path, name, st)

    def _resolve(self, frame: _Frame) -> list[Node | StoredNode]:
        """The finished nodes of `frame`, waiting for its files (and subdirectories)."""
        self._materialize(frame)
        nodes: list[Node | StoredNode] = []
        for item in frame.items:
            if isinstance(item, _PendingDir):
                if item.node is None:
                    self._finish_all_dirs()  # a checkpoint: finish what the walk has so far
                assert item.node is not None
                nodes.append(item.node)
                continue
            if isinstance(item, Future):
                while True:
                    try:
                        node = item.result(timeout=0.5)
                        break
                    except TimeoutError:
                        self.state.check()
                if node is not None:
                    nodes.append(node)
            else:
                nodes.append(item)
        return nodes

    def _record(self, frame: _Frame, nodes: list[Node | StoredNode], tree_id: ObjectId) -> None:
        """Note folder `frame` as saved, for the next run's folder cache."""
        if self.folder_file is None:
            return
        nodes = sorted(nodes, key=_name)
        files = [n for n in nodes if n.type == NodeType.FILE]
        packs: set[ObjectId] = set()
        unresolved: list[ObjectId] = []
        pack_of = self.vault.index.pack_of
        blobs = [tree_id.raw]
        for n in files:
            blobs += n.content_ids if isinstance(n, StoredNode) else [c.raw for c in n.content]
        for raw in blobs:
            pack_id = pack_of(raw)
            if pack_id is None:
                unresolved.append(ObjectId(raw))  # in a pack not stored yet
            else:
                packs.add(pack_id)
        self.new_records[self.folder_file.key(frame.path)] = (FolderRecord(
            signature([node_entry(n) for n in nodes]), tree_id, len(files),
            sum(n.size for n in files), frozenset(packs)), unresolved)

    def _save_folder_cache(self, snapshot_id: ObjectId) -> None:
        """Write this run's folder records as the folder cache of `snapshot_id`."""
        if self.folder_file is None:
            return
        index = self.vault.index
        records = {}
        for key, (rec, unresolved) in self.new_records.items():
            packs = set(rec.packs)
            for blob_id in unresolved:
                loc = index.get(blob_id)
                if loc is None:
                    break  # cannot happen after a flush; the folder is just not cached
                packs.add(loc.pack)
            else:
                records[key] = replace(rec, packs=frozenset(packs)) if unresolved else rec
        # Without the index loaded, the segments known alive are the old cache's and ours.
        segments = set(index.segments) | (set() if self.index_loaded else self.trusted_segments)
        self.folder_file.save(FolderCache(snapshot_id, frozenset(segments), records))

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
        # A read ahead may have claimed a chunk a file in `root` shares, and not sealed it yet.
        self.reader.settle_ahead()
        self.packer.flush()
        snap = self._snapshot(root, checkpoint=True)
        sid = self._await(self.vault.save_snapshot(snap))
        self.checkpoints.append(sid)
        logger.info("checkpoint snapshot %s written", sid.short())
        self._await(self._load_markers())
        self.last_checkpoint = time.monotonic()

    def _snapshot(self, root: ObjectId, *, checkpoint: bool) -> Snapshot:
        packs = self.ledger.used_packs(self.vault.index) | self.cached_packs
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
                problems=len(self.state.problems),
                seconds_ms=int((time.monotonic() - self.start) * 1000)),
            packs=tuple(sorted(packs)),
        )

    # ---- the job --------------------------------------------------------------------------

    def run(self) -> BackupResult:
        try:
            prev = self.parent.snapshot.tree if self.parent is not None else None
            if prev is None and SCOUT_FOLDERS > 0:  # every file is read: read the last first
                self.scout = self.control_pool.submit(self._scout)
            top = self._virtual(b"", b"", None, path_trie(self.paths), None, prev)
            self.scout_stop = True
            self._finish_all_dirs()
            if self.scout is not None:  # reads ahead the walk did not take end before the flush
                wait([self.scout])
                self.reader.settle_ahead()
            assert top.tree is not None
            self.packer.flush()
            snap = self._snapshot(top.tree, checkpoint=False)
            sid = self._await(self.vault.save_snapshot(snap))
            self._save_folder_cache(sid)
            self._report(force=True)
            for cid in self.checkpoints:
                try:
                    self._await(self.vault.store.delete(ObjectKey.of(ObjectKind.SNAPSHOT, cid)))
                except PermissionDenied:
                    break  # append-only: `forget` removes superseded checkpoints later
            logger.info("snapshot %s saved: %d files, %d new bytes, %d problems", sid.short(),
                        snap.stats.files, snap.stats.new_bytes, len(self.state.problems))
            return BackupResult(sid, snap, tuple(self.state.problems))
        except BaseException:
            self.stop()  # stop the readers and sealers promptly
            raise

