"""Server test fixtures: a fresh data folder (`server_config`), the app under the aiohttp test
client wrapped as `api` (every response is checked against the OpenAPI document), and helpers
that create users, tokens, vaults and objects through the server's own Database/AuthService.
"""

import dataclasses
import io
import json
import shutil
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

from server.app import create_app
from server.auth.passwords import hash_password
from server.config import ServerConfig, init_data_dir, load_config
from server.db.database import UserRecord
from server.keys import AUTH, CONFIG, DB, METRICS
from shared.hashing import object_id
from shared.ids import ObjectKey, ObjectKind
from shared.protocol.models import ALL_VAULTS, DEFAULT_SCOPES, Scope
from shared.protocol.paths import OBJECT, VAULTS, url
from tests.server.openapi_check import check_response

PASSWORD = "correct horse battery staple"
MAX_OBJECT = 1 << 20  # the smallest limit the config allows: cheap 413 tests

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture(scope="session")
def password_hash() -> str:
    """One Argon2id hash of PASSWORD for every user (hashing costs ~0.1 s)."""
    return hash_password(PASSWORD)


@pytest.fixture(scope="session")
def data_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `cairn-server init` data folder, copied by each test (init costs ~40 ms)."""
    return init_data_dir(tmp_path_factory.mktemp("template") / "data").data_dir


@pytest.fixture
def server_config(tmp_path: Path, data_template: Path) -> ServerConfig:
    """A freshly initialised data folder; fsync off and a 1 MiB object limit for speed."""
    shutil.copytree(data_template, tmp_path / "data")
    config = load_config(tmp_path / "data")
    return dataclasses.replace(config, fsync=False, max_object_size=MAX_OBJECT)


@dataclass(frozen=True)
class Token:
    value: str
    device_id: str
    user: UserRecord


@dataclass(frozen=True)
class Reply:
    """A response, read completely (and checked against the OpenAPI document)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        code: str = self.json()["error"]["code"]
        return code

    @property
    def message(self) -> str:
        message: str = self.json()["error"]["message"]
        return message


def blob(data: bytes, kind: ObjectKind = ObjectKind.PACK) -> ObjectKey:
    """The key an object with these bytes is stored under."""
    return ObjectKey.of(kind, object_id(data))


def object_url(vault: str, key: ObjectKey) -> str:
    return url(OBJECT, vault=vault, kind=key.kind.value, name=key.name)


class Api:
    """The app behind the aiohttp test client, plus set-up helpers that use its services."""

    def __init__(self, client: TestClient[web.Request, web.Application],
                 password_hash: str) -> None:
        self.client = client
        self._hash = password_hash

    @property
    def app(self) -> web.Application:
        return self.client.app

    @property
    def config(self) -> ServerConfig:
        return self.app[CONFIG]

    async def request(self, method: str, path: Any, *, token: Token | str | None = None,
                      headers: dict[str, str] | None = None, **kwargs: Any) -> Reply:
        headers = dict(headers or {})
        if token is not None:
            value = token.value if isinstance(token, Token) else token
            headers["Authorization"] = f"Bearer {value}"
        async with self.client.request(method, path, headers=headers, **kwargs) as resp:
            body = await resp.read()
            check_response(method, resp.url.raw_path, resp.status,
                           resp.headers.get("Content-Type", ""), body)
            return Reply(resp.status, resp.headers, body)

    async def get(self, path: Any, **kwargs: Any) -> Reply:
        return await self.request("GET", path, **kwargs)

    async def head(self, path: Any, **kwargs: Any) -> Reply:
        return await self.request("HEAD", path, **kwargs)

    async def put(self, path: Any, **kwargs: Any) -> Reply:
        return await self.request("PUT", path, **kwargs)

    async def post(self, path: Any, **kwargs: Any) -> Reply:
        return await self.request("POST", path, **kwargs)

    async def delete(self, path: Any, **kwargs: Any) -> Reply:
        return await self.request("DELETE", path, **kwargs)

    # ---- set-up through the server's own services ---------------------------------------

    async def add_user(self, name: str, *, admin: bool = False,
                       quota: int | None = None) -> UserRecord:
        return await self.app[DB].add_user(name, self._hash, admin=admin, quota=quota)

    async def issue(self, user: UserRecord, scopes: tuple[Scope, ...] = DEFAULT_SCOPES,
                    vaults: tuple[str, ...] = (ALL_VAULTS,), *, now: float | None = None,
                    lifetime: int | None = None) -> Token:
        """A token for a new device of `user`, signed by the server's own key."""
        device = await self.app[DB].add_device(user.id, "test-device", scopes, vaults)
        value, _ = self.app[AUTH].signer.issue(user.name, user.id, device.id, scopes, vaults,
                                               now=now, lifetime=lifetime)
        return Token(value, device.id, user)

    async def create_vault(self, token: Token, name: str) -> None:
        reply = await self.post(VAULTS, token=token, json={"name": name})
        assert reply.status == 201, reply.body

    async def put_object(self, token: Token, vault: str, data: bytes | AsyncIterable[bytes],
                         key: ObjectKey | None = None, **kwargs: Any) -> Reply:
        if key is None:
            assert isinstance(data, bytes)
            key = blob(data)
        body = io.BytesIO(data) if isinstance(data, bytes) else data  # sent with Content-Length
        return await self.put(object_url(vault, key), token=token, data=body, **kwargs)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.app[METRICS].registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
def make_api(aiohttp_client: ClientFactory, server_config: ServerConfig,
             password_hash: str) -> ApiFactory:
    """Start the app for `config` (default: server_config, with any field overrides)."""

    async def make(config: ServerConfig | None = None, **changes: Any) -> Api:
        config = dataclasses.replace(config or server_config, **changes)
        return Api(await aiohttp_client(create_app(config)), password_hash)

    return make


@pytest.fixture
async def api(make_api: ApiFactory) -> Api:
    return await make_api()


@dataclass(frozen=True)
class Owner:
    """A user with a backup+restore token and one vault, `laptop`."""

    user: UserRecord
    token: Token
    vault: str = "laptop"


@pytest.fixture
async def owner(api: Api) -> Owner:
    user = await api.add_user("alice")
    token = await api.issue(user, (Scope.BACKUP, Scope.RESTORE, Scope.MAINTAIN))
    await api.create_vault(token, "laptop")
    return Owner(user, token)
