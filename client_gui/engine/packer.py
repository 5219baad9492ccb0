"""Packing for a backup: seal new blobs (compress + encrypt), fill packs, upload and index them.

Owns the pack writers, the sealing pool, the upload slots and the index entries not yet saved.
`flush` keeps the write order: packs are stored before the index names them. It must not decide
which blobs are new (backup.py and dedup.py do) nor write snapshots.
"""

import asyncio
import logging
import mmap
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait

from client_gui.engine.backup_state import BackupState
from client_gui.engine.priority import lower_this_thread
from client_gui.engine.vault import Vault
from shared.compression import compress
from shared.format.blob import blob_aad, seal_into, sealed_size
from shared.format.pack import PackEntry, PackWriter
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind
from shared.storage.direct import anonymous_buffer

logger = logging.getLogger(__name__)


class Packer:
    """The seal -> pack -> upload -> index stages of one backup run, fed from any thread.

    Worker threads call `submit_seal`/`seal_now` and `flush`; uploads run on `loop`. The
    concurrency limits are given by the caller (backup.py justifies them).
    """

    def __init__(self, vault: Vault, loop: asyncio.AbstractEventLoop, state: BackupState, *,
                 seal_workers: int, seals_in_flight: int, uploads_in_flight: int,
                 inline_below: int = 0) -> None:
        self.vault = vault
        self.loop = loop
        self.state = state
        self.enc_key = vault.keys.encryption
        self.level = vault.config.zstd_level
        self.pack_size = vault.config.pack_size
        # Packs are assembled in reusable anonymous buffers with room for the pack, its
        # largest blob and its header: no new pages and no copy per pack.
        self.header_room = max(self.pack_size // 4, 1 << 16)
        self.buffer_size = (self.pack_size + sealed_size(vault.config.chunk_max)
                            + self.header_room)
        self.buffers_kept = uploads_in_flight + 1
        self.free_buffers: list[mmap.mmap] = []
        self.open: dict[BlobType, _OpenPack] = {}
        self.closing: set[_OpenPack] = set()  # closed, not yet handed to an upload
        self.pack_lock = threading.Lock()
        self.pending_index: dict[ObjectId, tuple[PackEntry, ...]] = {}
        self.index_lock = threading.Lock()
        self.uploads: set[Future[None]] = set()
        self.seals: set[Future[None]] = set()
        self.futures_lock = threading.Lock()
        self.upload_slots = threading.BoundedSemaphore(uploads_in_flight)
        self.seal_slots = threading.BoundedSemaphore(seals_in_flight)
        self.seal_pool = ThreadPoolExecutor(seal_workers, thread_name_prefix="cairn-seal",
                                            initializer=lower_this_thread)
        # Blobs smaller than this are sealed by the thread that submits them (the walker, for
        # small files). Handing them to the pool, one by one or in batches of 32, cost more
        # than sealing them: every hand-off and every GIL release of a sealer woke another
        # thread. For 100,000 small files: ~9.2 s of CPU in the pool, ~6.7 s inline (half the
        # system time), and ~7 % less wall time.
        self.inline_below = inline_below

    def recover(self, packs: dict[ObjectId, tuple[PackEntry, ...]]) -> None:
        """Index `packs` (stored, but in no index segment) at the next flush.

        Call before any blob is packed.
        """
        self.pending_index.update(packs)

    def shutdown(self) -> None:
        """Stop the sealers and wait for the uploads in flight (let finish, not cancelled)."""
        self.seal_pool.shutdown(wait=True, cancel_futures=True)
        with self.futures_lock:
            uploads = set(self.uploads)
        wait(uploads)

    # ---- sealing --------------------------------------------------------------------------

    def _seal(self, blob_type: BlobType, blob_id: ObjectId, data: bytes) -> None:
        try:
            self.seal_now(blob_type, blob_id, data)
        except BaseException as exc:
            self.state.fail(exc)
            raise
        finally:
            self.seal_slots.release()

    def submit_seal(self, blob_type: BlobType, blob_id: ObjectId,
                    data: bytes | memoryview) -> None:
        """Seal and pack a new blob on the sealing pool (one below `inline_below` right here).

        Waits while too many are in flight. `data` may be a view of the caller's buffer: it is
        copied (or sealed) before this returns.
        """
        with self.state.stats_lock:
            self.state.stats.new_blobs += 1
            self.state.stats.new_bytes += len(data)
        if len(data) < self.inline_below:
            self.seal_now(blob_type, blob_id, data)
            return
        while not self.seal_slots.acquire(timeout=0.5):
            self.state.check()
        fut = self.seal_pool.submit(self._seal, blob_type, blob_id, bytes(data))
        with self.futures_lock:
            self.seals.add(fut)
        fut.add_done_callback(self._seal_done)

    def _seal_done(self, fut: Future[None]) -> None:
        with self.futures_lock:
            self.seals.discard(fut)

    def seal_now(self, blob_type: BlobType, blob_id: ObjectId, data: bytes | memoryview) -> None:
        """Seal and pack a new blob in the calling thread (the caller counts it).

        The blob is compressed here, then sealed straight into its place in the open pack
        (`_reserve`), outside the pack lock: sealers fill their regions side by side.
        """
        method, payload = compress(data, self.level)
        pack, region, closed = self._reserve(blob_type, blob_id, sealed_size(len(payload)),
                                             len(data))
        if closed is not None:
            self._upload(closed)
        sealed = False
        try:
            seal_into(self.enc_key, region, method, payload, blob_aad(blob_type, blob_id))
            sealed = True
        finally:
            region.release()
            with self.pack_lock:
                ready = pack.filled(sealed)
        if ready:
            self._upload(pack)

    # ---- packs and uploads ----------------------------------------------------------------

    def _reserve(self, blob_type: BlobType, blob_id: ObjectId, size: int,
                 raw_length: int) -> tuple["_OpenPack", memoryview, "_OpenPack | None"]:
        """A region of `size` bytes for a blob in the open pack of its type; also a pack this
        closed that is ready to upload (the caller uploads it)."""
        closed = None
        with self.pack_lock:
            pack = self.open.get(blob_type)
            if pack is not None and pack.writer.room() < size:
                closed = self._close(pack)
                pack = None
            if pack is None:
                pack = self.open[blob_type] = self._new_pack(blob_type, size)
            region = pack.writer.reserve(blob_id, size, raw_length)
            pack.filling += 1
            if pack.writer.size >= self.pack_size:
                self._close(pack)  # not ready: this blob is still to be sealed
        return pack, region, closed

    def _new_pack(self, blob_type: BlobType, at_least: int) -> "_OpenPack":
        """Call with `pack_lock` held.

        Data packs take turns with the kept buffers. A tree pack, open for most of a run and
        rarely full, gets new memory: only the pages it writes take room.
        """
        pooled = blob_type is BlobType.DATA and at_least <= self.buffer_size
        if pooled and self.free_buffers:
            buffer = self.free_buffers.pop()
        else:
            # private pages that exist only once written: a pack rarely fills its buffer
            buffer = anonymous_buffer(max(self.buffer_size, at_least + self.header_room))
        return _OpenPack(PackWriter(blob_type, buffer))

    def _close(self, pack: "_OpenPack") -> "_OpenPack | None":
        """Take `pack` out of the open ones: it is uploaded once its last blob is sealed.
        Returns it if that is now (the caller uploads it). Call with `pack_lock` held."""
        if self.open.get(pack.writer.blob_type) is pack:
            del self.open[pack.writer.blob_type]
        if not pack.writer.count:  # nothing in it: its buffer can serve the next pack
            self._give_back(pack)
            return None
        pack.closed = True
        self.closing.add(pack)
        return pack if pack.filling == 0 else None

    def _give_back(self, pack: "_OpenPack") -> None:
        """Keep a data pack's buffer for the next one (its pages stay mapped); other buffers are
        let go. Call with `pack_lock` held."""
        buffer = pack.writer.buffer
        if (isinstance(buffer, mmap.mmap) and pack.writer.blob_type is BlobType.DATA
                and len(buffer) == self.buffer_size
                and len(self.free_buffers) < self.buffers_kept):
            self.free_buffers.append(buffer)

    def _upload(self, pack: "_OpenPack") -> None:
        # The slot first: a finished pack waiting for its upload keeps its buffer, so at most
        # `uploads_in_flight` of them exist (finishing first kept one more waiting per sealer).
        while not self.upload_slots.acquire(timeout=0.5):
            self.state.check()
        try:
            pack_id, data, entries = pack.writer.finish(self.enc_key)
            fut = asyncio.run_coroutine_threadsafe(self._put_pack(pack_id, data, entries, pack),
                                                   self.loop)
        except BaseException:
            self.upload_slots.release()
            raise
        with self.futures_lock:
            self.uploads.add(fut)
        fut.add_done_callback(self._upload_done)
        with self.pack_lock:
            self.closing.discard(pack)  # only now: `flush` sees it in one set or the other

    async def _put_pack(self, pack_id: ObjectId, data: bytes | memoryview,
                        entries: list[PackEntry], pack: "_OpenPack") -> None:
        await self.vault.store.put(ObjectKey.of(ObjectKind.PACK, pack_id), data)
        with self.index_lock:
            self.pending_index[pack_id] = tuple(entries)
            self.vault.index.add_pack(pack_id, entries)
        with self.state.stats_lock:
            self.state.stats.stored_bytes += len(data)
        logger.debug("uploaded pack %s (%d bytes, %d blobs)", pack_id.short(), len(data),
                     len(entries))
        # Stored: nothing reads the buffer any more. (After a failed put it is dropped, not
        # reused: a thread of the store might still be reading it.)
        with self.pack_lock:
            self._give_back(pack)

    def _upload_done(self, fut: Future[None]) -> None:
        # The failure is recorded before the upload leaves `uploads`: `flush` stops waiting
        # once the set is empty and then checks for an error, so a failed pack must never be
        # seen as done (a checkpoint snapshot would name blobs that no stored pack holds).
        if not fut.cancelled() and fut.exception() is not None:
            self.state.fail(fut.exception())  # type: ignore[arg-type]
        self.upload_slots.release()
        with self.futures_lock:
            self.uploads.discard(fut)

    def _wait_all(self, which: set[Future[None]]) -> None:
        while True:
            with self.futures_lock:
                pending = set(which)
            if not pending:
                break
            wait(pending, timeout=0.5)
            self.state.check()
        self.state.check()

    def flush(self) -> None:
        """Seal, pack, upload and index everything produced so far (packs before index).

        Call from a worker thread, never from the event loop (it waits on uploads there).
        """
        self._wait_all(self.seals)
        with self.pack_lock:
            ready = [self._close(pack) for pack in list(self.open.values())]
        for pack in ready:
            if pack is not None:
                self._upload(pack)
        while True:  # packs whose last blob another thread is still sealing
            with self.pack_lock:
                if not self.closing:
                    break
            self.state.check()
            time.sleep(0.005)
        self._wait_all(self.uploads)
        with self.index_lock:
            pending, self.pending_index = self.pending_index, {}
        if pending:
            asyncio.run_coroutine_threadsafe(self.vault.save_index(pending), self.loop).result()
            self.vault.unindexed_packs.difference_update(pending)  # indexed now


class _OpenPack:
    """A pack being filled: its writer (and the writer's buffer) and how many blobs are being
    sealed into it.

    Changed only with the packer's `pack_lock` held.
    """

    __slots__ = ("broken", "closed", "filling", "writer")

    def __init__(self, writer: PackWriter) -> None:
        self.writer = writer
        self.filling = 0
        self.closed = False  # no more blobs go in; uploaded once `filling` is 0
        self.broken = False  # a blob's sealing failed: never uploaded (the run fails)

    def filled(self, sealed: bool) -> bool:
        """One blob's region is done; True if the pack is now complete and ready to upload."""
        self.filling -= 1
        if not sealed:
            self.broken = True
        return self.closed and self.filling == 0 and not self.broken
