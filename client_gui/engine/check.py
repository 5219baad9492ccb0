"""Check: find damage in a vault and name the snapshots and files it affects (restic's `check`).

Holds the public API and runs the passes in order: config, key slots, snapshots and index here,
then packs (check_pack), trees and attribution (check_tree), then the report. It never writes
or repairs: it returns Damage (something is lost or corrupted) and warnings (harmless leftovers).
"""

import logging
from dataclasses import dataclass

from client_gui.engine.check_damage import (
    DAMAGE_ERRORS,
    PATHS_SHOWN,
    PATHS_TRACKED,
    Damage,
    DamageKind,
    Finding,
    Findings,
    plural,
)
from client_gui.engine.check_pack import MIN_HEADER, PACK_READS, PIECE_SIZE, PackCheck
from client_gui.engine.check_run import CheckRun
from client_gui.engine.check_tree import TreeCheck
from client_gui.engine.progress import CancelToken, NullSink, ProgressSink
from client_gui.engine.vault import SnapshotRef, Vault, get_verified
from shared.crypto.keys import decode_key_slot
from shared.errors import CairnError, IntegrityError, NotAVault, ObjectNotFound
from shared.format.config import verify_config
from shared.ids import ObjectId, ObjectKind

__all__ = [
    "IDS_SHOWN",
    "INDEX_RETRIES",
    "MIN_HEADER",
    "PACK_READS",
    "PATHS_SHOWN",
    "PATHS_TRACKED",
    "PIECE_SIZE",
    "CheckReport",
    "Damage",
    "DamageKind",
    "check",
]

logger = logging.getLogger(__name__)

IDS_SHOWN = 5  # object IDs named in one aggregated warning
INDEX_RETRIES = 3  # re-lists of the index when a concurrent prune folded segments away

_KIND_ORDER = {kind: rank for rank, kind in enumerate(DamageKind)}


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
    """One check from start to report: runs the passes in order and gathers their findings."""

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
        self.cancel = cancel
        self.shared = CheckRun(vault, sink=sink, cancel=cancel)
        self.findings = Findings()
        self.warnings: list[str] = []
        self.packs = PackCheck(self.shared, self.findings, read_data=read_data)
        self.trees = TreeCheck(self.shared, self.findings, self.packs.unindexed)

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
            self.findings.add(
                Finding(
                    DamageKind.INDEX_DAMAGED,
                    f"index/{sid.hex()}",
                    f"index segment {sid.short()} is unreadable: {exc}",
                )
            )
        await self._check_deletions()
        listed = await self.vault.list_packs()
        self.cancel.check()
        await self.packs.read_headers(listed)
        if self.scan:
            await self.packs.scan()
        self.packs.add_findings()
        self.cancel.check()
        await self.trees.walk(refs)
        self.cancel.check()
        self.trees.attribute(refs)
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

    # ---- config, keys, index, snapshots, deletion markers ---------------------------------

    async def _check_config(self) -> None:
        """The config was verified at open; read it again in case the vault was opened long ago."""
        try:
            config, raw = await Vault.read_config(self.vault.store)
            verify_config(raw, self.vault.keys.config_mac)
            if config != self.vault.config:
                raise IntegrityError("vault config changed since the vault was opened")
        except (NotAVault, *DAMAGE_ERRORS) as exc:
            self.findings.add(
                Finding(DamageKind.CONFIG_DAMAGED, "config", f"the config is damaged: {exc}")
            )

    async def _check_keys(self) -> None:
        """Vault.load_key_slots skips damaged slots; here each one is reported."""
        async for info in self.vault.store.list(ObjectKind.KEY):
            try:
                data = await get_verified(self.vault.store, info.key)
                decode_key_slot(data, f"key slot {info.key.name[:8]}")
            except DAMAGE_ERRORS as exc:
                self.findings.add(
                    Finding(
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
        self.shared.progress("snapshots", 0, 0, force=True)
        errors: list[tuple[ObjectId, CairnError]] = []
        refs = await self.vault.list_snapshots(errors)
        # Deleted after listing (a finished backup's checkpoint, a concurrent forget): gone,
        # not damaged.
        errors = [(sid, exc) for sid, exc in errors if not isinstance(exc, ObjectNotFound)]
        for sid, exc in errors:
            finding = self.findings.add(
                Finding(
                    DamageKind.SNAPSHOT_DAMAGED,
                    f"snapshots/{sid.hex()}",
                    f"snapshot {sid.short()} is unreadable: {exc}",
                )
            )
            finding.snapshots.add(sid.raw)
        self.shared.progress("snapshots", len(refs), len(refs) + len(errors), force=True)
        return refs

    async def _check_deletions(self) -> None:
        markers = await self.vault.load_deletions()
        if markers:
            packs = {p for m in markers.values() for p in m.packs}
            self.warnings.append(
                f"{plural(len(markers), 'deletion marker')} pending for "
                f"{plural(len(packs), 'pack')}: prune deletes the packs still unused after the "
                "grace period"
            )

    # ---- the report -----------------------------------------------------------------------

    def _report(self, refs: list[SnapshotRef]) -> CheckReport:
        order = {ref.id.raw: i for i, ref in enumerate(refs)}
        damage: list[Damage] = []
        warnings = list(self.warnings)
        unused_missing: list[str] = []
        lost = bool(self.trees.blob_missing) or self.trees.trees_missing
        for f in self.findings.all:
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
                f"{plural(len(unused_missing), 'pack')} named by the index "
                f"{'is' if len(unused_missing) == 1 else 'are'} missing, but no snapshot uses "
                f"their blobs (an interrupted prune?): {_ids(unused_missing)}; the next prune "
                "tidies the index"
            )
        leftovers = [
            p
            for p in self.packs.packs.values()
            if not p.indexed
            and p.id not in self.findings.index_missing
            and not p.problems
            and not p.bad_blobs
        ]
        if leftovers:
            size = sum(p.size for p in leftovers)
            warnings.append(
                f"{plural(len(leftovers), 'pack')} ({size} bytes) in no index, left by an "
                f"interrupted backup: {_ids([p.id.short() for p in leftovers])}; the next backup "
                "reuses them and prune removes what no snapshot needs"
            )
        damage.sort(key=lambda d: (_KIND_ORDER[d.kind], d.object))
        return CheckReport(
            damage=tuple(damage),
            warnings=tuple(warnings),
            snapshots=len(refs),
            trees=len(self.trees.trees_seen),
            blobs=len(self.trees.data_refs),
            packs=len(self.packs.packs),
            bytes_read=self.shared.bytes_read,
        )


def _ids(names: list[str]) -> str:
    shown = ", ".join(sorted(names)[:IDS_SHOWN])
    return shown if len(names) <= IDS_SHOWN else f"{shown} and {len(names) - IDS_SHOWN} more"
