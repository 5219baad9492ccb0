"""The ObjectStore contract, run against every backend in conftest.FACTORIES.

Also the behaviour of the wrappers that is not per backend (retry, throttle) and of ObjectKey.
Object names are the BLAKE3 of their bytes throughout, as in a real vault.
"""

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import (
    IntegrityError,
    ObjectNotFound,
    PermissionDenied,
    RangeError,
    StorageUnavailable,
)
from shared.hashing import object_id
from shared.ids import InvalidName, ObjectInfo, ObjectKey, ObjectKind
from shared.storage.base import ObjectData, ObjectStore, missing
from shared.storage.memory import MemoryStore
from shared.storage.wrappers import AppendOnlyStore, RetryingStore, ThrottledStore, VerifyingStore
from tests.storage_contract.conftest import Backend

MiB = 1 << 20


def key_for(data: bytes, kind: ObjectKind = ObjectKind.PACK) -> ObjectKey:
    return ObjectKey.of(kind, object_id(data))


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        await asyncio.sleep(0)  # let concurrent puts interleave
        yield data[start : start + size]


async def listed(store: ObjectStore, kind: ObjectKind) -> list[ObjectInfo]:
    return [info async for info in store.list(kind)]


# --- the contract, per backend ---


async def test_put_then_get_round_trips(store: ObjectStore) -> None:
    data = random_bytes(100_000)
    await store.put(key_for(data), data)
    assert await store.get(key_for(data)) == data


async def test_put_of_a_view_round_trips_and_leaves_the_buffer_free(store: ObjectStore) -> None:
    """A pack assembled in a reused buffer is put as a view of it: once put returns, the
    caller may overwrite the buffer without changing what was stored."""
    buffer = bytearray(random_bytes(3 * MiB + 100, seed=7))
    view = memoryview(buffer)[50 : 3 * MiB + 50]
    data = bytes(view)
    await store.put(key_for(data), view)
    buffer[:] = bytes(len(buffer))
    assert await store.get(key_for(data)) == data


async def test_wrappers_put_a_view(backend: Backend) -> None:
    data = random_bytes(2 * MiB, seed=8)
    wrapped = ThrottledStore(RetryingStore(VerifyingStore(backend.store), base_delay=0.01),
                             bytes_per_second=1 << 30)
    await wrapped.put(key_for(data), memoryview(bytearray(data)))
    assert await backend.store.get(key_for(data)) == data
    wrong = key_for(b"not this")
    with pytest.raises(IntegrityError):
        await VerifyingStore(backend.store).put(wrong, memoryview(data))
    with pytest.raises(ObjectNotFound):
        await backend.store.stat(wrong)


async def test_put_existing_key_keeps_first_copy(store: ObjectStore) -> None:
    data = random_bytes(1000)
    key = key_for(data)
    await store.put(key, data)
    before = await store.stat(key)
    await store.put(key, b"something else")
    assert await store.get(key) == data
    assert await store.stat(key) == before


async def test_put_from_many_chunks_round_trips(store: ObjectStore) -> None:
    data = random_bytes(20 * MiB)
    await store.put(key_for(data), pieces(data, MiB))
    assert await store.get(key_for(data)) == data


async def test_put_failing_source_stores_nothing(backend: Backend) -> None:
    data = random_bytes(3 * MiB)

    async def failing() -> AsyncIterator[bytes]:
        yield data[:MiB]
        yield data[MiB : 2 * MiB]
        raise OSError("source file vanished")

    with pytest.raises(OSError, match="source file vanished"):
        await backend.store.put(key_for(data), failing())
    with pytest.raises(ObjectNotFound):
        await backend.store.stat(key_for(data))
    assert backend.temp_files() == []


@st.composite
def blob_and_range(draw: st.DrawFn) -> tuple[bytes, int, int | None]:
    data = draw(st.binary(max_size=2048))
    offset = draw(st.integers(0, len(data)))
    length = draw(st.none() | st.integers(0, len(data) - offset))
    return data, offset, length


@settings(
    max_examples=50,
    deadline=None,  # fsync time varies
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one store for all examples
)
@given(case=blob_and_range())
async def test_get_range_matches_slice(
    store: ObjectStore, case: tuple[bytes, int, int | None]
) -> None:
    data, offset, length = case
    await store.put(key_for(data), data)
    end = len(data) if length is None else offset + length
    assert await store.get(key_for(data), offset=offset, length=length) == data[offset:end]


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 11), (10, 1), (11, None), (11, 0), (-1, None), (0, -1)],
)
async def test_get_range_outside_object_raises(
    store: ObjectStore, offset: int, length: int | None
) -> None:
    data = b"0123456789"
    await store.put(key_for(data), data)
    with pytest.raises(RangeError):
        await store.get(key_for(data), offset=offset, length=length)


@pytest.mark.parametrize(
    "operation",
    [
        lambda store, key: store.get(key),
        lambda store, key: store.get(key, offset=0, length=0),
        lambda store, key: store.stat(key),
        lambda store, key: store.delete(key),
    ],
    ids=["get", "ranged-get", "stat", "delete"],
)
async def test_missing_object_raises_not_found(
    store: ObjectStore,
    operation: Callable[[ObjectStore, ObjectKey], Coroutine[Any, Any, object]],
) -> None:
    with pytest.raises(ObjectNotFound):
        await operation(store, key_for(b"never stored"))


