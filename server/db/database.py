"""Users, devices, vaults and usage in SQLite: `Database` (blocking, for the admin CLI) and
`AsyncDatabase` (the same calls as coroutines on one dedicated thread, for the server).

The admin CLI and a running server share the file safely (WAL mode, busy timeout). Names are
validated by the callers (shared.protocol.models); the database only enforces uniqueness.
"""

import asyncio
import functools
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, Self, TypeVar

from shared.errors import StorageError, UsageError, VaultExists
from shared.protocol.models import Scope

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0,
    quota INTEGER,
    created_at INTEGER NOT NULL,
    tokens_valid_after INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    vaults TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS devices_by_user ON devices(user_id, name);
CREATE TABLE IF NOT EXISTS vaults (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    objects INTEGER NOT NULL DEFAULT 0,
    UNIQUE (user_id, name)
);
"""


# Columns added after a table was first created: (table, column, definition). A database of
# an older build gets them on open, with their defaults.
_ADDED_COLUMNS = (("users", "tokens_valid_after", "INTEGER NOT NULL DEFAULT 0"),)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    for table, column, definition in _ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


class UserExists(UsageError):
    code = "user_exists"


class NoSuchUser(UsageError):
    code = "no_such_user"


class NoSuchDevice(UsageError):
    code = "no_such_device"


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    password_hash: str
    admin: bool
    disabled: bool
    quota: int | None
    created_at: int
    tokens_valid_after: int = 0  # tokens issued before (Unix s) are refused

    def __repr__(self) -> str:  # the hash stays out of logs
        return f"UserRecord(id={self.id}, name={self.name!r}, admin={self.admin})"


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    id: str
    user_id: int
    name: str
    scopes: tuple[Scope, ...]
    vaults: tuple[str, ...]
    created_at: int
    last_seen: int
    revoked: bool


@dataclass(frozen=True, slots=True)
class VaultRecord:
    id: int
    user_id: int
    name: str
    created_at: int
    size: int
    objects: int


def _user(row: sqlite3.Row) -> UserRecord:
    return UserRecord(row["id"], row["name"], row["password_hash"], bool(row["admin"]),
                      bool(row["disabled"]), row["quota"], row["created_at"],
                      row["tokens_valid_after"])


def _device(row: sqlite3.Row) -> DeviceRecord:
    scopes = tuple(Scope(s) for s in row["scopes"].split(",") if s)
    return DeviceRecord(row["id"], row["user_id"], row["name"], scopes,
                        tuple(json.loads(row["vaults"])), row["created_at"], row["last_seen"],
                        bool(row["revoked"]))


def _vault(row: sqlite3.Row) -> VaultRecord:
    return VaultRecord(row["id"], row["user_id"], row["name"], row["created_at"], row["size"],
                       row["objects"])


class Database:
    """Blocking access to the metadata database; one connection, one thread at a time."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open (creating if missing) the database at `path`."""
        try:
            conn = sqlite3.connect(path, timeout=30, check_same_thread=False,
                                   isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise UsageError(f"{path} was written by a newer cairn-server (schema "
                                 f"{version}); upgrade cairn-server")
            conn.executescript(_SCHEMA)
            _add_missing_columns(conn)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the server database {path}: {exc}") from exc
        return cls(conn, path)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageError(f"server database {self._path}: {exc}") from exc

    def _one(self, sql: str, *args: object) -> sqlite3.Row | None:
        try:
            row: sqlite3.Row | None = self._conn.execute(sql, args).fetchone()
            return row
        except sqlite3.Error as exc:
            raise StorageError(f"server database {self._path}: {exc}") from exc

    def _all(self, sql: str, *args: object) -> list[sqlite3.Row]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"server database {self._path}: {exc}") from exc

    # ---- users ----------------------------------------------------------------------------

    def add_user(self, name: str, password_hash: str, *, admin: bool = False,
                 quota: int | None = None) -> UserRecord:
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UserExists(f"user {name} already exists")
            conn.execute(
                "INSERT INTO users (name, password_hash, admin, quota, created_at) "
                "VALUES (?, ?, ?, ?, ?)", (name, password_hash, int(admin), quota,
                                           int(time.time())))
        user = self.get_user(name)
        assert user is not None
        return user

    def get_user(self, name: str) -> UserRecord | None:
        row = self._one("SELECT * FROM users WHERE name = ?", name)
        return _user(row) if row else None

    def get_user_by_id(self, user_id: int) -> UserRecord | None:
        row = self._one("SELECT * FROM users WHERE id = ?", user_id)
        return _user(row) if row else None

    def list_users(self) -> list[UserRecord]:
        return [_user(r) for r in self._all("SELECT * FROM users ORDER BY name")]

    def _update_user(self, name: str, sql: str, *args: object) -> None:
        with self._tx() as conn:
            if conn.execute(f"UPDATE users SET {sql} WHERE name = ?", (*args, name)).rowcount == 0:
                raise NoSuchUser(f"no user {name}")

    def set_password(self, name: str, password_hash: str) -> None:
        """A new password; every token issued until now stops working (a stolen one too)."""
        self._update_user(name, "password_hash = ?, tokens_valid_after = ?", password_hash,
                          int(time.time()))

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disabling also ends every token issued until now, so enabling does not revive them."""
        if disabled:
            self._update_user(name, "disabled = 1, tokens_valid_after = ?", int(time.time()))
        else:
            self._update_user(name, "disabled = 0")

    def set_quota(self, name: str, quota: int | None) -> None:
        self._update_user(name, "quota = ?", quota)

    def set_admin(self, name: str, admin: bool) -> None:
        self._update_user(name, "admin = ?", int(admin))

    # ---- devices --------------------------------------------------------------------------

    def add_device(self, user_id: int, name: str, scopes: tuple[Scope, ...],
                   vaults: tuple[str, ...]) -> DeviceRecord:
        device_id = secrets.token_hex(16)
        now = int(time.time())
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO devices (id, user_id, name, scopes, vaults, created_at, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (device_id, user_id, name, ",".join(s.value for s in scopes),
                 json.dumps(list(vaults)), now, now))
        device = self.get_device(device_id)
        assert device is not None
        return device

    def get_device(self, device_id: str) -> DeviceRecord | None:
        row = self._one("SELECT * FROM devices WHERE id = ?", device_id)
        return _device(row) if row else None

    def find_device(self, user_id: int, name: str) -> DeviceRecord | None:
        """The user's device of that name that is not revoked (the newest if several)."""
        row = self._one("SELECT * FROM devices WHERE user_id = ? AND name = ? AND revoked = 0 "
                        "ORDER BY created_at DESC LIMIT 1", user_id, name)
        return _device(row) if row else None

    def update_device(self, device_id: str, scopes: tuple[Scope, ...],
                      vaults: tuple[str, ...]) -> DeviceRecord:
        with self._tx() as conn:
            conn.execute("UPDATE devices SET scopes = ?, vaults = ?, last_seen = ? WHERE id = ?",
                         (",".join(s.value for s in scopes), json.dumps(list(vaults)),
                          int(time.time()), device_id))
        device = self.get_device(device_id)
        if device is None:
            raise NoSuchDevice(f"no device {device_id}")
        return device

    def list_devices(self, user_name: str | None = None) -> list[DeviceRecord]:
        if user_name is None:
            rows = self._all("SELECT * FROM devices ORDER BY user_id, created_at")
        else:
            user = self.get_user(user_name)
            if user is None:
                raise NoSuchUser(f"no user {user_name}")
            rows = self._all("SELECT * FROM devices WHERE user_id = ? ORDER BY created_at",
                             user.id)
        return [_device(r) for r in rows]

    def revoke_device(self, device_id: str) -> None:
        with self._tx() as conn:
            if conn.execute("UPDATE devices SET revoked = 1 WHERE id = ?",
                            (device_id,)).rowcount == 0:
                raise NoSuchDevice(f"no device {device_id}")

    def touch_device(self, device_id: str, when: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (when, device_id))

    # ---- vaults and usage -----------------------------------------------------------------

    def add_vault(self, user_id: int, name: str) -> VaultRecord:
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM vaults WHERE user_id = ? AND name = ?",
                            (user_id, name)).fetchone():
                raise VaultExists(f"vault {name} already exists")
            conn.execute("INSERT INTO vaults (user_id, name, created_at) VALUES (?, ?, ?)",
                         (user_id, name, int(time.time())))
        vault = self.get_vault(user_id, name)
        assert vault is not None
        return vault

    def get_vault(self, user_id: int, name: str) -> VaultRecord | None:
        row = self._one("SELECT * FROM vaults WHERE user_id = ? AND name = ?", user_id, name)
        return _vault(row) if row else None

    def list_vaults(self, user_id: int | None = None) -> list[VaultRecord]:
        if user_id is None:
            return [_vault(r) for r in self._all("SELECT * FROM vaults ORDER BY user_id, name")]
        return [_vault(r) for r in
                self._all("SELECT * FROM vaults WHERE user_id = ? ORDER BY name", user_id)]

    def add_usage(self, vault_id: int, size_delta: int, objects_delta: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE vaults SET size = MAX(0, size + ?), objects = MAX(0, objects + ?)"
                         " WHERE id = ?", (size_delta, objects_delta, vault_id))

    def set_usage(self, vault_id: int, size: int, objects: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE vaults SET size = ?, objects = ? WHERE id = ?",
                         (size, objects, vault_id))

    def user_usage(self, user_id: int) -> int:
        row = self._one("SELECT COALESCE(SUM(size), 0) FROM vaults WHERE user_id = ?", user_id)
        return int(row[0]) if row else 0


