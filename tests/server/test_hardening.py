"""Defences against hostile or broken clients: stalled uploads, odd input, odd methods."""

import asyncio
import time

import pytest

from server.handlers import objects
from server.keys import DB, METRICS
from server.storage import vaults
from server.storage.vaults import _KeyLocks
from shared.errors import StorageUnavailable
from shared.protocol.paths import OBJECTS, SIGN_IN, url
from tests.server.conftest import Api, Owner, blob, object_url


async def test_key_lock_wait_gives_up_with_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(vaults, "LOCK_WAIT", 0.05)
    locks = _KeyLocks()
    async with locks.hold("k"):
        with pytest.raises(StorageUnavailable, match="still in progress"):
            async with locks.hold("k"):
                pass
    async with locks.hold("k"):  # free again afterwards
        pass


async def test_stalled_upload_is_dropped_and_leaves_nothing(api: Api, owner: Owner,
                                                           monkeypatch) -> None:
    monkeypatch.setattr(objects, "BODY_IDLE_TIMEOUT", 0.2)
    data = b"x" * 1000

    async def stalls():
        yield data[:500]
        await asyncio.sleep(1.0)  # the connection looks dead to the server
        yield data[500:]

    reply = await api.put_object(owner.token, owner.vault, stalls(), key=blob(data))
    assert reply.status == 400 and reply.code == "incomplete" and "stalled" in reply.message
    root = api.config.vaults_dir / str(owner.user.id) / owner.vault
    assert list((root / "tmp").iterdir()) == []
    assert (await api.head(object_url(owner.vault, blob(data)), token=owner.token)).status == 404


@pytest.mark.parametrize("limit", ["²", "1" * 5000, "٣"])
async def test_list_limit_that_is_not_ascii_digits_is_400(api: Api, owner: Owner, limit) -> None:
    path = url(OBJECTS, vault=owner.vault, kind="packs")
    reply = await api.get(path, token=owner.token, params={"limit": limit})
    assert reply.status == 400


async def test_sign_in_with_an_unencodable_password_is_401_not_500(api: Api) -> None:
    await api.add_user("alice")
    body = b'{"user": "alice", "password": "\\ud800", "device": "d"}'
    reply = await api.post(SIGN_IN, data=body, headers={"Content-Type": "application/json"})
    assert reply.status == 401


@pytest.mark.parametrize("body, content_type", [
    (b'{"user": "a"}', "application/json; charset=bogus"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json"),
])
async def test_odd_json_bodies_are_400(api: Api, body, content_type) -> None:
    reply = await api.post(SIGN_IN, data=body, headers={"Content-Type": content_type})
    assert reply.status in (400, 413)


async def test_unknown_http_methods_share_one_metrics_label(api: Api) -> None:
    for method in ("PATCH", "PROPFIND"):  # methods the HTTP parser knows but we do not use
        async with api.client.request(method, "/healthz") as resp:
            await resp.read()
    methods = [sample.labels["method"] for family in api.app[METRICS].registry.collect()
               for sample in family.samples if sample.name == "cairn_http_requests_total"]
    assert methods.count("OTHER") >= 1 and "PATCH" not in methods and "PROPFIND" not in methods


async def test_password_change_ends_older_tokens(api: Api, owner: Owner) -> None:
    old = await api.issue(owner.user, now=time.time() - 10)
    await api.app[DB].set_password(owner.user.name, "new-hash")
    reply = await api.get(url(OBJECTS, vault=owner.vault, kind="packs"), token=old)
    assert reply.status == 401 and "password" in reply.message
