"""API v1 request and response bodies as frozen dataclasses, with JSON (de)serialisation.

`from_json` validates everything a peer sent and raises UsageError (HTTP 400) with a one-line
message on anything malformed, so handlers and HttpStore never index into raw dicts.
Also the names that appear in URLs (vaults, users, devices) and the token scopes.
"""

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

from shared.errors import UsageError
from shared.ids import ObjectKey, ObjectKind

_VAULT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_DEVICE_ID_RE = re.compile(r"[0-9a-f]{32}")
MAX_DEVICE_NAME = 100
ALL_VAULTS = "*"


class Scope(StrEnum):
    """What a token allows. `backup` is append-only (read + write, never delete)."""

    BACKUP = "backup"  # create vaults, read, list, put objects
    RESTORE = "restore"  # read and list
    MAINTAIN = "maintain"  # read, list, put and delete (prune)
    ADMIN = "admin"  # the /admin routes (users, usage); never another user's data


# What a device gets when it does not ask: append-only, so ransomware on a laptop cannot
# delete its own history.
DEFAULT_SCOPES: tuple[Scope, ...] = (Scope.BACKUP, Scope.RESTORE)


def validate_vault_name(name: object) -> str:
    if not isinstance(name, str) or not _VAULT_RE.fullmatch(name) or ".." in name:
        raise UsageError(
            f"not a valid vault name: {str(name)[:80]!r} (1-64 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit)"
        )
    return name


def validate_user_name(name: object) -> str:
    if not isinstance(name, str) or not _USER_RE.fullmatch(name):
        raise UsageError(
            f"not a valid user name: {str(name)[:80]!r} (1-32 lowercase letters, digits, '_', "
            "'.' or '-', not starting with a digit, '.' or '-')"
        )
    return name


def validate_device_id(device_id: object) -> str:
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.fullmatch(device_id):
        raise UsageError(f"not a valid device id: {str(device_id)[:80]!r}")
    return device_id


def parse_scopes(values: object) -> tuple[Scope, ...]:
    if not isinstance(values, list) or not values:
        raise UsageError("scopes must be a non-empty list")
    try:
        return tuple(dict.fromkeys(Scope(v) for v in values))
    except ValueError as exc:
        known = ", ".join(s.value for s in Scope)
        raise UsageError(f"unknown scope in {values!r} (known: {known})") from exc


def parse_vaults(values: object) -> tuple[str, ...]:
    if not isinstance(values, list) or not values:
        raise UsageError("vaults must be a non-empty list of vault names or ['*']")
    return tuple(dict.fromkeys(v if v == ALL_VAULTS else validate_vault_name(v) for v in values))


def _field(body: object, name: str, kind: type, *, optional: bool = False) -> Any:
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object")
    if name not in body or body[name] is None:
        if optional:
            return None
        raise UsageError(f"missing field {name!r}")
    value = body[name]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise UsageError(f"field {name!r} must be a {kind.__name__}")
    return value


@dataclass(frozen=True, slots=True)
class SignInRequest:
    user: str
    password: str
    device: str  # a human name for the device, e.g. its host name
    scopes: tuple[Scope, ...] = DEFAULT_SCOPES
    vaults: tuple[str, ...] = (ALL_VAULTS,)

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "password": self.password, "device": self.device,
                "scopes": [s.value for s in self.scopes], "vaults": list(self.vaults)}

    @classmethod
    def from_json(cls, body: object) -> Self:
        user = validate_user_name(_field(body, "user", str))
        password = _field(body, "password", str)
        device = _field(body, "device", str).strip()
        if not device or len(device) > MAX_DEVICE_NAME or not device.isprintable():
            raise UsageError(f"the device name must be 1-{MAX_DEVICE_NAME} printable characters")
        scopes = _field(body, "scopes", list, optional=True)
        vaults = _field(body, "vaults", list, optional=True)
        return cls(user, password, device,
                   DEFAULT_SCOPES if scopes is None else parse_scopes(scopes),
                   (ALL_VAULTS,) if vaults is None else parse_vaults(vaults))

    def __repr__(self) -> str:  # never show the password
        return f"SignInRequest(user={self.user!r}, device={self.device!r}, scopes={self.scopes})"


@dataclass(frozen=True, slots=True)
class TokenResponse:
    token: str = field(repr=False)
    expires_at: int  # Unix seconds
    user: str
    device_id: str
    scopes: tuple[Scope, ...]
    vaults: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "expires_at": self.expires_at, "user": self.user,
                "device_id": self.device_id, "scopes": [s.value for s in self.scopes],
                "vaults": list(self.vaults)}

    @classmethod
    def from_json(cls, body: object) -> Self:
        return cls(_field(body, "token", str), _field(body, "expires_at", int),
                   validate_user_name(_field(body, "user", str)),
                   validate_device_id(_field(body, "device_id", str)),
                   parse_scopes(_field(body, "scopes", list)),
                   parse_vaults(_field(body, "vaults", list)))


