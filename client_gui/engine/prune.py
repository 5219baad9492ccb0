"""`cairn prune`: reclaim the space of packs no snapshot needs, without locking the vault.

Two phases keep backups running on other devices safe. A run first *sweeps*: it deletes the
packs named by deletion markers older than the grace period that the current snapshots still
do not need. Then it *marks*: newly unneeded packs (and partly used ones, after repacking their
used blobs) go into a new marker. Last it folds the index into one segment. Backups treat
blobs in marked packs as unknown and re-read the markers at every checkpoint, so by the time
a marker is swept every running backup has either seen it or written a checkpoint snapshot
that shows what it uses. Run one prune per vault at a time; this module never deletes on
incomplete knowledge (an unreadable snapshot or tree stops it before anything is written).
"""

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from client_gui.engine.progress import CancelToken, CheckProgress, NullSink, ProgressSink, Throttle
from client_gui.engine.vault import READ_CONCURRENCY, SnapshotRef, Vault
from shared.errors import CairnError, DamageFound, IntegrityError, ObjectNotFound, UsageError
from shared.format.deletion import DeletionMarker, encode_deletion
from shared.format.pack import PackEntry, PackWriter
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind
from shared.storage.base import cleanup_temp

logger = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(hours=1)  # well above backup.CHECKPOINT_INTERVAL (5 minutes)
STALE_TEMP = timedelta(days=1)
DEFAULT_REPACK_THRESHOLD = 0.2  # restic's default --max-unused is 5%; we trade space for I/O


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    marked_packs: int  # phase 1 of this run: packs named by the new deletion marker
    marked_bytes: int
    deleted_packs: int  # phase 2 of this run: marked earlier, grace period passed, unneeded
    deleted_bytes: int
    repacked_packs: int  # partly used packs whose used blobs were copied into new packs
    repacked_bytes: int  # the size of those old packs
    pending_packs: int  # marked packs still waiting for their grace period after this run
    index_segments_before: int
    index_segments_after: int
    temp_files_removed: int = 0  # uploads abandoned by killed backups, older than a day


class _UnreadableNewSnapshot(CairnError):
    """A snapshot that appeared during the run cannot be read: this run deletes nothing."""


class _Holders:
    """blob ID -> every known pack that holds it (nearly always exactly one)."""

    def __init__(self) -> None:
        self._first: dict[bytes, ObjectId] = {}
        self._more: dict[bytes, list[ObjectId]] = {}

    def add(self, raw: bytes, pack: ObjectId) -> None:
        first = self._first.setdefault(raw, pack)
        if first != pack and pack not in self._more.get(raw, ()):
            self._more.setdefault(raw, []).append(pack)

    def of(self, raw: bytes) -> list[ObjectId]:
        first = self._first.get(raw)
        if first is None:
            return []
        return [first, *self._more.get(raw, ())]


async def prune(
    vault: Vault,
    *,
    grace: timedelta = DEFAULT_GRACE,
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD,
    dry_run: bool = False,
    now_ns: int | None = None,
    progress: ProgressSink | None = None,
    cancel: CancelToken | None = None,
) -> PruneResult:
    """Sweep due deletion markers, mark unneeded packs, repack partly used ones, fold the index.

    A pack is repacked when more than `repack_threshold` of its blob bytes are unneeded.
    `grace` is how long a marked pack waits before it may be deleted; it must exceed the
    longest time a running backup goes without writing a checkpoint (suspended laptops
    included) plus the clock difference between devices. `grace=0` marks and sweeps in one
    run: fine for a vault that only one device writes to, UNSAFE while another backup into
    the same vault is running. `dry_run` reads everything and reports what would happen, but
    writes and deletes nothing. Packs listed by a checkpoint snapshot are never marked or
    swept. Raises DamageFound, before writing anything, if a snapshot or tree is unreadable
    or a used blob is in no pack; PermissionDenied (append-only store) propagates.
    """
    if grace < timedelta(0):
        raise UsageError("the grace period must not be negative")
    if not 0.0 <= repack_threshold <= 1.0:
        raise UsageError("the repack threshold must be between 0 and 1")
    run = _PruneRun(
        vault,
        grace,
        repack_threshold,
        dry_run,
        time.time_ns() if now_ns is None else now_ns,
        progress or NullSink(),
        cancel or CancelToken(),
    )
    result = await run.run()
    if dry_run:
        return result
    # A temp file a day old is no upload in progress: a backup killed mid-upload left it.
    removed = await cleanup_temp(vault.store, max(grace, STALE_TEMP).total_seconds())
    return dataclasses.replace(result, temp_files_removed=removed)


