"""Object routes through the aiohttp test client: streamed, verified uploads and their every
refusal (bad name, hash mismatch, size, quota, truncated body), ranged downloads, HEAD,
append-only delete, paginated listing and the batch "missing" query."""

import asyncio
import os
import random
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from server.app import create_app
from server.keys import DB, METRICS
from shared.ids import ObjectKey, ObjectKind
from shared.protocol.models import Scope
from shared.protocol.paths import MISSING, OBJECTS, url
from tests.server.conftest import MAX_OBJECT, Api, ApiFactory, Owner, blob, object_url

NAME = "ab" * 32


def vault_dir(api: Api, owner: Owner) -> Path:
    return api.config.vaults_dir / str(owner.user.id) / owner.vault


def temp_files(api: Api, owner: Owner) -> list[str]:
    return os.listdir(vault_dir(api, owner) / "tmp")


async def pieces(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]
        await asyncio.sleep(0)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def usage(api: Api, owner: Owner) -> tuple[int, int]:
    record = await api.app[DB].get_vault(owner.user.id, owner.vault)
    assert record is not None
    return record.size, record.objects


# ---- upload ----------------------------------------------------------------------------------


async def test_put_new_object_is_201_and_repeat_is_200(api: Api, owner: Owner) -> None:
    data = os.urandom(3000)
    first = await api.put_object(owner.token, "laptop", data)
    again = await api.put_object(owner.token, "laptop", data)
    assert (first.status, again.status) == (201, 200)
    assert first.json() == {"name": blob(data).name, "size": 3000}
    assert await usage(api, owner) == (3000, 1)  # counted once
    assert api.metric("cairn_objects_stored_total", {"kind": "packs"}) == 1


async def test_put_chunked_body_is_streamed_and_stored(api: Api, owner: Owner) -> None:
    data = os.urandom(300_000)
    reply = await api.put_object(owner.token, "laptop", pieces(data), key=blob(data))
    assert reply.status == 201
    got = await api.get(object_url("laptop", blob(data)), token=owner.token)
    assert got.body == data
    assert api.metric("cairn_uploaded_bytes_total") == len(data)


async def test_put_hash_mismatch_is_422_and_leaves_nothing(api: Api, owner: Owner) -> None:
    key = blob(b"what the name promises")
    reply = await api.put_object(owner.token, "laptop", b"something else", key=key)
    assert (reply.status, reply.code) == (422, "integrity")
    assert (await api.get(object_url("laptop", key), token=owner.token)).status == 404
    assert temp_files(api, owner) == []
    assert await usage(api, owner) == (0, 0)
    assert api.metric("cairn_objects_rejected_total", {"reason": "integrity"}) == 1


@pytest.mark.parametrize("kind, name", [
    ("packs", NAME.upper()),  # uppercase hex
    ("packs", NAME[:-1]),  # wrong length
    ("packs", NAME + "0"),
    ("packs", "..%2F..%2F..%2Fetc%2Fpasswd"),  # traversal, percent-encoded
    ("packs", "..%2F" + NAME),
    ("packs", "%2E%2E"),
    ("tmp", NAME),  # not a kind: the temp folder
    ("Packs", NAME),
    ("%2E%2E", NAME),
])
async def test_put_bad_kind_or_name_is_400(api: Api, owner: Owner, kind: str, name: str) -> None:
    path = URL(f"/api/v1/vaults/laptop/objects/{kind}/{name}", encoded=True)
    reply = await api.put(path, token=owner.token, data=b"x")
    assert reply.status == 400, reply.body
    assert reply.code in ("usage", "bad_name")
    assert sorted(os.listdir(vault_dir(api, owner))) == sorted(
        [k.value for k in ObjectKind] + ["tmp"])


async def test_put_content_length_over_limit_is_413_before_reading(api: Api,
                                                                   owner: Owner) -> None:
    data = os.urandom(MAX_OBJECT + 1)
    reply = await api.put_object(owner.token, "laptop", data)
    assert (reply.status, reply.code) == (413, "too_large")
    assert "1.0 MiB" in reply.message
    assert api.metric("cairn_uploaded_bytes_total") == 0  # refused before reading a byte
    assert (await api.head(object_url("laptop", blob(data)), token=owner.token)).status == 404


