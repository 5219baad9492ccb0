"""URL templates of API v1, shared by the server's route table and the client.

Templates use aiohttp's `{name}` syntax; `url()` fills them in with quoting-safe values
(every value placed in a path is validated first: vault names, object kinds and names).
"""

API = "/api/v1"
HEALTHZ = "/healthz"
METRICS = "/metrics"
OPENAPI = f"{API}/openapi.json"

SIGN_IN = f"{API}/auth/sign-in"  # POST SignInRequest -> TokenResponse
RENEW = f"{API}/auth/renew"  # POST (bearer) -> TokenResponse
WHOAMI = f"{API}/auth/whoami"  # GET (bearer) -> Whoami

VAULTS = f"{API}/vaults"  # GET -> VaultList; POST CreateVault -> VaultInfo (201)
VAULT = f"{API}/vaults/{{vault}}"  # GET -> VaultInfo
OBJECTS = f"{API}/vaults/{{vault}}/objects/{{kind}}"  # GET ?after=&limit= -> ObjectList
OBJECT = f"{API}/vaults/{{vault}}/objects/{{kind}}/{{name}}"  # PUT GET HEAD DELETE
MISSING = f"{API}/vaults/{{vault}}/objects:missing"  # POST MissingRequest -> MissingResponse

ADMIN_USERS = f"{API}/admin/users"  # GET (admin scope) -> UserList

# Objects bigger than this are refused with 413 unless the server's config says otherwise;
# packs are 16-64 MiB, so the default leaves room.
DEFAULT_MAX_OBJECT_SIZE = 128 << 20
# One page of a listing, and one "which are missing?" batch.
DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10000
MAX_MISSING_BATCH = 10000


def url(template: str, **values: str) -> str:
    """`template` with its `{name}` fields filled in (values must already be validated)."""
    return template.format(**values)
