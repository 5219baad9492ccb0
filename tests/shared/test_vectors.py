"""Golden vectors of vault format v1: decode every checked-in file, then re-encode it byte for byte.

A vector that no longer decodes, or decodes to other values, means the format changed: that
needs a new format version, docs/FORMAT.md and regenerated vectors (tests/shared/make_vectors.py),
never a quiet edit of these files. Randomness (nonces, salts, the recovery secret) is replayed
from vectors.json by patching os.urandom inside the re-encoding tests only.
"""

import io
import json
import os
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

from shared import FORMAT_VERSION
from shared.chunking import ChunkerParams, FastCdcChunker
from shared.compression import Compression
from shared.crypto.aead import NONCE_SIZE, open_sealed
from shared.crypto.kdf import KdfParams, derive, new_params
from shared.crypto.keys import (
    MasterKeys,
    SlotType,
    decode_key_slot,
    encode_key_slot,
    format_recovery_key,
    make_passphrase_slot,
    make_recovery_slot,
    parse_recovery_key,
    unlock_slot,
)
from shared.errors import IntegrityError, WrongPassphrase
from shared.format.blob import blob_aad, decode_blob, encode_blob
from shared.format.config import VaultConfig, decode_config, encode_config, verify_config
from shared.format.deletion import DeletionMarker, decode_deletion, encode_deletion
from shared.format.index import IndexSegment, decode_index, encode_index
from shared.format.pack import TRAILER_SIZE, PackEntry, PackWriter, decode_header, header_length
from shared.format.snapshot import (
    Snapshot,
    SnapshotStats,
    decode_snapshot,
    decode_snapshot_packs,
    encode_snapshot,
)
from shared.format.tree import Node, NodeType, decode_tree, encode_tree
from shared.hashing import derive_key, keyed_id, object_id
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind

VECTORS = Path(__file__).resolve().parent / "vectors"
SPEC: dict[str, Any] = json.loads((VECTORS / "vectors.json").read_text(encoding="utf-8"))
OBJECTS: dict[str, Any] = SPEC["objects"]
ENC = bytes.fromhex(SPEC["keys"]["encryption"])
CHUNK_KEY = bytes.fromhex(SPEC["keys"]["chunk_id"])
VAULT_ID = bytes.fromhex(SPEC["keys"]["vault_id"])
KEYS = MasterKeys(ENC, CHUNK_KEY)
PACKS = ["pack_data", "pack_tree"]
STORED = ["config", "key_passphrase", "key_recovery", *PACKS, "index", "snapshot", "deletion"]


def golden(name: str) -> bytes:
    return (VECTORS / OBJECTS[name]["file"]).read_bytes()


def value(name: str) -> dict[str, Any]:
    result: dict[str, Any] = OBJECTS[name]["value"]
    return result


def oid(text: str) -> ObjectId:
    return ObjectId(bytes.fromhex(text))


@contextmanager
def replayed_random(monkeypatch: pytest.MonkeyPatch, name: str) -> Iterator[None]:
    """os.urandom returns, in order, exactly the outputs recorded for object `name`."""
    queue = [bytes.fromhex(h) for h in OBJECTS[name]["urandom"]]

    def fake_urandom(size: int) -> bytes:
        assert queue, f"{name}: the encoder asked for more random bytes than when generated"
        out = queue.pop(0)
        assert len(out) == size, f"{name}: random request of {size} bytes, recorded {len(out)}"
        return out

    with monkeypatch.context() as patch:
        patch.setattr(os, "urandom", fake_urandom)
        yield
    assert not queue, f"{name}: the encoder used fewer random bytes than when generated"


def assert_same_bytes(name: str, got: bytes) -> None:
    want = golden(name)
    pairs = enumerate(zip(got, want, strict=False))
    first = next((i for i, (a, b) in pairs if a != b), min(len(got), len(want)))
    assert got == want, (
        f"{name}: re-encoding differs from the golden file (first difference at byte {first}"
        f"; sizes {len(got)} vs {len(want)}). Either the format changed (new version, FORMAT.md, "
        "regenerate vectors) or libzstd now compresses differently (check the zstandard version)."
    )


