"""The per-user vault registry: resolves (principal, vault name) to a vault and its store.

Vault names are per user, so another user's vault is simply absent (NotAVault, as for a vault
that does not exist). Objects live in `vaults_dir/<user id>/<vault name>` (the LocalStore
layout) behind a VerifyingStore, so an upload is visible only once its BLAKE3 matches its
name. Puts and deletes keep the database's usage counters and the quota in step. No HTTP here.
"""

import asyncio
import logging
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Hashable, Iterable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from server.auth.service import Principal
from server.config import ServerConfig
from server.db.database import AsyncDatabase, VaultRecord
from server.metrics import Metrics
from server.storage.quota import QuotaLedger, Reservation, format_size
from shared.errors import (
    CairnError,
    NotAVault,
    PayloadTooLarge,
    PermissionDenied,
    StorageError,
    StorageUnavailable,
)
from shared.ids import ObjectInfo, ObjectKey, ObjectKind
from shared.protocol.models import ObjectEntry, ObjectList, validate_vault_name
from shared.storage.local import LocalStore
from shared.storage.wrappers import VerifyingStore

logger = logging.getLogger(__name__)

# How long a put or delete waits for another one of the same object (a stalled upload is
# dropped after handlers.objects.BODY_IDLE_TIMEOUT) before answering 503.
LOCK_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class Vault:
    """One vault of one user, as a request sees it."""

    record: VaultRecord
    store: VerifyingStore  # what puts and gets go through
    local: LocalStore  # the same folder, for what only files offer (paths, ordered listing)


