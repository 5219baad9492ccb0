"""Operational routes without a token: /healthz, /metrics and the OpenAPI document."""

import logging

from aiohttp import web

from server.keys import METRICS, OPENAPI_DOC, VAULTS, VERSION
from server.metrics import CONTENT_TYPE
from shared.protocol.models import Health

logger = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.StreamResponse:
    """200 `ok`, or 503 `degraded` when the vaults folder cannot take new files."""
    ok = await request.app[VAULTS].writable()
    health = Health("ok" if ok else "degraded", request.app[VERSION])
    return web.json_response(health.to_json(), status=200 if ok else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus text exposition of this app's registry."""
    return web.Response(body=request.app[METRICS].exposition(),
                        headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[OPENAPI_DOC])
