"""`cairn forget`: remove snapshot objects, chosen by ID or by retention rules per group.

Only snapshot objects are deleted here; the space they held is reclaimed later by `prune`.
The policy itself lives in retention.py; this module groups, filters and deletes.
"""

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from client_gui.engine.retention import Candidate, Decision, RetentionRules, group_key, select
from client_gui.engine.vault import SnapshotRef, Vault
from shared.errors import ObjectNotFound, UsageError
from shared.ids import ObjectKey, ObjectKind

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ForgetGroup:
    """One group of snapshots (same host, same set of paths) and the decision for each."""

    host: str
    paths: tuple[str, ...]  # sorted
    decisions: tuple[Decision, ...]  # newest first


@dataclass(frozen=True, slots=True)
class ForgetResult:
    groups: tuple[ForgetGroup, ...]  # empty when snapshots were given by ID
    removed: tuple[str, ...]  # snapshot IDs (hex) deleted, or that would be with dry_run


def snapshot_time(time_ns: int) -> datetime:
    """A snapshot's time as an aware UTC datetime (exact to the microsecond)."""
    return _EPOCH + timedelta(microseconds=time_ns // 1000)


def _matches(ref: SnapshotRef, host: str | None, tags: Sequence[str]) -> bool:
    snap = ref.snapshot
    if host is not None and snap.hostname != host:
        return False
    return set(tags) <= set(snap.tags)


def _candidate(ref: SnapshotRef) -> Candidate:
    snap = ref.snapshot
    return Candidate(
        id=ref.id.hex(),
        time=snapshot_time(snap.time_ns),
        tags=frozenset(snap.tags),
        checkpoint=snap.checkpoint,
    )


def _groups(
    refs: Sequence[SnapshotRef], rules: RetentionRules, now: datetime
) -> tuple[ForgetGroup, ...]:
    grouped: dict[tuple[str, tuple[str, ...]], list[SnapshotRef]] = {}
    for ref in refs:
        names = [os.fsdecode(p) for p in ref.snapshot.paths]
        grouped.setdefault(group_key(ref.snapshot.hostname, names), []).append(ref)
    out = []
    for host, paths in sorted(grouped):
        decisions = select((_candidate(r) for r in grouped[host, paths]), rules, now)
        out.append(ForgetGroup(host, paths, tuple(decisions)))
    return tuple(out)


async def forget(
    vault: Vault,
    *,
    rules: RetentionRules | None = None,
    ids: Sequence[str] = (),
    host: str | None = None,
    tags: Sequence[str] = (),
    dry_run: bool = False,
    now: datetime | None = None,
) -> ForgetResult:
    """Delete the snapshots named by `ids` (ID prefixes or `latest`), or those `rules` drop.

    Exactly one of `rules` and `ids` must be given. `host` and `tags` restrict which snapshots
    are considered at all (a snapshot must carry every tag given). With `rules`, snapshots are
    grouped by host and set of paths and `retention.select` runs once per group at `now`
    (default: the current time). PermissionDenied from an append-only store propagates.
    Unreadable snapshots are never considered (and so never deleted); `check` reports them.
    """
    if (rules is None) == (not ids):
        raise UsageError("give either snapshot IDs or --keep-* rules (exactly one of them)")
    if isinstance(ids, str) or isinstance(tags, str):
        raise TypeError("ids and tags must be sequences of strings, not a single string")
    if now is None:
        now = datetime.now(UTC)
    refs = [r for r in await vault.list_snapshots() if _matches(r, host, tags)]

    groups: tuple[ForgetGroup, ...] = ()
    if rules is not None:
        groups = _groups(refs, rules, now)
        removed = [d.candidate.id for g in groups for d in g.decisions if not d.keep]
    else:
        removed = []
        for spec in ids:
            ref = await vault.find_snapshot(spec, refs)
            if ref.id.hex() not in removed:
                removed.append(ref.id.hex())

    logger.info(
        "forget: %s %d of %d snapshot(s)",
        "would remove" if dry_run else "removing",
        len(removed),
        len(refs),
    )
    if not dry_run:
        for name in removed:
            try:
                await vault.store.delete(ObjectKey(ObjectKind.SNAPSHOT, name))
            except ObjectNotFound:
                logger.debug("snapshot %s was already gone", name[:8])
            else:
                logger.debug("snapshot %s removed", name[:8])
    return ForgetResult(groups, tuple(removed))
