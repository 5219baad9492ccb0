"""Retention policy for `cairn forget --keep-*`: which snapshots of one group to keep, and why.

Pure functions over `Candidate` values with borg/restic `prune` semantics. No I/O, no clock and
no storage access here: the caller groups snapshots (`group_key`), passes `now`, and deletes
whatever `select` marks as not kept.
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from shared.errors import UsageError

logger = logging.getLogger(__name__)

UNLIMITED = -1
"""A count that keeps every period (or, for `last`, every snapshot)."""

SUPERSEDED_CHECKPOINT = "superseded checkpoint"
LATEST_CHECKPOINT = "latest checkpoint"


def _hour(t: datetime) -> tuple[int, ...]:
    return (t.year, t.month, t.day, t.hour)


def _day(t: datetime) -> tuple[int, ...]:
    return (t.year, t.month, t.day)


def _iso_week(t: datetime) -> tuple[int, ...]:
    iso = t.isocalendar()
    return (iso.year, iso.week)


def _month(t: datetime) -> tuple[int, ...]:
    return (t.year, t.month)


def _year(t: datetime) -> tuple[int, ...]:
    return (t.year,)


# The period rules in reason order; each maps a local time to the period it falls in.
_PERIODS: tuple[tuple[str, Callable[[datetime], tuple[int, ...]]], ...] = (
    ("hourly", _hour),
    ("daily", _day),
    ("weekly", _iso_week),
    ("monthly", _month),
    ("yearly", _year),
)


def _require_aware(t: datetime, what: str) -> None:
    if t.tzinfo is None or t.utcoffset() is None:
        raise UsageError(f"{what} must be a timezone-aware datetime, not {t.isoformat()}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionRules:
    """The `--keep-*` options. Counts are 0 (rule off), a positive number, or -1 (unlimited)."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None  # keep everything newer than now - within
    tags: frozenset[str] = frozenset()  # keep every snapshot carrying any of these tags

    def __post_init__(self) -> None:
        for name, count in self.counts():
            if count < UNLIMITED:
                raise UsageError(f"--keep-{name} must be -1 (unlimited) or >= 0, not {count}")
        if self.within is not None and self.within < timedelta(0):
            raise UsageError(f"--keep-within must not be negative, not {self.within}")

    def counts(self) -> tuple[tuple[str, int], ...]:
        """The count rules as (name, count) pairs in reason order: last, hourly, ..., yearly."""
        return (
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        )

    def is_empty(self) -> bool:
        """True if no rule would keep anything (a zero `within` counts as no rule, as in restic)."""
        return (
            all(count == 0 for _, count in self.counts())
            and (self.within is None or self.within == timedelta(0))
            and not self.tags
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """One snapshot of the group, as far as retention cares."""

    id: str  # snapshot id (hex)
    time: datetime  # timezone-aware
    tags: frozenset[str] = frozenset()
    checkpoint: bool = False  # written during a still-running or interrupted backup

    def __post_init__(self) -> None:
        _require_aware(self.time, f"snapshot {self.id} time")


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to keep one candidate; `reasons` name the rules that keep (or drop) it."""

    candidate: Candidate
    keep: bool
    reasons: tuple[str, ...]  # e.g. ("last 1", "daily 2"); ("superseded checkpoint",) or ()


def group_key(host: str, paths: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The default grouping: snapshots of the same host and the same set of paths."""
    if isinstance(paths, str):
        raise TypeError("paths must be a sequence of paths, not a single string")
    return (host, tuple(sorted(paths)))


def select(
    candidates: Iterable[Candidate],
    rules: RetentionRules,
    now: datetime,
    tz: tzinfo | None = None,
) -> list[Decision]:
    """Decide, for one group, which snapshots `rules` keep. Result is ordered newest first.

    Ties in time are broken by id (the larger id counts as newer), so the result does not
    depend on input order. Periods are computed in `tz` (default: the local zone). Checkpoints
    never count for a rule: one older than (or as old as) the newest complete snapshot is
    dropped as superseded, one newer than every complete snapshot is always kept.
    Raises UsageError for empty rules or a naive `now`.
    """
    if rules.is_empty():
        raise UsageError("no --keep-* rule given: refusing to forget every snapshot")
    _require_aware(now, "now")

    ordered = sorted(candidates, key=lambda c: (c.time, c.id), reverse=True)
    complete = [i for i, c in enumerate(ordered) if not c.checkpoint]
    newest_complete = ordered[complete[0]].time if complete else None
    reasons: list[list[str]] = [[] for _ in ordered]

    counts = dict(rules.counts())
    chosen = complete if counts["last"] == UNLIMITED else complete[: counts["last"]]
    for rank, i in enumerate(chosen, 1):
        reasons[i].append(f"last {rank}")

    for name, period_of in _PERIODS:
        count = counts[name]
        seen: set[tuple[int, ...]] = set()  # periods kept so far, newest first
        for i in complete:
            if count != UNLIMITED and len(seen) >= count:
                break
            period = period_of(ordered[i].time.astimezone(tz))
            if period not in seen:
                seen.add(period)
                reasons[i].append(f"{name} {len(seen)}")

    if rules.within:
        cutoff = now - rules.within
        for i in complete:
            if ordered[i].time >= cutoff:
                reasons[i].append("within")

    if rules.tags:
        for i in complete:
            reasons[i].extend(f"tag {tag}" for tag in sorted(ordered[i].tags & rules.tags))

    decisions: list[Decision] = []
    for i, c in enumerate(ordered):
        if not c.checkpoint:
            decisions.append(Decision(c, bool(reasons[i]), tuple(reasons[i])))
        elif newest_complete is None or c.time > newest_complete:
            decisions.append(Decision(c, True, (LATEST_CHECKPOINT,)))
        else:
            decisions.append(Decision(c, False, (SUPERSEDED_CHECKPOINT,)))
    logger.debug(
        "retention: keeping %d of %d snapshots",
        sum(d.keep for d in decisions),
        len(decisions),
    )
    return decisions
