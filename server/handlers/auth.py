"""Auth routes: sign in (password -> device token), renew a token, tell who a token is."""

import logging

from aiohttp import web

from server.auth.guard import ANY_TOKEN, requires
from server.handlers import read_json
from server.keys import AUTH, PRINCIPAL
from shared.protocol.models import SignInRequest

logger = logging.getLogger(__name__)


async def sign_in(request: web.Request) -> web.StreamResponse:
    """No token needed; rate limited per user name and per client address (429)."""
    wanted = SignInRequest.from_json(await read_json(request))
    token = await request.app[AUTH].sign_in(wanted, request.remote or "unknown")
    return web.json_response(token.to_json())


@requires(*ANY_TOKEN)
async def renew(request: web.Request) -> web.StreamResponse:
    token = await request.app[AUTH].renew(request[PRINCIPAL])
    return web.json_response(token.to_json())


@requires(*ANY_TOKEN)
async def whoami(request: web.Request) -> web.StreamResponse:
    who = await request.app[AUTH].whoami(request[PRINCIPAL])
    return web.json_response(who.to_json())
