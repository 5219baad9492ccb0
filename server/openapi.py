"""The OpenAPI 3.1 document of API v1, built from one table of operations (no I/O).

Every route of routes.py has an entry in OPERATIONS with its scopes, parameters, request
body and every response it can give; the schemas mirror shared/protocol/models.py. Tests
check the document is valid, lists exactly the app's routes and scopes, and that every real
response of the route tests matches it.
"""

import copy
import logging
from dataclasses import dataclass
from typing import Any

from server.auth.guard import ADMIN, ANY_TOKEN, DELETE, READ, WRITE
from shared.ids import ObjectKind
from shared.protocol import paths
from shared.protocol.models import MAX_DEVICE_NAME, Scope

logger = logging.getLogger(__name__)

Json = dict[str, Any]
API_VERSION = "1.0.0"

_NAME = "^[0-9a-f]{64}$"
_KINDS = [k.value for k in ObjectKind]
_KEY_TEXT = f"^({'|'.join(_KINDS)})/[0-9a-f]{{64}}$"


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: Json, *, optional: tuple[str, ...] = (), closed: bool = True) -> Json:
    schema: Json = {"type": "object", "properties": properties,
                    "required": [p for p in properties if p not in optional]}
    if closed:
        schema["additionalProperties"] = False
    return schema


_INT = {"type": "integer", "minimum": 0}
_TIME = {"type": "integer", "description": "Unix time, seconds"}
_SCOPES = {"type": "array", "minItems": 1, "items": _ref("Scope")}
_VAULTS = {"type": "array", "minItems": 1,
           "items": {"anyOf": [_ref("VaultName"), {"const": "*"}]},
           "description": "vault names the token reaches, or [\"*\"] for all of the user's"}

SCHEMAS: Json = {
    "Error": _object({"error": _object({
        "code": {"type": "string", "description": "stable error code (shared/errors.py), "
                 "e.g. auth, token_expired, forbidden, not_a_vault, not_found, bad_name, "
                 "integrity, too_large, quota_exceeded, rate_limited, range, usage"},
        "message": {"type": "string", "description": "one line for humans"}})}),
    "Scope": {"type": "string", "enum": [s.value for s in Scope]},
    "VaultName": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                  "not": {"pattern": "\\.\\."}},
    "UserName": {"type": "string", "pattern": "^[a-z_][a-z0-9_.-]{0,31}$"},
    "DeviceId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    "ObjectName": {"type": "string", "pattern": _NAME,
                   "description": "BLAKE3 of the object's bytes, 64 lowercase hex digits"},
    "ObjectKind": {"type": "string", "enum": _KINDS},
    "KeyText": {"type": "string", "pattern": _KEY_TEXT, "description": "kind/name"},
    "SignInRequest": _object({
        "user": _ref("UserName"), "password": {"type": "string"},
        "device": {"type": "string", "minLength": 1, "maxLength": MAX_DEVICE_NAME,
                   "description": "a human name for the device, e.g. its host name"},
        "scopes": {**_SCOPES, "default": ["backup", "restore"]},
        "vaults": {**_VAULTS, "default": ["*"]},
    }, optional=("scopes", "vaults"), closed=False),
    "TokenResponse": _object({
        "token": {"type": "string", "description": "JWT (EdDSA); send as 'Bearer <token>'"},
        "expires_at": _TIME, "user": _ref("UserName"), "device_id": _ref("DeviceId"),
        "scopes": _SCOPES, "vaults": _VAULTS}),
    "Whoami": _object({
        "user": _ref("UserName"), "device_id": _ref("DeviceId"), "scopes": _SCOPES,
        "vaults": _VAULTS, "expires_at": _TIME,
        "quota": {"type": ["integer", "null"], "minimum": 0, "description": "bytes; null: none"},
        "used": {**_INT, "description": "bytes stored by all of the user's vaults"}}),
    "CreateVault": _object({"name": _ref("VaultName")}, closed=False),
    "VaultInfo": _object({"name": _ref("VaultName"), "created_at": _TIME,
                          "size": {**_INT, "description": "bytes of all stored objects"},
                          "objects": _INT}),
    "VaultList": _object({"vaults": {"type": "array", "items": _ref("VaultInfo")}}),
    "ObjectEntry": _object({"name": _ref("ObjectName"), "size": _INT}),
    "ObjectList": _object({
        "objects": {"type": "array", "items": _ref("ObjectEntry"),
                    "description": "sorted by name"},
        "next": {"anyOf": [_ref("ObjectName"), {"type": "null"}],
                 "description": "pass as `after` for the next page; null on the last page"}}),
    "MissingRequest": _object({"keys": {"type": "array", "maxItems": paths.MAX_MISSING_BATCH,
                                        "items": _ref("KeyText")}}, closed=False),
    "MissingResponse": _object({"missing": {"type": "array", "items": _ref("KeyText")}}),
    "Health": _object({"status": {"type": "string", "enum": ["ok", "degraded"]},
                       "version": {"type": "string"}}),
    "UserInfo": _object({
        "name": _ref("UserName"), "admin": {"type": "boolean"}, "disabled": {"type": "boolean"},
        "quota": {"type": ["integer", "null"], "minimum": 0}, "used": _INT, "vaults": _INT,
        "devices": {**_INT, "description": "devices not revoked"}}),
    "UserList": _object({"users": {"type": "array", "items": _ref("UserInfo")}}),
}