async def test_put_chunked_body_over_limit_is_413_and_stores_nothing(api: Api,
                                                                     owner: Owner) -> None:
    data = os.urandom(MAX_OBJECT + 100_000)
    reply = await api.put_object(owner.token, "laptop", pieces(data), key=blob(data))
    assert (reply.status, reply.code) == (413, "too_large")
    assert (await api.head(object_url("laptop", blob(data)), token=owner.token)).status == 404
    await wait_until(lambda: temp_files(api, owner) == [])
    assert await usage(api, owner) == (0, 0)


@pytest.fixture(params=["handler-cancelled", "handler-sees-reset"])
async def raw_server(request: pytest.FixtureRequest,
                     api: Api) -> AsyncIterator[tuple[str, int, web.Application]]:
    """Where to send hand-made HTTP: the test server (which cancels the handler of a request
    whose client left) or an AppRunner set up like serve.py's (the body read then fails)."""
    if request.param == "handler-cancelled":
        assert api.client.host is not None and api.client.port is not None
        yield api.client.host, api.client.port, api.app
        return
    app = create_app(api.config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield host, port, app
    await runner.cleanup()


async def test_put_truncated_body_leaves_nothing(
        api: Api, owner: Owner, raw_server: tuple[str, int, web.Application]) -> None:
    """The client announces 4000 bytes, sends 1000 and disconnects."""
    host, port, app = raw_server
    data = os.urandom(4000)
    key = blob(data)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(f"PUT {object_url('laptop', key)} HTTP/1.1\r\nHost: test\r\n"
                 f"Authorization: Bearer {owner.token.value}\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:1000])
    await writer.drain()
    await wait_until(lambda: temp_files(api, owner) != [])  # the upload has begun
    writer.close()
    await writer.wait_closed()
    registry = app[METRICS].registry
    await wait_until(lambda: registry.get_sample_value(
        "cairn_objects_rejected_total", {"reason": "incomplete"}) == 1)
    await wait_until(lambda: temp_files(api, owner) == [])
    assert (await api.head(object_url("laptop", key), token=owner.token)).status == 404
    assert await usage(api, owner) == (0, 0)


async def test_put_over_quota_is_507_before_reading(api: Api) -> None:
    user = await api.add_user("carol", quota=5000)
    token = await api.issue(user)
    await api.create_vault(token, "laptop")
    assert (await api.put_object(token, "laptop", os.urandom(4000))).status == 201
    reply = await api.put_object(token, "laptop", os.urandom(2000))
    assert (reply.status, reply.code) == (507, "quota_exceeded")
    assert reply.message.startswith("quota of 0.0 MiB exceeded: 0.0 MiB used")
    assert api.metric("cairn_uploaded_bytes_total") == 4000


async def test_put_chunked_over_quota_is_507_and_stores_nothing(api: Api) -> None:
    user = await api.add_user("carol", quota=200_000)
    token = await api.issue(user)
    await api.create_vault(token, "laptop")
    data = os.urandom(300_000)
    reply = await api.put_object(token, "laptop", pieces(data), key=blob(data))
    assert (reply.status, reply.code) == (507, "quota_exceeded")
    assert (await api.head(object_url("laptop", blob(data)), token=token)).status == 404


async def test_put_same_object_concurrently_counts_it_once(api: Api, owner: Owner) -> None:
    data = os.urandom(200_000)
    replies = await asyncio.gather(*(
        api.put_object(owner.token, "laptop", pieces(data, 8192), key=blob(data))
        for _ in range(3)))
    assert sorted(r.status for r in replies) == [200, 200, 201]
    assert await usage(api, owner) == (200_000, 1)


async def test_put_memory_stays_small(make_api: ApiFactory) -> None:
    """A 48 MiB upload never holds more than a few MiB on the server (no whole-body read)."""
    api = await make_api(max_object_size=64 << 20)
    user = await api.add_user("dave")
    token = await api.issue(user)
    await api.create_vault(token, "laptop")
    data = random.Random(1).randbytes(48 << 20)
    key = blob(data)
    tracemalloc.start()
    try:
        reply = await api.put_object(token, "laptop", pieces(data, 1 << 20), key=key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.status == 201
    assert peak < 16 << 20, f"peak {peak / (1 << 20):.1f} MiB"


async def test_put_with_restore_token_is_403(api: Api, owner: Owner) -> None:
    token = await api.issue(owner.user, (Scope.RESTORE,))
    reply = await api.put_object(token, "laptop", b"data")
    assert (reply.status, reply.code) == (403, "forbidden")


async def test_put_to_a_vault_outside_the_tokens_vaults_is_403(api: Api, owner: Owner) -> None:
    token = await api.issue(owner.user, (Scope.BACKUP,), ("desktop",))
    reply = await api.put_object(token, "laptop", b"data")
    assert (reply.status, reply.code) == (403, "forbidden")
    assert "laptop" in reply.message


# ---- download --------------------------------------------------------------------------------


@pytest.fixture
async def stored(api: Api, owner: Owner) -> tuple[ObjectKey, bytes]:
    data = os.urandom(1000)
    assert (await api.put_object(owner.token, "laptop", data)).status == 201
    return blob(data), data


async def test_get_returns_the_bytes(api: Api, owner: Owner,
                                     stored: tuple[ObjectKey, bytes]) -> None:
    key, data = stored
    reply = await api.get(object_url("laptop", key), token=owner.token)
    assert (reply.status, reply.body) == (200, data)
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert api.metric("cairn_downloaded_bytes_total") == 1000


@pytest.mark.parametrize("header, start, stop", [
    ("bytes=0-9", 0, 10),
    ("bytes=990-", 990, 1000),
    ("bytes=-24", 976, 1000),
    ("bytes=-5000", 0, 1000),  # a suffix longer than the object: all of it
    ("bytes=500-999999", 500, 1000),  # an end past the object is clamped
    ("bytes=999-999", 999, 1000),
])
async def test_get_range_is_206_with_content_range(
        api: Api, owner: Owner, stored: tuple[ObjectKey, bytes], header: str, start: int,
        stop: int) -> None:
    key, data = stored
    reply = await api.get(object_url("laptop", key), token=owner.token,
                          headers={"Range": header})
    assert (reply.status, reply.body) == (206, data[start:stop])
    assert reply.headers["Content-Range"] == f"bytes {start}-{stop - 1}/1000"
    assert api.metric("cairn_downloaded_bytes_total") == stop - start


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=abc",
                                    "bytes=0-1,3-4", "bytes=9-3", "items=0-1", "bytes=-"])
async def test_get_unsatisfiable_range_is_416(api: Api, owner: Owner,
                                              stored: tuple[ObjectKey, bytes],
                                              header: str) -> None:
    key, _ = stored
    reply = await api.get(object_url("laptop", key), token=owner.token,
                          headers={"Range": header})
    assert (reply.status, reply.code) == (416, "range")
    assert reply.headers["Content-Range"] == "bytes */1000"


async def test_head_gives_the_size(api: Api, owner: Owner,
                                   stored: tuple[ObjectKey, bytes]) -> None:
    key, _ = stored
    reply = await api.head(object_url("laptop", key), token=owner.token)
    assert reply.status == 200
    assert reply.headers["Content-Length"] == "1000"
    assert api.metric("cairn_downloaded_bytes_total") == 0


async def test_get_absent_object_is_404_not_found(api: Api, owner: Owner) -> None:
    reply = await api.get(object_url("laptop", blob(b"never stored")), token=owner.token)
    assert (reply.status, reply.code) == (404, "not_found")


# ---- delete ----------------------------------------------------------------------------------


async def test_delete_is_204_and_updates_usage(api: Api, owner: Owner,
                                               stored: tuple[ObjectKey, bytes]) -> None:
    key, _ = stored
    assert (await api.delete(object_url("laptop", key), token=owner.token)).status == 204
    assert (await api.head(object_url("laptop", key), token=owner.token)).status == 404
    assert await usage(api, owner) == (0, 0)
    again = await api.delete(object_url("laptop", key), token=owner.token)
    assert (again.status, again.code) == (404, "not_found")


async def test_delete_with_backup_token_is_403_append_only(
        api: Api, owner: Owner, stored: tuple[ObjectKey, bytes]) -> None:
    key, _ = stored
    token = await api.issue(owner.user, (Scope.BACKUP, Scope.RESTORE))
    reply = await api.delete(object_url("laptop", key), token=token)
    assert (reply.status, reply.code) == (403, "forbidden")
    assert "append-only" in reply.message
    assert (await api.head(object_url("laptop", key), token=owner.token)).status == 200


# ---- list ------------------------------------------------------------------------------------


async def test_list_pages_through_every_pack_in_name_order(api: Api, owner: Owner) -> None:
    rng = random.Random(7)
    sizes = {}
    for _ in range(25):
        data = rng.randbytes(rng.randrange(1, 500))
        assert (await api.put_object(owner.token, "laptop", data)).status == 201
        sizes[blob(data).name] = len(data)
    listed: list[tuple[str, int]] = []
    after = None
    pages = 0
    while True:
        params = {"limit": "7", **({"after": after} if after else {})}
        reply = await api.get(url(OBJECTS, vault="laptop", kind="packs"), token=owner.token,
                              params=params)
        page = reply.json()
        listed += [(o["name"], o["size"]) for o in page["objects"]]
        pages += 1
        after = page["next"]
        if after is None:
            break
    assert listed == sorted(sizes.items())
    assert pages == 4


async def test_list_kind_without_objects_is_empty(api: Api, owner: Owner,
                                                  stored: tuple[ObjectKey, bytes]) -> None:
    reply = await api.get(url(OBJECTS, vault="laptop", kind="snapshots"), token=owner.token)
    assert reply.json() == {"objects": [], "next": None}


async def test_list_exact_page_has_no_next(api: Api, owner: Owner,
                                           stored: tuple[ObjectKey, bytes]) -> None:
    key, _ = stored
    reply = await api.get(url(OBJECTS, vault="laptop", kind="packs"), token=owner.token,
                          params={"limit": "1"})
    assert reply.json() == {"objects": [{"name": key.name, "size": 1000}], "next": None}


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "10001"}, {"limit": "abc"},
                                    {"limit": "-1"}, {"limit": ""}, {"after": "xyz"},
                                    {"after": NAME.upper()}])
