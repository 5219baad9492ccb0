"""Table-driven tests for the retention policy (`cairn forget --keep-*`), after borg's prune."""

import itertools
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from client_gui.engine.retention import (
    Candidate,
    Decision,
    RetentionRules,
    group_key,
    select,
)
from shared.errors import UsageError

NOW = datetime(2024, 6, 30, 12, 0, tzinfo=UTC)  # a Sunday

# Newest first. Comments give the ISO week; edge cases are marked.
TIMES = {
    "A": "2024-06-30 11:00",  # 2024-W26
    "B": "2024-06-30 08:30",  # same hour as C
    "C": "2024-06-30 08:00",
    "D": "2024-06-29 18:00",
    "E": "2024-06-29 09:00",
    "F": "2024-06-27 08:00",
    "G": "2024-06-25 08:00",  # 2024-W26
    "H": "2024-06-20 08:00",  # 2024-W25
    "I": "2024-06-01 00:30",  # 2024-W22, a new month; same day as J at UTC+2
    "J": "2024-05-31 23:30",  # 2024-W22
    "K": "2024-02-29 12:00",  # 2024-W09, leap day
    "L": "2024-01-01 02:00",  # 2024-W01 (a Monday)
    "M": "2023-12-31 22:00",  # 2023-W52
    "N": "2023-06-01 08:00",
    "O": "2023-03-25 08:00",  # same month as P
    "P": "2023-03-10 08:00",
    "Q": "2023-01-01 01:00",  # ISO week 2022-W52, calendar year 2023
    "R": "2022-12-31 23:00",  # 2022-W52, same ISO week as Q
    "S": "2022-07-15 09:00",
}
ALL = "".join(TIMES)


def at(text: str, tz: timezone = UTC) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=tz)


def snapshot(label: str, **kwargs: object) -> Candidate:
    """A candidate whose id is the hex of its label (e.g. "A" -> "41")."""
    return Candidate(label.encode().hex(), at(TIMES[label]), **kwargs)  # type: ignore[arg-type]


def label(c: Candidate) -> str:
    return bytes.fromhex(c.id).decode()


def kept(decisions: list[Decision]) -> str:
    return "".join(label(d.candidate) for d in decisions if d.keep)


SNAPSHOTS = [snapshot(name) for name in TIMES]


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        # last
        (RetentionRules(last=1), "A"),
        (RetentionRules(last=3), "ABC"),
        (RetentionRules(last=25), ALL),
        (RetentionRules(last=-1), ALL),
        # hourly: B and C share 08:xx
        (RetentionRules(hourly=3), "ABD"),
        (RetentionRules(hourly=5), "ABDEF"),
        (RetentionRules(hourly=-1), ALL.replace("C", "")),
        # daily
        (RetentionRules(daily=1), "A"),
        (RetentionRules(daily=3), "ADF"),
        (RetentionRules(daily=5), "ADFGH"),
        (RetentionRules(daily=-1), "ADFGHIJKLMNOPQRS"),
        # weekly (ISO): I+J share W22, Q+R share 2022-W52 across the new year
        (RetentionRules(weekly=3), "AHI"),
        (RetentionRules(weekly=6), "AHIKLM"),
        (RetentionRules(weekly=-1), "AHIKLMNOPQS"),
        # monthly: I and J straddle a month boundary, O and P share March 2023
        (RetentionRules(monthly=3), "AJK"),
        (RetentionRules(monthly=5), "AJKLM"),
        (RetentionRules(monthly=-1), "AJKLMNOQRS"),
        # yearly
        (RetentionRules(yearly=1), "A"),
        (RetentionRules(yearly=2), "AM"),
        (RetentionRules(yearly=10), "AMR"),
        (RetentionRules(yearly=-1), "AMR"),
        # within: the cut-off itself is kept
        (RetentionRules(within=timedelta(hours=18)), "ABCD"),
        (RetentionRules(within=timedelta(hours=17, minutes=59)), "ABC"),
        (RetentionRules(within=timedelta(days=3650)), ALL),
        # combinations keep the union
        (RetentionRules(last=1, daily=2, monthly=3), "ADJK"),
        (RetentionRules(hourly=2, weekly=2, yearly=3), "ABHMR"),
        (RetentionRules(last=2, within=timedelta(days=1)), "ABCD"),
        (RetentionRules(daily=7, weekly=4, monthly=6, yearly=-1), "ADFGHIJKLMNR"),
        # zero counts next to a real rule are ignored
        (RetentionRules(last=0, daily=0, yearly=1), "A"),
    ],
)
def test_select_keeps_expected_set(rules: RetentionRules, expected: str) -> None:
    decisions = select(SNAPSHOTS, rules, NOW, tz=UTC)
    assert kept(decisions) == expected


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            RetentionRules(last=1, daily=2, monthly=3),
            {
                "A": ("last 1", "daily 1", "monthly 1"),
                "D": ("daily 2",),
                "J": ("monthly 2",),
                "K": ("monthly 3",),
            },
        ),
        (
            RetentionRules(weekly=2, within=timedelta(hours=4)),
            {"A": ("weekly 1", "within"), "B": ("within",), "C": ("within",), "H": ("weekly 2",)},
        ),
    ],
)
def test_select_lists_reasons(rules: RetentionRules, expected: dict[str, tuple[str, ...]]) -> None:
    decisions = select(SNAPSHOTS, rules, NOW, tz=UTC)
    got = {label(d.candidate): d.reasons for d in decisions if d.keep}
    assert got == expected
    assert all(d.reasons == () for d in decisions if not d.keep)


