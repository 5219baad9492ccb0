"""RemoteServer and HttpStore beyond the storage contract.

Part one scripts an aiohttp app to give exact answers (token renewal and expiry, error
mapping, misbehaving servers); part two runs against real cairn-server processes (quota,
limits, scopes, a killed server, pagination, batching, TLS).
"""

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web

from client_gui.engine.remote import (
    HttpStore,
    PasswordCredentials,
    RemoteServer,
    TokenCredentials,
    parse_vault_url,
)
from client_gui.engine.tls import (
    TlsPolicy,
    UntrustedCertificate,
    fetch_fingerprint,
    format_fingerprint,
)
from shared.errors import (
    AuthError,
    IntegrityError,
    NotAVault,
    ObjectNotFound,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RangeError,
    StorageError,
    StorageUnavailable,
    TokenExpired,
    UsageError,
    VaultExists,
)
from shared.hashing import object_id
from shared.ids import ObjectKey, ObjectKind
from shared.protocol import paths
from shared.protocol.models import Scope
from tests.conftest import SERVER_PASSWORD, SERVER_USER
from tests.support.certs import ServerCert, make_server_cert
from tests.support.server import CairnServer

HMAC_KEY = b"k" * 64  # the client never verifies signatures: any key makes a readable JWT
DEVICE = "0123456789abcdef0123456789abcdef"
VAULT = "laptop"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def key_for(data: bytes, kind: ObjectKind = ObjectKind.PACK) -> ObjectKey:
    return ObjectKey.of(kind, object_id(data))


def make_token(*, lifetime: int = 3600, age: int = 0, tag: str = "") -> str:
    now = int(time.time())
    claims = {"sub": SERVER_USER, "iat": now - age, "exp": now - age + lifetime, "tag": tag}
    return jwt.encode(claims, HMAC_KEY, algorithm="HS256")


