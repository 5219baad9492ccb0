"""Units of the server's storage layer: LocalStore's ordered listing (shard by shard), quota
reservations for uploads in flight, and the sizes quoted in quota messages."""

from contextlib import aclosing
from pathlib import Path

import pytest

import shared.storage.local as local_module
from server.storage.quota import QuotaLedger, format_size
from shared.errors import QuotaExceeded
from shared.ids import ObjectInfo, ObjectKey, ObjectKind
from shared.storage.base import SupportsLocalPath, SupportsOrderedList
from shared.storage.local import LocalStore


def names(shards: range, per_shard: int) -> list[str]:
    return [f"{shard:02x}{i:062x}" for shard in shards for i in range(per_shard)]


@pytest.fixture
async def store(tmp_path: Path) -> LocalStore:
    store = await LocalStore.create(tmp_path / "vault", fsync=False)
    for name in names(range(0, 40, 3), 4):
        await store.put(ObjectKey(ObjectKind.PACK, name), name.encode())
    await store.put(ObjectKey(ObjectKind.INDEX, "f" * 64), b"i")
    await store.put(ObjectKey(ObjectKind.INDEX, "0" * 64), b"i")
    return store


async def test_local_store_offers_the_capabilities(store: LocalStore) -> None:
    assert isinstance(store, SupportsOrderedList) and isinstance(store, SupportsLocalPath)
    key = ObjectKey(ObjectKind.PACK, "03" + "0" * 62)
    assert store.path_of(key).read_bytes() == key.name.encode()


async def test_list_after_is_sorted_and_starts_after_the_cursor(store: LocalStore) -> None:
    every = sorted(names(range(0, 40, 3), 4))
    assert [i.key.name async for i in store.list_after(ObjectKind.PACK)] == every
    cursor = every[9]
    assert [i.key.name async for i in store.list_after(ObjectKind.PACK, cursor)] == every[10:]
    assert [i.key.name async for i in store.list_after(ObjectKind.INDEX)] == ["0" * 64, "f" * 64]
    assert [i async for i in store.list_after(ObjectKind.SNAPSHOT)] == []


async def test_list_after_reads_packs_one_shard_at_a_time(
        store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[str] = []
    scan = local_module._scan

    def counting_scan(folder: Path, kind: ObjectKind) -> list[ObjectInfo]:
        scanned.append(folder.name)
        return scan(folder, kind)

    monkeypatch.setattr(local_module, "_scan", counting_scan)
    first: list[str] = []
    async with aclosing(store.list_after(ObjectKind.PACK, "06" + "0" * 62)) as found:
        async for info in found:
            first.append(info.key.name)
            if len(first) == 5:
                break
    assert first[0] == "06" + "0" * 61 + "1"
    assert scanned == ["06", "09"]  # not the 11 other shards


async def test_quota_counts_uploads_in_flight() -> None:
    ledger = QuotaLedger()
    one = ledger.open(1, quota=100 << 20, used=50 << 20)
    two = ledger.open(1, quota=100 << 20, used=50 << 20)
    one.grow(30 << 20)
    with pytest.raises(QuotaExceeded) as refused:
        two.grow(30 << 20)
    assert str(refused.value) == ("quota of 100.0 MiB exceeded: 50.0 MiB used, 30.0 MiB in "
                                  "other uploads, this upload needs 30.0 MiB")
    other_user = ledger.open(2, quota=100 << 20, used=0)
    other_user.grow(90 << 20)  # another user's reservations do not count
    one.release()
    two.grow(30 << 20)  # room again
    two.release()
    one.release()  # idempotent
    assert ledger.reserved(1) == 0


async def test_quota_counts_uploads_that_finished_meanwhile() -> None:
    ledger = QuotaLedger()
    one = ledger.open(1, quota=100 << 20, used=10 << 20)
    two = ledger.open(1, quota=100 << 20, used=10 << 20)  # both read `used` at the start
    one.grow(60 << 20)
    one.commit()  # stored: no longer reserved, but used
    assert ledger.reserved(1) == 0
    with pytest.raises(QuotaExceeded, match="70.0 MiB used"):
        two.grow(40 << 20)
    two.grow(30 << 20)
    later = ledger.open(1, quota=100 << 20, used=70 << 20)  # the database has it by now
    assert later.used == 70 << 20


async def test_quota_none_is_unlimited() -> None:
    reservation = QuotaLedger().open(1, quota=None, used=1 << 50)
    reservation.grow(1 << 40)
    assert reservation.size == 1 << 40


@pytest.mark.parametrize("size, text", [(0, "0.0 MiB"), (1536 << 10, "1.5 MiB"),
                                        (3 << 30, "3.0 GiB"), (2 << 40, "2.0 TiB")])
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
