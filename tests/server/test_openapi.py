"""The OpenAPI document: valid 3.1, served as built, the same (method, path) pairs and scopes
as the app's route table, schemas that accept what the models produce, one docs/API.md
section per operation, and a response checker that does catch mismatches."""

import re
from typing import Any, Protocol

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_spec

from server.app import create_app
from server.auth.guard import required_scopes
from server.config import ServerConfig
from server.openapi import build_openapi
from shared.ids import ObjectKey, ObjectKind
from shared.protocol.models import (
    CreateVault,
    Health,
    MissingRequest,
    MissingResponse,
    ObjectEntry,
    ObjectList,
    Scope,
    SignInRequest,
    TokenResponse,
    UserInfo,
    UserList,
    VaultInfo,
    VaultList,
    Whoami,
)
from shared.protocol.paths import OPENAPI
from tests.conftest import REPO
from tests.server.conftest import Api
from tests.server.openapi_check import check_response, validate

NAME = "0f" * 32
DEVICE = "a1" * 16


def app_routes(config: ServerConfig) -> dict[tuple[str, str], object]:
    app = create_app(config)
    return {(route.method, route.resource.canonical): route.handler
            for route in app.router.routes() if route.resource is not None}


def document_operations() -> dict[tuple[str, str], dict[str, object]]:
    return {(method.upper(), path): op for path, item in build_openapi()["paths"].items()
            for method, op in item.items()}


def test_document_is_valid_openapi_3_1() -> None:
    document = build_openapi()
    assert document["openapi"].startswith("3.1")
    validate_spec(document)


async def test_served_document_is_the_built_one(api: Api) -> None:
    reply = await api.get(OPENAPI)
    assert reply.json() == build_openapi()


def test_document_lists_exactly_the_apps_routes(server_config: ServerConfig) -> None:
    assert set(app_routes(server_config)) == set(document_operations())


def test_document_scopes_are_the_guards_scopes(server_config: ServerConfig) -> None:
    operations = document_operations()
    for pair, handler in app_routes(server_config).items():
        scopes = required_scopes(handler)
        op = operations[pair]
        if scopes is None:
            assert op["security"] == [], pair
        else:
            assert op["security"] == [{"deviceToken": []}], pair
            assert op["x-cairn-scopes"] == [s.value for s in scopes], pair


def test_api_md_has_a_section_per_operation() -> None:
    text = (REPO / "docs" / "API.md").read_text()
    sections = set(re.findall(r"^### `([A-Z]+) (/\S*)`$", text, re.MULTILINE))
    assert sections == set(document_operations())


class Model(Protocol):
    def to_json(self) -> dict[str, Any]: ...


KEY = ObjectKey(ObjectKind.PACK, NAME)
MODELS: list[tuple[str, Model]] = [
    ("SignInRequest", SignInRequest("alice", "pw", "laptop", (Scope.BACKUP,), ("*",))),
    ("TokenResponse", TokenResponse("t.o.k", 1, "alice", DEVICE, (Scope.RESTORE,), ("a", "b"))),
    ("Whoami", Whoami("alice", DEVICE, (Scope.ADMIN,), ("*",), 2, None, 0)),
    ("Whoami", Whoami("alice", DEVICE, (Scope.ADMIN,), ("*",), 2, 1 << 40, 5)),
    ("CreateVault", CreateVault("my.vault_1")),
    ("VaultInfo", VaultInfo("v", 0, 1, 2)),
    ("VaultList", VaultList((VaultInfo("v", 0, 1, 2),))),
    ("ObjectEntry", ObjectEntry(NAME, 3)),
    ("ObjectList", ObjectList((ObjectEntry(NAME, 3),), NAME)),
    ("ObjectList", ObjectList((), None)),
    ("MissingRequest", MissingRequest((KEY,))),
    ("MissingResponse", MissingResponse((KEY, ObjectKey(ObjectKind.SNAPSHOT, NAME)))),
    ("Health", Health("ok", "0.1.0")),
    ("UserList", UserList((UserInfo("bob", False, True, None, 0, 1, 2),))),
]


@pytest.mark.parametrize("schema, model", MODELS, ids=[m[0] for m in MODELS])
def test_schemas_accept_what_the_models_produce(schema: str, model: Model) -> None:
    validate(model.to_json(), {"$ref": f"#/components/schemas/{schema}"})


@pytest.mark.parametrize("schema, instance", [
    ("VaultName", ".."), ("VaultName", "a..b"), ("ObjectName", NAME.upper()),
    ("KeyText", f"tmp/{NAME}"), ("ObjectList", {"objects": [], "next": None, "extra": 1}),
    ("Error", {"error": {"code": "x"}}),
])
def test_schemas_reject_what_the_models_reject(schema: str, instance: object) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(instance, {"$ref": f"#/components/schemas/{schema}"})


def test_checker_catches_undeclared_status_and_wrong_bodies() -> None:
    path = f"/api/v1/vaults/v/objects/packs/{NAME}"
    check_response("PUT", path, 201, "application/json", b'{"name": "%s", "size": 1}'
                   % NAME.encode())
    with pytest.raises(AssertionError, match="does not declare"):
        check_response("PUT", path, 418, "application/json", b"{}")
    with pytest.raises(jsonschema.ValidationError):
        check_response("PUT", path, 201, "application/json", b'{"name": "x"}')
    with pytest.raises(AssertionError, match="not in the document"):
        check_response("GET", "/api/v1/vaults/v/nothing", 200, "application/json", b"{}")
