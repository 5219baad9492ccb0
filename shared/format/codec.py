"""msgpack helpers shared by every format module: strict decoding, typed field access.

Decoding never trusts input: wrong types raise IntegrityError with the object named.
"""

from typing import Any, TypeVar

import msgpack

from shared.errors import IntegrityError

T = TypeVar("T")


def pack(obj: Any) -> bytes:
    """Deterministic msgpack: callers build maps in a fixed key order."""
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def unpack(data: bytes | memoryview, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise IntegrityError(f"{what} is damaged: not valid msgpack ({exc})") from exc


def field(obj: Any, name: str, typ: type[T], what: str) -> T:
    """obj[name], checked to be of `typ` (bool is not accepted as int)."""
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what} is damaged: expected a map")
    if name not in obj:
        raise IntegrityError(f"{what} is damaged: field {name!r} is missing")
    value = obj[name]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise IntegrityError(f"{what} is damaged: field {name!r} has the wrong type")
    return value


def opt_field(obj: dict[str, Any], name: str, typ: type[T], what: str) -> T | None:
    if name not in obj or obj[name] is None:
        return None
    return field(obj, name, typ, what)


def id_bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise IntegrityError(f"{what} is damaged: an ID is not 32 bytes")
    return value