def node_from_json(raw: dict[str, Any]) -> Node:
    return Node(
        name=bytes.fromhex(raw["name"]), type=NodeType(raw["type"]), mode=raw["mode"],
        uid=raw["uid"], gid=raw["gid"], user=raw["user"], group=raw["group"],
        mtime_ns=raw["mtime_ns"], atime_ns=raw["atime_ns"], ctime_ns=raw["ctime_ns"],
        size=raw["size"], inode=raw["inode"], device=raw["device"], links=raw["links"],
        content=tuple(oid(c) for c in raw["content"]),
        subtree=oid(raw["subtree"]) if raw["subtree"] else None,
        target=bytes.fromhex(raw["target"]), rdev=raw["rdev"],
        xattrs=tuple((bytes.fromhex(k), bytes.fromhex(v)) for k, v in raw["xattrs"]),
    )


def entry_from_json(raw: dict[str, Any]) -> PackEntry:
    return PackEntry(BlobType(raw["type"]), oid(raw["id"]), raw["offset"], raw["length"],
                     raw["raw_length"])


def snapshot_from_json(raw: dict[str, Any]) -> Snapshot:
    return Snapshot(
        time_ns=raw["time_ns"], tz_offset=raw["tz_offset"], hostname=raw["hostname"],
        username=raw["username"], paths=tuple(bytes.fromhex(p) for p in raw["paths"]),
        tree=oid(raw["tree"]), tags=tuple(raw["tags"]),
        parent=oid(raw["parent"]) if raw["parent"] else None, checkpoint=raw["checkpoint"],
        excludes=tuple(raw["excludes"]), program=raw["program"],
        stats=SnapshotStats(**raw["stats"]), packs=tuple(oid(p) for p in raw["packs"]),
    )


# ---- names and keys --------------------------------------------------------------------


@pytest.mark.parametrize("name", STORED)
def test_vectors_object_named_by_blake3_of_bytes(name: str) -> None:
    assert object_id(golden(name)).hex() == OBJECTS[name]["object_id"]


def test_vectors_format_version_is_current() -> None:
    assert SPEC["format_version"] == FORMAT_VERSION == 1


def test_vectors_master_key_derivations() -> None:
    assert KEYS.config_mac.hex() == SPEC["keys"]["config_mac_key"]
    assert KEYS.config_mac == derive_key("cairn 2026-11 config mac v1", ENC + CHUNK_KEY)
    assert KEYS.chunker_seed == SPEC["keys"]["chunker_seed"]
    raw_seed = derive_key("cairn 2026-11 chunker seed v1", CHUNK_KEY, 8)
    assert KEYS.chunker_seed == int.from_bytes(raw_seed, "little") & ((1 << 63) - 1)


# ---- config ----------------------------------------------------------------------------


def test_vectors_config_decodes() -> None:
    want = value("config")
    cfg = decode_config(golden("config"))
    assert cfg == VaultConfig(
        vault_id=bytes.fromhex(want["vault_id"]), created_ns=want["created_ns"],
        chunk_avg=want["chunk_avg"], chunk_min=want["chunk_min"], chunk_max=want["chunk_max"],
        pack_size=want["pack_size"], zstd_level=want["zstd_level"], version=want["version"],
    )


def test_vectors_config_mac_verifies() -> None:
    data = golden("config")
    decode_config(data)
    verify_config(data, KEYS.config_mac)
    with pytest.raises(IntegrityError):
        verify_config(data, bytes(32))


def test_vectors_config_reencodes() -> None:
    cfg = decode_config(golden("config"))
    assert_same_bytes("config", encode_config(cfg, KEYS.config_mac))


# ---- key slots -------------------------------------------------------------------------


def test_vectors_passphrase_slot_decodes() -> None:
    want = value("key_passphrase")
    slot = decode_key_slot(golden("key_passphrase"))
    assert slot.slot_type == SlotType.PASSPHRASE == want["type"]
    assert slot.kdf == KdfParams(want["kdf"]["alg"], want["kdf"]["ops"], want["kdf"]["mem"],
                                 bytes.fromhex(want["kdf"]["salt"]))
    assert (slot.created_ns, slot.hostname, slot.label) == (
        want["created_ns"], want["hostname"], want["label"])
    assert slot.sealed.hex() == want["sealed"]


