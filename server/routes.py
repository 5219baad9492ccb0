"""The whole URL table of the server in one function, from shared/protocol/paths.py.

GET routes answer HEAD only where HEAD means something (an object's size); scopes are next
to each handler (`@requires`), and the OpenAPI document (openapi.py) lists the same table.
"""

import logging

from aiohttp import web

from server.handlers import admin, auth, health, objects, vaults
from shared.protocol import paths

logger = logging.getLogger(__name__)


def setup_routes(app: web.Application) -> None:
    router = app.router
    router.add_get(paths.HEALTHZ, health.healthz, allow_head=False)
    router.add_get(paths.METRICS, health.metrics, allow_head=False)
    router.add_get(paths.OPENAPI, health.openapi, allow_head=False)

    router.add_post(paths.SIGN_IN, auth.sign_in)
    router.add_post(paths.RENEW, auth.renew)
    router.add_get(paths.WHOAMI, auth.whoami, allow_head=False)

    router.add_get(paths.VAULTS, vaults.list_vaults, allow_head=False)
    router.add_post(paths.VAULTS, vaults.create_vault)
    router.add_get(paths.VAULT, vaults.get_vault, allow_head=False)

    router.add_get(paths.OBJECTS, objects.list_objects, allow_head=False)
    router.add_post(paths.MISSING, objects.missing_objects)
    router.add_put(paths.OBJECT, objects.put_object)
    router.add_get(paths.OBJECT, objects.get_object)  # and HEAD: size without the bytes
    router.add_delete(paths.OBJECT, objects.delete_object)

    router.add_get(paths.ADMIN_USERS, admin.list_users, allow_head=False)
