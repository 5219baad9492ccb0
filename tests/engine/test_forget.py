"""Tests for `forget`: by ID, by retention rules per host+paths group, filters, append-only."""

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from client_gui.engine.backup import BackupPlan, BackupResult, backup
from client_gui.engine.forget import forget, snapshot_time
from client_gui.engine.retention import RetentionRules
from client_gui.engine.vault import Vault
from shared.crypto.kdf import new_params
from shared.errors import NoSuchSnapshot, PermissionDenied, UsageError
from shared.storage.local import LocalStore
from shared.storage.wrappers import AppendOnlyStore

PW = "correct horse"


async def make_vault(root: Path) -> Vault:
    store = await LocalStore.create(root, fsync=False)
    vault, _ = await Vault.create(store, PW, kdf=new_params(1, 8 << 20), recovery_key=False)
    return vault


async def snapshot_ids(root: Path) -> set[str]:
    vault = await Vault.open(LocalStore(root, fsync=False), PW)
    return {r.id.hex() for r in await vault.list_snapshots()}


def make_src(path: Path, seed: int) -> Path:
    path.mkdir(parents=True)
    (path / "f.bin").write_bytes(random.Random(seed).randbytes(5000))
    return path


async def back_up(
    vault: Vault, src: Path, *, host: str = "alpha", tags: tuple[str, ...] = ()
) -> BackupResult:
    return await backup(vault, BackupPlan(paths=(str(src),), hostname=host, tags=tags))


@pytest.fixture
async def three(tmp_path: Path) -> tuple[Path, Path, list[BackupResult]]:
    """A vault with three snapshots of one folder, oldest first."""
    root = tmp_path / "vault"
    src = make_src(tmp_path / "src", 1)
    vault = await make_vault(root)
    return root, src, [await back_up(vault, src) for _ in range(3)]


# ---- by ID --------------------------------------------------------------------------------


async def test_forget_by_id_removes_exactly_those(
    three: tuple[Path, Path, list[BackupResult]],
) -> None:
    root, _, snaps = three
    vault = await Vault.open(LocalStore(root), PW)
    middle = snaps[1].snapshot_id.hex()

    result = await forget(vault, ids=[middle[:8]])

    assert result.removed == (middle,)
    assert result.groups == ()
    assert await snapshot_ids(root) == {snaps[0].snapshot_id.hex(), snaps[2].snapshot_id.hex()}


async def test_forget_by_id_names_each_snapshot_once(
    three: tuple[Path, Path, list[BackupResult]],
) -> None:
    root, _, snaps = three
    newest = snaps[2].snapshot_id.hex()

    result = await forget(await Vault.open(LocalStore(root), PW), ids=[newest, "latest"])

    assert result.removed == (newest,)
    assert len(await snapshot_ids(root)) == 2


async def test_forget_by_unknown_id_raises_and_removes_nothing(
    three: tuple[Path, Path, list[BackupResult]],
) -> None:
    root, _, snaps = three
    unknown = "0000" if not any(s.snapshot_id.hex().startswith("0000") for s in snaps) else "ffff"

    with pytest.raises(NoSuchSnapshot):
        await forget(
            await Vault.open(LocalStore(root), PW), ids=[snaps[0].snapshot_id.hex(), unknown]
        )

    assert len(await snapshot_ids(root)) == 3


async def test_forget_by_id_respects_the_host_filter(tmp_path: Path) -> None:
    root = tmp_path / "vault"
    src = make_src(tmp_path / "src", 2)
    vault = await make_vault(root)
    other = await back_up(vault, src, host="beta")

    with pytest.raises(NoSuchSnapshot):
        await forget(vault, ids=[other.snapshot_id.hex()], host="alpha")

    assert await snapshot_ids(root) == {other.snapshot_id.hex()}


# ---- by rules -----------------------------------------------------------------------------


async def test_forget_by_rules_keeps_the_newest(
    three: tuple[Path, Path, list[BackupResult]],
) -> None:
    root, src, snaps = three

    result = await forget(await Vault.open(LocalStore(root), PW), rules=RetentionRules(last=1))

    [group] = result.groups
    assert (group.host, group.paths) == ("alpha", (str(src.resolve()),))
    assert [d.candidate.id for d in group.decisions] == [
        s.snapshot_id.hex() for s in reversed(snaps)
    ]
    assert [d.keep for d in group.decisions] == [True, False, False]
    assert group.decisions[0].reasons == ("last 1",)
    assert set(result.removed) == {snaps[0].snapshot_id.hex(), snaps[1].snapshot_id.hex()}
    assert await snapshot_ids(root) == {snaps[2].snapshot_id.hex()}


