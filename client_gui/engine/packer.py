"""Packing for a backup: seal new blobs (compress + encrypt), fill packs, upload and index them.

Owns the pack writers, the sealing pool, the upload slots and the index entries not yet saved.
`flush` keeps the write order: packs are stored before the index names them. It must not decide
which blobs are new (backup.py and dedup.py do) nor write snapshots.
"""

import asyncio
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

from client_gui.engine.backup_state import BackupState
from client_gui.engine.vault import Vault
from shared.format.blob import encode_blob
from shared.format.pack import PackEntry, PackWriter
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind

logger = logging.getLogger(__name__)

# Small blobs handed to the sealing pool at once (or fewer, once they add up to batch_below).
BATCH_BLOBS = 32


class Packer:
    """The seal -> pack -> upload -> index stages of one backup run, fed from any thread.

    Worker threads call `submit_seal`/`seal_now` and `flush`; uploads run on `loop`. The
    concurrency limits are given by the caller (backup.py justifies them).
    """

    def __init__(self, vault: Vault, loop: asyncio.AbstractEventLoop, state: BackupState, *,
                 seal_workers: int, seals_in_flight: int, uploads_in_flight: int,
                 batch_below: int = 0) -> None:
        self.vault = vault
        self.loop = loop
        self.state = state
        self.enc_key = vault.keys.encryption
        self.level = vault.config.zstd_level
        self.pack_size = vault.config.pack_size
        self.writers = {BlobType.DATA: PackWriter(BlobType.DATA),
                        BlobType.TREE: PackWriter(BlobType.TREE)}
        self.pack_lock = threading.Lock()
        self.pending_index: dict[ObjectId, tuple[PackEntry, ...]] = {}
        self.index_lock = threading.Lock()
        self.uploads: set[Future[None]] = set()
        self.seals: set[Future[None]] = set()
        self.futures_lock = threading.Lock()
        self.upload_slots = threading.BoundedSemaphore(uploads_in_flight)
        self.seal_slots = threading.BoundedSemaphore(seals_in_flight)
        self.seal_pool = ThreadPoolExecutor(seal_workers, thread_name_prefix="cairn-seal")
        # Blobs smaller than this go to the pool in batches: one hand-off per blob cost more
        # than sealing a small file's blob (thread wake-ups and GIL hand-offs).
        self.batch_below = batch_below
        self.batch: list[tuple[BlobType, ObjectId, bytes]] = []
        self.batch_bytes = 0
        self.batch_lock = threading.Lock()

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

    def _seal(self, blobs: list[tuple[BlobType, ObjectId, bytes]]) -> None:
        try:
            for blob_type, blob_id, data in blobs:
                sealed = encode_blob(self.enc_key, blob_type, blob_id, data, self.level)
                self._add_to_pack(blob_type, blob_id, sealed, len(data))
        except BaseException as exc:
            self.state.fail(exc)
            raise
        finally:
            self.seal_slots.release()

    def submit_seal(self, blob_type: BlobType, blob_id: ObjectId,
                    data: bytes | memoryview) -> None:
        """Seal and pack a new blob on the sealing pool (small ones in batches).

        Waits while too many are in flight. `data` may be a view of the caller's buffer: it is
        copied before this returns.
        """
        with self.state.stats_lock:
            self.state.stats.new_blobs += 1
            self.state.stats.new_bytes += len(data)
        if len(data) >= self.batch_below:
            self._submit([(blob_type, blob_id, bytes(data))])
            return
        with self.batch_lock:
            self.batch.append((blob_type, blob_id, bytes(data)))
            self.batch_bytes += len(data)
            if len(self.batch) < BATCH_BLOBS and self.batch_bytes < self.batch_below:
                return
            blobs, self.batch, self.batch_bytes = self.batch, [], 0
        self._submit(blobs)

    def _submit_batch(self) -> None:
        with self.batch_lock:
            blobs, self.batch, self.batch_bytes = self.batch, [], 0
        if blobs:
            self._submit(blobs)

    def _submit(self, blobs: list[tuple[BlobType, ObjectId, bytes]]) -> None:
        while not self.seal_slots.acquire(timeout=0.5):
            self.state.check()
        fut = self.seal_pool.submit(self._seal, blobs)
        with self.futures_lock:
            self.seals.add(fut)
        fut.add_done_callback(self._seal_done)

    def _seal_done(self, fut: Future[None]) -> None:
        with self.futures_lock:
            self.seals.discard(fut)

    def seal_now(self, blob_type: BlobType, blob_id: ObjectId, data: bytes | memoryview) -> None:
        """Seal and pack a new blob in the calling thread (the caller counts it)."""
        sealed = encode_blob(self.enc_key, blob_type, blob_id, data, self.level)
        self._add_to_pack(blob_type, blob_id, sealed, len(data))

    # ---- packs and uploads ----------------------------------------------------------------

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
        # The slot first: a finished pack is a second copy of its bytes, so at most
        # `uploads_in_flight` of them exist (finishing first kept one more waiting per sealer).
        while not self.upload_slots.acquire(timeout=0.5):
            self.state.check()
        try:
            pack_id, data, entries = writer.finish(self.enc_key)
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
        with self.state.stats_lock:
            self.state.stats.stored_bytes += len(data)
        logger.debug("uploaded pack %s (%d bytes, %d blobs)", pack_id.short(), len(data),
                     len(entries))

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
        self._submit_batch()
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
            asyncio.run_coroutine_threadsafe(self.vault.save_index(pending), self.loop).result()
            self.vault.unindexed_packs.difference_update(pending)  # indexed now
