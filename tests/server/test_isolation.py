"""The isolation matrix: every vault route x {owner, another user, another user who is an
admin} x each single scope, with the exact status from one table. Nothing the owner stored
(object names or bytes) ever appears in an answer to anyone else, and nothing they do
changes the owner's vault.
"""

import dataclasses
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.config import load_config
from server.db.database import UserRecord
from shared.ids import ObjectKey
from shared.protocol.models import Scope, key_text
from shared.protocol.paths import MISSING, OBJECTS, VAULT, url
from tests.server.conftest import Api, Reply, Token, blob, object_url

SCOPES = (Scope.BACKUP, Scope.RESTORE, Scope.MAINTAIN, Scope.ADMIN)
ROUTES = ("get_vault", "list_objects", "missing", "put_object", "get_object", "head_object",
          "delete_object")
ACTORS = ("owner", "other", "other_admin")

# (route, actor) -> status for a token with only backup, restore, maintain, admin.
# Another user's "laptop" is simply not theirs: 404 wherever their scope allows the request,
# 403 where it does not (the scope is checked before the vault is looked up). The admin scope
# opens /admin routes only, never anyone's vault.
EXPECTED: dict[tuple[str, str], tuple[int, int, int, int]] = {
    ("get_vault", "owner"): (200, 200, 200, 403),
    ("get_vault", "other"): (404, 404, 404, 403),
    ("get_vault", "other_admin"): (404, 404, 404, 403),
    ("list_objects", "owner"): (200, 200, 200, 403),
    ("list_objects", "other"): (404, 404, 404, 403),
    ("list_objects", "other_admin"): (404, 404, 404, 403),
    ("missing", "owner"): (200, 200, 200, 403),
    ("missing", "other"): (404, 404, 404, 403),
    ("missing", "other_admin"): (404, 404, 404, 403),
    ("put_object", "owner"): (201, 403, 201, 403),
    ("put_object", "other"): (404, 403, 404, 403),
    ("put_object", "other_admin"): (404, 403, 404, 403),
    ("get_object", "owner"): (200, 200, 200, 403),
    ("get_object", "other"): (404, 404, 404, 403),
    ("get_object", "other_admin"): (404, 404, 404, 403),
    ("head_object", "owner"): (200, 200, 200, 403),
    ("head_object", "other"): (404, 404, 404, 403),
    ("head_object", "other_admin"): (404, 404, 404, 403),
    ("delete_object", "owner"): (403, 403, 204, 403),
    ("delete_object", "other"): (403, 403, 404, 403),
    ("delete_object", "other_admin"): (403, 403, 404, 403),
}


# One app for the whole module (starting one per case would cost more than the cases): each
# case makes its own users, so "laptop" is a fresh vault of a fresh owner every time.


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared_api(tmp_path_factory: pytest.TempPathFactory, data_template: Path,
                     password_hash: str) -> AsyncIterator[Api]:
    data = tmp_path_factory.mktemp("isolation") / "data"
    shutil.copytree(data_template, data)
    config = dataclasses.replace(load_config(data), fsync=False)
    client = TestClient(TestServer(create_app(config)))
    await client.start_server()
    yield Api(client, password_hash)
    await client.close()


@dataclass(frozen=True)
class World:
    users: dict[str, UserRecord]  # by actor
    owner_token: Token
    target: ObjectKey  # named in the requests
    target_data: bytes
    secret: ObjectKey  # never named by anyone but the owner
    secret_data: bytes
    new_data: bytes  # what PUT uploads


@pytest_asyncio.fixture(loop_scope="module")
async def world(shared_api: Api) -> World:
    api = shared_api
    suffix = secrets.token_hex(4)
    owner = await api.add_user(f"alice{suffix}")
    token = await api.issue(owner, (Scope.BACKUP, Scope.RESTORE))
    await api.create_vault(token, "laptop")
    target_data, secret_data = os.urandom(700), os.urandom(900)
    for data in (target_data, secret_data):
        assert (await api.put_object(token, "laptop", data)).status == 201
    users = {"owner": owner, "other": await api.add_user(f"bob{suffix}"),
             "other_admin": await api.add_user(f"root{suffix}", admin=True)}
    return World(users, token, blob(target_data), target_data, blob(secret_data), secret_data,
                 os.urandom(300))


async def call(api: Api, route: str, token: Token, world: World) -> Reply:
    target = object_url("laptop", world.target)
    match route:
        case "get_vault":
            return await api.get(url(VAULT, vault="laptop"), token=token)
        case "list_objects":
            return await api.get(url(OBJECTS, vault="laptop", kind="packs"), token=token)
        case "missing":
            body = {"keys": [key_text(world.target), key_text(blob(world.new_data))]}
            return await api.post(url(MISSING, vault="laptop"), token=token, json=body)
        case "put_object":
            return await api.put_object(token, "laptop", world.new_data)
        case "get_object":
            return await api.get(target, token=token)
        case "head_object":
            return await api.head(target, token=token)
        case "delete_object":
            return await api.delete(target, token=token)
    raise AssertionError(route)


def test_table_covers_every_route_and_actor() -> None:
    assert set(EXPECTED) == {(r, a) for r in ROUTES for a in ACTORS}


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("scope", SCOPES, ids=[s.value for s in SCOPES])
@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("route", ROUTES)
async def test_isolation_matrix(shared_api: Api, world: World, route: str, actor: str,
                         scope: Scope) -> None:
    api = shared_api
    token = await api.issue(world.users[actor], (scope,))
    reply = await call(api, route, token, world)
    assert reply.status == EXPECTED[route, actor][SCOPES.index(scope)], reply.body
    if actor == "owner":
        return
    seen = reply.body + str(dict(reply.headers)).encode()
    for leak in (world.target.name.encode(), world.secret.name.encode(), world.target_data,
                 world.secret_data):
        assert leak not in seen
    # The owner's vault is as it was.
    for key in (world.target, world.secret):
        assert (await api.head(object_url("laptop", key), token=world.owner_token)).status == 200
    listed = await api.get(url(OBJECTS, vault="laptop", kind="packs"), token=world.owner_token)
    assert len(listed.json()["objects"]) == 2
