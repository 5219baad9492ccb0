"""`requires(*scopes)`: the per-handler authentication and scope check, and the scope table.

A guarded handler runs only for a valid token (AuthError / TokenExpired -> 401) that holds
one of `scopes` (PermissionDenied -> 403) and, on routes with a `{vault}`, covers that vault
(403). The principal is then at `request[PRINCIPAL]`. `requires()` with no scopes admits any
valid token. The scopes stay readable on the handler (`required_scopes`) for the API docs.
"""

import functools
import logging
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from server.keys import AUTH, PRINCIPAL
from shared.errors import PermissionDenied
from shared.protocol.models import Scope

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The scope table of API v1: a route needs ANY of its tuple's scopes.
READ: tuple[Scope, ...] = (Scope.BACKUP, Scope.RESTORE, Scope.MAINTAIN)
WRITE: tuple[Scope, ...] = (Scope.BACKUP, Scope.MAINTAIN)
DELETE: tuple[Scope, ...] = (Scope.MAINTAIN,)  # backup tokens are append-only
ADMIN: tuple[Scope, ...] = (Scope.ADMIN,)
ANY_TOKEN: tuple[Scope, ...] = ()

_SCOPES_ATTR = "__cairn_required_scopes__"


def requires(*scopes: Scope, denied: str | None = None) -> Callable[[Handler], Handler]:
    """Guard a handler: authenticate, check `scopes` (any of them), check the vault claim.

    `denied` is the 403 message when the token lacks the scopes (default: names them)."""
    names = ", ".join(s.value for s in scopes)
    message = denied or f"this device token does not allow this request (it needs: {names})"

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            auth = request.app[AUTH]
            principal = await auth.authenticate(request.headers.get(hdrs.AUTHORIZATION))
            if scopes and not principal.has_any(*scopes):
                raise PermissionDenied(message)
            vault = request.match_info.get("vault")
            if vault is not None:
                principal.check_vault(vault)
            request[PRINCIPAL] = principal
            return await handler(request)

        setattr(guarded, _SCOPES_ATTR, scopes)
        return guarded

    return decorate


def required_scopes(handler: object) -> tuple[Scope, ...] | None:
    """The scopes a `requires`-guarded handler needs (() = any token); None if unguarded."""
    scopes = getattr(handler, _SCOPES_ATTR, None)
    return scopes if isinstance(scopes, tuple) else None
