"""Check's pack pass: reads every pack header and, when asked, every pack byte in bounded pieces
(hashing each pack, and with read_data decrypting each blob), then turns what it learnt about
each pack into findings. It never reads trees, never attributes damage to snapshots or paths,
and never writes to the vault.
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from client_gui.engine.check_damage import DAMAGE_ERRORS, DamageKind, Finding, Findings
from client_gui.engine.check_run import CheckRun
from client_gui.engine.vault import READ_CONCURRENCY, BlobLocation
from shared.crypto.aead import OVERHEAD
from shared.errors import IntegrityError, ObjectNotFound, RangeError, UnsupportedFormat
from shared.format.pack import TRAILER_SIZE, PackEntry
from shared.hashing import StreamHasher
from shared.ids import ObjectId, ObjectKey, ObjectKind

logger = logging.getLogger(__name__)

# Whole packs read at once (hashes, read_data): one on the wire while the other is hashed and
# decrypted. Memory stays near PACK_READS x (PIECE_SIZE + the largest blob).
PACK_READS = 2
# One ranged read of a whole pack: few round trips, and a 64 MiB pack is never held at once.
PIECE_SIZE = 8 << 20
# The smallest possible sealed header: AEAD nonce and tag plus the compression-method byte.
MIN_HEADER = OVERHEAD + 1


@dataclass(eq=False)
class Pack:
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


class PackCheck:
    """The packs of one check: their headers, optionally their bytes, and their findings."""

    def __init__(self, run: CheckRun, findings: Findings, *, read_data: bool) -> None:
        self.run = run
        self.findings = findings
        self.read_data = read_data
        self.packs: dict[ObjectId, Pack] = {}
        self.unindexed: dict[bytes, BlobLocation] = {}  # blobs of packs that no index names

    async def read_headers(self, listed: dict[ObjectId, int]) -> None:
        """Compare the stored packs with the index, then read and check every pack's header."""
        index_packs = self.run.vault.index.packs
        for pid, size in listed.items():
            entries = index_packs.get(pid)
            self.packs[pid] = Pack(pid, size, entries is not None, entries or ())
        for pid, entries in index_packs.items():
            if pid not in listed:
                self.findings.add(
                    Finding(
                        DamageKind.PACK_MISSING,
                        f"packs/{pid.hex()}",
                        f"pack {pid.short()} is missing",
                        warn_if_unused=True,
                    ),
                    (e.id.raw for e in entries),
                )
        total = len(self.packs)
        done = 0

        async def one(p: Pack, _push: Callable[[Pack], None]) -> None:
            nonlocal done
            await self._read_header(p)
            done += 1
            self.run.progress("packs", done, total)

        self.run.progress("packs", 0, total, force=True)
        await self.run.pool(self.packs.values(), one, READ_CONCURRENCY)
        self.run.progress("packs", done, total, force=True)

    async def _read_header(self, p: Pack) -> None:
        if p.indexed:
            end = max((e.offset + e.length for e in p.entries), default=0)
            if p.size < end + MIN_HEADER + TRAILER_SIZE:
                p.truncated = True
                return
        try:
            header = await self.run.vault.read_pack_header(p.id, p.size)
        except DAMAGE_ERRORS as exc:
            self.run.bytes_read += TRAILER_SIZE
            p.problems.append(f"its header is unreadable ({exc})")
            p.suspect = True
            return
        # Header and trailer are what follows the last blob.
        self.run.bytes_read += p.size - max((e.offset + e.length for e in header), default=0)
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

    async def scan(self) -> None:
        """Read every pack whole: check its BLAKE3 and, with read_data, decrypt every blob."""
        total = sum(p.size for p in self.packs.values())
        done = 0

        async def one(p: Pack, _push: Callable[[Pack], None]) -> None:
            nonlocal done
            done += await self._scan_pack(p, lambda n: self.run.progress("data", done + n, total))
            self.run.progress("data", done, total)

        self.run.progress("data", 0, total, force=True)
        await self.run.pool(sorted(self.packs.values(), key=lambda p: p.id), one, PACK_READS)
        self.run.progress("data", done, total, force=True)

    async def _scan_pack(self, p: Pack, report: Callable[[int], None]) -> int:
        """Read `p` in pieces, in order: hash every byte; with read_data, decrypt every blob."""
        key = ObjectKey.of(ObjectKind.PACK, p.id)
        blobs = sorted(p.entries, key=lambda e: (e.offset, e.length)) if self.read_data else []
        scan = _Scan(blobs)
        pos = 0
        while pos < p.size:
            self.run.cancel.check()
            n = min(PIECE_SIZE, p.size - pos)
            try:
                piece = await self.run.get(key, pos, n)
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

    def _digest(self, p: Pack, scan: _Scan, piece: bytes) -> None:
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
                self.run.vault.open_blob(e.id, e.type, sealed)
            except (IntegrityError, UnsupportedFormat) as exc:
                p.bad_blobs[e.id.raw] = str(exc)
            scan.next_blob += 1
        keep_from = min(blobs[scan.next_blob].offset, end) if scan.next_blob < len(blobs) else end
        del scan.buf[: keep_from - scan.buf_start]
        scan.buf_start = keep_from

    def add_findings(self) -> None:
        """Turn what was learnt about each pack into findings, with the blobs they affect."""
        for p in self.packs.values():
            name = f"packs/{p.id.hex()}"
            unused_ok = not p.indexed  # a broken leftover of an interrupted backup is harmless
            if p.truncated:
                end = max((e.offset + e.length for e in p.entries), default=0)
                lost = [e.id.raw for e in p.entries if e.offset + e.length > p.size]
                self.findings.add(
                    Finding(
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
                self.findings.add(
                    Finding(
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
                self.findings.add(
                    Finding(
                        DamageKind.BLOB_DAMAGED,
                        f"blobs/{oid.hex()}",
                        f"blob {oid.short()} in pack {p.id.short()} is damaged: {reason}",
                        warn_if_unused=unused_ok,
                    ),
                    (raw,),
                )
