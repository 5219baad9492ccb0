"""Checks real responses against the OpenAPI document: the status is declared for that path
and method, and a JSON body validates (jsonschema, draft 2020-12) against the declared schema.

Used by the `api` fixture for every request of the route tests, so no test checks by hand.
"""

import json
import re
from functools import cache
from typing import Any

import jsonschema

from server.openapi import build_openapi

Json = dict[str, Any]


@cache
def document() -> Json:
    return build_openapi()


@cache
def _templates() -> tuple[tuple[re.Pattern[str], str], ...]:
    found = []
    for template in document()["paths"]:
        pattern = re.escape(template)
        pattern = re.sub(r"\\\{(\w+)\\\}", r"[^/]+", pattern)
        found.append((re.compile(pattern), template))
    return tuple(found)


def template_of(path: str) -> str | None:
    """The document's path template that `path` (as sent: percent-encoded) matches."""
    for pattern, template in _templates():
        if pattern.fullmatch(path):
            return template
    return None


@cache
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    schema = json.loads(schema_json)
    return jsonschema.Draft202012Validator({**schema, "components": document()["components"]})


def validate(instance: object, schema: Json) -> None:
    """Validate `instance` against `schema` whose $refs point into the document's components."""
    _validator(json.dumps(schema, sort_keys=True)).validate(instance)


def check_response(method: str, path: str, status: int, content_type: str,
                   body: bytes) -> None:
    """AssertionError (or jsonschema.ValidationError) unless the response matches the doc."""
    error_schema = {"$ref": "#/components/schemas/Error"}
    template = template_of(path)
    operation = None
    if template is not None:
        operation = document()["paths"][template].get(method.lower())
    if operation is None:
        # Not an API operation: aiohttp's 404/405, rendered as our error body.
        assert status in (404, 405), f"{method} {path} -> {status}: not in the document"
        validate(json.loads(body), error_schema)
        return
    declared = operation["responses"]
    assert str(status) in declared, (
        f"{method} {template} answered {status}, which the document does not declare "
        f"(declared: {sorted(declared)}); body: {body[:200]!r}")
    content = declared[str(status)].get("content")
    if method.upper() == "HEAD":
        assert body == b""
        return
    if content is None:
        assert body == b"", f"{method} {template} {status} declares no body, got {body[:80]!r}"
        return
    media = content_type.split(";")[0].strip()
    assert media in content, f"{method} {template} {status}: {media} not in {sorted(content)}"
    if media == "application/json":
        validate(json.loads(body), content[media]["schema"])