async def test_stat_reports_size(store: ObjectStore) -> None:
    data = random_bytes(12345)
    await store.put(key_for(data), data)
    info = await store.stat(key_for(data))
    assert (info.key, info.size) == (key_for(data), 12345)


async def test_list_yields_each_object_of_its_kind_once(backend: Backend) -> None:
    store = backend.store
    blobs = [random_bytes(100, seed) for seed in range(20)]
    for data in blobs:
        await store.put(key_for(data, ObjectKind.PACK), data)
    await store.put(key_for(b"an index", ObjectKind.INDEX), b"an index")
    backend.plant_junk()

    packs = await listed(store, ObjectKind.PACK)
    assert sorted(info.key for info in packs) == sorted(key_for(data) for data in blobs)
    assert {info.size for info in packs} == {100}
    assert [info.key for info in await listed(store, ObjectKind.INDEX)] == [
        key_for(b"an index", ObjectKind.INDEX)
    ]
    assert await listed(store, ObjectKind.SNAPSHOT) == []


async def test_delete_then_get_raises_not_found(store: ObjectStore) -> None:
    data = b"short-lived"
    await store.put(key_for(data), data)
    await store.delete(key_for(data))
    with pytest.raises(ObjectNotFound):
        await store.get(key_for(data))


async def test_put_concurrent_same_key_stores_one_copy(backend: Backend) -> None:
    data = random_bytes(2 * MiB)
    key = key_for(data)
    await asyncio.gather(*(backend.store.put(key, pieces(data, 256 << 10)) for _ in range(8)))
    assert await backend.store.get(key) == data
    assert [info.key for info in await listed(backend.store, ObjectKind.PACK)] == [key]
    assert backend.temp_files() == []


async def test_missing_returns_absent_keys(store: ObjectStore) -> None:
    stored = [random_bytes(10, seed) for seed in range(5)]
    for data in stored:
        await store.put(key_for(data), data)
    absent = {key_for(random_bytes(10, seed)) for seed in range(5, 40)}
    asked = [key_for(data) for data in stored] + sorted(absent)
    assert await missing(store, iter(asked)) == absent


async def test_append_only_refuses_delete(store: ObjectStore) -> None:
    await store.put(key_for(b"keep me"), b"keep me")
    with pytest.raises(PermissionDenied):
        await AppendOnlyStore(store).delete(key_for(b"keep me"))
    assert await store.get(key_for(b"keep me")) == b"keep me"


async def test_verifying_put_rejects_mismatched_name(backend: Backend) -> None:
    data = random_bytes(3 * MiB)
    wrong = key_for(b"other content")
    with pytest.raises(IntegrityError):
        await VerifyingStore(backend.store).put(wrong, pieces(data, MiB))
    with pytest.raises(ObjectNotFound):
        await backend.store.stat(wrong)
    assert backend.temp_files() == []


async def test_verifying_get_detects_damage(backend: Backend) -> None:
    data = random_bytes(5000)
    await backend.store.put(key_for(data), data)
    await backend.damage(key_for(data))
    with pytest.raises(IntegrityError, match=f"{key_for(data)} is damaged"):
        await VerifyingStore(backend.store).get(key_for(data))


# --- keys ---


@pytest.mark.parametrize(
    "name",
    ["../etc", "../" + "a" * 61, "A" * 64, "a" * 63, "a" * 65, "g" * 64, "", "a" * 63 + "\n"],
)
def test_object_key_rejects_bad_name(name: str) -> None:
    with pytest.raises(InvalidName):
        ObjectKey(ObjectKind.PACK, name)


# --- wrappers, beyond the contract ---


class FlakyStore(MemoryStore):
    """Fails the first `failures` puts and gets with StorageUnavailable."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def _fail(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise StorageUnavailable("connection reset")

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        self._fail()
        await super().put(key, data)

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        self._fail()
        return await super().get(key, offset=offset, length=length)


async def test_retrying_retries_unavailable() -> None:
    flaky = FlakyStore(failures=3)
    store = RetryingStore(flaky, attempts=4, base_delay=0)
    await store.put(key_for(b"x"), b"x")
    assert await store.get(key_for(b"x")) == b"x"
    assert flaky.calls == 5


async def test_retrying_gives_up_after_attempts() -> None:
    flaky = FlakyStore(failures=10)
    with pytest.raises(StorageUnavailable):
        await RetryingStore(flaky, attempts=3, base_delay=0).put(key_for(b"x"), b"x")
    assert flaky.calls == 3


async def test_retrying_does_not_replay_a_stream() -> None:
    flaky = FlakyStore(failures=1)
    with pytest.raises(StorageUnavailable):
        await RetryingStore(flaky, base_delay=0).put(key_for(b"x"), pieces(b"x", 1))
    assert flaky.calls == 1


async def test_throttled_limits_put_rate() -> None:
    store = ThrottledStore(MemoryStore(), bytes_per_second=MiB)
    data = random_bytes(MiB + MiB // 2)
    started = time.monotonic()
    await store.put(key_for(data), data)  # a 1 MiB burst, then 0.5 MiB at 1 MiB/s
    assert time.monotonic() - started >= 0.45
    assert await store.get(key_for(data), length=10) == data[:10]
