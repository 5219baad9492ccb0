"""Auth routes and the token guard: sign-in (wrong password, unknown user, disabled user,
rate limit 429 + Retry-After, admin scope), renew, whoami, and every way a token is refused."""

import logging
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.auth.tokens import TokenSigner
from server.keys import DB
from shared.protocol.models import Scope
from shared.protocol.paths import RENEW, SIGN_IN, VAULTS, WHOAMI
from tests.server.conftest import PASSWORD, Api, ApiFactory, Owner


def sign_in_body(user: str = "alice", password: str = PASSWORD,
                 **extra: object) -> dict[str, object]:
    return {"user": user, "password": password, "device": "laptop", **extra}


async def test_sign_in_gives_a_working_token(api: Api) -> None:
    await api.add_user("alice", quota=1 << 30)
    reply = await api.post(SIGN_IN, json=sign_in_body())
    assert reply.status == 200
    body = reply.json()
    assert (body["user"], body["scopes"], body["vaults"]) == ("alice", ["backup", "restore"],
                                                               ["*"])
    assert body["expires_at"] > time.time() + 86400
    who = await api.get(WHOAMI, token=body["token"])
    assert who.json() == {"user": "alice", "device_id": body["device_id"],
                          "scopes": ["backup", "restore"], "vaults": ["*"],
                          "expires_at": body["expires_at"], "quota": 1 << 30, "used": 0}


async def test_sign_in_with_scopes_and_vaults(api: Api) -> None:
    await api.add_user("alice")
    reply = await api.post(SIGN_IN, json=sign_in_body(scopes=["restore"], vaults=["laptop"]))
    assert (reply.json()["scopes"], reply.json()["vaults"]) == (["restore"], ["laptop"])


@pytest.mark.parametrize("user, password", [("alice", "wrong"), ("nobody", PASSWORD)])
async def test_sign_in_wrong_user_or_password_is_401_with_one_message(
        api: Api, user: str, password: str) -> None:
    await api.add_user("alice")
    reply = await api.post(SIGN_IN, json=sign_in_body(user, password))
    assert (reply.status, reply.code) == (401, "auth")
    assert reply.message == "wrong user name or password"


async def test_sign_in_disabled_user_is_401(api: Api) -> None:
    await api.add_user("alice")
    await api.app[DB].set_disabled("alice", True)
    reply = await api.post(SIGN_IN, json=sign_in_body())
    assert (reply.status, reply.code) == (401, "auth")
    assert "disabled" in reply.message


async def test_sign_in_admin_scope_needs_an_admin(api: Api) -> None:
    await api.add_user("alice")
    await api.add_user("root", admin=True)
    refused = await api.post(SIGN_IN, json=sign_in_body(scopes=["admin"]))
    assert (refused.status, refused.code) == (403, "forbidden")
    granted = await api.post(SIGN_IN, json=sign_in_body("root", scopes=["admin"]))
    assert granted.json()["scopes"] == ["admin"]


async def test_sign_in_too_many_failures_is_429_with_retry_after(make_api: ApiFactory) -> None:
    api = await make_api(sign_in_max_failures=2, sign_in_window=120.0)
    await api.add_user("alice")
    for _ in range(2):
        assert (await api.post(SIGN_IN, json=sign_in_body(password="wrong"))).status == 401
    reply = await api.post(SIGN_IN, json=sign_in_body())  # even the right password now
    assert (reply.status, reply.code) == (429, "rate_limited")
    assert 1 <= int(reply.headers["Retry-After"]) <= 120


@pytest.mark.parametrize("body", [{}, {"user": "alice"}, sign_in_body("Alice"),
                                  sign_in_body(scopes=["everything"]), sign_in_body(vaults=[]),
                                  sign_in_body(device=""), [1, 2]])
async def test_sign_in_malformed_request_is_400(api: Api, body: object) -> None:
    reply = await api.post(SIGN_IN, json=body)
    assert (reply.status, reply.code) == (400, "usage")


