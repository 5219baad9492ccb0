"""Check's vocabulary of damage: DamageKind, Damage, and the Findings ledger of damage in the
making, indexed by the blob and tree IDs each finding affects.

It reads nothing from the vault and decides no policy: the passes in check, check_pack and
check_tree add findings here; check_tree attributes them; check turns them into the report.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from shared.errors import IntegrityError, ObjectNotFound, RangeError, UnsupportedFormat
from shared.ids import ObjectId

logger = logging.getLogger(__name__)

PATHS_SHOWN = 20  # paths listed per damage; the rest are counted in `more_paths`
PATHS_TRACKED = 10_000  # distinct paths remembered per damage: bounds memory on a lost vault

# Errors that mean "this object is damaged or gone". StorageUnavailable is not among them: a
# check that cannot reach its store fails instead of reporting damage.
DAMAGE_ERRORS = (IntegrityError, UnsupportedFormat, ObjectNotFound, RangeError)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Damage:
    """One thing the vault lost or holds corrupted, and what it affects."""

    kind: DamageKind
    object: str  # "packs/<hex>", "trees/<hex>", "blobs/<hex>", "snapshots/<hex>", ...
    message: str  # one line for people
    snapshots: tuple[str, ...] = ()  # hex IDs of affected snapshots, oldest first
    paths: tuple[str, ...] = ()  # affected files and folders, display form, sorted, capped
    more_paths: int = 0  # affected paths not listed in `paths`


@dataclass(eq=False)
class Finding:
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
            message += f"; affects {plural(total, 'path')} in {plural(len(snaps), 'snapshot')}"
        return Damage(
            kind=self.kind,
            object=self.object,
            message=message,
            snapshots=tuple(s.hex() for s in snaps),
            paths=tuple(paths[:PATHS_SHOWN]),
            more_paths=total - min(total, PATHS_SHOWN),
        )


class Findings:
    """Every finding of one check, in the order found, and the findings each bad ID belongs to."""

    def __init__(self) -> None:
        self.all: list[Finding] = []
        self.bad: dict[bytes, list[Finding]] = {}  # blob or tree ID -> findings it belongs to
        self.index_missing: dict[ObjectId, Finding] = {}  # one INDEX_MISSING per pack

    def add(self, finding: Finding, blobs: Iterable[bytes] = ()) -> Finding:
        self.all.append(finding)
        for raw in blobs:
            self.bad.setdefault(raw, []).append(finding)
        return finding

    def mark(self, raw: bytes, finding: Finding) -> None:
        """Count blob or tree `raw` as affected by an existing `finding`."""
        self.bad.setdefault(raw, []).append(finding)

    def index_missing_for(self, pack_id: ObjectId) -> Finding:
        """The one INDEX_MISSING finding of a pack that exists but that no index names."""
        finding = self.index_missing.get(pack_id)
        if finding is None:
            finding = self.add(
                Finding(
                    DamageKind.INDEX_MISSING,
                    f"packs/{pack_id.hex()}",
                    f"index missing for pack {pack_id.short()}: its pack exists but no index names "
                    "it; the next `cairn backup` re-indexes it",
                )
            )
            self.index_missing[pack_id] = finding
        return finding


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