async def test_list_bad_parameters_are_400(api: Api, owner: Owner,
                                           params: dict[str, str]) -> None:
    reply = await api.get(url(OBJECTS, vault="laptop", kind="packs"), token=owner.token,
                          params=params)
    assert reply.status == 400


async def test_list_unknown_kind_is_400(api: Api, owner: Owner) -> None:
    reply = await api.get(url(OBJECTS, vault="laptop", kind="tmp"), token=owner.token)
    assert (reply.status, reply.code) == (400, "usage")


# ---- missing ---------------------------------------------------------------------------------


async def test_missing_lists_absent_keys_in_request_order(
        api: Api, owner: Owner, stored: tuple[ObjectKey, bytes]) -> None:
    key, _ = stored
    absent = [f"index/{'1' * 64}", f"packs/{'2' * 64}"]
    body = {"keys": [absent[0], str(key), absent[1], absent[0]]}
    reply = await api.post(url(MISSING, vault="laptop"), token=owner.token, json=body)
    assert reply.json() == {"missing": absent}


@pytest.mark.parametrize("body", [{"keys": ["packs/xyz"]}, {"keys": "packs"}, {},
                                  {"keys": [f"tmp/{NAME}"]},
                                  {"keys": [f"packs/{NAME}"] * 10_001}])
async def test_missing_bad_request_is_400(api: Api, owner: Owner, body: object) -> None:
    reply = await api.post(url(MISSING, vault="laptop"), token=owner.token, json=body)
    assert reply.status == 400


async def test_missing_with_invalid_json_is_400(api: Api, owner: Owner) -> None:
    reply = await api.post(url(MISSING, vault="laptop"), token=owner.token, data=b"{nope",
                           headers={"Content-Type": "application/json"})
    assert (reply.status, reply.code) == (400, "usage")
