"""Reading files for a backup: open, chunk, hash, skip known chunks, hand new ones to the packer.

Owns the reader pool and its slots, the hard-link map and the re-reading of files that change
while read. It must not walk directories, build trees or talk to the vault.
"""

import logging
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from client_gui.engine.backup_state import BackupState
from client_gui.engine.dedup import BlobLedger
from client_gui.engine.packer import Packer
from client_gui.engine.priority import lower_this_thread
from client_gui.engine.scan import OwnerNames, open_file, read_xattrs, stat_node
from shared.chunking import Chunker
from shared.errors import CairnError, Cancelled
from shared.format.tree import Node, NodeType, StoredNode
from shared.hashing import keyed_id
from shared.ids import BlobType, ObjectId

logger = logging.getLogger(__name__)


def _pass_on(done: Future[Node | None], out: Future[Node | None]) -> None:
    """Give `out` the outcome of `done`."""
    try:
        out.set_result(done.result())
    except BaseException as exc:
        out.set_exception(exc)


def _no_problem(path: bytes, message: str, code: str) -> None:
    """Problems of a read ahead are not reported: the walker's own read reports them."""


class _FdReader:
    """The little of a binary stream the chunker uses, straight on a file descriptor.

    Python's FileIO costs an extra fstat and an object per file; with tens of thousands of
    small files that showed in the profile. Closes the descriptor on exit.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> "_FdReader":
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def fileno(self) -> int:
        return self.fd

    def readinto(self, buffer: memoryview) -> int:
        return os.readv(self.fd, [buffer])


class FileReader:
    """Turns regular files into FILE nodes for one backup run.

    `save` is called by the walker only; the reads run on the reader pool. `problem` and
    `report` are the run's per-file problem and throttled progress callbacks.
    """

    def __init__(self, state: BackupState, ledger: BlobLedger, packer: Packer, owners: OwnerNames,
                 *, id_key: bytes, read_retries: int, new_chunker: Callable[[], Chunker],
                 problem: Callable[[bytes, str, str], None], report: Callable[[], None],
                 workers: int, files_in_flight: int, inline_below: int = 0) -> None:
        self.state = state
        self.stats = state.stats
        self.ledger = ledger
        self.packer = packer
        self.owners = owners
        self.id_key = id_key
        self.read_retries = read_retries
        self.new_chunker = new_chunker
        self.problem = problem
        self.report = report
        self.file_slots = threading.BoundedSemaphore(files_in_flight)
        self.inline_below = inline_below
        self.file_pool = ThreadPoolExecutor(workers, thread_name_prefix="cairn-read",
                                            initializer=lower_this_thread)
        self.hardlinks: dict[tuple[int, int], Future[Node | None] | Node] = {}
        # Large files read before the walker gets to them (read_ahead), by path; and how many
        # pool reads the walker's own files and those take now.
        self.ahead: dict[bytes, Future[Node | None]] = {}
        self.busy_lock = threading.Lock()
        self.walker_reads = 0
        self.ahead_reads = 0
        self.workers = workers
        self._local = threading.local()  # one chunker per reader thread (its set-up is costly)

    def shutdown(self) -> None:
        """Stop the readers: reads not started are dropped, running ones finish."""
        self.file_pool.shutdown(wait=True, cancel_futures=True)

    def _count_file(self, node: Node) -> None:
        """Count a file going into the snapshot (the stats count what the snapshot holds).

        Call with `stats_lock` held.
        """
        self.stats.files += 1
        self.stats.bytes += node.size

    def keep(self, stored: StoredNode) -> bool:
        """Count in an unchanged file's stored entry (see StoredTree.unchanged_file), if every
        chunk of it is still stored; False sends the file to `save`."""
        if not self.ledger.reuse_ids(stored.content_ids):
            return False
        with self.state.stats_lock:
            self.stats.files += 1
            self.stats.bytes += stored.size
            self.stats.unchanged_files += 1
        return True

    def save(self, path: bytes, name: bytes, st: os.stat_result,
             parent: Node | None) -> "Node | Future[Node | None] | None":
        """The node of the file at `path`: `parent` if unchanged, else a read's node or future.

        A file smaller than `inline_below` is read by the calling thread (None if it could
        not be read); a larger one is read on the pool (or was: see read_ahead).
        """
        ahead = None
        if self.ahead:  # the walker's position (`at`) is past `path` by now: see read_ahead
            with self.busy_lock:
                ahead = self.ahead.pop(path, None)
        if ahead is not None and parent is None and st.st_nlink == 1:
            return self._claim(ahead, path, name, st)
        if (parent is not None and parent.type == NodeType.FILE and parent.size == st.st_size
                and parent.mtime_ns == st.st_mtime_ns and parent.ctime_ns == st.st_ctime_ns
                and parent.inode == st.st_ino and self.ledger.reuse(parent)):
            with self.state.stats_lock:
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
                with self.state.stats_lock:
                    self._count_file(first_node)  # another name of a file read once
                return stat_node(name, NodeType.FILE, st, self.owners, size=first_node.size,
                                 content=first_node.content, xattrs=first_node.xattrs)
        if st.st_size < self.inline_below:
            # Handing a small file to the pool costs more than reading it: thread wake-ups
            # and GIL hand-offs for every file made a tree of source files twice as slow.
            node = self._read_small(path, name, st, parent)
            if st.st_nlink > 1 and node is not None:
                self.hardlinks[link_key] = node
            return node
        while not self.file_slots.acquire(timeout=0.5):
            self.state.check()
        with self.busy_lock:
            self.walker_reads += 1
        try:
            fut = self.file_pool.submit(self._read_pooled, path, name, parent)
        except BaseException:
            self._pooled_done()
            raise
        if st.st_nlink > 1:
            self.hardlinks[link_key] = fut
        return fut

    def _read_pooled(self, path: bytes, name: bytes, parent: Node | None) -> Node | None:
        try:
            return self._read_file(path, name, parent)
        finally:
            self._pooled_done()

    def _pooled_done(self) -> None:
        with self.busy_lock:
            self.walker_reads -= 1
        self.file_slots.release()

    # ---- reading ahead of the walker ------------------------------------------------------
    # In a backup without a parent every file is read. The walker reads small files itself
    # and hands large ones to the pool, so while it is in folders of small files the pool
    # idles, and the large files of the last folders it walks were read after the walk: a
    # second of a six-second backup. backup.py's scout finds those files from the end of the
    # walk and starts them here whenever a reader is free.

    def may_read_ahead(self) -> bool:
        """True if a reader is free: neither the walker's files nor reads ahead take it."""
        with self.busy_lock:
            return self.walker_reads + self.ahead_reads < self.workers

    def read_ahead(self, path: bytes, name: bytes, still_ahead: Callable[[], bool]) -> None:
        """Start reading large file `path` (entry `name`) for the walker, who gets there later,
        if `still_ahead()` says it has not (checked under the lock `save` takes its reads
        ahead with, so the walker never misses one it gets to).

        The read reports no problem and counts no file: `save` takes its node if the walker's
        lstat then matches what was read, else reads the file again as usual. (Its new
        chunks are stored and counted as new blobs either way.)
        """
        with self.busy_lock:
            if not still_ahead():
                return
            self.ahead[path] = self.file_pool.submit(self._read_ahead, path, name)
            self.ahead_reads += 1

    def settle_ahead(self) -> None:
        """Wait for the reads ahead the walker did not take (a file gone meanwhile)."""
        wait(list(self.ahead.values()))

    def _read_ahead(self, path: bytes, name: bytes) -> Node | None:
        try:
            return self._read_file_inner(path, name, None, problem=_no_problem)
        except (Cancelled, CairnError):
            raise
        except BaseException as exc:
            self.state.fail(exc)
            raise
        finally:
            with self.busy_lock:
                self.ahead_reads -= 1

    def _claim(self, ahead: Future[Node | None], path: bytes, name: bytes,
               st: os.stat_result) -> Future[Node | None]:
        """The walker's future for a file read ahead: its node if the walker's lstat `st` is
        what was read, else (changed since, or not read) the result of reading it again."""
        out: Future[Node | None] = Future()

        def done(read: Future[Node | None]) -> None:
            try:
                node = read.result()
            except BaseException as exc:  # the run's error or cancellation: passed on
                out.set_exception(exc)
                return
            if (node is not None and node.size == st.st_size and node.inode == st.st_ino
                    and node.mtime_ns == st.st_mtime_ns and node.ctime_ns == st.st_ctime_ns):
                with self.state.stats_lock:
                    self._count_file(node)
                    self.stats.new_files += 1
                out.set_result(node)
                return
            try:  # read again on the pool (this may be the walker's thread)
                again = self.file_pool.submit(self._read_file, path, name, None)
            except BaseException as exc:  # the pool is down: the run is ending
                out.set_exception(exc)
                return
            again.add_done_callback(lambda f: _pass_on(f, out))

        ahead.add_done_callback(done)
        return out

    def _read_file(self, path: bytes, name: bytes, parent: Node | None) -> Node | None:
        try:
            node = self._read_file_inner(path, name, parent)
            if node is not None:  # files that could not be read are not in the snapshot
                with self.state.stats_lock:
                    self._count_file(node)
                    if parent is None:
                        self.stats.new_files += 1
                    else:
                        self.stats.changed_files += 1
            return node
        except (Cancelled, CairnError):
            raise
        except BaseException as exc:
            self.state.fail(exc)
            raise

    def _read_small(self, path: bytes, name: bytes, st: os.stat_result,
                    parent: Node | None) -> Node | None:
        """`_read_file` for a file whose lstat `st` says it is smaller than a chunk, in one
        read: what a backup of many small files spends most of its time on.

        The file is taken only if the fstat after the read shows the walker's lstat (taken
        before the open): the same file, unchanged, as long as what was read. Anything else
        (it changed, grew, is no longer a regular file, cannot be read) goes the general way,
        which reports problems and reads changing files again.
        """
        self.state.check()
        try:
            fd = open_file(path)
        except OSError:
            return self._read_file(path, name, parent)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # no read of a device put in its place
                return self._read_file(path, name, parent)
            data = os.read(fd, self.inline_below)
            after = os.fstat(fd)
            xattrs = read_xattrs(path)
        except OSError:
            return self._read_file(path, name, parent)
        finally:
            os.close(fd)
        size = len(data)
        if (size != after.st_size or size != st.st_size
                or after.st_ino != st.st_ino or after.st_dev != st.st_dev
                or after.st_mtime_ns != st.st_mtime_ns or after.st_ctime_ns != st.st_ctime_ns):
            return self._read_file(path, name, parent)
        content: tuple[ObjectId, ...] = ()
        if size:
            blob_id = keyed_id(self.id_key, data)
            content = (blob_id,)
            self.ledger.use(blob_id)
            if self.ledger.claim(blob_id):
                self.packer.submit_seal(BlobType.DATA, blob_id, data)
        node = stat_node(name, NodeType.FILE, after, self.owners, size=size, content=content,
                         xattrs=xattrs)
        with self.state.stats_lock:
            self.stats.bytes_read += size
            self._count_file(node)
            if parent is None:
                self.stats.new_files += 1
            else:
                self.stats.changed_files += 1
        self.report()
        return node

    def _chunker(self) -> Chunker:
        chunker: Chunker | None = getattr(self._local, "chunker", None)
        if chunker is None:
            chunker = self._local.chunker = self.new_chunker()
        return chunker

    def _read_file_inner(self, path: bytes, name: bytes, parent: Node | None,
                         problem: Callable[[bytes, str, str], None] | None = None
                         ) -> Node | None:
        problem = self.problem if problem is None else problem
        chunker = self._chunker()
        for attempt in range(1 + max(0, self.read_retries)):
            try:
                fd = open_file(path)
            except OSError as exc:
                problem(path, f"cannot read: {exc.strerror}", "unreadable")
                return None
            try:
                with _FdReader(fd) as f:
                    before = os.fstat(fd)
                    if not stat.S_ISREG(before.st_mode):
                        problem(path, "is no longer a regular file", "changed")
                        return None
                    content: list[ObjectId] = []
                    size = 0
                    for chunk in chunker.split_stream(f):  # type: ignore[arg-type]
                        self.state.check()
                        blob_id = keyed_id(self.id_key, chunk)
                        content.append(blob_id)
                        self.ledger.use(blob_id)
                        size += len(chunk)
                        if self.ledger.claim(blob_id):
                            self.packer.submit_seal(BlobType.DATA, blob_id, chunk)
                        with self.state.stats_lock:
                            self.stats.bytes_read += len(chunk)
                        self.report()
                    after = os.fstat(fd)
            except OSError as exc:
                problem(path, f"read error: {exc.strerror}", "unreadable")
                return None
            if (size == after.st_size == before.st_size
                    and before.st_mtime_ns == after.st_mtime_ns
                    and before.st_ctime_ns == after.st_ctime_ns):
                return stat_node(name, NodeType.FILE, after, self.owners, size=size,
                                 content=tuple(content), xattrs=read_xattrs(path))
            logger.info("%s changed while read (attempt %d), reading again", path, attempt + 1)
        if parent is not None and parent.type == NodeType.FILE and self.ledger.reuse(parent):
            problem(path, "kept changing while being read; the previous version is kept",
                    "changed")
            return parent
        problem(path, "kept changing while being read; not backed up", "changed")
        return None
