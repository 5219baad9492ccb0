"""AuthService: sign-in, device reuse, rate limits, authentication against the database."""

import asyncio
import time

import pytest

from server.auth.passwords import hash_password
from server.auth.service import AuthService
from server.config import init_data_dir, with_overrides
from server.db.database import AsyncDatabase
from shared.errors import AuthError, PermissionDenied, RateLimited, TokenExpired
from shared.protocol.models import Scope, SignInRequest

PASSWORD_HASH = hash_password("s3cret")


@pytest.fixture
async def auth(tmp_path):
    config = with_overrides(init_data_dir(tmp_path / "data"), sign_in_max_failures=3)
    db = await AsyncDatabase.open(config.db_path)
    await db.add_user("alice", PASSWORD_HASH, quota=1000)
    await db.add_user("root", PASSWORD_HASH, admin=True)
    service = AuthService.from_config(config, db)
    service.db = db  # type: ignore[attr-defined]  # for the tests' own checks
    yield service
    await db.close()


def request(user="alice", password="s3cret", device="laptop", scopes=(Scope.BACKUP,),
            vaults=("*",)) -> SignInRequest:
    return SignInRequest(user, password, device, tuple(scopes), tuple(vaults))


async def test_sign_in_gives_a_token_that_authenticates(auth) -> None:
    answer = await auth.sign_in(request(), "127.0.0.1")
    principal = await auth.authenticate(f"Bearer {answer.token}")
    assert principal.user == "alice" and principal.device_id == answer.device_id
    assert principal.scopes == (Scope.BACKUP,) and not principal.admin
    assert principal.has_any(Scope.BACKUP, Scope.MAINTAIN)
    assert not principal.has_any(Scope.MAINTAIN)


async def test_wrong_password_and_unknown_user_get_the_same_answer(auth) -> None:
    with pytest.raises(AuthError) as wrong:
        await auth.sign_in(request(password="nope"), "10.0.0.1")
    with pytest.raises(AuthError) as unknown:
        await auth.sign_in(request(user="mallory"), "10.0.0.2")
    assert str(wrong.value) == str(unknown.value) == "wrong user name or password"


async def test_repeated_failures_are_rate_limited(auth) -> None:
    for _ in range(3):
        with pytest.raises(AuthError):
            await auth.sign_in(request(password="guess"), "10.0.0.1")
    with pytest.raises(RateLimited):  # even the right password waits now
        await auth.sign_in(request(), "10.0.0.9")


async def test_disabled_user_can_neither_sign_in_nor_use_old_tokens(auth) -> None:
    token = (await auth.sign_in(request(), "a")).token
    await auth.db.set_disabled("alice", True)
    with pytest.raises(AuthError, match="disabled"):
        await auth.sign_in(request(), "a")
    with pytest.raises(AuthError, match="disabled"):
        await auth.authenticate(f"Bearer {token}")


async def test_revoked_device_token_is_refused(auth) -> None:
    answer = await auth.sign_in(request(), "a")
    await auth.db.revoke_device(answer.device_id)
    with pytest.raises(AuthError, match="revoked"):
        await auth.authenticate(f"Bearer {answer.token}")


async def test_admin_scope_only_for_admins(auth) -> None:
    with pytest.raises(PermissionDenied):
        await auth.sign_in(request(scopes=(Scope.ADMIN,)), "a")
    answer = await auth.sign_in(request(user="root", scopes=(Scope.ADMIN,)), "a")
    assert (await auth.authenticate(f"Bearer {answer.token}")).admin


async def test_same_device_name_reuses_the_device_and_narrows_old_tokens(auth) -> None:
    wide = await auth.sign_in(request(scopes=(Scope.BACKUP, Scope.MAINTAIN)), "a")
    narrow = await auth.sign_in(request(scopes=(Scope.BACKUP,)), "a")
    assert wide.device_id == narrow.device_id
    principal = await auth.authenticate(f"Bearer {wide.token}")
    assert principal.scopes == (Scope.BACKUP,)  # the device no longer holds maintain


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer not.a.jwt"])
async def test_bad_authorization_headers_are_refused(auth, header) -> None:
    with pytest.raises(AuthError):
        await auth.authenticate(header)


