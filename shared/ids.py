"""Object identities: ObjectId (32 bytes), ObjectKind, ObjectKey with name validation, BlobType.

A key's name is validated once, here, so no backend can be tricked into path traversal.
"""

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from shared.errors import UsageError

ID_SIZE = 32
_NAME_RE = re.compile(r"[0-9a-f]{64}")


class InvalidName(UsageError):
    """An object name that is not 64 lowercase hex characters."""

    code = "bad_name"


class ObjectKind(StrEnum):
    """The kinds of objects a vault stores; the value is the folder / URL segment."""

    CONFIG = "config"
    KEY = "keys"
    PACK = "packs"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    DELETION = "deletions"


class BlobType(IntEnum):
    """What a blob inside a pack holds (the code is part of the format)."""

    DATA = 0
    TREE = 1


@dataclass(frozen=True, slots=True, order=True)
class ObjectId:
    """A 32-byte identifier: a keyed BLAKE3 of plaintext (blobs) or BLAKE3 of bytes (objects)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != ID_SIZE:
            raise ValueError(f"an object ID is {ID_SIZE} bytes")

    @classmethod
    def from_hex(cls, text: str) -> "ObjectId":
        if not _NAME_RE.fullmatch(text):
            raise InvalidName(f"not a valid object name: {text[:80]!r}")
        return cls(bytes.fromhex(text))

    def hex(self) -> str:
        return self.raw.hex()

    def short(self) -> str:
        return self.raw.hex()[:8]

    def __str__(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        return f"ObjectId({self.raw.hex()[:16]}…)"


def validate_name(name: str) -> str:
    """Return `name` if it is a valid object name (64 lowercase hex characters), else raise."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidName(f"not a valid object name: {str(name)[:80]!r}")
    return name


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    """Where an object lives in a vault: its kind and its (validated) name."""

    kind: ObjectKind
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ObjectKind):
            object.__setattr__(self, "kind", ObjectKind(self.kind))
        validate_name(self.name)

    @classmethod
    def of(cls, kind: ObjectKind, oid: ObjectId) -> "ObjectKey":
        return cls(kind, oid.hex())

    @property
    def id(self) -> ObjectId:
        return ObjectId(bytes.fromhex(self.name))

    def __str__(self) -> str:
        return f"{self.kind.value}/{self.name}"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What `stat` and `list` tell about a stored object."""

    key: ObjectKey
    size: int
    mtime: float | None = None
