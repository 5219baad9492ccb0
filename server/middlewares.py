"""The server's middlewares: request id, access log + metrics, and error rendering.

Order (outermost first): request id, access log, errors. The access log sits outside the
error middleware so it records the status that was actually sent. Every error leaves as
`{"error": {"code", "message"}}` with the status of shared/protocol/errors.py: CairnErrors
by their class, aiohttp's own HTTP errors (unknown route 404, wrong method 405, JSON body too
large 413) by their status, anything unexpected as a one-line 500 with the traceback logged.
Headers are never logged (they hold the Authorization token).
"""

import asyncio
import logging
import re
import secrets
import time
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from server.keys import CONFIG, METRICS, REQUEST_ID
from server.logs import current_request_id
from server.storage.quota import format_size
from shared.errors import CairnError, QuotaExceeded, RangeError, RateLimited
from shared.protocol.errors import error_body, status_for

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("server.access")

REQUEST_ID_HEADER = "X-Request-Id"
# An incoming request id is kept (a proxy's, for correlation) only if it is short and plain.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HTTP_CODES = {400: "usage", 401: "auth", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "too_large", 416: "range"}


class UnsatisfiableRange(RangeError):
    """A Range header that selects nothing of an object of `size` bytes (416 with
    `Content-Range: bytes */size`)."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


def route_label(request: web.Request) -> str:
    """The route template a request matched (`unmatched` if none), for logs and metrics."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (the client's X-Request-Id if sane), echoed in the response."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _REQUEST_ID_RE.fullmatch(incoming) else secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    current_request_id.set(request_id)
    response = await handler(request)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One log record and one metrics observation per request (499: the client went away)."""
    started = time.perf_counter()
    status = 499
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        seconds = time.perf_counter() - started
        route = route_label(request)
        request.app[METRICS].observe_request(route, request.method, status, seconds)
        access_logger.info(
            "%s %s %d %.1f ms", request.method, request.path, status, seconds * 1000,
            extra={"event": "request", "request_id": request.get(REQUEST_ID),
                   "method": request.method, "path": request.path, "route": route,
                   "status": status, "duration_ms": round(seconds * 1000, 1),
                   "remote": request.remote})


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every error as our JSON error body (STYLE §5: handlers only raise)."""
    try:
        return await handler(request)
    except CairnError as exc:
        return _cairn_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and the like are answers, not errors
        return _http_error(request, exc)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        request_id = request.get(REQUEST_ID, "-")
        logger.exception("unexpected error in %s %s (request %s)", request.method,
                         request.path, request_id, extra={"request_id": request_id})
        body = {"error": {"code": "internal",
                          "message": f"internal server error (request id {request_id})"}}
        return web.json_response(body, status=500)


def _cairn_error(request: web.Request, exc: CairnError) -> web.Response:
    status = status_for(exc)
    request_id = request.get(REQUEST_ID, "-")
    if status >= 500 and not isinstance(exc, QuotaExceeded):  # 507 is the user's quota
        logger.error("%s %s failed: %s: %s", request.method, request.path, exc.code, exc,
                     extra={"request_id": request_id})
    else:
        logger.debug("%s %s refused: %s: %s", request.method, request.path, exc.code, exc,
                     extra={"request_id": request_id})
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        retry_after = exc.retry_after or request.app[CONFIG].sign_in_window
        headers[hdrs.RETRY_AFTER] = str(max(1, int(retry_after + 0.999)))
    if isinstance(exc, UnsatisfiableRange):
        headers[hdrs.CONTENT_RANGE] = f"bytes */{exc.size}"
    return web.json_response(error_body(exc), status=status, headers=headers)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        message = f"no such route: {request.path}"
    elif exc.status == 405:
        allowed = exc.headers.get(hdrs.ALLOW, "")
        message = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
    elif exc.status == 413:
        limit = format_size(request.app[CONFIG].json_body_limit)
        message = f"the request body is larger than the limit of {limit} for JSON requests"
    else:
        message = exc.reason
    body: dict[str, Any] = {"error": {"code": _HTTP_CODES.get(exc.status, "error"),
                                      "message": message}}
    keep = {name: value for name, value in exc.headers.items()
            if name not in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH)}
    return web.json_response(body, status=exc.status, headers=keep)