async def test_forget_by_rules_decides_at_the_given_now(
    three: tuple[Path, Path, list[BackupResult]],
) -> None:
    root, _, snaps = three
    vault = await Vault.open(LocalStore(root), PW)
    rules = RetentionRules(within=timedelta(days=1))
    newest = snapshot_time(snaps[2].snapshot.time_ns)

    today = await forget(vault, rules=rules, now=newest + timedelta(hours=1))
    assert today.removed == ()

    later = await forget(vault, rules=rules, now=newest + timedelta(days=2))
    assert len(later.removed) == 3
    assert await snapshot_ids(root) == set()


async def test_forget_by_rules_works_per_host_and_paths_group(tmp_path: Path) -> None:
    root = tmp_path / "vault"
    src_a, src_b = make_src(tmp_path / "a", 3), make_src(tmp_path / "b", 4)
    vault = await make_vault(root)
    kept = set()
    for src, host in ((src_a, "alpha"), (src_b, "alpha"), (src_a, "beta")):
        await back_up(vault, src, host=host)
        kept.add((await back_up(vault, src, host=host)).snapshot_id.hex())

    result = await forget(vault, rules=RetentionRules(last=1))

    assert [(g.host, len(g.decisions)) for g in result.groups] == [
        ("alpha", 2),
        ("alpha", 2),
        ("beta", 2),
    ]
    assert len(result.removed) == 3
    assert await snapshot_ids(root) == kept


async def test_forget_host_filter_leaves_other_hosts_alone(tmp_path: Path) -> None:
    root = tmp_path / "vault"
    src = make_src(tmp_path / "src", 5)
    vault = await make_vault(root)
    alpha = [await back_up(vault, src, host="alpha") for _ in range(2)]
    beta = [await back_up(vault, src, host="beta") for _ in range(2)]

    result = await forget(vault, rules=RetentionRules(last=1), host="alpha")

    assert [g.host for g in result.groups] == ["alpha"]
    assert result.removed == (alpha[0].snapshot_id.hex(),)
    assert await snapshot_ids(root) == {
        alpha[1].snapshot_id.hex(),
        *(b.snapshot_id.hex() for b in beta),
    }


async def test_forget_tag_filter_considers_only_snapshots_with_every_tag(tmp_path: Path) -> None:
    root = tmp_path / "vault"
    src = make_src(tmp_path / "src", 6)
    vault = await make_vault(root)
    plain = await back_up(vault, src)
    daily = [await back_up(vault, src, tags=("daily", "laptop")) for _ in range(2)]
    only_daily = await back_up(vault, src, tags=("daily",))

    result = await forget(vault, rules=RetentionRules(last=1), tags=["daily", "laptop"])

    assert result.removed == (daily[0].snapshot_id.hex(),)
    assert await snapshot_ids(root) == {
        plain.snapshot_id.hex(),
        daily[1].snapshot_id.hex(),
        only_daily.snapshot_id.hex(),
    }


async def test_forget_empty_rules_are_refused(three: tuple[Path, Path, list[BackupResult]]) -> None:
    root, _, _ = three
    with pytest.raises(UsageError):
        await forget(await Vault.open(LocalStore(root), PW), rules=RetentionRules())
    assert len(await snapshot_ids(root)) == 3


# ---- arguments, dry run, append-only ------------------------------------------------------


@pytest.mark.parametrize("both", [True, False])
async def test_forget_needs_exactly_one_of_rules_and_ids(tmp_path: Path, both: bool) -> None:
    vault = await make_vault(tmp_path / "vault")
    with pytest.raises(UsageError):
        await forget(
            vault, rules=RetentionRules(last=1) if both else None, ids=["abcd"] if both else ()
        )


async def test_forget_dry_run_removes_nothing(three: tuple[Path, Path, list[BackupResult]]) -> None:
    root, _, snaps = three

    result = await forget(
        await Vault.open(LocalStore(root), PW), rules=RetentionRules(last=1), dry_run=True
    )

    assert len(result.removed) == 2
    assert len(await snapshot_ids(root)) == 3


async def test_forget_on_an_append_only_store_raises_permission_denied(
    three: tuple[Path, Path, list[BackupResult]],
) -> None:
    root, _, snaps = three
    vault = await Vault.open(AppendOnlyStore(LocalStore(root)), PW)

    with pytest.raises(PermissionDenied):
        await forget(vault, ids=[snaps[0].snapshot_id.hex()])

    assert len(await snapshot_ids(root)) == 3


def test_forget_snapshot_time_is_exact_and_aware() -> None:
    t = snapshot_time(1_700_000_000_123_456_789)
    assert t == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
