"""BLAKE3 helpers: keyed chunk IDs, unkeyed object names, key derivation.

The only module that imports the `blake3` package; callers use these typed wrappers.
"""

from blake3 import blake3

from shared.ids import ID_SIZE, ObjectId


def object_id(data: bytes | bytearray | memoryview) -> ObjectId:
    """Unkeyed BLAKE3 of stored bytes: the name of every object in a vault."""
    return ObjectId(blake3(data).digest())


def keyed_id(key: bytes, data: bytes | bytearray | memoryview) -> ObjectId:
    """Keyed BLAKE3 of plaintext: a blob ID (the key keeps IDs from revealing content)."""
    return ObjectId(blake3(data, key=key).digest())


def derive_key(context: str, material: bytes, size: int = ID_SIZE) -> bytes:
    """BLAKE3 derive-key mode: a sub-key for `context` (a fixed, unique string)."""
    return blake3(material, derive_key_context=context).digest(length=size)


class StreamHasher:
    """Unkeyed BLAKE3 over data that arrives in pieces (uploads, pack writers)."""

    __slots__ = ("_h", "size")

    def __init__(self) -> None:
        self._h = blake3()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def object_id(self) -> ObjectId:
        return ObjectId(self._h.digest())