async def test_sign_in_body_over_the_json_limit_is_413(make_api: ApiFactory) -> None:
    api = await make_api(json_body_limit=1024)
    reply = await api.post(SIGN_IN, json=sign_in_body(password="x" * 2000))
    assert (reply.status, reply.code) == (413, "too_large")


async def test_renew_gives_a_later_expiry(api: Api, owner: Owner) -> None:
    old = await api.issue(owner.user, (Scope.BACKUP,), ("laptop",), now=time.time() - 3600)
    reply = await api.post(RENEW, token=old)
    assert reply.status == 200
    body = reply.json()
    assert (body["device_id"], body["scopes"], body["vaults"]) == (
        old.device_id, ["backup"], ["laptop"])
    assert (await api.get(WHOAMI, token=body["token"])).status == 200


async def test_renew_expired_token_is_401_token_expired(api: Api, owner: Owner) -> None:
    expired = await api.issue(owner.user, now=time.time() - 7200, lifetime=3600)
    reply = await api.post(RENEW, token=expired)
    assert (reply.status, reply.code) == (401, "token_expired")


# ---- the guard: every way a token is refused ---------------------------------------------


async def test_no_token_is_401(api: Api, owner: Owner) -> None:
    reply = await api.get(VAULTS)
    assert (reply.status, reply.code) == (401, "auth")


@pytest.mark.parametrize("header", ["Bearer", "Bearer   ", "Basic YWxpY2U6cHc=",
                                    "Bearer not.a.jwt", "Bearer abc", "bearer x.y.z"])
async def test_garbled_authorization_is_401(api: Api, owner: Owner, header: str) -> None:
    reply = await api.get(VAULTS, headers={"Authorization": header})
    assert (reply.status, reply.code) == (401, "auth")


async def test_token_with_bad_signature_is_401(api: Api, owner: Owner) -> None:
    forger = TokenSigner(Ed25519PrivateKey.generate(), api.config.server_id, 3600)
    token, _ = forger.issue("alice", owner.user.id, owner.token.device_id, (Scope.MAINTAIN,),
                            ("*",))
    reply = await api.get(VAULTS, token=token)
    assert (reply.status, reply.code) == (401, "auth")


async def test_tampered_token_is_401(api: Api, owner: Owner) -> None:
    head, payload, signature = owner.token.value.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    reply = await api.get(VAULTS, token=f"{head}.{payload}.{flipped}")
    assert (reply.status, reply.code) == (401, "auth")


async def test_expired_token_is_401_token_expired(api: Api, owner: Owner) -> None:
    expired = await api.issue(owner.user, now=time.time() - 7200, lifetime=3600)
    reply = await api.get(VAULTS, token=expired)
    assert (reply.status, reply.code) == (401, "token_expired")


async def test_revoked_device_is_401(api: Api, owner: Owner) -> None:
    await api.app[DB].revoke_device(owner.token.device_id)
    reply = await api.get(VAULTS, token=owner.token)
    assert (reply.status, reply.code) == (401, "auth")
    assert "revoked" in reply.message


async def test_disabled_user_token_is_401(api: Api, owner: Owner) -> None:
    await api.app[DB].set_disabled("alice", True)
    reply = await api.get(VAULTS, token=owner.token)
    assert (reply.status, reply.code) == (401, "auth")


async def test_whoami_needs_no_particular_scope(api: Api, owner: Owner) -> None:
    token = await api.issue(owner.user, (Scope.RESTORE,))
    assert (await api.get(WHOAMI, token=token)).status == 200


async def test_tokens_and_passwords_never_reach_the_logs(
        api: Api, owner: Owner, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await api.post(SIGN_IN, json=sign_in_body(password="wrong-secret-pw"))
    await api.get(VAULTS, token=owner.token)
    await api.get(VAULTS, headers={"Authorization": "Bearer garbage-token-value"})
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "request" in logged  # the access log did run
    for secret in (owner.token.value, "wrong-secret-pw", "garbage-token-value", PASSWORD):
        assert secret not in logged