@pytest.mark.parametrize("form", ["NFC", "NFD"])
def test_vectors_passphrase_slot_unlocks(form: str) -> None:
    slot = decode_key_slot(golden("key_passphrase"))
    assert slot.kdf is not None
    assert derive(SPEC["passphrase"], slot.kdf).hex() == SPEC["passphrase_kek"]
    passphrase = unicodedata.normalize(form, SPEC["passphrase"])
    assert unlock_slot(slot, VAULT_ID, passphrase) == KEYS


def test_vectors_passphrase_slot_refuses_other_passphrase_and_vault() -> None:
    slot = decode_key_slot(golden("key_passphrase"))
    with pytest.raises(WrongPassphrase):
        unlock_slot(slot, VAULT_ID, SPEC["passphrase"] + " ")
    with pytest.raises(WrongPassphrase):
        unlock_slot(slot, bytes(32), SPEC["passphrase"])


def test_vectors_passphrase_slot_reencodes(monkeypatch: pytest.MonkeyPatch) -> None:
    slot = decode_key_slot(golden("key_passphrase"))
    assert encode_key_slot(slot) == golden("key_passphrase")
    assert slot.kdf is not None
    with replayed_random(monkeypatch, "key_passphrase"):
        kdf = new_params(ops=slot.kdf.ops, mem=slot.kdf.mem)
        again = make_passphrase_slot(KEYS, VAULT_ID, SPEC["passphrase"],
                                     created_ns=slot.created_ns, hostname=slot.hostname,
                                     label=slot.label, kdf=kdf)
    assert_same_bytes("key_passphrase", encode_key_slot(again))


def test_vectors_recovery_slot_decodes() -> None:
    want = value("key_recovery")
    slot = decode_key_slot(golden("key_recovery"))
    assert slot.slot_type == SlotType.RECOVERY == want["type"]
    assert slot.kdf is None
    assert (slot.created_ns, slot.hostname, slot.label) == (
        want["created_ns"], want["hostname"], want["label"])
    assert slot.sealed.hex() == want["sealed"]


def test_vectors_recovery_key_text() -> None:
    secret = bytes.fromhex(SPEC["recovery_secret"])
    text = SPEC["recovery_key"]
    assert format_recovery_key(secret) == text
    assert parse_recovery_key(text) == secret
    assert parse_recovery_key(text.upper().replace("-", " ")) == secret
    assert derive_key("cairn 2026-11 recovery key v1", secret).hex() == SPEC["recovery_kek"]


def test_vectors_recovery_slot_unlocks() -> None:
    slot = decode_key_slot(golden("key_recovery"))
    assert unlock_slot(slot, VAULT_ID, SPEC["recovery_key"]) == KEYS
    with pytest.raises(WrongPassphrase):
        unlock_slot(slot, VAULT_ID, SPEC["passphrase"])


def test_vectors_recovery_slot_reencodes(monkeypatch: pytest.MonkeyPatch) -> None:
    slot = decode_key_slot(golden("key_recovery"))
    assert encode_key_slot(slot) == golden("key_recovery")
    with replayed_random(monkeypatch, "key_recovery"):
        again, text = make_recovery_slot(KEYS, VAULT_ID, created_ns=slot.created_ns,
                                         hostname=slot.hostname, label=slot.label)
    assert text == SPEC["recovery_key"]
    assert_same_bytes("key_recovery", encode_key_slot(again))


# ---- packs and blobs -------------------------------------------------------------------


def read_header(data: bytes) -> list[PackEntry]:
    """What a reader does with a pack it knows only by its size: trailer, then header."""
    n = header_length(data[-TRAILER_SIZE:])
    sealed = data[len(data) - TRAILER_SIZE - n:len(data) - TRAILER_SIZE]
    return decode_header(ENC, sealed, len(data), "pack")


@pytest.mark.parametrize("name", PACKS)
def test_vectors_pack_header_decodes(name: str) -> None:
    data = golden(name)
    want = value(name)
    assert header_length(data[-TRAILER_SIZE:]) == want["header_length"]
    assert read_header(data) == [entry_from_json(b) for b in want["blobs"]]


@pytest.mark.parametrize("name", PACKS)
def test_vectors_pack_blobs_decode(name: str) -> None:
    data = golden(name)
    for raw in value(name)["blobs"]:
        entry = entry_from_json(raw)
        sealed = data[entry.offset:entry.offset + entry.length]
        plain = decode_blob(ENC, entry.type, entry.id, sealed)
        assert plain.hex() == raw["plaintext"]
        assert len(plain) == entry.raw_length
        assert keyed_id(CHUNK_KEY, plain) == entry.id
        inner = open_sealed(ENC, sealed, blob_aad(entry.type, entry.id))
        assert inner[0] == raw["compression"]


