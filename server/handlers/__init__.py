"""HTTP handlers of API v1, one module per resource (objects, vaults, auth, admin, health).

Every handler parses and validates its input, calls a service (VaultRegistry, AuthService,
the database) and answers `web.json_response(model.to_json())`. Handlers touch neither SQL
nor files, and never build error responses: they raise CairnError (see middlewares.py).
"""

import logging

from aiohttp import web

from shared.errors import UsageError

logger = logging.getLogger(__name__)


async def read_json(request: web.Request) -> object:
    """The request's JSON body (at most the app's client_max_size: 413 beyond it);
    UsageError (400) if it is not JSON."""
    try:
        body: object = await request.json()
    except (ValueError, LookupError, RecursionError) as exc:  # bad JSON, charset, nesting
        raise UsageError("the request body is not valid JSON") from exc
    return body