def token_body(token: str) -> dict[str, object]:
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    return {"token": token, "expires_at": exp, "user": SERVER_USER, "device_id": DEVICE,
            "scopes": ["backup", "restore"], "vaults": ["*"]}


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class Fake:
    """A scripted server: routes by (method, path); records what it was sent."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.seen: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.sign_ins = 0
        self.renewals = 0

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def add(handler: Handler) -> Handler:
            self.routes[(method, path)] = handler
            return handler

        return add

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, request.headers.get("Authorization")))
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return error(404, "not_found", f"no route {request.method} {request.path}")
        return await handler(request)

    def sign_in_route(self) -> list[str]:
        """Answer sign-ins with new tokens; returns the list they are appended to."""
        issued: list[str] = []

        @self.route("POST", paths.SIGN_IN)
        async def sign_in(request: web.Request) -> web.Response:
            self.sign_ins += 1
            issued.append(make_token(tag=f"signed-in-{self.sign_ins}"))
            return web.json_response(token_body(issued[-1]))

        return issued


@pytest.fixture
async def fake(aiohttp_server: Callable[..., Awaitable[object]]) -> AsyncIterator[
        tuple[Fake, str]]:
    """A Fake and its base URL."""
    script = Fake()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", script.dispatch)
    server = await aiohttp_server(app)
    yield script, str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]


def bearer(token: str) -> str:
    return f"Bearer {token}"


OBJ = key_for(b"object")
OBJ_PATH = paths.url(paths.OBJECT, vault=VAULT, kind="packs", name=OBJ.name)


# --- parse_vault_url, fingerprints, reprs ---


@pytest.mark.parametrize(("text", "expected"), [
    ("https://backup.example.org/laptop", ("https://backup.example.org", "laptop")),
    ("https://Backup.Example.org:8420/my-vault_1.x/", ("https://backup.example.org:8420",
                                                      "my-vault_1.x")),
    ("https://proxy.example/cairn/laptop", ("https://proxy.example/cairn", "laptop")),
    ("http://127.0.0.1:8420/laptop", ("http://127.0.0.1:8420", "laptop")),
    ("http://127.9.9.9/laptop", ("http://127.9.9.9", "laptop")),
    ("http://localhost:1/v", ("http://localhost:1", "v")),
    ("http://[::1]:8420/v", ("http://[::1]:8420", "v")),
])
def test_parse_vault_url_accepts(text: str, expected: tuple[str, str]) -> None:
    assert parse_vault_url(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("http://backup.example.org/laptop", "use https://backup.example.org/laptop"),
    ("http://10.0.0.1:8420/laptop", "only allowed to this computer"),
    ("ftp://example.org/laptop", "not a vault URL"),
    ("example.org/laptop", "not a vault URL"),
    ("https://example.org", "names no vault"),
    ("https://example.org/", "names no vault"),
    ("https://example.org/-bad", "not a valid vault name"),
    ("https://example.org/a%2Fb", "not a valid vault name"),
    ("https://example.org/a?b=c", "no query"),
    ("https://example.org/a#b", "no query"),
    ("https://example.org:99999/a", "not a vault URL"),
])
def test_parse_vault_url_refuses(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("?", r"\?").replace(".", r"\.")):
        parse_vault_url(text)


@pytest.mark.parametrize("text", ["https://alice:hunter2@example.org/laptop",
                                  "https://alice:hunter2@example.org:99999/laptop",
                                  "ftp://alice:hunter2@example.org/laptop"])
def test_parse_vault_url_never_echoes_a_password(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_vault_url(text)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("url", ["http://example.org", "ftp://127.0.0.1", "https://a:b@h"])
def test_remote_server_refuses_url(url: str) -> None:
    with pytest.raises(UsageError) as caught:
        RemoteServer(url, TokenCredentials(make_token()))
    assert ":b@" not in str(caught.value)


def test_format_fingerprint_pairs_upper_case() -> None:
    assert format_fingerprint("ab" * 32) == ":".join(["AB"] * 32)


def test_tls_policy_normalises_fingerprint() -> None:
    assert TlsPolicy(fingerprint=":".join(["AB"] * 32)).fingerprint == "ab" * 32
    with pytest.raises(UsageError, match="not a SHA-256 certificate fingerprint"):
        TlsPolicy(fingerprint="abcd")


def test_tls_policy_missing_ca_file_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        RemoteServer("https://example.org", TokenCredentials(make_token()),
                     tls=TlsPolicy(ca_file=tmp_path / "nope.pem"))


def test_reprs_hold_no_secrets() -> None:
    token = make_token()
    texts = [
        repr(PasswordCredentials("alice", "hunter2", "laptop")),
        repr(TokenCredentials(token)),
        repr(RemoteServer("http://127.0.0.1:1", TokenCredentials(token))),
        repr(RemoteServer("http://127.0.0.1:1", PasswordCredentials("a", "hunter2", "d"))),
        repr(RemoteServer("http://127.0.0.1:1", TokenCredentials(token)).store(VAULT)),
    ]
    for text in texts:
        assert "hunter2" not in text and token not in text


# --- tokens (scripted server) ---


async def test_password_credentials_sign_in_on_first_request(fake: tuple[Fake, str]) -> None:
    script, url = fake
    issued = script.sign_in_route()

    @script.route("HEAD", OBJ_PATH)
    async def head(request: web.Request) -> web.Response:
        return web.Response(headers={"Content-Length": "6"})

    async with RemoteServer(url, PasswordCredentials("tester", "pw", "laptop")) as server:
        assert (await server.store(VAULT).stat(OBJ)).size == 6
        assert (await server.store(VAULT).stat(OBJ)).size == 6
    assert script.sign_ins == 1
    assert [s[2] for s in script.seen if s[0] == "HEAD"] == [bearer(issued[0])] * 2


async def test_password_credentials_sign_in_again_on_expired_token(
        fake: tuple[Fake, str]) -> None:
    script, url = fake
    issued = script.sign_in_route()
    puts: list[bytes] = []

    @script.route("PUT", OBJ_PATH)
    async def put(request: web.Request) -> web.Response:
        if request.headers["Authorization"] == bearer(issued[0]):
            return error(401, "token_expired", "the device token has expired: sign in again")
        puts.append(await request.read())
        return web.Response(status=201)

    async with RemoteServer(url, PasswordCredentials("tester", "pw", "laptop")) as server:
        await server.store(VAULT).put(OBJ, b"object")
    assert script.sign_ins == 2
    assert puts == [b"object"]


async def test_password_credentials_concurrent_requests_sign_in_once(
        fake: tuple[Fake, str]) -> None:
    script, url = fake
    script.sign_in_route()

    @script.route("HEAD", OBJ_PATH)
    async def head(request: web.Request) -> web.Response:
        return web.Response(headers={"Content-Length": "6"})

    async with RemoteServer(url, PasswordCredentials("tester", "pw", "laptop")) as server:
        store = server.store(VAULT)
        await asyncio.gather(*(store.stat(OBJ) for _ in range(10)))
    assert script.sign_ins == 1


async def test_password_credentials_streamed_put_is_not_replayed(
        fake: tuple[Fake, str]) -> None:
    script, url = fake
    script.sign_in_route()

    @script.route("PUT", OBJ_PATH)
    async def put(request: web.Request) -> web.Response:
        return error(401, "token_expired", "the device token has expired: sign in again")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"obj"
        yield b"ect"

    async with RemoteServer(url, PasswordCredentials("tester", "pw", "laptop")) as server:
        with pytest.raises(TokenExpired):
            await server.store(VAULT).put(OBJ, chunks())
    assert [s[0] for s in script.seen].count("PUT") == 1


async def test_wrong_password_is_auth_error(fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("POST", paths.SIGN_IN)
    async def sign_in(request: web.Request) -> web.Response:
        return error(401, "auth", "wrong user name or password")

    async with RemoteServer(url, PasswordCredentials("tester", "hunter2", "laptop")) as server:
        with pytest.raises(AuthError, match="wrong user name or password") as caught:
            await server.store(VAULT).stat(OBJ)
    assert "hunter2" not in str(caught.value)


async def test_token_credentials_renew_when_a_third_is_left(fake: tuple[Fake, str]) -> None:
    script, url = fake
    old, new = make_token(lifetime=60, age=45), make_token(tag="renewed")
    renewed: list[str] = []

    @script.route("POST", paths.RENEW)
    async def renew(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == bearer(old)
        script.renewals += 1
        return web.json_response(token_body(new))

    @script.route("DELETE", OBJ_PATH)
    async def delete(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == bearer(new)
        return web.Response(status=204)

    async with RemoteServer(url, TokenCredentials(old, renewed.append)) as server:
        await server.store(VAULT).delete(OBJ)
        await server.store(VAULT).delete(OBJ)
    assert renewed == [new]
    assert script.renewals == 1


async def test_token_credentials_failing_to_store_renewal_still_works(
        fake: tuple[Fake, str], caplog: pytest.LogCaptureFixture) -> None:
    script, url = fake
    new = make_token(tag="renewed")

    @script.route("POST", paths.RENEW)
    async def renew(request: web.Request) -> web.Response:
        return web.json_response(token_body(new))

    @script.route("DELETE", OBJ_PATH)
    async def delete(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == bearer(new)
        return web.Response(status=204)

    def store_fails(token: str) -> None:
        raise StorageError("keyring locked")

    old = make_token(lifetime=60, age=45)
    async with RemoteServer(url, TokenCredentials(old, store_fails)) as server:
        await server.store(VAULT).delete(OBJ)
    assert "could not store it: keyring locked" in caplog.text
    assert new not in caplog.text and old not in caplog.text


async def test_password_credentials_renew_instead_of_signing_in(fake: tuple[Fake, str]) -> None:
    script, url = fake
    ageing, new = make_token(lifetime=60, age=45), make_token(tag="renewed")

    @script.route("POST", paths.SIGN_IN)
    async def sign_in(request: web.Request) -> web.Response:
        script.sign_ins += 1
        return web.json_response(token_body(ageing))

    @script.route("POST", paths.RENEW)
    async def renew(request: web.Request) -> web.Response:
        script.renewals += 1
        return web.json_response(token_body(new))

    @script.route("DELETE", OBJ_PATH)
    async def delete(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async with RemoteServer(url, PasswordCredentials("tester", "pw", "laptop")) as server:
        await server.store(VAULT).delete(OBJ)  # with the token just signed in with
        await server.store(VAULT).delete(OBJ)  # renews it first: a third of it is left
    assert (script.sign_ins, script.renewals) == (1, 1)
    assert [s[2] for s in script.seen if s[0] == "DELETE"] == [bearer(ageing), bearer(new)]


async def test_token_credentials_fresh_token_is_not_renewed(fake: tuple[Fake, str]) -> None:
    script, url = fake
    token = make_token(lifetime=60, age=30)

    @script.route("DELETE", OBJ_PATH)
    async def delete(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async with RemoteServer(url, TokenCredentials(token, lambda _: None)) as server:
        await server.store(VAULT).delete(OBJ)
    assert [s[0] for s in script.seen] == ["DELETE"]


async def test_token_credentials_expired_token_says_sign_in_again(
        fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("GET", OBJ_PATH)
    async def get(request: web.Request) -> web.Response:
        return error(401, "token_expired", "the device token has expired: sign in again")

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        with pytest.raises(TokenExpired, match="sign in again with `cairn destination add"):
            await server.store(VAULT).get(OBJ)
    assert len(script.seen) == 1


async def test_token_credentials_expired_renewal_says_sign_in_again(
        fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("POST", paths.RENEW)
    async def renew(request: web.Request) -> web.Response:
        return error(401, "token_expired", "the device token has expired: sign in again")

    async with RemoteServer(url, TokenCredentials(make_token(lifetime=60, age=61))) as server:
        with pytest.raises(TokenExpired, match="has expired; sign in again with `cairn"):
            await server.store(VAULT).stat(OBJ)


async def test_token_credentials_head_401_without_body(fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("HEAD", OBJ_PATH)
    async def head(request: web.Request) -> web.Response:
        return web.Response(status=401)

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        with pytest.raises(AuthError, match="refused the device token") as caught:
            await server.store(VAULT).stat(OBJ)
    assert not isinstance(caught.value, TokenExpired)


async def test_token_credentials_cannot_sign_in(fake: tuple[Fake, str]) -> None:
    async with RemoteServer(fake[1], TokenCredentials(make_token())) as server:
        with pytest.raises(UsageError, match="needs a user name and password"):
            await server.sign_in()


# --- error mapping and misbehaving servers (scripted) ---


@pytest.mark.parametrize(("status", "body", "raised", "message"), [
    (507, {"error": {"code": "quota_exceeded", "message": "quota of 1 MiB exceeded: 1 MiB used"}},
     QuotaExceeded, "quota of 1 MiB exceeded: 1 MiB used"),
    (413, {"error": {"code": "too_large", "message": "objects are at most 1 MiB"}},
     PayloadTooLarge, "objects are at most 1 MiB"),
    (403, {"error": {"code": "forbidden", "message": "this token is append-only"}},
     PermissionDenied, "append-only"),
    (422, {"error": {"code": "integrity", "message": "content does not match its name"}},
     IntegrityError, "does not match"),
    (404, {"error": {"code": "not_a_vault", "message": "no vault laptop"}}, NotAVault,
     "no vault laptop"),
    (502, "<html>Bad Gateway</html>", StorageUnavailable, "answered HTTP 502 Bad Gateway"),
    (503, {"error": {"code": "unavailable", "message": "shutting down"}}, StorageUnavailable,
     "shutting down"),
    (504, "", StorageUnavailable, "answered HTTP 504"),
    (500, "oops", StorageError, "answered HTTP 500"),
    (302, "", StorageError, "answered HTTP 302"),
])
async def test_put_error_answers_map_to_cairn_errors(
        fake: tuple[Fake, str], status: int, body: object, raised: type[Exception],
        message: str) -> None:
    script, url = fake

    @script.route("PUT", OBJ_PATH)
    async def put(request: web.Request) -> web.Response:
        await request.read()
        if isinstance(body, dict):
            return web.json_response(body, status=status)
        return web.Response(status=status, text=str(body), content_type="text/html")

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        with pytest.raises(raised, match=message) as caught:
            await server.store(VAULT).put(OBJ, b"object")
    assert type(caught.value) is raised


async def test_get_short_range_is_storage_error(fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("GET", OBJ_PATH)
    async def get(request: web.Request) -> web.Response:
        return web.Response(status=206, body=b"bj",
                            headers={"Content-Range": "bytes 1-2/6"})

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        with pytest.raises(StorageError, match="short read"):
            await server.store(VAULT).get(OBJ, offset=1, length=4)


async def test_get_range_ignored_by_server_is_sliced(fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("GET", OBJ_PATH)
    async def get(request: web.Request) -> web.Response:
        assert request.headers["Range"] == "bytes=1-3"
        return web.Response(body=b"object")

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        assert await server.store(VAULT).get(OBJ, offset=1, length=3) == b"bje"


async def test_get_range_clipped_by_server_is_range_error(fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("GET", OBJ_PATH)
    async def get(request: web.Request) -> web.Response:
        return web.Response(status=206, body=b"ct", headers={"Content-Range": "bytes 4-5/6"})

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        with pytest.raises(RangeError, match="it has 6 bytes"):
            await server.store(VAULT).get(OBJ, offset=4, length=10)


async def test_invalid_json_answer_is_storage_error(fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("GET", paths.WHOAMI)
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"user": "tester"})

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        with pytest.raises(StorageError, match="sent an invalid answer to who is signed in"):
            await server.whoami()


async def test_listing_that_does_not_advance_is_storage_error(fake: tuple[Fake, str]) -> None:
    script, url = fake
    name = OBJ.name

    @script.route("GET", paths.url(paths.OBJECTS, vault=VAULT, kind="packs"))
    async def listing(request: web.Request) -> web.Response:
        return web.json_response({"objects": [{"name": name, "size": 1}], "next": name})

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        with pytest.raises(StorageError, match="does not advance"):
            [info async for info in server.store(VAULT).list(ObjectKind.PACK)]


async def test_missing_ignores_keys_it_did_not_ask_for(fake: tuple[Fake, str]) -> None:
    script, url = fake
    asked, stranger = key_for(b"asked"), key_for(b"stranger")

    @script.route("POST", paths.url(paths.MISSING, vault=VAULT))
    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"missing": [str(asked), str(stranger)]})

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        assert await server.store(VAULT).missing([asked]) == {asked}


async def test_server_closing_the_connection_is_unavailable(fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("GET", OBJ_PATH)
    async def get(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        with pytest.raises(StorageUnavailable, match=f"{url} closed the connection"):
            await server.store(VAULT).get(OBJ)


async def test_slow_answer_is_unavailable(fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("HEAD", OBJ_PATH)
    async def head(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response()

    timeout = aiohttp.ClientTimeout(sock_connect=1, sock_read=0.1)
    async with RemoteServer(url, TokenCredentials(make_token()), timeout=timeout) as server:
        with pytest.raises(StorageUnavailable, match="did not answer in time"):
            await server.store(VAULT).stat(OBJ)


async def test_nothing_listening_is_unavailable(unused_tcp_port: int) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}"
    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        with pytest.raises(StorageUnavailable, match=f"cannot reach {url}: Connect"):
            await server.store(VAULT).stat(OBJ)


async def test_failing_source_error_propagates(fake: tuple[Fake, str]) -> None:
    script, url = fake

    @script.route("PUT", OBJ_PATH)
    async def put(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=201)

    async def failing() -> AsyncIterator[bytes]:
        yield b"obj"
        raise OSError("source file vanished")

    async with RemoteServer(url, TokenCredentials(make_token())) as server:
        with pytest.raises(OSError, match="source file vanished"):
            await server.store(VAULT).put(OBJ, failing())


async def test_closed_server_refuses_requests(fake: tuple[Fake, str]) -> None:
    server = RemoteServer(fake[1], TokenCredentials(make_token()))
    store = server.store(VAULT)
    await store.close()
    with pytest.raises(StorageError, match="is closed"):
        await store.stat(OBJ)


# --- against real cairn-server processes ---

SMALL_USER, SMALL_PASSWORD = "small", "small user password"
OTHER_USER, OTHER_PASSWORD = "other", "other user password"
_names = iter(f"v{n}" for n in range(1, 1000))


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CairnServer]:
    """A plain-HTTP server whose objects are at most 1 MiB, with three users: SERVER_USER,
    SMALL_USER (quota 1 MiB) and OTHER_USER."""
    server = CairnServer(tmp_path_factory.mktemp("remote")).init(
        max_object_size='"1MiB"', fsync="false")
    server.add_user(SERVER_USER, SERVER_PASSWORD)
    server.add_user(SMALL_USER, SMALL_PASSWORD, quota="1MiB")
    server.add_user(OTHER_USER, OTHER_PASSWORD)
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def tokens(real: CairnServer) -> dict[str, str]:
    """Device tokens (signed in once per module): "tester" (backup, restore), "maintain"
    (tester, + maintain), "small", "other"."""
    sign_in = real.sign_in
    return {
        "tester": sign_in(SERVER_USER, SERVER_PASSWORD).token,
        "maintain": sign_in(SERVER_USER, SERVER_PASSWORD, device="maintenance",
                            scopes=("backup", "restore", "maintain")).token,
        "small": sign_in(SMALL_USER, SMALL_PASSWORD).token,
        "other": sign_in(OTHER_USER, OTHER_PASSWORD).token,
    }


async def new_store(real: CairnServer, token: str, **kwargs: int) -> HttpStore:
    server = RemoteServer(real.url, TokenCredentials(token))
    name = next(_names)
    await server.create_vault(name)
    return server.store(name, **kwargs)


def issue_token(real: CairnServer, token: str, *, issued_ago: int, lifetime: int) -> str:
    """A token for the same user and device as `token`, signed with the server's own key but
    issued `issued_ago` seconds ago and valid for `lifetime` seconds."""
    from server.auth.tokens import load_keys
    from server.config import load_config

    claims = jwt.decode(token, options={"verify_signature": False})
    signer, _ = load_keys(load_config(real.data))
    issued, _ = signer.issue(claims["sub"], claims["uid"], claims["dev"],
                             tuple(Scope(s) for s in claims["scopes"]), tuple(claims["vaults"]),
                             now=time.time() - issued_ago, lifetime=lifetime)
    return issued


async def test_real_password_sign_in_and_vaults(real: CairnServer) -> None:
    creds = PasswordCredentials(SERVER_USER, SERVER_PASSWORD, "laptop")
    name = next(_names)
    async with RemoteServer(real.url, creds) as server:
        created = await server.create_vault(name)
        assert (created.name, created.objects, created.size) == (name, 0, 0)
        assert (await server.vault_info(name)).name == name
        assert name in [v.name for v in (await server.list_vaults()).vaults]
        assert (await server.whoami()).user == SERVER_USER
        with pytest.raises(VaultExists):
            await server.create_vault(name)
        with pytest.raises(NotAVault):
            await server.vault_info("absent")


async def test_real_wrong_password_is_auth_error(real: CairnServer) -> None:
    creds = PasswordCredentials(SERVER_USER, "not the password", "laptop")
    async with RemoteServer(real.url, creds) as server:
        with pytest.raises(AuthError) as caught:
            await server.whoami()
    assert "not the password" not in str(caught.value)


async def test_real_other_users_vault_is_not_a_vault(real: CairnServer,
                                                     tokens: dict[str, str]) -> None:
    mine = await new_store(real, tokens["tester"])
    await mine.put(OBJ, b"object")
    async with RemoteServer(real.url, TokenCredentials(tokens["other"])) as other:
        with pytest.raises(NotAVault):
            await other.vault_info(mine.vault)
        with pytest.raises(NotAVault):
            await other.store(mine.vault).get(OBJ)
    await mine.close()


async def test_real_quota_exceeded_says_so(real: CairnServer, tokens: dict[str, str]) -> None:
    store = await new_store(real, tokens["small"])
    first, second = random.randbytes(600 << 10), random.randbytes(600 << 10)
    await store.put(key_for(first), first)
    with pytest.raises(QuotaExceeded, match="quota of 1.0 MiB exceeded"):
        await store.put(key_for(second), second)
    with pytest.raises(ObjectNotFound):
        await store.stat(key_for(second))
    await store.close()


async def test_real_too_large_object_is_refused(real: CairnServer,
                                                tokens: dict[str, str]) -> None:
    store = await new_store(real, tokens["tester"])
    data = random.randbytes((1 << 20) + 1)
    with pytest.raises(PayloadTooLarge):
        await store.put(key_for(data), data)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 64 << 10):
            yield data[start : start + (64 << 10)]

    with pytest.raises(PayloadTooLarge):
        await store.put(key_for(data), pieces())
    with pytest.raises(ObjectNotFound):
        await store.stat(key_for(data))
    await store.close()


async def test_real_append_only_token_cannot_delete(real: CairnServer,
                                                    tokens: dict[str, str]) -> None:
    store = await new_store(real, tokens["tester"])
    await store.put(OBJ, b"object")
    with pytest.raises(PermissionDenied, match="append-only"):
        await store.delete(OBJ)
    assert await store.get(OBJ) == b"object"
    await store.close()


async def test_real_token_for_other_vaults_is_forbidden(real: CairnServer,
                                                      tokens: dict[str, str]) -> None:
    store = await new_store(real, tokens["tester"])
    narrow = real.sign_in(SERVER_USER, SERVER_PASSWORD, device="narrow", vaults=("elsewhere",))
    async with RemoteServer(real.url, TokenCredentials(narrow.token)) as server:
        with pytest.raises(PermissionDenied):
            await server.store(store.vault).get(OBJ)
    await store.close()


async def test_real_garbled_token_is_auth_error(real: CairnServer) -> None:
    async with RemoteServer(real.url, TokenCredentials("not-a-token")) as server:
        with pytest.raises(AuthError, match="sign in again with `cairn destination add"):
            await server.whoami()


async def test_real_expired_token_says_sign_in_again(real: CairnServer,
                                                     tokens: dict[str, str]) -> None:
    expired = issue_token(real, tokens["tester"], issued_ago=7200, lifetime=3600)
    async with RemoteServer(real.url, TokenCredentials(expired)) as server:
        with pytest.raises(TokenExpired, match=f"token for {real.url} has expired; sign in"):
            await server.whoami()


async def test_real_token_renewed_before_expiry(real: CairnServer,
                                                tokens: dict[str, str]) -> None:
    ageing = issue_token(real, tokens["tester"], issued_ago=3000, lifetime=3600)
    renewed: list[str] = []
    async with RemoteServer(real.url, TokenCredentials(ageing, renewed.append)) as server:
        assert (await server.whoami()).user == SERVER_USER
        assert (await server.whoami()).user == SERVER_USER
    assert len(renewed) == 1 and renewed[0] != ageing
    claims = jwt.decode(renewed[0], options={"verify_signature": False})
    assert claims["exp"] > time.time() + 3000
    async with RemoteServer(real.url, TokenCredentials(renewed[0])) as server:
        assert (await server.whoami()).user == SERVER_USER


async def test_real_range_reads(real: CairnServer, tokens: dict[str, str]) -> None:
    store = await new_store(real, tokens["tester"])
    data = random.randbytes(1000)
    await store.put(key_for(data), data)
    for offset, length in [(0, 1), (1, 998), (999, 1), (500, None), (1000, None), (1000, 0)]:
        end = len(data) if length is None else offset + length
        assert await store.get(key_for(data), offset=offset, length=length) == data[offset:end]
    for offset, length in [(0, 1001), (999, 2), (1001, None), (1001, 0)]:
        with pytest.raises(RangeError):
            await store.get(key_for(data), offset=offset, length=length)
    await store.close()


async def test_real_list_follows_pages(real: CairnServer, tokens: dict[str, str]) -> None:
    store = await new_store(real, tokens["tester"], list_limit=3)
    blobs = [random.randbytes(10) for _ in range(10)]
    for data in blobs:
        await store.put(key_for(data), data)
    listed = [info.key async for info in store.list(ObjectKind.PACK)]
    assert sorted(listed) == sorted(key_for(data) for data in blobs)
    await store.close()


async def test_real_missing_asks_in_batches(real: CairnServer, tokens: dict[str, str]) -> None:
    store = await new_store(real, tokens["tester"])
    stored = [random.randbytes(10) for _ in range(3)]
    for data in stored:
        await store.put(key_for(data), data)
    absent = {ObjectKey(ObjectKind.PACK, f"{n:064x}") for n in range(paths.MAX_MISSING_BATCH + 5)}
    asked = [*absent, *(key_for(data) for data in stored)]
    assert await store.missing(asked) == absent
    await store.close()


async def test_real_killed_server_is_unavailable_then_back(
        cairn_servers: Callable[..., CairnServer]) -> None:
    real = cairn_servers()
    token = real.sign_in(SERVER_USER, SERVER_PASSWORD).token
    store = await new_store(real, token)
    await store.put(OBJ, b"object")
    real.kill(signal.SIGKILL)
    with pytest.raises(StorageUnavailable, match=f"{real.url}"):
        await store.get(OBJ)
    real.start()
    assert await store.get(OBJ) == b"object"
    await store.close()


# --- TLS, against a real https server ---


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    return make_server_cert(tmp_path_factory.mktemp("cert"))


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory, tls_cert: ServerCert) -> Iterator[
        tuple[CairnServer, str]]:
    """An https server with a certificate from a private CA, and a device token for it."""
    server = CairnServer(tmp_path_factory.mktemp("https"), tls=tls_cert).init(fsync="false")
    server.add_user(SERVER_USER, SERVER_PASSWORD)
    server.start()
    yield server, server.sign_in(SERVER_USER, SERVER_PASSWORD).token
    server.stop()


async def test_tls_ca_bundle_is_trusted(https: tuple[CairnServer, str],
                                        tls_cert: ServerCert) -> None:
    server, token = https
    tls = TlsPolicy(ca_file=tls_cert.ca)
    async with RemoteServer(server.url, TokenCredentials(token), tls=tls) as remote:
        assert (await remote.whoami()).user == SERVER_USER


async def test_tls_pinned_fingerprint_is_trusted(https: tuple[CairnServer, str],
                                                 tls_cert: ServerCert) -> None:
    server, token = https
    tls = TlsPolicy(fingerprint=format_fingerprint(tls_cert.fingerprint))
    async with RemoteServer(server.url, TokenCredentials(token), tls=tls) as remote:
        assert (await remote.whoami()).user == SERVER_USER


async def test_tls_wrong_pin_is_refused(https: tuple[CairnServer, str]) -> None:
    server, token = https
    tls = TlsPolicy(fingerprint="ab" * 32)
    async with RemoteServer(server.url, TokenCredentials(token), tls=tls) as remote:
        with pytest.raises(UntrustedCertificate, match="is not the pinned one"):
            await remote.whoami()


async def test_tls_unknown_ca_is_not_trusted(https: tuple[CairnServer, str]) -> None:
    server, token = https
    async with RemoteServer(server.url, TokenCredentials(token)) as remote:
        with pytest.raises(UntrustedCertificate,
                           match="is not trusted .*`cairn destination add .* --cacert FILE"):
            await remote.whoami()


async def test_tls_fetch_fingerprint_without_trust(https: tuple[CairnServer, str],
                                                   tls_cert: ServerCert) -> None:
    assert await fetch_fingerprint(https[0].url) == tls_cert.fingerprint


async def test_tls_fetch_fingerprint_needs_https() -> None:
    with pytest.raises(UsageError, match="only an https:// server"):
        await fetch_fingerprint("http://127.0.0.1:1")


async def test_tls_fetch_fingerprint_of_nothing_is_unavailable(unused_tcp_port: int) -> None:
    with pytest.raises(StorageUnavailable, match="cannot reach"):
        await fetch_fingerprint(f"https://127.0.0.1:{unused_tcp_port}")


async def test_tls_fetch_fingerprint_of_plain_http_is_storage_error(real: CairnServer) -> None:
    with pytest.raises(StorageError, match="TLS handshake") as caught:
        await fetch_fingerprint(real.url.replace("http://", "https://"))
    assert not isinstance(caught.value, StorageUnavailable)


async def test_tls_to_plain_http_server_is_storage_error(real: CairnServer,
                                                         tokens: dict[str, str]) -> None:
    url = real.url.replace("http://", "https://")
    async with RemoteServer(url, TokenCredentials(tokens["tester"])) as remote:
        with pytest.raises(StorageError, match="TLS handshake") as caught:
            await remote.whoami()
    assert not isinstance(caught.value, StorageUnavailable)