@dataclass(frozen=True, slots=True)
class Whoami:
    user: str
    device_id: str
    scopes: tuple[Scope, ...]
    vaults: tuple[str, ...]
    expires_at: int
    quota: int | None  # bytes; None: no quota
    used: int  # bytes stored by all of the user's vaults

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "device_id": self.device_id,
                "scopes": [s.value for s in self.scopes], "vaults": list(self.vaults),
                "expires_at": self.expires_at, "quota": self.quota, "used": self.used}

    @classmethod
    def from_json(cls, body: object) -> Self:
        return cls(validate_user_name(_field(body, "user", str)),
                   validate_device_id(_field(body, "device_id", str)),
                   parse_scopes(_field(body, "scopes", list)),
                   parse_vaults(_field(body, "vaults", list)),
                   _field(body, "expires_at", int), _field(body, "quota", int, optional=True),
                   _field(body, "used", int))


@dataclass(frozen=True, slots=True)
class CreateVault:
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_json(cls, body: object) -> Self:
        return cls(validate_vault_name(_field(body, "name", str)))


@dataclass(frozen=True, slots=True)
class VaultInfo:
    name: str
    created_at: int  # Unix seconds
    size: int  # bytes of all stored objects
    objects: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": self.created_at, "size": self.size,
                "objects": self.objects}

    @classmethod
    def from_json(cls, body: object) -> Self:
        return cls(validate_vault_name(_field(body, "name", str)),
                   _field(body, "created_at", int), _field(body, "size", int),
                   _field(body, "objects", int))


@dataclass(frozen=True, slots=True)
class VaultList:
    vaults: tuple[VaultInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {"vaults": [v.to_json() for v in self.vaults]}

    @classmethod
    def from_json(cls, body: object) -> Self:
        return cls(tuple(VaultInfo.from_json(v) for v in _field(body, "vaults", list)))


@dataclass(frozen=True, slots=True)
class ObjectEntry:
    name: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size}


@dataclass(frozen=True, slots=True)
class ObjectList:
    """One page of a listing, sorted by name; `next` is the `after` of the next page."""

    objects: tuple[ObjectEntry, ...]
    next: str | None

    def to_json(self) -> dict[str, Any]:
        return {"objects": [o.to_json() for o in self.objects], "next": self.next}

    @classmethod
    def from_json(cls, body: object, kind: ObjectKind) -> Self:
        entries = []
        for item in _field(body, "objects", list):
            key = ObjectKey(kind, _field(item, "name", str))  # validates the name
            entries.append(ObjectEntry(key.name, _field(item, "size", int)))
        return cls(tuple(entries), _field(body, "next", str, optional=True))


def key_text(key: ObjectKey) -> str:
    """`kind/name`, the form keys take in batch bodies."""
    return f"{key.kind.value}/{key.name}"


def parse_key_text(text: object) -> ObjectKey:
    if not isinstance(text, str) or text.count("/") != 1:
        raise UsageError(f"not an object key (kind/name): {str(text)[:80]!r}")
    kind, name = text.split("/")
    try:
        return ObjectKey(ObjectKind(kind), name)
    except ValueError as exc:
        raise UsageError(f"unknown object kind {kind[:20]!r}") from exc


@dataclass(frozen=True, slots=True)
class MissingRequest:
    keys: tuple[ObjectKey, ...]

    def to_json(self) -> dict[str, Any]:
        return {"keys": [key_text(k) for k in self.keys]}

    @classmethod
    def from_json(cls, body: object, *, max_keys: int) -> Self:
        items = _field(body, "keys", list)
        if len(items) > max_keys:
            raise UsageError(f"at most {max_keys} keys per request, got {len(items)}")
        return cls(tuple(parse_key_text(t) for t in items))


@dataclass(frozen=True, slots=True)
class MissingResponse:
    missing: tuple[ObjectKey, ...]

    def to_json(self) -> dict[str, Any]:
        return {"missing": [key_text(k) for k in self.missing]}

    @classmethod
    def from_json(cls, body: object) -> Self:
        return cls(tuple(parse_key_text(t) for t in _field(body, "missing", list)))


@dataclass(frozen=True, slots=True)
class Health:
    status: str  # "ok" or "degraded"
    version: str

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "version": self.version}


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    admin: bool
    disabled: bool
    quota: int | None
    used: int
    vaults: int
    devices: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "admin": self.admin, "disabled": self.disabled,
                "quota": self.quota, "used": self.used, "vaults": self.vaults,
                "devices": self.devices}


@dataclass(frozen=True, slots=True)
class UserList:
    users: tuple[UserInfo, ...]

    def to_json(self) -> dict[str, Any]:
        return {"users": [u.to_json() for u in self.users]}
