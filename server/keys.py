"""Every typed key of the server's application and request state (no module globals).

App keys are set by `create_app` (pure values) and by its cleanup context (services that
need I/O: the database, the auth service, the vault registry). Request keys are set by the
middlewares (request id) and by the `requires` guard (the authenticated principal).
"""

from typing import Any

from aiohttp import web

from server.auth.service import AuthService, Principal
from server.config import ServerConfig
from server.db.database import AsyncDatabase
from server.metrics import Metrics
from server.storage.vaults import VaultRegistry

CONFIG = web.AppKey("config", ServerConfig)
METRICS = web.AppKey("metrics", Metrics)
OPENAPI_DOC: web.AppKey[dict[str, Any]] = web.AppKey("openapi_doc")
VERSION = web.AppKey("version", str)  # the installed cairn-backup version, for /healthz

DB = web.AppKey("db", AsyncDatabase)
AUTH = web.AppKey("auth", AuthService)
VAULTS = web.AppKey("vaults", VaultRegistry)

REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
