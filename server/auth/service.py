"""The authentication service: sign-in, token renewal and per-request authentication.

Every request's token is checked against the database too (device not revoked, user not
disabled), so `cairn-server device revoke` and `user disable` take effect at once, also on a
server that is running while the admin CLI changes the database.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Self

from server.auth.passwords import verify_password
from server.auth.ratelimit import SignInLimiter
from server.auth.tokens import Claims, TokenSigner, TokenVerifier, load_keys
from server.config import ServerConfig
from server.db.database import AsyncDatabase, UserRecord
from shared.errors import AuthError, PermissionDenied
from shared.protocol.models import ALL_VAULTS, Scope, SignInRequest, TokenResponse, Whoami

logger = logging.getLogger(__name__)

# last_seen is written at most this often per device (a backup makes thousands of requests).
_TOUCH_INTERVAL = 60
# Password checks at once (each takes ~0.1 s of CPU and 64 MiB): a burst of sign-ins queues
# here instead of filling the thread pool that storage calls use.
_PASSWORD_CHECKS = 2


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the verified token, narrowed by the device's current scopes."""

    user_id: int
    user: str
    device_id: str
    scopes: tuple[Scope, ...]
    vaults: tuple[str, ...]
    expires_at: int
    admin: bool

    def has_any(self, *scopes: Scope) -> bool:
        return any(s in self.scopes for s in scopes)

    def check_vault(self, name: str) -> None:
        """PermissionDenied unless the token covers the user's vault `name`."""
        if ALL_VAULTS not in self.vaults and name not in self.vaults:
            raise PermissionDenied(f"this device's token does not cover vault {name}")


class AuthService:
    def __init__(self, db: AsyncDatabase, signer: TokenSigner, verifier: TokenVerifier,
                 limiter: SignInLimiter) -> None:
        self._db = db
        self.signer = signer
        self._verifier = verifier
        self._limiter = limiter
        self._touched: dict[str, float] = {}
        self._password_checks = asyncio.Semaphore(_PASSWORD_CHECKS)

    @classmethod
    def from_config(cls, config: ServerConfig, db: AsyncDatabase) -> Self:
        signer, verifier = load_keys(config)
        return cls(db, signer, verifier,
                   SignInLimiter(config.sign_in_max_failures, config.sign_in_window))

    async def sign_in(self, req: SignInRequest, remote: str) -> TokenResponse:
        """A token for the device `req.device` of `req.user`; AuthError on a wrong name or
        password (one message for both), RateLimited after too many failures."""
        mark = self._limiter.begin(req.user, remote)
        user = await self._db.get_user(req.user)
        stored = user.password_hash if user is not None else None
        async with self._password_checks:
            matched = await asyncio.to_thread(verify_password, stored, req.password)
        if not matched or user is None:
            logger.warning("failed sign-in for %s from %s", req.user, remote)
            raise AuthError("wrong user name or password")
        self._limiter.succeeded(req.user, remote, mark)
        if user.disabled:
            raise AuthError(f"user {user.name} is disabled; ask the server's admin")
        if Scope.ADMIN in req.scopes and not user.admin:
            raise PermissionDenied(f"user {user.name} is not an admin")
        device = await self._db.find_device(user.id, req.device)
        if device is None:
            device = await self._db.add_device(user.id, req.device, req.scopes, req.vaults)
        else:
            device = await self._db.update_device(device.id, req.scopes, req.vaults)
        logger.info("%s signed in device %s (%s) with scopes %s", user.name, device.id,
                    req.device, ",".join(s.value for s in req.scopes))
        return self._issue(user, device.id, req.scopes, req.vaults)

    def _issue(self, user: UserRecord, device_id: str, scopes: tuple[Scope, ...],
               vaults: tuple[str, ...]) -> TokenResponse:
        token, claims = self.signer.issue(user.name, user.id, device_id, scopes, vaults)
        return TokenResponse(token, claims.expires_at, user.name, device_id, scopes, vaults)

    async def renew(self, principal: Principal) -> TokenResponse:
        """A fresh token for an authenticated (so unexpired, unrevoked) device."""
        user = await self._db.get_user_by_id(principal.user_id)
        if user is None:
            raise AuthError("unknown user: sign in again")
        if not principal.scopes or not principal.vaults:
            raise AuthError("this token no longer allows anything on this device: sign in again")
        return self._issue(user, principal.device_id, principal.scopes, principal.vaults)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller of a request with this Authorization header; AuthError / TokenExpired."""
        if not authorization:
            raise AuthError("sign in first: this request needs a device token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <device token>'")
        claims = self._verifier.verify(token.strip())
        return await self._principal(claims)

    async def _principal(self, claims: Claims) -> Principal:
        device = await self._db.get_device(claims.device_id)
        if device is None or device.user_id != claims.user_id:
            raise AuthError("unknown device: sign in again")
        if device.revoked:
            raise AuthError("this device has been revoked; ask the server's admin")
        user = await self._db.get_user_by_id(claims.user_id)
        if user is None or user.name != claims.user:
            raise AuthError("unknown user: sign in again")
        if user.disabled:
            raise AuthError(f"user {user.name} is disabled; ask the server's admin")
        if claims.issued_at < user.tokens_valid_after:
            raise AuthError("this token was issued before the user's password was changed or "
                            "the user was disabled: sign in again")
        # A device signed in again with fewer scopes or vaults narrows its older tokens too.
        scopes = tuple(s for s in claims.scopes if s in device.scopes
                       and (s is not Scope.ADMIN or user.admin))
        vaults = _narrow_vaults(claims.vaults, device.vaults)
        now = time.time()
        if now - self._touched.get(device.id, 0.0) >= _TOUCH_INTERVAL:
            self._touched[device.id] = now
            await self._db.touch_device(device.id, int(now))
        return Principal(user.id, user.name, device.id, scopes, vaults, claims.expires_at,
                         user.admin)

    async def whoami(self, principal: Principal) -> Whoami:
        user = await self._db.get_user_by_id(principal.user_id)
        quota = user.quota if user is not None else None
        used = await self._db.user_usage(principal.user_id)
        return Whoami(principal.user, principal.device_id, principal.scopes, principal.vaults,
                      principal.expires_at, quota, used)


def _narrow_vaults(claimed: tuple[str, ...], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The vaults a token reaches: what it claims, within what its device allows now."""
    if ALL_VAULTS in allowed:
        return claimed
    if ALL_VAULTS in claimed:
        return allowed
    return tuple(v for v in claimed if v in allowed)
