"""Vault routes: list the signed-in user's vaults, create one, show one.

Vault names are per user: `/vaults/{vault}` is always the caller's own vault of that name.
"""

import logging

from aiohttp import web

from server.auth.guard import READ, WRITE, requires
from server.db.database import VaultRecord
from server.handlers import read_json
from server.keys import PRINCIPAL, VAULTS
from shared.protocol.models import CreateVault, VaultInfo, VaultList
from shared.protocol.paths import VAULT, url

logger = logging.getLogger(__name__)


def vault_info(record: VaultRecord) -> VaultInfo:
    return VaultInfo(record.name, record.created_at, record.size, record.objects)


@requires(*READ)
async def list_vaults(request: web.Request) -> web.StreamResponse:
    """The caller's vaults that the token covers, by name."""
    records = await request.app[VAULTS].list(request[PRINCIPAL])
    return web.json_response(VaultList(tuple(vault_info(r) for r in records)).to_json())


@requires(*WRITE)
async def create_vault(request: web.Request) -> web.StreamResponse:
    wanted = CreateVault.from_json(await read_json(request))
    record = await request.app[VAULTS].create(request[PRINCIPAL], wanted.name)
    return web.json_response(vault_info(record).to_json(), status=201,
                             headers={"Location": url(VAULT, vault=record.name)})


@requires(*READ)
async def get_vault(request: web.Request) -> web.StreamResponse:
    vault = await request.app[VAULTS].open(request[PRINCIPAL], request.match_info["vault"])
    return web.json_response(vault_info(vault.record).to_json())
