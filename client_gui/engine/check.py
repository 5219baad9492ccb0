"""Check: find damage in a vault and name the snapshots and files it affects (restic's `check`).

Reads the config, key slots, index, snapshots, every pack header and every tree; optionally
every pack byte (`verify_pack_hashes`) and every blob (`read_data`). It never writes or
repairs: it returns Damage (something is lost or corrupted) and warnings (harmless leftovers).
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from client_gui.engine.progress import CancelToken, CheckProgress, NullSink, ProgressSink, Throttle
from client_gui.engine.vault import READ_CONCURRENCY, BlobLocation, SnapshotRef, Vault
from client_gui.engine.walk import display, join
from shared.crypto.aead import OVERHEAD
from shared.crypto.keys import decode_key_slot
from shared.errors import (
    CairnError,
    IntegrityError,
    NotAVault,
    ObjectNotFound,
    RangeError,
    UnsupportedFormat,
)
from shared.format.config import verify_config
from shared.format.pack import TRAILER_SIZE, PackEntry
from shared.format.tree import Node, NodeType, decode_tree
from shared.hashing import StreamHasher, object_id
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Whole packs read at once (hashes, read_data): one on the wire while the other is hashed and
# decrypted. Memory stays near PACK_READS x (PIECE_SIZE + the largest blob).
PACK_READS = 2
# One ranged read of a whole pack: few round trips, and a 64 MiB pack is never held at once.
PIECE_SIZE = 8 << 20
PATHS_SHOWN = 20  # paths listed per damage; the rest are counted in `more_paths`
PATHS_TRACKED = 10_000  # distinct paths remembered per damage: bounds memory on a lost vault
IDS_SHOWN = 5  # object IDs named in one aggregated warning
INDEX_RETRIES = 3  # re-lists of the index when a concurrent prune folded segments away
# The smallest possible sealed header: AEAD nonce and tag plus the compression-method byte.
MIN_HEADER = OVERHEAD + 1

# Errors that mean "this object is damaged or gone". StorageUnavailable is not among them: a
# check that cannot reach its store fails instead of reporting damage.
_DAMAGE_ERRORS = (IntegrityError, UnsupportedFormat, ObjectNotFound, RangeError)


class DamageKind(StrEnum):
    """Stable codes for Damage.kind (JSON output, GUI icons, tests)."""

    CONFIG_DAMAGED = "config_damaged"
    KEY_DAMAGED = "key_damaged"
    INDEX_DAMAGED = "index_damaged"
    SNAPSHOT_DAMAGED = "snapshot_damaged"
    PACK_MISSING = "pack_missing"
    PACK_TRUNCATED = "pack_truncated"
    PACK_DAMAGED = "pack_damaged"
    INDEX_MISSING = "index_missing"  # a needed pack exists but no index names it
    TREE_DAMAGED = "tree_damaged"
    BLOB_MISSING = "blob_missing"
    BLOB_DAMAGED = "blob_damaged"


_KIND_ORDER = {kind: rank for rank, kind in enumerate(DamageKind)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Damage:
    """One thing the vault lost or holds corrupted, and what it affects."""

    kind: DamageKind
    object: str  # "packs/<hex>", "trees/<hex>", "blobs/<hex>", "snapshots/<hex>", ...
    message: str  # one line for people
    snapshots: tuple[str, ...] = ()  # hex IDs of affected snapshots, oldest first
    paths: tuple[str, ...] = ()  # affected files and folders, display form, sorted, capped
    more_paths: int = 0  # affected paths not listed in `paths`


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckReport:
    damage: tuple[Damage, ...]
    warnings: tuple[str, ...]  # not damage: leftovers that a later backup or prune tidies
    snapshots: int  # readable snapshots
    trees: int  # distinct trees referenced
    blobs: int  # distinct data blobs referenced
    packs: int  # packs in the store
    bytes_read: int  # bytes read from packs (headers, trees, whole packs when asked)

    @property
    def ok(self) -> bool:
        return not self.damage


@dataclass(eq=False)
class _Finding:
    """A damage in the making: affected snapshots and paths are added by the attribution."""

    kind: DamageKind
    object: str
    message: str
    warn_if_unused: bool = False  # only a warning if no snapshot uses what it names
    contents_unknown: bool = False  # names no blobs, but may hold blobs found missing
    snapshots: set[bytes] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    untracked: int = 0  # paths seen after PATHS_TRACKED (may count one path twice)

    def hit(self, snapshot: bytes, path: str) -> None:
        self.snapshots.add(snapshot)
        if path in self.paths:
            return
        if len(self.paths) < PATHS_TRACKED:
            self.paths.add(path)
        else:
            self.untracked += 1

    def damage(self, order: dict[bytes, int]) -> Damage:
        snaps = sorted(self.snapshots, key=lambda s: (order.get(s, len(order)), s))
        paths = sorted(self.paths)
        total = len(paths) + self.untracked
        message = self.message
        if total:
            message += f"; affects {_plural(total, 'path')} in {_plural(len(snaps), 'snapshot')}"
        return Damage(
            kind=self.kind,
            object=self.object,
            message=message,
            snapshots=tuple(s.hex() for s in snaps),
            paths=tuple(paths[:PATHS_SHOWN]),
            more_paths=total - min(total, PATHS_SHOWN),
        )


@dataclass(eq=False)
class _Pack:
    """What check learns about one stored pack."""

    id: ObjectId
    size: int
    indexed: bool
    entries: tuple[PackEntry, ...] = ()  # the index's entries, or the header's if unindexed
    truncated: bool = False
    problems: list[str] = field(default_factory=list)  # why the pack is damaged
    suspect: bool = False  # damaged somewhere unknown: any of its blobs may be affected
    mismatched: set[bytes] = field(default_factory=set)  # index entries the header contradicts
    bad_blobs: dict[bytes, str] = field(default_factory=dict)  # read_data failures
    scanned: bool = False  # every byte read (and with read_data, every blob decrypted)


@dataclass(eq=False)
class _Scan:
    """A whole-pack read in progress: the hash so far and the bytes of unfinished blobs."""

    blobs: list[PackEntry]
    hasher: StreamHasher = field(default_factory=StreamHasher)
    buf: bytearray = field(default_factory=bytearray)
    buf_start: int = 0
    next_blob: int = 0


async def check(
    vault: Vault,
    *,
    read_data: bool = False,
    verify_pack_hashes: bool = False,
    progress: ProgressSink | None = None,
    cancel: CancelToken | None = None,
) -> CheckReport:
    """Check `vault` and report its damage, naming the snapshots and files affected.

    `verify_pack_hashes` reads every pack whole and compares its BLAKE3 with its name (cheap on
    a local folder). `read_data` also decrypts every blob; it reads the packs whole anyway, so
    it checks their hashes too. Raises only if the check cannot run (store down, cancelled).
    """
    run = _Check(
        vault,
        read_data=read_data,
        verify_pack_hashes=verify_pack_hashes,
        sink=progress or NullSink(),
        cancel=cancel or CancelToken(),
    )
    return await run.run()


class _Check:
    def __init__(
        self,
        vault: Vault,
        *,
        read_data: bool,
        verify_pack_hashes: bool,
        sink: ProgressSink,
        cancel: CancelToken,
    ) -> None:
        self.vault = vault
        self.read_data = read_data
        self.scan = read_data or verify_pack_hashes
        self.sink = sink
        self.cancel = cancel
        self.throttle = Throttle()
        self.start = time.monotonic()
        self.findings: list[_Finding] = []
        self.warnings: list[str] = []
        self.bad: dict[bytes, list[_Finding]] = {}  # blob or tree ID -> findings it belongs to
        self.packs: dict[ObjectId, _Pack] = {}
        self.unindexed: dict[bytes, BlobLocation] = {}  # blobs of packs that no index names
        self.index_missing: dict[ObjectId, _Finding] = {}
        self.blob_missing: dict[bytes, _Finding] = {}
        self.trees_missing = False  # a tree that no pack holds (not merely a damaged one)
        self.trees_seen: set[bytes] = set()
        self.trees_done = 0
        self.data_refs: set[bytes] = set()
        # The tree graph, kept small for the attribution: directory entries and the file
        # entries that use a bad blob. Every other file entry is forgotten once seen.
        self.edges: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}
        self.hits: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}
        self.dirty: dict[bytes, bool] = {}
        self.bytes_read = 0

    async def run(self) -> CheckReport:
        logger.info(
            "check started (read_data=%s, verify_pack_hashes=%s)", self.read_data, self.scan
        )
        await self._check_config()
        await self._check_keys()
        # Snapshots before the index: a backup writes its index before its snapshot, so every
        # snapshot listed here has its packs in the index loaded next.
        refs = await self._check_snapshots()
        self.cancel.check()
        for sid, exc in await self._load_index():
            self._add(
                _Finding(
                    DamageKind.INDEX_DAMAGED,
                    f"index/{sid.hex()}",
                    f"index segment {sid.short()} is unreadable: {exc}",
                )
            )
        await self._check_deletions()
        listed = await self.vault.list_packs()
        self.cancel.check()
        await self._read_headers(listed)
        if self.scan:
            await self._scan_packs()
        self._pack_findings()
        self.cancel.check()
        await self._walk(refs)
        self.cancel.check()
        self._attribute(refs)
        report = self._report(refs)
        logger.info(
            "check finished: %d damage, %d warnings, %d snapshots, %d trees, %d blobs, "
            "%d packs, %d bytes read",
            len(report.damage),
            len(report.warnings),
            report.snapshots,
            report.trees,
            report.blobs,
            report.packs,
            report.bytes_read,
        )
        return report

    # ---- helpers --------------------------------------------------------------------------

    def _progress(self, phase: str, done: int, total: int, *, force: bool = False) -> None:
        if force or self.throttle.ready():
            self.sink.progress(
                CheckProgress(
                    phase=phase, done=done, total=total, elapsed=time.monotonic() - self.start
                )
            )

    def _add(self, finding: _Finding, blobs: Iterable[bytes] = ()) -> _Finding:
        self.findings.append(finding)
        for raw in blobs:
            self.bad.setdefault(raw, []).append(finding)
        return finding

    async def _get(self, key: ObjectKey, offset: int, length: int) -> bytes:
        data = await self.vault.store.get(key, offset=offset, length=length)
        self.bytes_read += len(data)
        return data

    async def _pool(
        self,
        items: Iterable[T],
        work: Callable[[T, Callable[[T], None]], Awaitable[None]],
        concurrency: int,
    ) -> None:
        """Run `work(item, push)` on every item with bounded concurrency; `push` adds items."""
        queue: asyncio.Queue[T] = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)

        async def worker() -> None:
            while True:
                item = await queue.get()
                try:
                    self.cancel.check()
                    await work(item, queue.put_nowait)
                finally:
                    queue.task_done()

        try:
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(worker()) for _ in range(concurrency)]
                await queue.join()
                for w in workers:
                    w.cancel()
        except BaseExceptionGroup as failures:
            # Callers expect a plain CairnError (Cancelled, StorageUnavailable), not a group.
            first = failures.exceptions[0]
            raise first from first.__cause__

    # ---- config, keys, snapshots, deletion markers ----------------------------------------

    async def _check_config(self) -> None:
        """The config was verified at open; read it again in case the vault was opened long ago."""
        try:
            config, raw = await Vault.read_config(self.vault.store)
            verify_config(raw, self.vault.keys.config_mac)
            if config != self.vault.config:
                raise IntegrityError("vault config changed since the vault was opened")
        except (NotAVault, *_DAMAGE_ERRORS) as exc:
            self._add(
                _Finding(DamageKind.CONFIG_DAMAGED, "config", f"the config is damaged: {exc}")
            )

    async def _check_keys(self) -> None:
        """Vault.load_key_slots skips damaged slots; here each one is reported."""
        async for info in self.vault.store.list(ObjectKind.KEY):
            try:
                data = await self.vault.store.get(info.key)
                if object_id(data).hex() != info.key.name:
                    raise IntegrityError("content does not match its name")
                decode_key_slot(data, f"key slot {info.key.name[:8]}")
            except _DAMAGE_ERRORS as exc:
                self._add(
                    _Finding(
                        DamageKind.KEY_DAMAGED,
                        str(info.key),
                        f"key slot {info.key.name[:8]} is damaged: {exc}",
                    )
                )

    async def _load_index(self) -> list[tuple[ObjectId, CairnError]]:
        """Load the index; a segment that vanished after listing was folded by a concurrent
        prune into a new one, so list again (a few times) before calling it damage."""
        errors: list[tuple[ObjectId, CairnError]] = []
        for _ in range(INDEX_RETRIES):
            errors = await self.vault.load_index(recover=False)
            if not any(isinstance(exc, ObjectNotFound) for _, exc in errors):
                break
        return errors

    async def _check_snapshots(self) -> list[SnapshotRef]:
        self._progress("snapshots", 0, 0, force=True)
        errors: list[tuple[ObjectId, CairnError]] = []
        refs = await self.vault.list_snapshots(errors)
        # Deleted after listing (a finished backup's checkpoint, a concurrent forget): gone,
        # not damaged.
        errors = [(sid, exc) for sid, exc in errors if not isinstance(exc, ObjectNotFound)]
        for sid, exc in errors:
            finding = self._add(
                _Finding(
                    DamageKind.SNAPSHOT_DAMAGED,
                    f"snapshots/{sid.hex()}",
                    f"snapshot {sid.short()} is unreadable: {exc}",
                )
            )
            finding.snapshots.add(sid.raw)
        self._progress("snapshots", len(refs), len(refs) + len(errors), force=True)
        return refs

    async def _check_deletions(self) -> None:
        markers = await self.vault.load_deletions()
        if markers:
            packs = {p for m in markers.values() for p in m.packs}
            self.warnings.append(
                f"{_plural(len(markers), 'deletion marker')} pending for "
                f"{_plural(len(packs), 'pack')}: prune deletes the packs still unused after the "
                "grace period"
            )

    # ---- packs: headers, then (optionally) every byte -------------------------------------

    async def _read_headers(self, listed: dict[ObjectId, int]) -> None:
        index_packs = self.vault.index.packs
        for pid, size in listed.items():
            entries = index_packs.get(pid)
            self.packs[pid] = _Pack(pid, size, entries is not None, entries or ())
        for pid, entries in index_packs.items():
            if pid not in listed:
                self._add(
                    _Finding(
                        DamageKind.PACK_MISSING,
                        f"packs/{pid.hex()}",
                        f"pack {pid.short()} is missing",
                        warn_if_unused=True,
                    ),
                    (e.id.raw for e in entries),
                )
        total = len(self.packs)
        done = 0

        async def one(p: _Pack, _push: Callable[[_Pack], None]) -> None:
            nonlocal done
            await self._read_header(p)
            done += 1
            self._progress("packs", done, total)

        self._progress("packs", 0, total, force=True)
        await self._pool(self.packs.values(), one, READ_CONCURRENCY)
        self._progress("packs", done, total, force=True)

    async def _read_header(self, p: _Pack) -> None:
        if p.indexed:
            end = max((e.offset + e.length for e in p.entries), default=0)
            if p.size < end + MIN_HEADER + TRAILER_SIZE:
                p.truncated = True
                return
        try:
            header = await self.vault.read_pack_header(p.id, p.size)
        except _DAMAGE_ERRORS as exc:
            self.bytes_read += TRAILER_SIZE
            p.problems.append(f"its header is unreadable ({exc})")
            p.suspect = True
            return
        # Header and trailer are what follows the last blob.
        self.bytes_read += p.size - max((e.offset + e.length for e in header), default=0)
        if not p.indexed:
            p.entries = tuple(header)
            for e in header:
                self.unindexed.setdefault(
                    e.id.raw, BlobLocation(p.id, e.type, e.offset, e.length, e.raw_length)
                )
            return
        in_header = set(header)
        in_index = set(p.entries)
        if in_header != in_index:
            p.mismatched = {e.id.raw for e in in_index - in_header}
            p.problems.append(
                f"its header does not match the index ({len(in_header ^ in_index)} entries differ)"
            )

    async def _scan_packs(self) -> None:
        total = sum(p.size for p in self.packs.values())
        done = 0

        async def one(p: _Pack, _push: Callable[[_Pack], None]) -> None:
            nonlocal done
            done += await self._scan_pack(p, lambda n: self._progress("data", done + n, total))
            self._progress("data", done, total)

        self._progress("data", 0, total, force=True)
        await self._pool(sorted(self.packs.values(), key=lambda p: p.id), one, PACK_READS)
        self._progress("data", done, total, force=True)

    async def _scan_pack(self, p: _Pack, report: Callable[[int], None]) -> int:
        """Read `p` in pieces, in order: hash every byte; with read_data, decrypt every blob."""
        key = ObjectKey.of(ObjectKind.PACK, p.id)
        blobs = sorted(p.entries, key=lambda e: (e.offset, e.length)) if self.read_data else []
        scan = _Scan(blobs)
        pos = 0
        while pos < p.size:
            self.cancel.check()
            n = min(PIECE_SIZE, p.size - pos)
            try:
                piece = await self._get(key, pos, n)
            except (ObjectNotFound, RangeError) as exc:
                p.problems.append(f"it could not be read whole ({exc})")
                p.suspect = True
                return pos
            pos += n
            await asyncio.to_thread(self._digest, p, scan, piece)
            report(pos)
        p.scanned = True
        if not p.truncated:
            if scan.hasher.object_id() != p.id:
                p.problems.append("its content does not match its name (BLAKE3)")
                p.suspect = True
            for e in blobs[scan.next_blob :]:
                p.bad_blobs[e.id.raw] = "it lies outside the pack"
        return pos

    def _digest(self, p: _Pack, scan: _Scan, piece: bytes) -> None:
        """Hash one piece and decrypt the blobs it completes (runs in a worker thread)."""
        scan.hasher.update(piece)
        if not scan.blobs:
            return
        scan.buf += piece
        end = scan.buf_start + len(scan.buf)
        blobs = scan.blobs
        while scan.next_blob < len(blobs):
            e = blobs[scan.next_blob]
            if e.offset + e.length > end:
                break
            start = e.offset - scan.buf_start
            with memoryview(scan.buf) as view:
                sealed = bytes(view[start : start + e.length])
            try:
                self.vault.open_blob(e.id, e.type, sealed)
            except (IntegrityError, UnsupportedFormat) as exc:
                p.bad_blobs[e.id.raw] = str(exc)
            scan.next_blob += 1
        keep_from = min(blobs[scan.next_blob].offset, end) if scan.next_blob < len(blobs) else end
        del scan.buf[: keep_from - scan.buf_start]
        scan.buf_start = keep_from

    def _pack_findings(self) -> None:
        """Turn what was learnt about each pack into findings, with the blobs they affect."""
        for p in self.packs.values():
            name = f"packs/{p.id.hex()}"
            unused_ok = not p.indexed  # a broken leftover of an interrupted backup is harmless
            if p.truncated:
                end = max((e.offset + e.length for e in p.entries), default=0)
                lost = [e.id.raw for e in p.entries if e.offset + e.length > p.size]
                self._add(
                    _Finding(
                        DamageKind.PACK_TRUNCATED,
                        name,
                        f"pack {p.id.short()} is truncated: {p.size} bytes are left, too few "
                        f"for its blobs ({end} bytes) and header",
                    ),
                    lost,
                )
            elif p.problems:
                # After read_data every blob was decrypted, so bad_blobs names the bad ones.
                whole = p.suspect and not (p.scanned and self.read_data)
                blobs = {e.id.raw for e in p.entries} if whole else p.mismatched
                self._add(
                    _Finding(
                        DamageKind.PACK_DAMAGED,
                        name,
                        f"pack {p.id.short()} is damaged: {'; '.join(p.problems)}",
                        warn_if_unused=unused_ok,
                        contents_unknown=not p.indexed and not p.entries,
                    ),
                    blobs,
                )
            for raw, reason in sorted(p.bad_blobs.items()):
                oid = ObjectId(raw)
                self._add(
                    _Finding(
                        DamageKind.BLOB_DAMAGED,
                        f"blobs/{oid.hex()}",
                        f"blob {oid.short()} in pack {p.id.short()} is damaged: {reason}",
                        warn_if_unused=unused_ok,
                    ),
                    (raw,),
                )

    # ---- trees ----------------------------------------------------------------------------

    async def _walk(self, refs: list[SnapshotRef]) -> None:
        """Decode every tree once (shared across snapshots); note the blobs each file uses."""
        roots = []
        for ref in refs:
            if ref.snapshot.tree.raw not in self.trees_seen:
                self.trees_seen.add(ref.snapshot.tree.raw)
                roots.append(ref.snapshot.tree)
        self._progress("trees", 0, len(self.trees_seen), force=True)
        await self._pool(roots, self._visit, READ_CONCURRENCY)
        self._progress("trees", self.trees_done, len(self.trees_seen), force=True)

    async def _visit(self, tree_id: ObjectId, push: Callable[[ObjectId], None]) -> None:
        nodes = await self._load_tree(tree_id)
        self.trees_done += 1
        self._progress("trees", self.trees_done, len(self.trees_seen))
        if nodes is None:
            return
        hits: list[tuple[bytes, bytes]] = []
        edges: list[tuple[bytes, bytes]] = []
        for node in nodes:
            for blob_id in node.content:
                if self._note_blob(blob_id):
                    hits.append((node.name, blob_id.raw))
            if node.type == NodeType.DIR and node.subtree is not None:
                sub = node.subtree.raw
                edges.append((node.name, sub))
                if sub not in self.trees_seen:
                    self.trees_seen.add(sub)
                    push(node.subtree)
        if hits:
            self.hits[tree_id.raw] = tuple(hits)
        if edges:
            self.edges[tree_id.raw] = tuple(edges)

    def _note_blob(self, blob_id: ObjectId) -> bool:
        """Record a data blob a file uses; True if it is bad (missing, in a damaged pack...)."""
        raw = blob_id.raw
        if raw not in self.data_refs:
            self.data_refs.add(raw)
            if blob_id not in self.vault.index:
                loc = self.unindexed.get(raw)
                if loc is not None:
                    self.bad.setdefault(raw, []).append(self._index_missing(loc.pack))
                else:
                    self.blob_missing[raw] = self._add(
                        _Finding(
                            DamageKind.BLOB_MISSING,
                            f"blobs/{blob_id.hex()}",
                            f"data blob {blob_id.short()} is missing: no pack holds it",
                        ),
                        (raw,),
                    )
        return raw in self.bad

    def _index_missing(self, pack_id: ObjectId) -> _Finding:
        finding = self.index_missing.get(pack_id)
        if finding is None:
            finding = self._add(
                _Finding(
                    DamageKind.INDEX_MISSING,
                    f"packs/{pack_id.hex()}",
                    f"index missing for pack {pack_id.short()}: its pack exists but no index names "
                    "it; the next `cairn backup` re-indexes it",
                )
            )
            self.index_missing[pack_id] = finding
        return finding

    async def _load_tree(self, tree_id: ObjectId) -> tuple[Node, ...] | None:
        """The tree's nodes, or None after recording why it cannot be read."""
        loc = self.vault.index.get(tree_id)
        if loc is None:
            loc = self.unindexed.get(tree_id.raw)
            if loc is None:
                self.trees_missing = True
                self._tree_damaged(tree_id, "it is missing: no pack holds it")
                return None
            self.bad.setdefault(tree_id.raw, []).append(self._index_missing(loc.pack))
        try:
            sealed = await self._get(
                ObjectKey.of(ObjectKind.PACK, loc.pack), loc.offset, loc.length
            )
            return decode_tree(
                self.vault.open_blob(tree_id, BlobType.TREE, sealed), f"tree {tree_id.short()}"
            )
        except _DAMAGE_ERRORS as exc:
            self._tree_damaged(tree_id, str(exc))
            return None

    def _tree_damaged(self, tree_id: ObjectId, reason: str) -> None:
        self._add(
            _Finding(
                DamageKind.TREE_DAMAGED,
                f"trees/{tree_id.hex()}",
                f"tree {tree_id.short()} cannot be read ({reason}); what lies below "
                "that folder cannot be checked or restored",
            ),
            (tree_id.raw,),
        )

    # ---- attribution: which snapshots and paths each finding affects ----------------------

    def _is_dirty(self, root: bytes) -> bool:
        """Whether a bad blob or tree lies anywhere below `root` (memoised, no recursion)."""
        memo = self.dirty
        stack = [(root, False)]
        while stack:
            tree, expanded = stack.pop()
            if tree in memo:
                continue
            children = self.edges.get(tree, ())
            if not expanded:
                stack.append((tree, True))
                stack.extend((sub, False) for _, sub in children if sub not in memo)
            else:
                memo[tree] = tree in self.hits or any(
                    sub in self.bad or memo.get(sub, False) for _, sub in children
                )
        return memo[root]

    def _record(self, raw: bytes, snapshot: bytes, path: bytes) -> None:
        shown = display(path)
        for finding in self.bad[raw]:
            finding.hit(snapshot, shown)

    def _attribute(self, refs: list[SnapshotRef]) -> None:
        """Walk each snapshot's in-memory graph, only into folders with something bad below.

        Trees are content-addressed by a keyed hash, so the graph has no cycles.
        """
        if not self.bad:
            return
        for ref in refs:
            sid = ref.id.raw
            root = ref.snapshot.tree.raw
            if root in self.bad:
                self._record(root, sid, b"")
            stack = [(root, b"")]
            while stack:
                tree, prefix = stack.pop()
                if not self._is_dirty(tree):
                    continue
                for name, blob in self.hits.get(tree, ()):
                    self._record(blob, sid, join(prefix, name))
                for name, sub in self.edges.get(tree, ()):
                    path = join(prefix, name)
                    if sub in self.bad:
                        self._record(sub, sid, path)
                    stack.append((sub, path))

    # ---- the report -----------------------------------------------------------------------

    def _report(self, refs: list[SnapshotRef]) -> CheckReport:
        order = {ref.id.raw: i for i, ref in enumerate(refs)}
        damage: list[Damage] = []
        warnings = list(self.warnings)
        unused_missing: list[str] = []
        lost = bool(self.blob_missing) or self.trees_missing
        for f in self.findings:
            if f.contents_unknown and lost:
                f.message += " (in no index; it may hold the blobs found missing)"
            elif f.warn_if_unused and not f.snapshots:
                if f.kind == DamageKind.PACK_MISSING:
                    unused_missing.append(f.object.partition("/")[2][:8])
                else:
                    warnings.append(f"{f.message} (in no index: no snapshot needs it)")
                continue
            damage.append(f.damage(order))
        if unused_missing:
            warnings.append(
                f"{_plural(len(unused_missing), 'pack')} named by the index "
                f"{'is' if len(unused_missing) == 1 else 'are'} missing, but no snapshot uses "
                f"their blobs (an interrupted prune?): {_ids(unused_missing)}; the next prune "
                "tidies the index"
            )
        leftovers = [
            p
            for p in self.packs.values()
            if not p.indexed
            and p.id not in self.index_missing
            and not p.problems
            and not p.bad_blobs
        ]
        if leftovers:
            size = sum(p.size for p in leftovers)
            warnings.append(
                f"{_plural(len(leftovers), 'pack')} ({size} bytes) in no index, left by an "
                f"interrupted backup: {_ids([p.id.short() for p in leftovers])}; the next backup "
                "reuses them and prune removes what no snapshot needs"
            )
        damage.sort(key=lambda d: (_KIND_ORDER[d.kind], d.object))
        return CheckReport(
            damage=tuple(damage),
            warnings=tuple(warnings),
            snapshots=len(refs),
            trees=len(self.trees_seen),
            blobs=len(self.data_refs),
            packs=len(self.packs),
            bytes_read=self.bytes_read,
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _ids(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:IDS_SHOWN])
    return shown if len(names) <= IDS_SHOWN else f"{shown} and {len(names) - IDS_SHOWN} more"