_PARAMETERS: Json = {
    "vault": {"name": "vault", "in": "path", "required": True, "schema": _ref("VaultName"),
              "description": "one of the signed-in user's vaults"},
    "kind": {"name": "kind", "in": "path", "required": True, "schema": _ref("ObjectKind")},
    "name": {"name": "name", "in": "path", "required": True, "schema": _ref("ObjectName")},
    "after": {"name": "after", "in": "query", "required": False, "schema": _ref("ObjectName"),
              "description": "list only names after this one (the `next` of the last page)"},
    "limit": {"name": "limit", "in": "query", "required": False,
              "schema": {"type": "integer", "minimum": 1, "maximum": paths.MAX_LIST_LIMIT,
                         "default": paths.DEFAULT_LIST_LIMIT}},
    "range": {"name": "Range", "in": "header", "required": False,
              "schema": {"type": "string", "pattern": "^bytes=[0-9]*-[0-9]*$"},
              "description": "one byte range: bytes=START-END, bytes=START- or bytes=-SUFFIX"},
}


@dataclass(frozen=True, slots=True)
class Response:
    description: str
    schema: str | None = None  # a components schema name, JSON body
    media: str | None = None  # a non-JSON body: its media type
    headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    method: str  # lowercase, as in OpenAPI
    path: str
    operation_id: str
    summary: str
    scopes: tuple[Scope, ...] | None  # None: no token; (): any valid token
    responses: dict[int, Response]
    parameters: tuple[str, ...] = ()
    body: str | None = None  # a components schema name (JSON), or "binary"
    tag: str = "objects"
    description: str = ""


def _err(description: str) -> Response:
    return Response(description, "Error")


_AUTH = {401: _err("no, malformed, invalid or expired token (`auth`, `token_expired`), "
                   "revoked device or disabled user")}
_DENIED = {403: _err("the token lacks the scope, or does not cover this vault (`forbidden`)")}
_NO_VAULT = {404: _err("the signed-in user has no vault of this name (`not_a_vault`)")}
_BAD = {400: _err("bad vault name, object kind or name (`usage`, `bad_name`)")}
_JSON_BAD = {400: _err("malformed JSON or fields (`usage`)"),
             413: _err("JSON body larger than the server's limit (`too_large`)")}
_VAULT_ERRORS = {**_BAD, **_AUTH, **_DENIED, **_NO_VAULT}

