"""Admin routes (admin scope): the users of this server with their usage. Never user data."""

import logging
from collections import Counter

from aiohttp import web

from server.auth.guard import ADMIN, requires
from server.db.database import AsyncDatabase
from server.keys import DB
from shared.protocol.models import UserInfo, UserList

logger = logging.getLogger(__name__)


async def user_list(db: AsyncDatabase) -> UserList:
    """Every user with bytes used, vault count and (unrevoked) device count."""
    users = await db.list_users()
    vaults = await db.list_vaults()
    devices = Counter(d.user_id for d in await db.list_devices() if not d.revoked)
    used: Counter[int] = Counter()
    count: Counter[int] = Counter()
    for vault in vaults:
        used[vault.user_id] += vault.size
        count[vault.user_id] += 1
    return UserList(tuple(
        UserInfo(u.name, u.admin, u.disabled, u.quota, used[u.id], count[u.id], devices[u.id])
        for u in users))


@requires(*ADMIN)
async def list_users(request: web.Request) -> web.StreamResponse:
    return web.json_response((await user_list(request.app[DB])).to_json())
