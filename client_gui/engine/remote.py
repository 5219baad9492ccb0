"""Vaults on a cairn-server: RemoteServer (one HTTP(S) connection pool, sign-in, tokens) and
HttpStore (an ObjectStore + SupportsMissing over API v1, in client_gui.engine.http_store).

Errors come back as the CairnError class the server raised (shared.protocol.errors); a server
that cannot be reached, times out or answers 502/503/504 gives StorageUnavailable naming it
(the CLI wraps HttpStore in RetryingStore). A certificate that fails verification gives
UntrustedCertificate, which retrying cannot fix. Tokens and passwords never appear in logs,
exception messages or reprs.
"""

import asyncio
import io
import ipaddress
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self, TypeVar

import aiohttp
import jwt
from multidict import CIMultiDictProxy
from yarl import URL

from client_gui.engine.http_store import HttpStore
from client_gui.engine.tls import SYSTEM_CAS, TlsPolicy, client_ssl, fingerprint_mismatch, untrusted
from shared.errors import (
    AuthError,
    CairnError,
    StorageError,
    StorageUnavailable,
    TokenExpired,
    UsageError,
)
from shared.protocol import paths
from shared.protocol.errors import error_from_response
from shared.protocol.models import (
    ALL_VAULTS,
    DEFAULT_SCOPES,
    CreateVault,
    Scope,
    SignInRequest,
    TokenResponse,
    VaultInfo,
    VaultList,
    Whoami,
    validate_vault_name,
)
from shared.storage.base import ObjectData

__all__ = ["DEFAULT_CONNECTIONS", "DEFAULT_TIMEOUT", "Credentials", "HttpStore",
           "PasswordCredentials", "RemoteServer", "Reply", "TokenCredentials", "parse_vault_url"]

logger = logging.getLogger(__name__)

# Connect within 10 s (a pool slot may take longer: no limit on that); the read timeout runs
# between received bytes and starts once a request body is sent, so it covers the server
# hashing and syncing a 64 MiB pack and slow downloads alike.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=10, sock_read=120)
DEFAULT_CONNECTIONS = 8
_USER_AGENT = "cairn-client/1"
_PIECE = 1 << 20
# CPython before 3.12.8 (and 3.13.0) can leave closed TLS transports open forever (e.g. after a
# pinned-fingerprint mismatch); aiohttp aborts them when asked, and warns if asked needlessly.
_CLEANUP_CLOSED = sys.version_info < (3, 12, 8) or (3, 13, 0) <= sys.version_info < (3, 13, 1)

T = TypeVar("T")


# An upload of N bytes may take 120 s + N / 16 KiB/s (a 16 MiB pack: ~19 minutes) before it
# counts as lost and is retried.
_UPLOAD_GRACE = 120.0
_SLOWEST_LINK = 16 << 10

_USERINFO_RE = re.compile(r"//[^/@?#]*@")


def parse_vault_url(text: str) -> tuple[str, str]:
    """`https://HOST[:PORT][/PREFIX]/VAULT` -> (`https://HOST[:PORT][/PREFIX]`, `VAULT`).

    UsageError for anything else: another scheme, a user name or password in the URL, a query,
    no vault name, or plain http:// to a host other than this computer (use https)."""
    hint = "expected https://HOST[:PORT]/VAULT"
    text = _USERINFO_RE.sub("//***@", text)  # never echo a password typed into the URL
    try:
        url = URL(text.strip())
    except ValueError as exc:
        raise UsageError(f"not a vault URL: {text[:200]!r} ({hint})") from exc
    if url.user is not None or url.password is not None or "***@" in text:
        # The text may hold a password: do not echo it.
        raise UsageError("a vault URL must not contain a user name or password; "
                         "cairn asks for them when you add the destination")
    if url.scheme not in ("http", "https") or not url.host:
        raise UsageError(f"not a vault URL: {text[:200]!r} ({hint})")
    if url.query_string or url.fragment:
        raise UsageError(f"a vault URL has no query or fragment: {text[:200]!r} ({hint})")
    prefix, _, name = url.raw_path.rstrip("/").rpartition("/")
    if not name:
        raise UsageError(f"the URL names no vault: {text[:200]!r} ({hint})")
    validate_vault_name(name)
    if url.scheme == "http" and not _is_loopback(url.host):
        raise UsageError(
            f"plain http:// is only allowed to this computer; use https://{url.raw_authority}"
            f"{url.raw_path} so that passwords, tokens and backups are encrypted in transit")
    return f"{url.scheme}://{url.raw_authority}{prefix}", name


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class PasswordCredentials:
    """Sign in with a user name and password (again whenever the token expires).

    Each sign-in registers `device` (a human name, e.g. the host name) on the server."""

    user: str
    password: str = field(repr=False)
    device: str
    scopes: tuple[Scope, ...] = DEFAULT_SCOPES
    vaults: tuple[str, ...] = (ALL_VAULTS,)


