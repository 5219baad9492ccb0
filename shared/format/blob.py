"""Sealed payloads: compress-then-encrypt for blobs (in packs) and for index/snapshot objects.

Plaintext inside the AEAD: one byte compression method || payload. The associated data binds
a blob to its type and ID, so blobs cannot be swapped or retyped.
"""

from shared.compression import Compression, compress, decompress
from shared.crypto.aead import (
    NONCE_SIZE,
    OVERHEAD,
    TAG_SIZE,
    open_sealed_buffer,
    seal,
    seal_in_place,
)
from shared.errors import IntegrityError
from shared.ids import BlobType, ObjectId

BLOB_AAD = b"cairn blob v1"
# The biggest plaintext a blob or metadata object may expand to (a hostile blob cannot make
# us allocate more): chunks are at most 16 MiB, trees/indexes are capped at 1 GiB.
MAX_PLAINTEXT = 1 << 30


def blob_aad(blob_type: BlobType, blob_id: ObjectId) -> bytes:
    return BLOB_AAD + bytes([blob_type]) + blob_id.raw


def encode_sealed(key: bytes, plaintext: bytes | memoryview, aad: bytes, level: int) -> bytes:
    method, payload = compress(plaintext, level)
    return seal(key, bytes([method]) + payload, aad)


def sealed_size(payload_size: int) -> int:
    """Bytes of a sealed blob whose (compressed or raw) payload has `payload_size` bytes."""
    return OVERHEAD + 1 + payload_size


def seal_into(key: bytes, box: memoryview, method: Compression, payload: bytes | memoryview,
              aad: bytes) -> None:
    """`encode_sealed` of an already compressed payload, written into `box` (a writable view of
    exactly `sealed_size(len(payload))` bytes): one copy of the payload, no new buffers."""
    box[NONCE_SIZE] = method
    box[NONCE_SIZE + 1 : len(box) - TAG_SIZE] = payload
    seal_in_place(key, box, aad)


def decode_sealed_buffer(key: bytes, sealed: bytes | memoryview, aad: bytes,
                         what: str) -> bytes | bytearray:
    """Undo `encode_sealed` with one buffer: `sealed` may be a view (of a pack range), and a
    payload stored raw comes back as the bytearray it was decrypted into."""
    inner = open_sealed_buffer(key, sealed, aad, what)
    if not inner:
        raise IntegrityError(f"{what} is damaged: empty payload")
    method = inner[0]
    del inner[0]  # O(1): a bytearray drops its first bytes by moving its start
    if method == Compression.NONE:
        return inner
    return decompress(method, inner, MAX_PLAINTEXT)


def decode_sealed(key: bytes, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
    plain = decode_sealed_buffer(key, sealed, aad, what)
    return plain if isinstance(plain, bytes) else bytes(plain)


def encode_blob(
    key: bytes, blob_type: BlobType, blob_id: ObjectId, plaintext: bytes | memoryview, level: int
) -> bytes:
    return encode_sealed(key, plaintext, blob_aad(blob_type, blob_id), level)


def decode_blob_buffer(key: bytes, blob_type: BlobType, blob_id: ObjectId,
                       sealed: bytes | memoryview) -> bytes | bytearray:
    """`decode_blob` without copies of its own, for restore (see decode_sealed_buffer)."""
    return decode_sealed_buffer(key, sealed, blob_aad(blob_type, blob_id),
                                f"blob {blob_id.short()}")


def decode_blob(key: bytes, blob_type: BlobType, blob_id: ObjectId, sealed: bytes) -> bytes:
    return decode_sealed(key, sealed, blob_aad(blob_type, blob_id), f"blob {blob_id.short()}")
