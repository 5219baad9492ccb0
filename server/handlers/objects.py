"""Object routes: PUT/GET/HEAD/DELETE one object, list a kind page by page, batch "missing?".

Uploads stream (request.content, 1 MiB pieces) into the vault registry, which verifies and
limits them; downloads are sent from the file with sendfile (web.FileResponse), Range included.
"""

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import ClientPayloadError, web

from server.auth.guard import DELETE, READ, WRITE, requires
from server.handlers import read_json
from server.keys import METRICS, PRINCIPAL, VAULTS
from server.middlewares import UnsatisfiableRange
from server.storage.vaults import Vault
from shared.errors import UsageError
from shared.ids import ObjectKey, ObjectKind, validate_name
from shared.protocol.models import MissingRequest, MissingResponse, ObjectEntry
from shared.protocol.paths import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, MAX_MISSING_BATCH

logger = logging.getLogger(__name__)

UPLOAD_PIECE = 1 << 20  # bytes read from the socket at a time; a put holds a few of these
# An upload that sends nothing for this long is dropped (its connection died silently), so it
# does not hold its object's lock until TCP keepalive notices, hours later.
BODY_IDLE_TIMEOUT = 120.0


class IncompleteUpload(UsageError):
    """The client stopped sending before the end of the body it announced."""

    code = "incomplete"


def parse_kind(text: str) -> ObjectKind:
    try:
        return ObjectKind(text)
    except ValueError:
        known = ", ".join(k.value for k in ObjectKind)
        raise UsageError(f"unknown object kind {text[:20]!r} (known: {known})") from None


def parse_key(request: web.Request) -> ObjectKey:
    """The object key of the URL; UsageError (400) on a bad kind or name (so no traversal)."""
    return ObjectKey(parse_kind(request.match_info["kind"]), request.match_info["name"])


async def _vault(request: web.Request) -> Vault:
    return await request.app[VAULTS].open(request[PRINCIPAL], request.match_info["vault"])


async def _body(request: web.Request, key: ObjectKey) -> AsyncIterator[bytes]:
    """The request body in pieces; a connection lost mid-body becomes IncompleteUpload."""
    while True:
        try:
            async with asyncio.timeout(BODY_IDLE_TIMEOUT):
                piece = await request.content.read(UPLOAD_PIECE)
        except (ClientPayloadError, ConnectionError) as exc:
            raise IncompleteUpload(f"upload of {key} ended before its last byte") from exc
        except TimeoutError as exc:
            raise IncompleteUpload(f"upload of {key} stalled: nothing arrived for "
                                   f"{BODY_IDLE_TIMEOUT:.0f} s") from exc
        if not piece:
            return
        yield piece


@requires(*WRITE)
async def put_object(request: web.Request) -> web.StreamResponse:
    key = parse_key(request)
    vault = await _vault(request)
    registry = request.app[VAULTS]
    stored = await registry.put(request[PRINCIPAL], vault, key, _body(request, key),
                                request.content_length)
    info = await registry.stat(vault, key)
    return web.json_response(ObjectEntry(key.name, info.size).to_json(),
                             status=201 if stored else 200)


def byte_range(request: web.Request, size: int) -> tuple[int, int] | None:
    """(offset, length) selected by the Range header, None without one. Same rules as
    web.FileResponse: a suffix longer than the object means all of it, an end past the
    object is clamped; malformed or starting past the end -> UnsatisfiableRange (416)."""
    if request.headers.get("Range") is None:
        return None
    try:
        selected = request.http_range
    except ValueError as exc:
        raise UnsatisfiableRange(f"cannot serve Range {request.headers['Range'][:80]!r}: {exc}",
                                 size) from exc
    start, stop = selected.start, selected.stop
    if start is None:
        return None
    if start < 0:  # bytes=-N: the last N bytes
        start = max(0, size + start)
        stop = size
    stop = size if stop is None else min(stop, size)
    if start >= size:
        raise UnsatisfiableRange(
            f"Range starts at byte {start}, but the object has {size} bytes", size)
    return start, stop - start


@requires(*READ)
async def get_object(request: web.Request) -> web.StreamResponse:
    """GET and HEAD: the object's bytes (or part of them), sent straight from its file."""
    key = parse_key(request)
    vault = await _vault(request)
    registry = request.app[VAULTS]
    info = await registry.stat(vault, key)
    selected = byte_range(request, info.size)
    if request.method == "GET":
        request.app[METRICS].downloaded.inc(info.size if selected is None else selected[1])
    return web.FileResponse(registry.path_of(vault, key), status=200 if selected is None else 206)


@requires(*DELETE, denied="this device token is append-only: deleting objects needs a token "
          "with the maintain scope")
async def delete_object(request: web.Request) -> web.StreamResponse:
    key = parse_key(request)
    vault = await _vault(request)
    await request.app[VAULTS].delete(vault, key)
    return web.Response(status=204)


def parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIST_LIMIT
    if not (text.isascii() and text.isdigit() and len(text) <= 6) \
            or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise UsageError(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}, "
                         f"got {text[:20]!r}")
    return int(text)


@requires(*READ)
async def list_objects(request: web.Request) -> web.StreamResponse:
    kind = parse_kind(request.match_info["kind"])
    after = request.query.get("after")
    if after is not None:
        validate_name(after)
    limit = parse_limit(request.query.get("limit"))
    vault = await _vault(request)
    page = await request.app[VAULTS].list_page(vault, kind, after, limit)
    return web.json_response(page.to_json())


@requires(*READ)
async def missing_objects(request: web.Request) -> web.StreamResponse:
    vault = await _vault(request)
    wanted = MissingRequest.from_json(await read_json(request), max_keys=MAX_MISSING_BATCH)
    absent = await request.app[VAULTS].missing(vault, wanted.keys)
    return web.json_response(MissingResponse(absent).to_json())