@dataclass(frozen=True)
class TokenCredentials:
    """A stored device token. Renewed through /auth/renew when less than a third of its
    lifetime is left; `on_renewed(new_token)` is then called (the CLI stores it; a CairnError
    it raises is logged, not raised). Once the token has expired it cannot be renewed:
    requests raise TokenExpired."""

    token: str = field(repr=False)
    on_renewed: Callable[[str], None] | None = None


Credentials = PasswordCredentials | TokenCredentials


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    issued_at: float | None
    expires_at: float | None

    @classmethod
    def of(cls, value: str, expires_at: float | None = None) -> "_Token":
        """A token with its times read from its own claims (not verified: only the server
        can, and only the server decides; the times only tell us when to renew)."""
        try:
            claims = jwt.decode(value, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            claims = {}
        issued, expires = claims.get("iat"), claims.get("exp")
        if expires_at is None and isinstance(expires, int | float):
            expires_at = float(expires)
        return cls(value, float(issued) if isinstance(issued, int | float) else None, expires_at)

    def renewal_due(self, now: float) -> bool:
        if self.issued_at is None or self.expires_at is None:
            return False
        return self.expires_at - now < (self.expires_at - self.issued_at) / 3

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True)
class Reply:
    """A complete answer: status, headers and the whole body."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes


class RemoteServer:
    """One cairn-server: a bounded connection pool and the signed-in identity. Safe for
    concurrent use by many tasks of one event loop; close() it (or `async with`) when done.

    Construction connects to nothing (it raises UsageError for a bad URL, plain http:// to
    another computer, or an unreadable CA file); the session is opened, and the user signed
    in, on the first request."""

    def __init__(self, base_url: str, credentials: Credentials, *, tls: TlsPolicy = SYSTEM_CAS,
                 connections: int = DEFAULT_CONNECTIONS,
                 timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
                 clock: Callable[[], float] = time.time) -> None:
        url = URL(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.host or url.user is not None:
            raise UsageError(f"not a cairn-server URL: {url.with_user(None)!s:.200}")
        if url.scheme == "http" and not _is_loopback(url.host):
            raise UsageError(f"plain http:// is only allowed to this computer; use "
                             f"https://{url.raw_authority}")
        self._base = str(url)
        self._credentials = credentials
        self._ssl = client_ssl(tls) if url.scheme == "https" else None
        self._connections = connections
        self._timeout = timeout
        self._clock = clock
        self._http: aiohttp.ClientSession | None = None
        self._closed = False
        self._token = _Token.of(credentials.token) if isinstance(
            credentials, TokenCredentials) else None
        self._token_lock: asyncio.Lock | None = None  # made in the loop that uses it

    @property
    def base_url(self) -> str:
        return self._base

    def __repr__(self) -> str:
        who = (self._credentials.user if isinstance(self._credentials, PasswordCredentials)
               else "stored token")
        return f"RemoteServer({self._base!r}, {who})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # --- the API ---

    async def sign_in(self) -> TokenResponse:
        """Sign in now with the PasswordCredentials (a new device token; UsageError for
        TokenCredentials): AuthError for a wrong user or password, RateLimited after too many."""
        async with self._lock():
            return await self._sign_in_locked()

    async def renew(self) -> TokenResponse:
        """Renew the current token now (signing in first if there is none); TokenExpired if
        a stored token has already expired. Calls `on_renewed` for TokenCredentials."""
        async with self._lock():
            if self._token is None:
                await self._sign_in_locked()
            return await self._renew_locked()

    async def whoami(self) -> Whoami:
        reply = await self.request("GET", paths.WHOAMI, what="ask who is signed in")
        return self.parse(Whoami.from_json, reply, "who is signed in")

    async def list_vaults(self) -> VaultList:
        reply = await self.request("GET", paths.VAULTS, what="list vaults")
        return self.parse(VaultList.from_json, reply, "list vaults")

    async def create_vault(self, name: str) -> VaultInfo:
        """Create the signed-in user's vault `name`: VaultExists if it is there already."""
        body = CreateVault(validate_vault_name(name)).to_json()
        reply = await self.request("POST", paths.VAULTS, what=f"create vault {name}",
                                    json_body=body, ok=(200, 201))
        return self.parse(VaultInfo.from_json, reply, f"create vault {name}")

    async def vault_info(self, name: str) -> VaultInfo:
        """The user's vault `name`: NotAVault if there is none."""
        path = paths.url(paths.VAULT, vault=validate_vault_name(name))
        reply = await self.request("GET", path, what=f"look up vault {name}")
        return self.parse(VaultInfo.from_json, reply, f"look up vault {name}")

    def store(self, vault: str, *, list_limit: int = paths.DEFAULT_LIST_LIMIT) -> HttpStore:
        """The ObjectStore of the user's vault `vault` (which must exist: see create_vault).
        Closing the store closes this server."""
        return HttpStore(self, validate_vault_name(vault), list_limit=list_limit)

    async def close(self) -> None:
        """Close the connection pool; the server object is not used afterwards."""
        self._closed = True
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    # --- tokens ---

    def _lock(self) -> asyncio.Lock:
        if self._token_lock is None:
            self._token_lock = asyncio.Lock()
        return self._token_lock

    async def _current_token(self) -> str:
        """A token to send: signs in if there is none, renews one that is due."""
        async with self._lock():
            if self._token is None:
                await self._sign_in_locked()
            elif self._token.renewal_due(self._clock()):
                await self._renew_locked()
            assert self._token is not None
            return self._token.value

    async def _sign_in_locked(self) -> TokenResponse:
        creds = self._credentials
        if not isinstance(creds, PasswordCredentials):
            raise UsageError(f"signing in to {self._base} needs a user name and password")
        request = SignInRequest(creds.user, creds.password, creds.device, creds.scopes,
                                creds.vaults)
        reply = await self.request("POST", paths.SIGN_IN, what=f"sign in as {creds.user}",
                                    json_body=request.to_json(), auth=False)
        response = self.parse(TokenResponse.from_json, reply, "sign in")
        self._token = _Token.of(response.token, float(response.expires_at))
        logger.info("signed in to %s as %s (device %s)", self._base, response.user,
                    response.device_id)
        return response

    async def _renew_locked(self) -> TokenResponse:
        assert self._token is not None
        headers = {"Authorization": f"Bearer {self._token.value}"}
        try:
            reply = await self.request("POST", paths.RENEW, what="renew the device token",
                                        headers=headers, auth=False)
        except AuthError as exc:
            if isinstance(self._credentials, PasswordCredentials):
                return await self._sign_in_locked()
            raise self._token_error(exc) from exc
        response = self.parse(TokenResponse.from_json, reply, "renew the device token")
        self._token = _Token.of(response.token, float(response.expires_at))
        logger.info("renewed the device token for %s", self._base)
        if isinstance(self._credentials, TokenCredentials) and self._credentials.on_renewed:
            try:
                self._credentials.on_renewed(response.token)
            except CairnError as exc:
                # The new token works for this run; the stored one until it expires.
                logger.warning("renewed the device token for %s but could not store it: %s",
                               self._base, exc)
        return response

    async def _rejected(self, used: str) -> None:
        """The server refused token `used` (401): sign in again, unless another task did."""
        async with self._lock():
            if self._token is None or self._token.value == used:
                await self._sign_in_locked()

    def _token_error(self, error: CairnError) -> CairnError:
        """A 401 with TokenCredentials: there is no password to sign in again with."""
        if not isinstance(error, AuthError):
            return error
        again = f"sign in again with `cairn destination add {self._base}`"
        if isinstance(error, TokenExpired) or (
                self._token is not None and self._token.expired(self._clock())):
            return TokenExpired(f"the device token for {self._base} has expired; {again}")
        return AuthError(f"{self._base} refused the device token ({error}); {again}")

    # --- requests ---

    def _session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise StorageError(f"the connection to {self._base} is closed")
        if self._http is None:
            connector = aiohttp.TCPConnector(limit=self._connections,
                                             ssl=self._ssl if self._ssl is not None else True,
                                             enable_cleanup_closed=_CLEANUP_CLOSED)
            self._http = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": _USER_AGENT})
        return self._http

    async def request(self, method: str, path: str, *, what: str,
                      ok: Collection[int] = (200,), json_body: object = None,
                      data: ObjectData | None = None,
                      headers: Mapping[str, str] | None = None,
                      params: Mapping[str, str] | None = None, auth: bool = True) -> Reply:
        """Send one API request (with a token when `auth`) and return the reply if its status
        is in `ok`; any other answer raises its CairnError (`what` names the request in
        messages). A request refused with 401 is sent once more after signing in again, when
        it can be (PasswordCredentials, not a streamed body)."""
        replayable = data is None or isinstance(data, bytes | memoryview)
        retried = False
        while True:
            all_headers = dict(headers or {})
            token = None
            if auth:
                token = await self._current_token()
                all_headers["Authorization"] = f"Bearer {token}"
            reply = await self._send(method, path, what, all_headers, json_body, data, params)
            if reply.status in ok:
                return reply
            error = self._response_error(reply, what)
            if token is None or reply.status != 401:
                raise error
            if not isinstance(self._credentials, PasswordCredentials):
                raise self._token_error(error)
            if retried or not replayable:
                raise error
            logger.info("%s refused the device token (%s); signing in again", self._base,
                        error.code)
            await self._rejected(token)
            retried = True

    async def _send(self, method: str, path: str, what: str, headers: dict[str, str],
                    json_body: object, data: ObjectData | None,
                    params: Mapping[str, str] | None) -> Reply:
        http = self._session()
        # aiohttp writes a BytesIO in pieces, yielding to the loop between them (and warns
        # about big raw bytes); it still sends a Content-Length. A new one each attempt.
        # (A memoryview is copied once by BytesIO: a pack assembled in a reused buffer.)
        whole = data if isinstance(data, bytes | memoryview) else None
        body = io.BytesIO(whole) if whole is not None and len(whole) > _PIECE else data
        # aiohttp's read timeout starts only once the body is sent: an upload whose connection
        # silently died (laptop asleep, Wi-Fi hand-over) gets a deadline of its own instead.
        deadline = _UPLOAD_GRACE + len(whole) / _SLOWEST_LINK if whole is not None else None
        try:
            async with asyncio.timeout(deadline), http.request(
                    method, self._base + path, headers=headers, params=params, json=json_body,
                    data=body, allow_redirects=False) as resp:
                body = await resp.read()
                logger.debug("%s %s -> %d (%d bytes)", method, path, resp.status, len(body))
                return Reply(resp.status, resp.reason or "", resp.headers, body)
        except aiohttp.ClientError as exc:
            raise self._transport_error(exc, what) from exc
        except TimeoutError as exc:
            raise StorageUnavailable(f"{self._base} did not answer in time ({what})") from exc

    def _transport_error(self, exc: aiohttp.ClientError, what: str) -> CairnError:
        base = self._base
        if isinstance(exc, aiohttp.ServerFingerprintMismatch):
            return fingerprint_mismatch(base, exc.expected, exc.got)
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cert_error = exc.certificate_error
            reason = getattr(cert_error, "verify_message", None) or str(cert_error)
            return untrusted(base, reason)
        if isinstance(exc, aiohttp.ClientSSLError):
            return StorageError(f"TLS handshake with {base} failed ({exc.os_error}); "
                                "is it an https server?")
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or str(exc.os_error) or "cannot connect"
            return StorageUnavailable(f"cannot reach {base}: {reason}")
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return StorageUnavailable(f"{base} did not answer in time ({what})")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return StorageUnavailable(f"{base} closed the connection during {what}")
        if isinstance(exc, aiohttp.ClientPayloadError):
            return StorageUnavailable(f"the answer of {base} was cut off during {what}")
        if isinstance(exc, aiohttp.ClientOSError):
            reason = exc.strerror or str(exc)
            return StorageUnavailable(f"connection to {base} failed during {what}: {reason}")
        if isinstance(exc, aiohttp.ClientConnectionError):
            return StorageUnavailable(f"connection to {base} failed during {what}: {exc}")
        return StorageError(f"{what} on {base} failed: {exc}")

    def _response_error(self, reply: Reply, what: str) -> CairnError:
        try:
            body: object = json.loads(reply.body) if reply.body else None
        except ValueError:
            body = None
        fallback = f"{self._base} answered HTTP {reply.status} {reply.reason} to {what}".rstrip()
        error = error_from_response(reply.status, body, fallback)
        if type(error) is CairnError:  # a status without a meaning here (3xx, 418, ...)
            return StorageError(str(error))
        return error

    def parse(self, parse: Callable[[object], T], reply: Reply, what: str) -> T:
        """`parse` (a model's from_json) applied to the reply's JSON body; StorageError if
        the body is not what the protocol promises."""
        try:
            return parse(json.loads(reply.body))
        except (ValueError, UsageError) as exc:
            raise StorageError(f"{self._base} sent an invalid answer to {what}: {exc}") from exc