class _PruneRun:
    def __init__(
        self,
        vault: Vault,
        grace: timedelta,
        threshold: float,
        dry_run: bool,
        now_ns: int,
        sink: ProgressSink,
        cancel: CancelToken,
    ) -> None:
        self.vault = vault
        self.grace = grace
        self.threshold = threshold
        self.dry_run = dry_run
        self.now_ns = now_ns
        self.cutoff_ns = now_ns - grace // timedelta(microseconds=1) * 1000
        self.sink = sink
        self.cancel = cancel
        self.throttle = Throttle()
        self.start = time.monotonic()
        self.markers: dict[ObjectId, DeletionMarker] = {}
        self.marker_ages: dict[ObjectId, int] = {}  # when each marker was written, ns
        self.snapshot_ids: set[ObjectId] = set()
        self.sizes: dict[ObjectId, int] = {}  # every existing pack -> its size
        self.holders = _Holders()
        self.used: set[bytes] = set()  # blob IDs (trees and data) the current snapshots need
        self.trees: set[bytes] = set()  # tree blobs walked so far
        self.relocated: set[bytes] = set()  # used blobs copied by this run's repack
        self.deleting: set[ObjectId] = set()  # packs this run deletes
        self.supersede: set[ObjectId] = set()  # index segments the new segment replaces
        self.segments_listed = 0
        # Packs a checkpoint snapshot lists. A running backup's checkpoint names the packs of
        # chunks it has read but not yet put in a tree (a file still being read): never
        # marked or swept while the checkpoint exists, however long that file takes.
        self.protected: set[ObjectId] = set()
        self.unreadable_segments = 0
        self.index_changed = False  # packs dropped or recovered: the index needs rewriting

    # ---- loading what the vault holds -----------------------------------------------------

    def _report(self, phase: str, done: int, total: int, force: bool = False) -> None:
        if force or self.throttle.ready():
            self.sink.progress(
                CheckProgress(
                    phase=phase, done=done, total=total, elapsed=time.monotonic() - self.start
                )
            )

    async def _load(self) -> None:
        """Markers, then snapshots, then index and packs, then every blob the snapshots use.

        Snapshots are listed before packs: a snapshot is written after the packs it needs,
        so everything a listed snapshot uses is in the pack listing that follows.
        """
        # A marker's age counts from the later of its own time (the marking device's clock)
        # and the time the store says it was written: a clock running behind cannot make it
        # due early (docs/FORMAT.md, 16.4).
        stored = {
            info.key.id: info.mtime async for info in self.vault.store.list(ObjectKind.DELETION)
        }
        self.markers = await self.vault.load_deletions()
        for mid, marker in self.markers.items():
            mtime = stored.get(mid)
            mtime_ns = 0 if mtime is None else int(mtime * 1e9)
            self.marker_ages[mid] = max(marker.time_ns, mtime_ns)
        errors: list[tuple[ObjectId, CairnError]] = []
        refs = await self.vault.list_snapshots(errors)
        # A snapshot that vanished between listing and reading was forgotten: not damage.
        damage = [
            f"snapshot {sid.short()}: {exc}"
            for sid, exc in errors
            if not isinstance(exc, ObjectNotFound)
        ]
        self.snapshot_ids = {r.id for r in refs}
        self.protected = {p for r in refs if r.snapshot.checkpoint for p in r.snapshot.packs}

        listed = {info.key.id async for info in self.vault.store.list(ObjectKind.INDEX)}
        seg_errors = await self.vault.load_index(recover=False)
        bad_segments = {sid for sid, _ in seg_errors}
        self.unreadable_segments = sum(
            1 for _, exc in seg_errors if not isinstance(exc, ObjectNotFound)
        )
        self.supersede = (set(self.vault.index.segments) | listed) - bad_segments
        self.segments_listed = len(self.supersede) + self.unreadable_segments
        self.sizes = await self.vault.list_packs()
        missing = set(self.vault.index.packs) - set(self.sizes)
        if missing:
            logger.warning(
                "the index names %d pack(s) that do not exist; dropping them", len(missing)
            )
            self.vault.index.remove_packs(missing)
            self.index_changed = True
        indexed = set(self.vault.index.packs)
        await self.vault.recover_unindexed(self.sizes)
        if set(self.vault.index.packs) != indexed:
            self.index_changed = True
        unknown = set(self.sizes) - set(self.vault.index.packs)
        if unknown:
            logger.warning(
                "%d pack(s) have unreadable headers; prune leaves them alone (run `cairn check`)",
                len(unknown),
            )
        for pid, entries in self.vault.index.packs.items():
            for e in entries:
                self.holders.add(e.id.raw, pid)

        await self._collect_used(refs, damage)
        if damage:
            raise DamageFound(
                f"vault has damage: run `cairn check` (and repair) before pruning; prune "
                f"never deletes on incomplete knowledge. {len(damage)} problem(s), first: "
                f"{damage[0]}"
            )

    async def _collect_used(self, refs: list[SnapshotRef], damage: list[str]) -> None:
        """Add every tree and data blob below `refs` to `self.used`; problems go to `damage`."""
        sem = asyncio.Semaphore(READ_CONCURRENCY)

        async def load(tree: ObjectId) -> list[ObjectId]:
            async with sem:
                try:
                    nodes = await self.vault.load_tree(tree)
                except CairnError as exc:
                    damage.append(f"tree {tree.short()}: {exc}")
                    return []
            subtrees = []
            for node in nodes:
                for blob in node.content:
                    if blob.raw not in self.used:
                        self.used.add(blob.raw)
                        if not self.holders.of(blob.raw):
                            damage.append(f"data blob {blob.short()} is in no pack")
                if node.subtree is not None:
                    subtrees.append(node.subtree)
            return subtrees

        for done, ref in enumerate(refs):
            self.cancel.check()
            self._report("prune: reading snapshots", done, len(refs))
            frontier = [ref.snapshot.tree]
            while frontier:
                fresh = list({t.raw: t for t in frontier if t.raw not in self.trees}.values())
                self.trees.update(t.raw for t in fresh)
                self.used.update(t.raw for t in fresh)
                found = await asyncio.gather(*(load(t) for t in fresh))
                frontier = [t for subtrees in found for t in subtrees]
        self._report("prune: reading snapshots", len(refs), len(refs), force=True)

    async def _recheck_snapshots(self) -> bool:
        """Take in snapshots written while this run worked; True if there were any.

        Raises _UnreadableNewSnapshot if one of them cannot be read in full.
        """
        current = {info.key.id async for info in self.vault.store.list(ObjectKind.SNAPSHOT)}
        new = current - self.snapshot_ids
        if not new:
            return False
        logger.info("%d snapshot(s) appeared during prune; taking them into account", len(new))
        # They may use packs uploaded after our listing: read those headers too.
        fresh = {
            pid: size
            for pid, size in (await self.vault.list_packs()).items()
            if pid not in self.sizes
        }
        await self.vault.recover_unindexed(fresh)
        for pid in fresh:
            for e in self.vault.index.packs.get(pid, ()):
                self.holders.add(e.id.raw, pid)
        refs: list[SnapshotRef] = []
        damage: list[str] = []
        for sid in sorted(new):
            try:
                refs.append(SnapshotRef(sid, await self.vault.load_snapshot(sid)))
            except ObjectNotFound:
                continue  # written and removed again (a backup's checkpoint)
            except CairnError as exc:
                damage.append(f"snapshot {sid.short()}: {exc}")
        await self._collect_used(refs, damage)
        self.snapshot_ids |= new
        self.protected.update(p for r in refs if r.snapshot.checkpoint for p in r.snapshot.packs)
        if damage:
            raise _UnreadableNewSnapshot(damage[0])
        return True

    # ---- deciding ---------------------------------------------------------------------------

    def _sweep(self, packs: list[ObjectId]) -> list[ObjectId]:
        """Of `packs`, those that may go now: every used blob they hold lives on elsewhere.

        Greedy in pack order, so of two packs holding the only two copies of a used blob the
        second is kept. Adds the chosen packs to `self.deleting`.
        """
        chosen = []
        for pid in packs:
            if pid in self.deleting or pid not in self.sizes:
                continue  # already chosen, or already gone
            if pid in self.protected:
                logger.info("marked pack %s is listed by a checkpoint; keeping it", pid.short())
                continue
            entries = self.vault.index.packs.get(pid)
            if entries is None:
                logger.warning("marked pack %s has an unreadable header; keeping it", pid.short())
                continue
            if all(self._lives_elsewhere(e.id.raw, pid) for e in entries if e.id.raw in self.used):
                self.deleting.add(pid)
                chosen.append(pid)
            else:
                logger.info("marked pack %s is needed again; keeping it", pid.short())
        return chosen

    def _lives_elsewhere(self, raw: bytes, pack: ObjectId) -> bool:
        if raw in self.relocated:
            return True
        return any(q != pack and q not in self.deleting for q in self.holders.of(raw))

    def _keeper(self, raw: bytes, excluded: set[ObjectId]) -> ObjectId | None:
        """The one pack that keeps a used blob: the smallest ID among packs staying around."""
        staying = [q for q in self.holders.of(raw) if q not in excluded]
        return min(staying) if staying else None

    def _plan(
        self, excluded: set[ObjectId]
    ) -> tuple[list[ObjectId], list[tuple[ObjectId, list[PackEntry]]]]:
        """Packs to mark (nothing in them is needed) and packs to repack (with what to keep).

        A blob stored in several packs is needed only in its keeper, so duplicates are
        reclaimed too. Waste is measured over blob bytes, not pack size: a freshly repacked
        pack then has none, whatever its header costs.
        """
        unneeded: list[ObjectId] = []
        repack: list[tuple[ObjectId, list[PackEntry]]] = []
        for pid in sorted(self.vault.index.packs):
            if pid in excluded or pid not in self.sizes:
                continue
            entries = self.vault.index.packs[pid]
            needed = list(
                {
                    e.id.raw: e
                    for e in entries
                    if e.id.raw in self.used and self._keeper(e.id.raw, excluded) == pid
                }.values()
            )
            if not needed:
                unneeded.append(pid)
                continue
            total = sum(e.length for e in entries)
            wasted = total - sum(e.length for e in needed)
            if wasted > self.threshold * total:
                repack.append((pid, needed))
        return unneeded, repack

    # ---- writing ----------------------------------------------------------------------------

    def _extract(self, data: bytes, needed: list[PackEntry]) -> list[tuple[PackEntry, bytes]]:
        """The sealed bytes of `needed`, each opened once to prove it is intact (a thread)."""
        out = []
        for e in needed:
            sealed = data[e.offset : e.offset + e.length]
            self.vault.open_blob(e.id, e.type, sealed)
            out.append((e, sealed))
        return out

    async def _upload(self, writer: PackWriter, new: dict[ObjectId, tuple[PackEntry, ...]]) -> None:
        pid, data, entries = writer.finish(self.vault.keys.encryption)
        await self.vault.store.put(ObjectKey.of(ObjectKind.PACK, pid), data)
        new[pid] = tuple(entries)
        self.sizes[pid] = len(data)
        self.vault.index.add_pack(pid, entries)
        for e in entries:
            self.holders.add(e.id.raw, pid)
        logger.debug("repack wrote pack %s (%d blobs)", pid.short(), len(entries))

    async def _repack(self, plans: list[tuple[ObjectId, list[PackEntry]]]) -> list[ObjectId]:
        """Copy the needed blobs of `plans` into new packs (sealed bytes as they are: the AD
        binds a blob to its type and ID, not to a pack) and index them. Returns the old packs
        whose blobs now live elsewhere; a pack that cannot be read is left alone."""
        done: list[ObjectId] = []
        writers: dict[BlobType, PackWriter] = {}
        new: dict[ObjectId, tuple[PackEntry, ...]] = {}
        for i, (pid, needed) in enumerate(plans):
            self.cancel.check()
            self._report("prune: repacking", i, len(plans))
            if self.dry_run:
                self.relocated.update(e.id.raw for e in needed)
                done.append(pid)
                continue
            try:
                data = await self.vault.get_verified(ObjectKey.of(ObjectKind.PACK, pid))
                blobs = await asyncio.to_thread(self._extract, data, needed)
            except (IntegrityError, ObjectNotFound) as exc:
                logger.warning("cannot repack pack %s (%s); leaving it", pid.short(), exc)
                continue
            for entry, sealed in blobs:
                writer = writers.setdefault(entry.type, PackWriter(entry.type))
                writer.add(entry.id, sealed, entry.raw_length)
                if writer.size >= self.vault.config.pack_size:
                    await self._upload(writers.pop(entry.type), new)
            done.append(pid)
        for writer in writers.values():
            if writer.count:
                await self._upload(writer, new)
        if new:
            # Packs before index before the marker that names the old packs.
            self.supersede.add(await self.vault.save_index(new))
            for entries in new.values():
                self.relocated.update(e.id.raw for e in entries)
        return done

    async def _consolidate(self) -> None:
        """One new segment with every remaining pack, superseding the segments read at the
        start (and ours); then those are deleted. Segments written meanwhile by a running
        backup are not superseded, so they and their packs stay visible."""
        packs = {
            pid: entries
            for pid, entries in self.vault.index.packs.items()
            if pid in self.sizes and pid not in self.deleting
        }
        supersede = sorted(self.supersede)
        sid = await self.vault.save_index(packs, supersede)
        logger.info(
            "index folded into segment %s (%d packs, replacing %d segment(s))",
            sid.short(),
            len(packs),
            len(supersede),
        )
        for old in supersede:
            self.cancel.check()
            await self._delete(ObjectKey.of(ObjectKind.INDEX, old))
        self.vault.index.segments.difference_update(supersede)
        self.vault.unindexed_packs.difference_update(self.sizes)

    async def _delete(self, key: ObjectKey) -> None:
        try:
            await self.vault.store.delete(key)
        except ObjectNotFound:
            logger.debug("%s was already gone", key)

    # ---- the run ----------------------------------------------------------------------------

    async def run(self) -> PruneResult:
        logger.info(
            "prune started (grace %s, repack threshold %.0f%%%s)",
            self.grace,
            self.threshold * 100,
            ", dry run" if self.dry_run else "",
        )
        await self._load()
        segments_before = self.segments_listed

        # Phase 2 first: sweep markers whose grace period has passed.
        due = {mid: m for mid, m in self.markers.items() if self.marker_ages[mid] <= self.cutoff_ns}
        waiting = {p for mid, m in self.markers.items() if mid not in due for p in m.packs}
        self._sweep(sorted({p for m in due.values() for p in m.packs}))

        # Phase 1: mark what no snapshot needs; repack partly used packs first.
        excluded = waiting | self.deleting | self.protected
        unneeded, plans = self._plan(excluded)
        repacked = await self._repack(plans)
        marked = sorted(set(unneeded) | set(repacked))
        new_marker: ObjectId | None = None
        if marked and not self.dry_run:
            marker = DeletionMarker(self.now_ns, tuple(marked))
            new_marker = await self.vault.put_object(ObjectKind.DELETION, encode_deletion(marker))
            logger.info(
                "marked %d pack(s) for deletion (marker %s)", len(marked), new_marker.short()
            )
        sweeping = set(due)
        if self.grace == timedelta(0):
            self._sweep(marked)  # grace 0: the new marker is due at once
            if new_marker is not None:
                sweeping.add(new_marker)

        # Snapshots written while we worked may need packs we are about to delete.
        abandoned = False
        if self.deleting:
            try:
                changed = await self._recheck_snapshots()
            except _UnreadableNewSnapshot as exc:
                logger.warning(
                    "a snapshot written during prune is unreadable (%s); deleting "
                    "nothing in this run",
                    exc,
                )
                self.deleting.clear()
                sweeping.clear()
                abandoned = True
            else:
                if changed:  # a pack chosen before may be needed now: choose again
                    chosen = sorted(self.deleting)
                    self.deleting.clear()
                    self._sweep(chosen)

        rewrite = (
            bool(self.deleting) or bool(repacked) or self.index_changed or len(self.supersede) > 1
        )
        if self.dry_run:
            segments_after = 1 + self.unreadable_segments if rewrite else segments_before
        else:
            if rewrite:
                await self._consolidate()
            for i, pid in enumerate(sorted(self.deleting)):
                self.cancel.check()
                self._report("prune: deleting packs", i, len(self.deleting))
                await self._delete(ObjectKey.of(ObjectKind.PACK, pid))
            for mid in sorted(sweeping):
                await self._delete(ObjectKey.of(ObjectKind.DELETION, mid))
            self.vault.index.remove_packs(self.deleting)
            segments_after = len([i async for i in self.vault.store.list(ObjectKind.INDEX)])

        # Packs named by a marker that is still there after this run.
        pending = set(waiting)
        if self.grace > timedelta(0) or abandoned:
            pending.update(marked)
        if abandoned:
            pending.update(p for m in due.values() for p in m.packs)
        pending = {p for p in pending if p in self.sizes and p not in self.deleting}
        result = PruneResult(
            marked_packs=len(marked),
            marked_bytes=sum(self.sizes[p] for p in marked),
            deleted_packs=len(self.deleting),
            deleted_bytes=sum(self.sizes[p] for p in self.deleting),
            repacked_packs=len(repacked),
            repacked_bytes=sum(self.sizes[p] for p in repacked),
            pending_packs=len(pending),
            index_segments_before=segments_before,
            index_segments_after=segments_after,
        )
        logger.info(
            "prune %s: marked %d pack(s), deleted %d (%d bytes), repacked %d, %d pending",
            "planned" if self.dry_run else "done",
            result.marked_packs,
            result.deleted_packs,
            result.deleted_bytes,
            result.repacked_packs,
            result.pending_packs,
        )
        return result
