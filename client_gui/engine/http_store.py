"""HttpStore: the ObjectStore (+ SupportsMissing) of one vault on a cairn-server, API v1.

Made by RemoteServer.store() (client_gui.engine.remote), which owns the connection pool,
the token and the translation of answers into CairnErrors; this module maps the storage
contract (STYLE §4) onto the object routes: PUT, GET with Range, HEAD, DELETE, paginated
listing and the batch "which are missing?" route.
"""

import email.utils
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING

from shared.errors import CairnError, RangeError, StorageError
from shared.ids import ObjectInfo, ObjectKey, ObjectKind
from shared.protocol import paths
from shared.protocol.models import MissingRequest, MissingResponse, ObjectList, validate_vault_name
from shared.storage.base import ObjectData, ObjectPiece, check_range

if TYPE_CHECKING:  # remote.py imports this module; at run time only the instance is needed
    from client_gui.engine.remote import RemoteServer, Reply

logger = logging.getLogger(__name__)

_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_OCTETS = {"Content-Type": "application/octet-stream"}


class _Source:
    """Wraps a put's async iterable to remember an error it raises: aiohttp reports such an
    error as a broken connection, but the put must raise the source's own error."""

    def __init__(self, data: AsyncIterable[ObjectPiece]) -> None:
        self._data = data
        self.error: BaseException | None = None

    async def chunks(self) -> AsyncIterator[ObjectPiece]:
        try:
            async for chunk in self._data:
                yield chunk
        except Exception as exc:  # re-raised by HttpStore.put, after aiohttp gave up
            self.error = exc
            raise


class HttpStore:
    """The objects of one vault on a cairn-server (ObjectStore + SupportsMissing).

    Made by RemoteServer.store(); close() closes that RemoteServer. Never retries (RetryingStore
    does, on StorageUnavailable) except once after signing in again when a token was refused."""

    def __init__(self, server: "RemoteServer", vault: str, *,
                 list_limit: int = paths.DEFAULT_LIST_LIMIT) -> None:
        if not 1 <= list_limit <= paths.MAX_LIST_LIMIT:
            raise ValueError(f"list_limit must be 1-{paths.MAX_LIST_LIMIT}")
        self._server = server
        self._vault = validate_vault_name(vault)
        self._list_limit = list_limit

    @property
    def server(self) -> "RemoteServer":
        return self._server

    @property
    def vault(self) -> str:
        return self._vault

    def __repr__(self) -> str:
        return f"HttpStore({self._server.base_url!r}, {self._vault!r})"

    async def put(self, key: ObjectKey, data: ObjectData) -> None:
        """Upload `key`: bytes with a Content-Length, an async iterable streamed chunked
        (never replayed). The server stores it only if its BLAKE3 matches the name."""
        path, what = self._path(key), f"put {key}"
        if isinstance(data, bytes | memoryview):
            await self._server.request("PUT", path, what=what, data=data, headers=_OCTETS,
                                        ok=(200, 201))
            return
        source = _Source(data)
        try:
            await self._server.request("PUT", path, what=what, data=source.chunks(),
                                        headers=_OCTETS, ok=(200, 201))
        except CairnError:
            if source.error is not None:
                raise source.error from None
            raise
        if source.error is not None:  # the server answered before reading it all
            raise source.error

    async def get(self, key: ObjectKey, *, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            check_range(key, 0, offset, length)  # raises RangeError with the usual message
        if length == 0:  # HTTP cannot ask for no bytes: check the bounds with a stat
            check_range(key, (await self.stat(key)).size, offset, length)
            return b""
        headers = {"Accept-Encoding": "identity"}
        if offset or length is not None:
            last = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{last}"
        try:
            reply = await self._server.request("GET", self._path(key), what=f"get {key}",
                                                headers=headers, ok=(200, 206))
        except RangeError:
            # 416: out of bounds, or `bytes=SIZE-` which is a valid empty read for us.
            size = (await self.stat(key)).size
            if check_range(key, size, offset, length) == 0:
                return b""
            raise
        return self._ranged_body(key, reply, offset, length)

    async def stat(self, key: ObjectKey) -> ObjectInfo:
        reply = await self._server.request("HEAD", self._path(key), what=f"stat {key}",
                                            headers={"Accept-Encoding": "identity"})
        try:
            size = int(reply.headers["Content-Length"])
        except (KeyError, ValueError) as exc:
            raise StorageError(
                f"{self._server.base_url} sent no object size for {key}") from exc
        return ObjectInfo(key, size, _http_date(reply.headers.get("Last-Modified")))

    async def list(self, kind: ObjectKind) -> AsyncIterator[ObjectInfo]:
        path = paths.url(paths.OBJECTS, vault=self._vault, kind=kind.value)
        after: str | None = None
        while True:
            params = {"limit": str(self._list_limit)}
            if after is not None:
                params["after"] = after
            reply = await self._server.request("GET", path, what=f"list {kind.value}",
                                                params=params)
            page = self._server.parse(lambda body: ObjectList.from_json(body, kind), reply,
                                       f"list {kind.value}")
            for entry in page.objects:
                yield ObjectInfo(ObjectKey(kind, entry.name), entry.size)
            if page.next is None:
                return
            if after is not None and page.next <= after:
                raise StorageError(f"{self._server.base_url} sent a listing of {kind.value} "
                                   "that does not advance")
            after = page.next

    async def delete(self, key: ObjectKey) -> None:
        await self._server.request("DELETE", self._path(key), what=f"delete {key}",
                                    ok=(200, 204))

    async def missing(self, keys: Iterable[ObjectKey]) -> set[ObjectKey]:
        """The keys of `keys` the vault lacks, asked in batches of MAX_MISSING_BATCH."""
        unique = list(dict.fromkeys(keys))
        path = paths.url(paths.MISSING, vault=self._vault)
        absent: set[ObjectKey] = set()
        for start in range(0, len(unique), paths.MAX_MISSING_BATCH):
            batch = unique[start : start + paths.MAX_MISSING_BATCH]
            what = f"check {len(batch)} objects"
            reply = await self._server.request(
                "POST", path, what=what, json_body=MissingRequest(tuple(batch)).to_json())
            answer = self._server.parse(MissingResponse.from_json, reply, what)
            absent.update(set(answer.missing) & set(batch))
        return absent

    async def close(self) -> None:
        await self._server.close()

    def _path(self, key: ObjectKey) -> str:
        return paths.url(paths.OBJECT, vault=self._vault, kind=key.kind.value, name=key.name)

    def _ranged_body(self, key: ObjectKey, reply: "Reply", offset: int,
                     length: int | None) -> bytes:
        """The bytes asked for, from a 200 (whole object) or 206 (a range) reply; RangeError
        if the object is shorter than the range, StorageError for a short or garbled reply."""
        body = reply.body
        if reply.status == 200:
            count = check_range(key, len(body), offset, length)
            return body[offset : offset + count] if offset or length is not None else body
        match = _CONTENT_RANGE_RE.fullmatch(reply.headers.get("Content-Range", "").strip())
        if match is None or int(match[1]) != offset:
            raise StorageError(f"{self._server.base_url} sent a wrong range of {key}")
        if match[3] != "*":
            wanted = check_range(key, int(match[3]), offset, length)
        else:
            wanted = int(match[2]) - offset + 1 if length is None else length
        if len(body) != wanted or int(match[2]) - offset + 1 != wanted:
            raise StorageError(f"short read of {key} from {self._server.base_url}: "
                               f"{len(body)} of {wanted} bytes")
        return body


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