async def test_expired_token_is_refused_and_cannot_be_renewed(auth) -> None:
    answer = await auth.sign_in(request(), "a")
    user = await auth.db.get_user("alice")
    token, _ = auth.signer.issue("alice", user.id, answer.device_id, (Scope.BACKUP,), ("*",),
                                 now=1_000_000, lifetime=60)
    with pytest.raises(TokenExpired):
        await auth.authenticate(f"Bearer {token}")


async def test_renew_gives_a_new_token_for_the_same_device(auth) -> None:
    answer = await auth.sign_in(request(vaults=("laptop",)), "a")
    principal = await auth.authenticate(f"Bearer {answer.token}")
    renewed = await auth.renew(principal)
    assert renewed.device_id == answer.device_id and renewed.vaults == ("laptop",)
    assert (await auth.authenticate(f"Bearer {renewed.token}")).device_id == answer.device_id


async def test_vaults_claim_limits_the_vaults(auth) -> None:
    answer = await auth.sign_in(request(vaults=("laptop",)), "a")
    principal = await auth.authenticate(f"Bearer {answer.token}")
    principal.check_vault("laptop")
    with pytest.raises(PermissionDenied):
        principal.check_vault("desktop")


async def test_whoami_reports_quota_and_usage(auth) -> None:
    answer = await auth.sign_in(request(), "a")
    me = await auth.whoami(await auth.authenticate(f"Bearer {answer.token}"))
    assert me.user == "alice" and me.quota == 1000 and me.used == 0


async def test_parallel_wrong_passwords_are_counted_before_they_are_checked(auth) -> None:
    results = await asyncio.gather(
        *(auth.sign_in(request(password=f"guess{i}"), "10.0.0.1") for i in range(12)),
        return_exceptions=True)
    assert all(isinstance(r, AuthError) for r in results)
    assert sum(isinstance(r, RateLimited) for r in results) >= 12 - 3


async def test_right_password_does_not_count_against_the_address(auth) -> None:
    for _ in range(5):
        await auth.sign_in(request(), "10.0.0.1")  # more successes than the failure limit


async def test_password_change_and_disable_end_older_tokens(auth) -> None:
    answer = await auth.sign_in(request(), "a")
    user = await auth.db.get_user("alice")
    old, _ = auth.signer.issue("alice", user.id, answer.device_id, (Scope.BACKUP,), ("*",),
                               now=time.time() - 10)
    await auth.db.set_password("alice", PASSWORD_HASH)
    with pytest.raises(AuthError, match="password was changed"):
        await auth.authenticate(f"Bearer {old}")
    fresh = await auth.sign_in(request(), "a")
    await auth.authenticate(f"Bearer {fresh.token}")
    older, _ = auth.signer.issue("alice", user.id, answer.device_id, (Scope.BACKUP,), ("*",),
                                 now=time.time() - 5)
    await auth.db.set_disabled("alice", True)
    await auth.db.set_disabled("alice", False)
    with pytest.raises(AuthError):
        await auth.authenticate(f"Bearer {older}")


async def test_device_signed_in_again_for_fewer_vaults_narrows_older_tokens(auth) -> None:
    wide = await auth.sign_in(request(vaults=("*",)), "a")
    await auth.sign_in(request(vaults=("laptop",)), "a")
    principal = await auth.authenticate(f"Bearer {wide.token}")
    assert principal.vaults == ("laptop",)
    renewed = await auth.renew(principal)
    assert renewed.vaults == ("laptop",)


async def test_token_left_with_no_scope_cannot_be_renewed(auth) -> None:
    old = await auth.sign_in(request(scopes=(Scope.MAINTAIN,)), "a")
    await auth.sign_in(request(scopes=(Scope.RESTORE,)), "a")
    principal = await auth.authenticate(f"Bearer {old.token}")
    assert principal.scopes == ()  # every route answers 403
    with pytest.raises(AuthError, match="sign in again"):
        await auth.renew(principal)
