"""Vault routes: create (201, 409), list (only what the token covers), show (404 when the
signed-in user has no such vault, including another user's), names per user."""

import pytest

from shared.protocol.models import Scope
from shared.protocol.paths import VAULT, VAULTS, url
from tests.server.conftest import Api, Owner


async def test_create_vault_is_201_with_location(api: Api) -> None:
    user = await api.add_user("alice")
    token = await api.issue(user)
    reply = await api.post(VAULTS, token=token, json={"name": "laptop"})
    assert reply.status == 201
    assert reply.headers["Location"] == "/api/v1/vaults/laptop"
    info = reply.json()
    assert (info["name"], info["size"], info["objects"]) == ("laptop", 0, 0)
    folder = api.config.vaults_dir / str(user.id) / "laptop"
    assert (folder / "packs").is_dir() and (folder / "tmp").is_dir()


async def test_create_existing_vault_is_409(api: Api, owner: Owner) -> None:
    reply = await api.post(VAULTS, token=owner.token, json={"name": "laptop"})
    assert (reply.status, reply.code) == (409, "vault_exists")


@pytest.mark.parametrize("body", [{"name": ".."}, {"name": "a/b"}, {"name": ""},
                                  {"name": "-x"}, {"name": "x" * 65}, {"name": 5}, {},
                                  ["laptop"]])
async def test_create_vault_with_bad_name_is_400(api: Api, owner: Owner, body: object) -> None:
    reply = await api.post(VAULTS, token=owner.token, json=body)
    assert (reply.status, reply.code) == (400, "usage")


async def test_create_vault_needs_a_write_scope(api: Api, owner: Owner) -> None:
    token = await api.issue(owner.user, (Scope.RESTORE,))
    reply = await api.post(VAULTS, token=token, json={"name": "other"})
    assert (reply.status, reply.code) == (403, "forbidden")


async def test_create_vault_outside_the_tokens_vaults_is_403(api: Api, owner: Owner) -> None:
    token = await api.issue(owner.user, (Scope.BACKUP,), ("laptop",))
    reply = await api.post(VAULTS, token=token, json={"name": "desktop"})
    assert (reply.status, reply.code) == (403, "forbidden")


async def test_list_vaults_shows_own_vaults_by_name(api: Api, owner: Owner) -> None:
    await api.create_vault(owner.token, "desktop")
    bob = await api.add_user("bob")
    await api.create_vault(await api.issue(bob), "bobs")
    reply = await api.get(VAULTS, token=owner.token)
    assert [v["name"] for v in reply.json()["vaults"]] == ["desktop", "laptop"]


async def test_list_vaults_shows_only_what_the_token_covers(api: Api, owner: Owner) -> None:
    await api.create_vault(owner.token, "desktop")
    token = await api.issue(owner.user, (Scope.RESTORE,), ("desktop",))
    reply = await api.get(VAULTS, token=token)
    assert [v["name"] for v in reply.json()["vaults"]] == ["desktop"]


async def test_get_vault_shows_usage(api: Api, owner: Owner) -> None:
    await api.put_object(owner.token, "laptop", b"x" * 100)
    reply = await api.get(url(VAULT, vault="laptop"), token=owner.token)
    assert reply.status == 200
    assert (reply.json()["size"], reply.json()["objects"]) == (100, 1)


async def test_get_absent_vault_is_404_not_a_vault(api: Api, owner: Owner) -> None:
    reply = await api.get(url(VAULT, vault="desktop"), token=owner.token)
    assert (reply.status, reply.code) == (404, "not_a_vault")


async def test_get_other_users_vault_is_404_like_an_absent_one(api: Api, owner: Owner) -> None:
    bob = await api.add_user("bob")
    token = await api.issue(bob)
    reply = await api.get(url(VAULT, vault="laptop"), token=token)
    absent = await api.get(url(VAULT, vault="nothing"), token=token)
    assert (reply.status, reply.code) == (absent.status, absent.code) == (404, "not_a_vault")


async def test_get_vault_outside_the_tokens_vaults_is_403(api: Api, owner: Owner) -> None:
    token = await api.issue(owner.user, (Scope.RESTORE,), ("desktop",))
    reply = await api.get(url(VAULT, vault="laptop"), token=token)
    assert (reply.status, reply.code) == (403, "forbidden")


async def test_same_vault_name_for_two_users_are_two_vaults(api: Api, owner: Owner) -> None:
    bob = await api.add_user("bob")
    bob_token = await api.issue(bob)
    await api.create_vault(bob_token, "laptop")  # no conflict with alice's
    await api.put_object(owner.token, "laptop", b"alice's data")
    await api.put_object(bob_token, "laptop", b"bob's bytes, longer")
    alice_info = (await api.get(url(VAULT, vault="laptop"), token=owner.token)).json()
    bob_info = (await api.get(url(VAULT, vault="laptop"), token=bob_token)).json()
    assert (alice_info["size"], bob_info["size"]) == (12, 19)
    assert (api.config.vaults_dir / str(bob.id) / "laptop").is_dir()