def test_select_reason_order_is_last_periods_within_tag() -> None:
    rules = RetentionRules(
        last=1,
        hourly=1,
        daily=1,
        weekly=1,
        monthly=1,
        yearly=1,
        within=timedelta(days=1),
        tags=frozenset({"b", "a", "z"}),
    )
    newest = Candidate("aa", NOW, tags=frozenset({"a", "b", "c"}))
    [decision] = select([newest], rules, NOW, tz=UTC)
    assert decision.reasons == (
        "last 1",
        "hourly 1",
        "daily 1",
        "weekly 1",
        "monthly 1",
        "yearly 1",
        "within",
        "tag a",
        "tag b",
    )


def test_select_returns_every_candidate_newest_first() -> None:
    shuffled = SNAPSHOTS[7:] + SNAPSHOTS[:7][::-1]
    decisions = select(shuffled, RetentionRules(last=1), NOW, tz=UTC)
    assert "".join(label(d.candidate) for d in decisions) == ALL


def test_select_empty_group_returns_nothing() -> None:
    assert select([], RetentionRules(last=1), NOW, tz=UTC) == []


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        (UTC, "AJ"),  # J is May 31st 23:30 in UTC
        (timezone(timedelta(hours=2)), "AK"),  # ... but June 1st 01:30 at UTC+2
        (timezone(timedelta(hours=-12)), "AI"),  # ... and A is June, I is May at UTC-12
    ],
)
def test_select_computes_periods_in_tz(tz: timezone, expected: str) -> None:
    assert kept(select(SNAPSHOTS, RetentionRules(monthly=2), NOW, tz=tz)) == expected


def test_select_accepts_candidates_in_mixed_zones() -> None:
    plus2 = timezone(timedelta(hours=2))
    older = Candidate("01", datetime(2024, 6, 30, 12, 0, tzinfo=plus2))  # 10:00 UTC
    newer = Candidate("02", datetime(2024, 6, 30, 11, 0, tzinfo=UTC))
    decisions = select([older, newer], RetentionRules(last=1), NOW, tz=UTC)
    assert [(d.candidate.id, d.keep) for d in decisions] == [("02", True), ("01", False)]


@pytest.mark.parametrize("order", list(itertools.permutations(["aa", "bb", "cc"])))
def test_select_breaks_time_ties_by_id(order: tuple[str, ...]) -> None:
    same = [Candidate(i, NOW - timedelta(hours=1)) for i in order]
    decisions = select(same, RetentionRules(last=1), NOW, tz=UTC)
    assert [(d.candidate.id, d.keep) for d in decisions] == [
        ("cc", True),
        ("bb", False),
        ("aa", False),
    ]


def test_select_tie_takes_one_period_slot() -> None:
    same = [Candidate(i, NOW - timedelta(hours=1)) for i in ("aa", "bb")]
    decisions = select(same, RetentionRules(daily=-1), NOW, tz=UTC)
    assert [(d.candidate.id, d.reasons) for d in decisions] == [("bb", ("daily 1",)), ("aa", ())]


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (frozenset({"keep"}), "CK"),
        (frozenset({"monthly-report"}), "S"),
        (frozenset({"keep", "monthly-report"}), "CKS"),
        (frozenset({"absent"}), ""),
    ],
)
def test_select_keeps_tagged(tags: frozenset[str], expected: str) -> None:
    tagged = {"C": {"keep"}, "K": {"keep", "other"}, "S": {"monthly-report"}, "E": {"other"}}
    snaps = [snapshot(n, tags=frozenset(tagged.get(n, ()))) for n in TIMES]
    assert kept(select(snaps, RetentionRules(tags=tags), NOW, tz=UTC)) == expected


# Checkpoints: one complete snapshot "X" at 10:00 and checkpoints around it.
X = Candidate("0a", NOW - timedelta(hours=2))


def checkpoint(id_: str, hours_ago: float, tags: frozenset[str] = frozenset()) -> Candidate:
    return Candidate(id_, NOW - timedelta(hours=hours_ago), tags=tags, checkpoint=True)


