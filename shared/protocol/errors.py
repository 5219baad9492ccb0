"""The one table between CairnError classes and HTTP statuses, used by both sides.

The server's error middleware renders any CairnError as `{"error": {"code", "message"}}` with
the status from `status_for`; HttpStore turns such a response back into the same class with
`error_from_response`, so engine code handles a remote vault exactly like a local one.
"""

from typing import Any

import shared.ids  # noqa: F401 - defines InvalidName, so its code is known to the table
from shared.errors import (
    AuthError,
    CairnError,
    IntegrityError,
    NotAVault,
    ObjectExists,
    ObjectNotFound,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RangeError,
    RateLimited,
    StorageError,
    StorageUnavailable,
    UnsupportedFormat,
    UsageError,
    VaultExists,
)

# Most specific class first is not needed: status_for walks the MRO of the raised class.
HTTP_STATUS: dict[type[CairnError], int] = {
    UsageError: 400,  # InvalidName (bad object name), bad vault name, bad JSON
    UnsupportedFormat: 400,
    AuthError: 401,  # TokenExpired too; RateLimited overrides below
    PermissionDenied: 403,  # wrong scope, append-only delete, vault not in the token
    ObjectNotFound: 404,
    NotAVault: 404,  # no such vault for this user (also: another user's vault)
    ObjectExists: 409,
    VaultExists: 409,
    PayloadTooLarge: 413,
    RangeError: 416,
    IntegrityError: 422,  # upload whose BLAKE3 does not match its name
    RateLimited: 429,
    StorageError: 500,
    StorageUnavailable: 503,
    QuotaExceeded: 507,
    CairnError: 500,
}

# Statuses a client treats as transient (retry with back-off) when the body says nothing
# more specific: proxies and a restarting server answer these.
TRANSIENT_STATUSES = frozenset({408, 502, 503, 504})


def status_for(exc: CairnError) -> int:
    """The HTTP status for `exc`: the entry of its nearest class in HTTP_STATUS."""
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_body(exc: CairnError) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"code": exc.code, "message": str(exc)}}


def _all_error_classes(root: type[CairnError]) -> list[type[CairnError]]:
    found = [root]
    for sub in root.__subclasses__():
        found.extend(_all_error_classes(sub))
    return found


def error_classes_by_code() -> dict[str, type[CairnError]]:
    """Every CairnError subclass defined so far, by its `code` (the first class wins)."""
    table: dict[str, type[CairnError]] = {}
    for cls in _all_error_classes(CairnError):
        table.setdefault(cls.code, cls)
    return table


def _class_for_status(status: int) -> type[CairnError]:
    for cls, code in HTTP_STATUS.items():
        if code == status and cls is not CairnError:
            return cls
    if status >= 500:
        return StorageError
    return CairnError


def error_from_response(status: int, body: Any, fallback: str) -> CairnError:
    """The CairnError a response stands for: by the body's `error.code` when it is one we
    know, else by the status. `fallback` is the message when the body has none (a proxy's
    HTML page, an empty body)."""
    code = message = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = body["error"].get("code")
        message = body["error"].get("message")
    if not isinstance(message, str) or not message:
        message = fallback
    if status in TRANSIENT_STATUSES:
        return StorageUnavailable(message)
    cls = error_classes_by_code().get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _class_for_status(status)
    return cls(message)