class _KeyLocks:
    """One asyncio lock per key in use; entries vanish when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        """Hold `key`'s lock; StorageUnavailable (503: retry later) after LOCK_WAIT seconds."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            try:
                async with asyncio.timeout(LOCK_WAIT):
                    await lock.acquire()
            except TimeoutError as exc:
                raise StorageUnavailable("another upload of the same object is still in "
                                         "progress; try again later") from exc
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class VaultRegistry:
    """Vaults of every user of this server, with usage and quota accounting."""

    def __init__(self, config: ServerConfig, db: AsyncDatabase, metrics: Metrics) -> None:
        self._config = config
        self._db = db
        self._metrics = metrics
        self._quota = QuotaLedger()
        # Serialises put/delete of one object in one vault, so usage is counted exactly once
        # when two devices upload the same pack at the same time.
        self._locks = _KeyLocks()

    def _root(self, user_id: int, name: str) -> Path:
        return self._config.vaults_dir / str(user_id) / validate_vault_name(name)

    def _vault(self, record: VaultRecord) -> Vault:
        local = LocalStore(self._root(record.user_id, record.name), fsync=self._config.fsync)
        return Vault(record, VerifyingStore(local), local)

    async def reconcile(self) -> None:
        """Before serving: remove temp files that a killed server left behind, and recount
        each vault's usage from its files (a crash between publishing an object and counting
        it leaves the counters short, which would let a user exceed the quota)."""
        for record in await self._db.list_vaults():
            vault = self._vault(record)
            try:
                removed = await vault.local.cleanup_temp(older_than=0)
                size = objects = 0
                for kind in ObjectKind:
                    async for info in vault.local.list(kind):
                        size += info.size
                        objects += 1
            except StorageError as exc:
                logger.warning("cannot check vault %s of user %d: %s", record.name,
                               record.user_id, exc)
                continue
            if removed:
                logger.info("removed %d unfinished uploads from vault %s of user %d", removed,
                            record.name, record.user_id)
            if (size, objects) != (record.size, record.objects):
                logger.warning("vault %s of user %d: usage recounted as %d bytes in %d objects "
                               "(was %d in %d)", record.name, record.user_id, size, objects,
                               record.size, record.objects)
                await self._db.set_usage(record.id, size, objects)

    async def create(self, principal: Principal, name: str) -> VaultRecord:
        """A new, empty vault `name` of the principal's user; VaultExists if it is taken."""
        principal.check_vault(name)
        # The folder first: a record without a folder would be a vault that cannot store.
        await LocalStore.create(self._root(principal.user_id, name), fsync=self._config.fsync)
        record = await self._db.add_vault(principal.user_id, name)
        logger.info("user %s created vault %s", principal.user, name)
        return record

    async def list(self, principal: Principal) -> list[VaultRecord]:
        """The user's vaults that the principal's token covers, by name."""
        records = await self._db.list_vaults(principal.user_id)
        covered = []
        for record in records:
            try:
                principal.check_vault(record.name)
            except PermissionDenied:
                continue
            covered.append(record)
        return covered

    async def open(self, principal: Principal, name: str) -> Vault:
        """The principal's vault `name`; NotAVault if the user has none of that name."""
        validate_vault_name(name)
        record = await self._db.get_vault(principal.user_id, name)
        if record is None:
            raise NotAVault(f"no vault named {name}")
        return self._vault(record)

    async def put(self, principal: Principal, vault: Vault, key: ObjectKey,
                  body: AsyncIterable[bytes], declared_size: int | None) -> bool:
        """Store `body` as `key`, verified and within the limits; True if newly stored, False
        if it was already there (the body is then read and dropped).

        PayloadTooLarge if `declared_size` (Content-Length) or the body itself exceeds the
        server's limit, QuotaExceeded if the user's quota cannot hold it, IntegrityError if
        its BLAKE3 is not its name; in every such case nothing new is visible."""
        limit = self._config.max_object_size
        if declared_size is not None and declared_size > limit:
            self._metrics.rejected.labels(PayloadTooLarge.code).inc()
            raise PayloadTooLarge(_too_large(key, declared_size, limit))
        async with self._locks.hold((vault.record.id, key)):
            if await asyncio.to_thread(vault.local.path_of(key).is_file):
                async for _ in self._counted(key, body, None):
                    pass  # keep the connection usable: the client is sending it anyway
                return False
            user = await self._db.get_user_by_id(principal.user_id)
            used = await self._db.user_usage(principal.user_id)
            reservation = self._quota.open(principal.user_id, user.quota if user else None, used)
            try:
                if declared_size is not None:
                    reservation.grow(declared_size)  # refuse before reading a byte
                counted = _Counted(self._counted(key, body, reservation))
                await vault.store.put(key, counted)
            except BaseException as exc:  # counted, then passed on unchanged
                reservation.release()
                self._metrics.rejected.labels(_reason(exc)).inc()
                raise
            try:
                await self._db.add_usage(vault.record.id, counted.size, 1)
            finally:
                # After the database: an upload starting in between counts these bytes twice
                # (refusing early), never not at all.
                reservation.commit()
        self._metrics.stored.labels(key.kind.value).inc()
        logger.debug("stored %s (%d bytes) in vault %s of %s", key, counted.size,
                     vault.record.name, principal.user)
        return True

    async def _counted(self, key: ObjectKey, body: AsyncIterable[bytes],
                       reservation: Reservation | None) -> AsyncIterator[bytes]:
        """`body`, checked against the size limit (and the quota) as it streams."""
        limit = self._config.max_object_size
        size = 0
        async for chunk in body:
            size += len(chunk)
            self._metrics.uploaded.inc(len(chunk))
            if size > limit:
                raise PayloadTooLarge(_too_large(key, size, limit, sent=True))
            if reservation is not None and size > reservation.size:
                reservation.grow(size - reservation.size)
            yield chunk

    async def stat(self, vault: Vault, key: ObjectKey) -> ObjectInfo:
        """Size and time of a stored object; ObjectNotFound if absent."""
        return await vault.store.stat(key)

    def path_of(self, vault: Vault, key: ObjectKey) -> Path:
        """The file of `key` in `vault` (for sendfile; it may have gone by the time it is read)."""
        return vault.local.path_of(key)

    async def delete(self, vault: Vault, key: ObjectKey) -> None:
        """Remove `key`; ObjectNotFound if absent."""
        async with self._locks.hold((vault.record.id, key)):
            info = await vault.store.stat(key)
            await vault.store.delete(key)
            await self._db.add_usage(vault.record.id, -info.size, -1)
        self._metrics.deleted.labels(key.kind.value).inc()
        logger.debug("deleted %s from vault %s", key, vault.record.name)

    async def list_page(self, vault: Vault, kind: ObjectKind, after: str | None,
                        limit: int) -> ObjectList:
        """Up to `limit` objects of `kind` named after `after`, by name, and the cursor of the
        next page (None on the last one). Packs are read shard by shard, never all at once."""
        entries: list[ObjectEntry] = []
        more = False
        async with aclosing(vault.local.list_after(kind, after)) as found:
            async for info in found:
                if len(entries) == limit:
                    more = True
                    break
                entries.append(ObjectEntry(info.key.name, info.size))
        return ObjectList(tuple(entries), entries[-1].name if more and entries else None)

    async def missing(self, vault: Vault, keys: Iterable[ObjectKey]) -> tuple[ObjectKey, ...]:
        """The keys of `keys` (in their order, without repeats) that `vault` does not hold."""
        wanted = list(dict.fromkeys(keys))

        def absent() -> tuple[ObjectKey, ...]:
            return tuple(k for k in wanted if not vault.local.path_of(k).is_file())

        return await asyncio.to_thread(absent)  # one thread hop for the whole batch

    async def writable(self) -> bool:
        """True if a file can be created in the vaults folder (for /healthz)."""

        def probe() -> None:
            fd, name = tempfile.mkstemp(prefix=".healthz-", dir=self._config.vaults_dir)
            os.close(fd)
            os.unlink(name)

        try:
            await asyncio.to_thread(probe)
        except OSError as exc:
            logger.warning("vaults folder %s is not writable: %s", self._config.vaults_dir, exc)
            return False
        return True


class _Counted:
    """An async iterable that remembers how many bytes went through it."""

    def __init__(self, inner: AsyncIterator[bytes]) -> None:
        self._inner = inner
        self.size = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self.size += len(chunk)
            yield chunk


def _reason(exc: BaseException) -> str:
    """The `reason` label of a refused upload."""
    if isinstance(exc, CairnError):
        return exc.code
    # The server cancels the handler of a request whose client went away (if configured so).
    return "incomplete" if isinstance(exc, asyncio.CancelledError) else "error"


def _too_large(key: ObjectKey, size: int, limit: int, *, sent: bool = False) -> str:
    if sent:
        return (f"upload of {key} is larger than the server's limit of {format_size(limit)} "
                "per object")
    return (f"upload of {key} is {format_size(size)}, more than the server's limit of "
            f"{format_size(limit)} per object")