class AsyncDatabase:
    """`Database` for the event loop: every call runs on one dedicated thread, in order."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-db")

    @classmethod
    async def open(cls, path: Path) -> Self:
        return cls(await asyncio.to_thread(Database.open, path))

    async def close(self) -> None:
        await self._call(Database.close)
        self._executor.shutdown(wait=True)

    async def _call(self, method: Callable[Concatenate[Database, P], T],
                    *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(method, self._db, *args, **kwargs))

    async def add_user(self, name: str, password_hash: str, *, admin: bool = False,
                       quota: int | None = None) -> UserRecord:
        return await self._call(Database.add_user, name, password_hash, admin=admin,
                                quota=quota)

    async def get_user(self, name: str) -> UserRecord | None:
        return await self._call(Database.get_user, name)

    async def get_user_by_id(self, user_id: int) -> UserRecord | None:
        return await self._call(Database.get_user_by_id, user_id)

    async def list_users(self) -> list[UserRecord]:
        return await self._call(Database.list_users)

    async def set_password(self, name: str, password_hash: str) -> None:
        await self._call(Database.set_password, name, password_hash)

    async def set_disabled(self, name: str, disabled: bool) -> None:
        await self._call(Database.set_disabled, name, disabled)

    async def set_quota(self, name: str, quota: int | None) -> None:
        await self._call(Database.set_quota, name, quota)

    async def add_device(self, user_id: int, name: str, scopes: tuple[Scope, ...],
                         vaults: tuple[str, ...]) -> DeviceRecord:
        return await self._call(Database.add_device, user_id, name, scopes, vaults)

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        return await self._call(Database.get_device, device_id)

    async def find_device(self, user_id: int, name: str) -> DeviceRecord | None:
        return await self._call(Database.find_device, user_id, name)

    async def update_device(self, device_id: str, scopes: tuple[Scope, ...],
                            vaults: tuple[str, ...]) -> DeviceRecord:
        return await self._call(Database.update_device, device_id, scopes, vaults)

    async def list_devices(self, user_name: str | None = None) -> list[DeviceRecord]:
        return await self._call(Database.list_devices, user_name)

    async def revoke_device(self, device_id: str) -> None:
        await self._call(Database.revoke_device, device_id)

    async def touch_device(self, device_id: str, when: int) -> None:
        await self._call(Database.touch_device, device_id, when)

    async def add_vault(self, user_id: int, name: str) -> VaultRecord:
        return await self._call(Database.add_vault, user_id, name)

    async def get_vault(self, user_id: int, name: str) -> VaultRecord | None:
        return await self._call(Database.get_vault, user_id, name)

    async def list_vaults(self, user_id: int | None = None) -> list[VaultRecord]:
        return await self._call(Database.list_vaults, user_id)

    async def add_usage(self, vault_id: int, size_delta: int, objects_delta: int) -> None:
        await self._call(Database.add_usage, vault_id, size_delta, objects_delta)

    async def set_usage(self, vault_id: int, size: int, objects: int) -> None:
        await self._call(Database.set_usage, vault_id, size, objects)

    async def user_usage(self, user_id: int) -> int:
        return await self._call(Database.user_usage, user_id)
