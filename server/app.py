"""`create_app(config)`: the aiohttp application of cairn-server (API v1).

It does no I/O: the database, the auth service (signing keys) and the vault registry are
opened by the cleanup context when the app starts and closed when it stops. JSON bodies are
capped at `config.json_body_limit` (client_max_size); object uploads stream and are limited
by `config.max_object_size` in the vault registry instead.
"""

import asyncio
import fcntl
import importlib.metadata
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from aiohttp import web

from server.auth.service import AuthService
from server.config import ServerConfig
from server.db.database import AsyncDatabase
from server.keys import AUTH, CONFIG, DB, METRICS, OPENAPI_DOC, VAULTS, VERSION
from server.metrics import Metrics
from server.middlewares import access_log_middleware, error_middleware, request_id_middleware
from server.openapi import build_openapi
from server.routes import setup_routes
from server.storage.vaults import VaultRegistry
from shared.errors import UsageError

logger = logging.getLogger(__name__)

DISTRIBUTION = "cairn-backup"
LOCK_NAME = "server.lock"


def create_app(config: ServerConfig) -> web.Application:
    app = web.Application(
        client_max_size=config.json_body_limit,
        middlewares=[request_id_middleware, access_log_middleware, error_middleware],
    )
    app[CONFIG] = config
    app[METRICS] = Metrics()
    app[OPENAPI_DOC] = build_openapi()
    app.cleanup_ctx.append(_services)
    setup_routes(app)
    return app


def _version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def _services(app: web.Application) -> AsyncIterator[None]:
    """Open the database and the services on it; close the database when the app stops."""
    config = app[CONFIG]
    lock = await asyncio.to_thread(_lock_data_dir, config.data_dir)
    try:
        async with _opened(app, config):
            yield
    finally:
        lock.close()  # releases the lock


def _lock_data_dir(data_dir: Path) -> BinaryIO:
    """An exclusive lock on the data folder for this process's lifetime, so a second server on
    the same folder stops before it touches anything (its start-up clean-up would remove the
    first one's uploads in progress)."""
    handle = open(data_dir / LOCK_NAME, "ab")  # noqa: SIM115 - held open while serving
    try:
        # A POSIX record lock: held per process, so apps that tests run side by side in one
        # process share it, while a second server process is refused.
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise UsageError(f"the data folder {data_dir} is in use by another cairn-server "
                         "process") from exc
    return handle


@asynccontextmanager
async def _opened(app: web.Application, config: ServerConfig) -> AsyncIterator[None]:
    db = await AsyncDatabase.open(config.db_path)
    try:
        app[DB] = db
        app[AUTH] = await asyncio.to_thread(AuthService.from_config, config, db)
        app[VAULTS] = VaultRegistry(config, db, app[METRICS])
        await app[VAULTS].reconcile()
        app[VERSION] = await asyncio.to_thread(_version)
        logger.info("serving data folder %s", config.data_dir)
        yield
    finally:
        await db.close()
