"""Admin routes: the user list with usage, only for admin-scoped tokens of admin users."""

from shared.protocol.models import Scope
from shared.protocol.paths import ADMIN_USERS
from tests.server.conftest import Api, Owner


async def test_admin_lists_users_with_usage(api: Api, owner: Owner) -> None:
    await api.put_object(owner.token, "laptop", b"x" * 700)
    await api.create_vault(owner.token, "desktop")
    root = await api.add_user("root", admin=True, quota=5 << 30)
    token = await api.issue(root, (Scope.ADMIN,))
    reply = await api.get(ADMIN_USERS, token=token)
    assert reply.status == 200
    assert reply.json() == {"users": [
        {"name": "alice", "admin": False, "disabled": False, "quota": None, "used": 700,
         "vaults": 2, "devices": 1},
        {"name": "root", "admin": True, "disabled": False, "quota": 5 << 30, "used": 0,
         "vaults": 0, "devices": 1},
    ]}


async def test_admin_route_needs_the_admin_scope(api: Api, owner: Owner) -> None:
    reply = await api.get(ADMIN_USERS, token=owner.token)  # backup+restore+maintain
    assert (reply.status, reply.code) == (403, "forbidden")


async def test_admin_scope_of_a_non_admin_user_counts_for_nothing(api: Api, owner: Owner) -> None:
    token = await api.issue(owner.user, (Scope.ADMIN,))  # signed, but alice is no admin
    reply = await api.get(ADMIN_USERS, token=token)
    assert (reply.status, reply.code) == (403, "forbidden")


async def test_admin_route_without_token_is_401(api: Api) -> None:
    reply = await api.get(ADMIN_USERS)
    assert (reply.status, reply.code) == (401, "auth")
