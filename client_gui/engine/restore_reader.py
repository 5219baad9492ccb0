"""Restore's pack reader: groups the needed blobs into ranges, reads every pack once, in order,
and opens the blobs on worker threads.

It hands each blob's plaintext (or why it is unreadable) to a BlobConsumer; it never touches
the restore target and never reports to the user itself.
"""

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from client_gui.engine.vault import BlobLocation, Vault
from shared.errors import CairnError, IntegrityError, ObjectNotFound, RangeError
from shared.ids import ObjectId, ObjectKey, ObjectKind

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Blobs of one pack closer than this are fetched in one read: skipping a small gap costs less
# than another request (restic uses the same idea for its pack reads).
MAX_GAP = 1 << 20
# One read is at most this long (unless a single blob is longer): with the queue and workers
# below, at most ~4 such ranges are in memory at once. 16 MiB made restore's peak RSS 1.7x
# restic's. Since restore stopped trimming malloc after every range (re-faulting the pages cost
# more time than the rest of the change saved), 8 MiB ranges left a peak of ~176-184 MiB
# (restic: ~170-190); 4 MiB ranges ~155-160 MiB, at about the same speed.
MAX_RANGE = 4 << 20
# Two workers open blobs and write them: decrypt, decompress and hash release the GIL, so both
# cores of a laptop work while the next range is read. (Three workers with 4 MiB ranges looked
# faster alone but measured 1.07x restic in a full bench run, against 0.88-0.94x with these.)
WORKERS = 2
# Ranges read ahead of the workers: one keeps the disk or network busy without growing memory.
RANGES_QUEUED = 1


class BlobConsumer(Protocol):
    """What the reader needs from a restore run."""

    def check(self) -> None:
        """Raise Cancelled if the job is to stop."""

    async def in_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn` on a worker thread; if this task is cancelled, wait for the thread to stop."""

    def deliver(self, blob_id: ObjectId, plain: bytes | bytearray) -> None:
        """Use one blob's plaintext (worker thread)."""

    def blob_failed(self, blob_id: ObjectId, reason: str) -> None:
        """The blob cannot be read (worker thread)."""


@dataclass(frozen=True, slots=True)
class BlobRange:
    """One read from one pack, covering one or more needed blobs."""

    pack: ObjectId
    start: int
    end: int
    blobs: tuple[tuple[ObjectId, BlobLocation], ...]


def plan_ranges(needed: Mapping[bytes, BlobLocation]) -> list[BlobRange]:
    """The reads that fetch every needed blob: pack by pack, each pack's blobs in order."""
    by_pack: dict[ObjectId, list[tuple[ObjectId, BlobLocation]]] = {}
    for raw, loc in needed.items():
        by_pack.setdefault(loc.pack, []).append((ObjectId(raw), loc))
    out: list[BlobRange] = []
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
                out.append(BlobRange(pack, start, end, tuple(current)))
            current, start, end = [(blob_id, loc)], loc.offset, stop
        if current:
            out.append(BlobRange(pack, start, end, tuple(current)))
    return out


async def read_blobs(vault: Vault, needed: Mapping[bytes, BlobLocation],
                     consumer: BlobConsumer) -> None:
    """Read the needed ranges pack by pack, in order; workers open the blobs and hand them on."""
    ranges = plan_ranges(needed)
    logger.debug("reading %d blobs in %d ranges", len(needed), len(ranges))
    queue: asyncio.Queue[tuple[BlobRange, bytes | CairnError] | None] = asyncio.Queue(
        maxsize=RANGES_QUEUED)

    async def read() -> None:
        unreadable: dict[ObjectId, CairnError] = {}
        for rng in ranges:
            consumer.check()
            data: bytes | CairnError | None = unreadable.get(rng.pack)
            if data is None:
                try:
                    data = await vault.store.get(ObjectKey.of(ObjectKind.PACK, rng.pack),
                                                 offset=rng.start, length=rng.end - rng.start)
                except (ObjectNotFound, RangeError, IntegrityError) as exc:
                    logger.warning("pack %s unreadable: %s", rng.pack.short(), exc)
                    unreadable[rng.pack] = data = exc
            await queue.put((rng, data))
        for _ in range(WORKERS):
            await queue.put(None)

    async def work() -> None:
        while (item := await queue.get()) is not None:
            await consumer.in_thread(_open_range, vault, consumer, *item)

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(read())
            for _ in range(WORKERS):
                group.create_task(work())
    except BaseExceptionGroup as failures:
        first = _first_error(failures)
        raise first from first.__cause__


def _open_range(vault: Vault, consumer: BlobConsumer, rng: BlobRange,
                data: bytes | CairnError) -> None:
    """Open each blob of a range and hand it to the consumer (worker thread).

    The blobs are opened from views of the range (no copy of each sealed blob first)."""
    view = memoryview(data) if not isinstance(data, CairnError) else memoryview(b"")
    for blob_id, loc in rng.blobs:
        consumer.check()
        if isinstance(data, CairnError):
            consumer.blob_failed(blob_id, f"pack {rng.pack.short()} is missing or damaged "
                                 f"({data})")
            continue
        start = loc.offset - rng.start
        try:
            plain = vault.open_blob_buffer(blob_id, loc.type, view[start:start + loc.length])
            if len(plain) != loc.raw_length:
                raise IntegrityError(f"blob {blob_id.short()} is damaged: wrong length")
        except IntegrityError as exc:
            logger.warning("%s", exc)
            consumer.blob_failed(blob_id, f"damaged data ({exc})")
            continue
        consumer.deliver(blob_id, plain)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        return exc
    return group