def test_vectors_pack_has_compressed_and_raw_blobs() -> None:
    methods = [b["compression"] for b in value("pack_data")["blobs"]]
    assert methods == [Compression.ZSTD, Compression.NONE]


@pytest.mark.parametrize("name", PACKS)
def test_vectors_pack_reencodes(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    blobs = [entry_from_json(b) for b in value(name)["blobs"]]
    plains = [bytes.fromhex(b["plaintext"]) for b in value(name)["blobs"]]
    with replayed_random(monkeypatch, name):
        writer = PackWriter(blobs[0].type)
        for entry, plain in zip(blobs, plains, strict=True):
            writer.add(entry.id, encode_blob(ENC, entry.type, entry.id, plain, 3), len(plain))
        pack_id, data, entries = writer.finish(ENC)
    assert entries == blobs
    assert pack_id.hex() == OBJECTS[name]["object_id"]
    assert_same_bytes(name, data)


# ---- trees -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tree_root", "tree_empty"])
def test_vectors_tree_decodes(name: str) -> None:
    nodes = decode_tree(golden(name))
    assert nodes == tuple(node_from_json(n) for n in value(name)["nodes"])
    assert keyed_id(CHUNK_KEY, golden(name)).hex() == OBJECTS[name]["blob_id"]


@pytest.mark.parametrize("name", ["tree_root", "tree_empty"])
def test_vectors_tree_reencodes(name: str) -> None:
    assert_same_bytes(name, encode_tree(decode_tree(golden(name))))


def test_vectors_tree_covers_the_format() -> None:
    nodes = decode_tree(golden("tree_root"))
    assert {n.type for n in nodes} == set(NodeType)
    assert [n.name for n in nodes] == sorted(n.name for n in nodes)
    names = [n.name for n in nodes]
    assert any(b"\n" in n for n in names)
    with pytest.raises(UnicodeDecodeError):
        b"".join(names).decode("utf-8")
    linked = [n for n in nodes if n.links > 1]
    assert len({(n.device, n.inode) for n in linked}) == 1 and len(linked) == 2
    assert all(n.atime_ns == 0 for n in nodes)  # atime is not recorded


# ---- index, snapshot, deletion marker --------------------------------------------------


def test_vectors_index_decodes() -> None:
    want = value("index")
    segment = decode_index(ENC, golden("index"))
    assert segment == IndexSegment(
        {oid(p): tuple(entry_from_json(e) for e in es) for p, es in want["packs"].items()},
        tuple(oid(s) for s in want["supersedes"]),
    )


def test_vectors_index_matches_pack_headers() -> None:
    segment = decode_index(ENC, golden("index"))
    for name in PACKS:
        assert list(segment.packs[oid(OBJECTS[name]["object_id"])]) == read_header(golden(name))


def test_vectors_index_reencodes(monkeypatch: pytest.MonkeyPatch) -> None:
    segment = decode_index(ENC, golden("index"))
    assert golden("index")[:NONCE_SIZE].hex() == OBJECTS["index"]["urandom"][0]
    with replayed_random(monkeypatch, "index"):
        data = encode_index(ENC, segment)
    assert_same_bytes("index", data)


def test_vectors_snapshot_decodes() -> None:
    snap = decode_snapshot(ENC, golden("snapshot"))
    assert snap == snapshot_from_json(value("snapshot"))
    assert snap.tree.hex() == OBJECTS["tree_root"]["blob_id"]


def test_vectors_snapshot_pack_list_readable_without_keys() -> None:
    packs = decode_snapshot_packs(golden("snapshot"))
    assert [p.hex() for p in packs] == value("snapshot")["packs"]
    assert {p.hex() for p in packs} == {OBJECTS[n]["object_id"] for n in PACKS}


def test_vectors_snapshot_reencodes(monkeypatch: pytest.MonkeyPatch) -> None:
    snap = decode_snapshot(ENC, golden("snapshot"))
    with replayed_random(monkeypatch, "snapshot"):
        data = encode_snapshot(ENC, snap)
    assert_same_bytes("snapshot", data)


def test_vectors_deletion_decodes() -> None:
    want = value("deletion")
    marker = decode_deletion(golden("deletion"))
    assert marker == DeletionMarker(want["time_ns"], tuple(oid(p) for p in want["packs"]))


def test_vectors_deletion_reencodes() -> None:
    assert_same_bytes("deletion", encode_deletion(decode_deletion(golden("deletion"))))


# ---- chunker ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", SPEC["chunker"], ids=lambda c: f"avg{c['avg']}-seed{c['seed']}")
def test_vectors_chunker_boundaries(case: dict[str, Any]) -> None:
    from blake3 import blake3

    data = blake3(case["input"]["blake3_xof"].encode()).digest(length=case["input"]["length"])
    chunker = FastCdcChunker(ChunkerParams(case["avg"], case["min"], case["max"], case["seed"]))
    assert [len(c) for c in chunker.split_buffer(data)] == case["lengths"]
    assert [len(c) for c in chunker.split_stream(io.BytesIO(data))] == case["lengths"]


# ---- the vectors form a vault ----------------------------------------------------------


async def test_vectors_open_as_vault() -> None:
    from client_gui.engine.vault import Vault
    from shared.storage.memory import MemoryStore

    store = MemoryStore()
    for name in STORED:
        kind = ObjectKind(OBJECTS[name]["kind"])
        await store.put(ObjectKey(kind, OBJECTS[name]["object_id"]), golden(name))
    vault = await Vault.open(store, SPEC["passphrase"])
    assert vault.keys == KEYS
    assert await vault.load_index() == []
    assert not vault.unindexed_packs
    (ref,) = await vault.list_snapshots()
    assert ref.id.hex() == OBJECTS["snapshot"]["object_id"]
    nodes = {n.name: n for n in await vault.load_tree(ref.snapshot.tree)}
    content = b"".join([await vault.load_blob(c) for c in nodes["café".encode() + b".txt"].content])
    plains = [bytes.fromhex(b["plaintext"]) for b in value("pack_data")["blobs"]]
    assert content == b"".join(plains)
    recovered = await Vault.open(store, SPEC["recovery_key"])
    assert recovered.keys == KEYS


# ---- the spec's byte-level statements, checked without the format helpers --------------


def test_vectors_associated_data_strings() -> None:
    import msgpack

    slot = decode_key_slot(golden("key_recovery"))
    kek = bytes.fromhex(SPEC["recovery_kek"])
    raw_slot = msgpack.unpackb(golden("key_recovery"), raw=False)
    meta = {k: raw_slot[k] for k in ("magic", "v", "type", "kdf", "created", "host", "label")}
    meta_hash = blake3(msgpack.packb(meta, use_bin_type=True)).digest()
    aad = b"cairn key slot v1" + VAULT_ID + meta_hash
    assert open_sealed(kek, slot.sealed, aad) == ENC + CHUNK_KEY

    data = golden("pack_data")
    n = int.from_bytes(data[-4:], "little")
    header = open_sealed(ENC, data[-4 - n:-4], b"cairn pack header v1")
    assert header[0] in (0, 1)
    for raw in value("pack_data")["blobs"]:
        sealed = data[raw["offset"]:raw["offset"] + raw["length"]]
        ad = b"cairn blob v1" + bytes([raw["type"]]) + bytes.fromhex(raw["id"])
        assert open_sealed(ENC, sealed, ad)[0] == raw["compression"]

    assert open_sealed(ENC, golden("index"), b"cairn index v1")[0] in (0, 1)

    snapshot = golden("snapshot")
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(snapshot)
    assert unpacker.read_array_header() == 4
    assert unpacker.unpack() == "cairn-snapshot" and unpacker.unpack() == 1
    start = unpacker.tell()
    unpacker.skip()
    plain_list = snapshot[start:unpacker.tell()]
    sealed = unpacker.unpack()
    assert open_sealed(ENC, sealed, b"cairn snapshot v1" + object_id(plain_list).raw)[0] in (0, 1)


def test_vectors_config_mac_over_stored_map() -> None:
    import msgpack

    body = msgpack.unpackb(golden("config"), raw=False)
    mac = body.pop("mac")
    assert mac.hex() == value("config")["mac"]
    assert keyed_id(KEYS.config_mac, msgpack.packb(body, use_bin_type=True)).raw == mac