OPERATIONS: tuple[Operation, ...] = (
    Operation("post", paths.SIGN_IN, "signIn", "Sign a device in with a password", None,
              {200: Response("a device token", "TokenResponse"), **_JSON_BAD,
               401: _err("wrong user name or password, or a disabled user (`auth`)"),
               403: _err("admin scope asked by a user who is not an admin (`forbidden`)"),
               429: Response("too many failed sign-ins for this user or address "
                             "(`rate_limited`)", "Error", headers=("Retry-After",))},
              body="SignInRequest", tag="auth"),
    Operation("post", paths.RENEW, "renew", "Renew the calling device's token", ANY_TOKEN,
              {200: Response("a new token with a later expiry", "TokenResponse"), **_AUTH},
              tag="auth"),
    Operation("get", paths.WHOAMI, "whoami", "Describe the calling token", ANY_TOKEN,
              {200: Response("user, device, scopes, quota and usage", "Whoami"), **_AUTH},
              tag="auth"),
    Operation("get", paths.VAULTS, "listVaults", "List the user's vaults", READ,
              {200: Response("the vaults the token covers, by name", "VaultList"), **_AUTH,
               **_DENIED}, tag="vaults"),
    Operation("post", paths.VAULTS, "createVault", "Create a vault", WRITE,
              {201: Response("the new, empty vault", "VaultInfo", headers=("Location",)),
               **_JSON_BAD, **_AUTH, **_DENIED,
               409: _err("the user already has a vault of this name (`vault_exists`)")},
              body="CreateVault", tag="vaults"),
    Operation("get", paths.VAULT, "getVault", "Show a vault", READ,
              {200: Response("the vault's size and object count", "VaultInfo"),
               **_VAULT_ERRORS}, parameters=("vault",), tag="vaults"),
    Operation("get", paths.OBJECTS, "listObjects", "List objects of one kind, page by page",
              READ, {200: Response("one page, sorted by name", "ObjectList"), **_VAULT_ERRORS},
              parameters=("vault", "kind", "after", "limit")),
    Operation("post", paths.MISSING, "missingObjects", "Which of these objects are missing?",
              READ, {200: Response("the absent keys, in request order", "MissingResponse"),
                     **_VAULT_ERRORS, **_JSON_BAD}, parameters=("vault",),
              body="MissingRequest"),
    Operation("put", paths.OBJECT, "putObject", "Upload an object", WRITE,
              {201: Response("stored", "ObjectEntry"),
               200: Response("already stored (the body was read and dropped)", "ObjectEntry"),
               **_VAULT_ERRORS,
               413: _err("larger than the server's max object size (`too_large`)"),
               422: _err("the body's BLAKE3 is not the name; nothing stored (`integrity`)"),
               503: _err("another upload of the same object is still in progress "
                         "(`unavailable`); retry later"),
               507: _err("the user's quota cannot hold it (`quota_exceeded`)")},
              parameters=("vault", "kind", "name"), body="binary",
              description="The body is streamed to a temporary file while it is hashed; it "
              "becomes visible only if its BLAKE3 equals the name."),
    Operation("get", paths.OBJECT, "getObject", "Download an object or a byte range", READ,
              {200: Response("the whole object", media="application/octet-stream"),
               206: Response("the requested range", media="application/octet-stream",
                             headers=("Content-Range",)),
               **_VAULT_ERRORS, 404: _err("no such vault (`not_a_vault`) or object "
                                          "(`not_found`)"),
               416: Response("the range is malformed or starts past the end (`range`)",
                             "Error", headers=("Content-Range",))},
              parameters=("vault", "kind", "name", "range")),
    Operation("head", paths.OBJECT, "headObject", "Size of an object", READ,
              {200: Response("exists; Content-Length is its size", headers=("Content-Length",)),
               **_VAULT_ERRORS, 404: Response("no such vault or object")},
              parameters=("vault", "kind", "name")),
    Operation("delete", paths.OBJECT, "deleteObject", "Delete an object (maintain scope)",
              DELETE, {204: Response("deleted"), **_BAD, **_AUTH,
                       403: _err("the token is append-only (no maintain scope) or does not "
                                 "cover this vault (`forbidden`)"),
                       404: _err("no such vault (`not_a_vault`) or object (`not_found`)")},
              parameters=("vault", "kind", "name")),
    Operation("get", paths.ADMIN_USERS, "listUsers", "List users and their usage", ADMIN,
              {200: Response("every user of this server", "UserList"), **_AUTH,
               403: _err("the token has no admin scope (`forbidden`)")}, tag="admin"),
    Operation("get", paths.HEALTHZ, "healthz", "Health check", None,
              {200: Response("healthy", "Health"),
               503: Response("degraded: the vaults folder is not writable", "Health")},
              tag="operations"),
    Operation("get", paths.METRICS, "metrics", "Prometheus metrics", None,
              {200: Response("text exposition format", media="text/plain")}, tag="operations"),
    Operation("get", paths.OPENAPI, "openapi", "This document", None,
              {200: Response("the OpenAPI 3.1 document", media="application/json")},
              tag="operations"),
)

_HEADERS: Json = {
    "X-Request-Id": {"description": "the request's id (also in the server's logs)",
                     "schema": {"type": "string"}},
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
    "Content-Range": {"description": "bytes START-END/SIZE, or bytes */SIZE on 416",
                      "schema": {"type": "string"}},
    "Content-Length": {"description": "size in bytes", "schema": {"type": "integer"}},
    "Location": {"description": "the new resource", "schema": {"type": "string"}},
}


def _response(response: Response) -> Json:
    out: Json = {"description": response.description,
                 "headers": {name: {"$ref": f"#/components/headers/{name}"}
                             for name in ("X-Request-Id", *response.headers)}}
    if response.schema is not None:
        out["content"] = {"application/json": {"schema": _ref(response.schema)}}
    elif response.media == "application/json":
        out["content"] = {"application/json": {"schema": {"type": "object"}}}
    elif response.media is not None:
        out["content"] = {response.media: {"schema": {"type": "string"}}}
    return out


def _operation(op: Operation) -> Json:
    out: Json = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
                 "responses": {str(status): _response(r)
                               for status, r in sorted(op.responses.items())}}
    if op.description:
        out["description"] = op.description
    if op.parameters:
        out["parameters"] = [{"$ref": f"#/components/parameters/{p}"} for p in op.parameters]
    if op.scopes is None:
        out["security"] = []
    else:
        out["security"] = [{"deviceToken": []}]
        out["x-cairn-scopes"] = [s.value for s in op.scopes]
    if op.body == "binary":
        out["requestBody"] = {"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}}
    elif op.body is not None:
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": _ref(op.body)}}}
    return out


def build_openapi() -> Json:
    """The OpenAPI 3.1 document of API v1 (a fresh dict; served at /api/v1/openapi.json)."""
    document: Json = {
        "openapi": "3.1.0",
        "info": {"title": "Cairn server API", "version": API_VERSION,
                 "description": "End-to-end encrypted backup: the server stores opaque, "
                 "content-addressed objects per user vault. `x-cairn-scopes` lists the token "
                 "scopes of which an operation needs any one. See docs/API.md."},
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": {},
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "parameters": copy.deepcopy(_PARAMETERS),
            "headers": copy.deepcopy(_HEADERS),
            "securitySchemes": {"deviceToken": {"type": "http", "scheme": "bearer",
                                                "bearerFormat": "JWT"}},
        },
    }
    for op in OPERATIONS:
        document["paths"].setdefault(op.path, {})[op.method] = _operation(op)
    return document