@pytest.mark.parametrize(
    ("candidates", "rules", "expected"),
    [
        # older than a complete snapshot: dropped even by unlimited or matching rules
        (
            [X, checkpoint("c1", 3)],
            RetentionRules(last=-1),
            {"0a": ("last 1",), "c1": ("superseded checkpoint",)},
        ),
        (
            [X, checkpoint("c1", 3, frozenset({"t"}))],
            RetentionRules(tags=frozenset({"t"}), within=timedelta(days=1)),
            {"0a": ("within",), "c1": ("superseded checkpoint",)},
        ),
        # as old as the newest complete snapshot: superseded too
        (
            [X, checkpoint("c1", 2)],
            RetentionRules(daily=-1),
            {"c1": ("superseded checkpoint",), "0a": ("daily 1",)},
        ),
        # newer than every complete snapshot: kept, and takes no rule slot
        (
            [X, checkpoint("c2", 1), checkpoint("c3", 0.5)],
            RetentionRules(last=1, daily=1),
            {
                "c3": ("latest checkpoint",),
                "c2": ("latest checkpoint",),
                "0a": ("last 1", "daily 1"),
            },
        ),
        # mixed
        (
            [checkpoint("c1", 3), X, checkpoint("c3", 0.5)],
            RetentionRules(hourly=5),
            {"c3": ("latest checkpoint",), "0a": ("hourly 1",), "c1": ("superseded checkpoint",)},
        ),
        # a group of checkpoints only: all kept
        (
            [checkpoint("c1", 3), checkpoint("c2", 1)],
            RetentionRules(last=1),
            {"c2": ("latest checkpoint",), "c1": ("latest checkpoint",)},
        ),
    ],
)
def test_select_handles_checkpoints(
    candidates: list[Candidate], rules: RetentionRules, expected: dict[str, tuple[str, ...]]
) -> None:
    decisions = select(candidates, rules, NOW, tz=UTC)
    assert [(d.candidate.id, d.reasons) for d in decisions] == list(expected.items())
    assert all(d.keep == (d.reasons != ("superseded checkpoint",)) for d in decisions)


def test_select_checkpoint_does_not_consume_last_slot() -> None:
    older = Candidate("0b", NOW - timedelta(hours=5))
    decisions = select([X, older, checkpoint("c3", 1)], RetentionRules(last=2), NOW, tz=UTC)
    assert [(d.candidate.id, d.keep) for d in decisions] == [
        ("c3", True),
        ("0a", True),
        ("0b", True),
    ]


@pytest.mark.parametrize(
    "rules",
    [
        RetentionRules(),
        RetentionRules(last=0, hourly=0, daily=0, weekly=0, monthly=0, yearly=0),
        RetentionRules(within=timedelta(0)),
        RetentionRules(tags=frozenset()),
    ],
)
def test_select_empty_rules_error(rules: RetentionRules) -> None:
    assert rules.is_empty()
    with pytest.raises(UsageError, match="refusing to forget every snapshot"):
        select(SNAPSHOTS, rules, NOW, tz=UTC)


@pytest.mark.parametrize(
    "rules",
    [
        RetentionRules(last=1),
        RetentionRules(yearly=-1),
        RetentionRules(within=timedelta(seconds=1)),
        RetentionRules(tags=frozenset({"t"})),
    ],
)
def test_select_rules_not_empty(rules: RetentionRules) -> None:
    assert not rules.is_empty()


@pytest.mark.parametrize("field", ["last", "hourly", "daily", "weekly", "monthly", "yearly"])
@pytest.mark.parametrize("count", [-2, -100])
def test_select_negative_counts_error(field: str, count: int) -> None:
    with pytest.raises(UsageError, match=f"--keep-{field}"):
        RetentionRules(**{field: count})  # type: ignore[arg-type]


def test_select_negative_within_error() -> None:
    with pytest.raises(UsageError, match="--keep-within"):
        RetentionRules(within=timedelta(seconds=-1))


def test_select_naive_candidate_time_error() -> None:
    with pytest.raises(UsageError, match="timezone-aware"):
        Candidate("aa", datetime(2024, 6, 30, 11, 0))


def test_select_naive_now_error() -> None:
    with pytest.raises(UsageError, match="timezone-aware"):
        select(SNAPSHOTS, RetentionRules(last=1), datetime(2024, 6, 30, 12, 0), tz=UTC)


@pytest.fixture
def local_zone_utc_plus_2() -> Iterator[None]:
    """Sets the process's local zone to UTC+2 (POSIX "Etc/GMT-2") for one test."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX-only")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Etc/GMT-2"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("local_zone_utc_plus_2")
def test_select_default_tz_is_local_zone() -> None:
    assert kept(select(SNAPSHOTS, RetentionRules(monthly=2), NOW)) == "AK"  # as with tz=UTC+2


def test_group_key_sorts_paths() -> None:
    assert group_key("laptop", ["/home", "/etc"]) == ("laptop", ("/etc", "/home"))
    assert group_key("laptop", ("/etc", "/home")) == group_key("laptop", ["/home", "/etc"])
    assert group_key("laptop", []) == ("laptop", ())


def test_group_key_rejects_single_string() -> None:
    with pytest.raises(TypeError):
        group_key("laptop", "/home")
