"""Write the golden vectors of vault format v1 into tests/shared/vectors/.

Run from the repository root:

    .venv/bin/python -m tests.shared.make_vectors

The output is deterministic: the keys are fixed, and `os.urandom` is replaced, inside this
script only and only while an object is being encoded, by a BLAKE3 stream whose outputs are
recorded in vectors.json (so tests can replay them and re-encode byte for byte). The files form
a small, complete vault (config, two key slots, a data pack, a tree pack, an index segment, a
snapshot, a deletion marker). A diff in vectors/ is a format change: see docs/FORMAT.md.
"""

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from blake3 import blake3

from shared import FORMAT_VERSION
from shared.chunking import DEFAULT_AVG, DEFAULT_MAX, DEFAULT_MIN, ChunkerParams, FastCdcChunker
from shared.crypto.aead import open_sealed
from shared.crypto.kdf import new_params
from shared.crypto.keys import (
    MasterKeys,
    encode_key_slot,
    make_passphrase_slot,
    make_recovery_slot,
    parse_recovery_key,
)
from shared.format.blob import blob_aad, encode_blob
from shared.format.config import VaultConfig, encode_config
from shared.format.deletion import DeletionMarker, encode_deletion
from shared.format.index import IndexSegment, encode_index
from shared.format.pack import TRAILER_SIZE, PackEntry, PackWriter
from shared.format.snapshot import Snapshot, SnapshotStats, encode_snapshot
from shared.format.tree import Node, NodeType, encode_tree
from shared.hashing import keyed_id, object_id
from shared.ids import BlobType, ObjectId

VECTORS = Path(__file__).resolve().parent / "vectors"

ENCRYPTION_KEY = bytes(range(0x00, 0x20))
CHUNK_ID_KEY = bytes(range(0x20, 0x40))
VAULT_ID = bytes(range(0x40, 0x60))
# NFC form; the NFD form ("cafe" + U+0301) must open the slot too.
PASSPHRASE = "correct horse battery staple, caf\u00e9"
CHEAP_KDF_OPS = 1
CHEAP_KDF_MEM = 8 * 1024 * 1024
CREATED_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
SNAPSHOT_NS = CREATED_NS + 3_723_000_000_123  # about an hour later
ZSTD_LEVEL = 3
PACK_SIZE = 16 * 1024 * 1024

DATA_COMPRESSIBLE = b"Cairn golden vector: this line repeats, so zstd makes it smaller.\n" * 64
DATA_INCOMPRESSIBLE = blake3(b"cairn vectors: incompressible").digest(length=1500)
CHUNKER_INPUT_LABEL = "cairn vectors: chunker input"
CHUNKER_INPUT_SIZE = 12 * 1024 * 1024


def fake_id(label: str) -> ObjectId:
    """An ID for something that the vectors only name (an older index, a parent snapshot)."""
    return ObjectId(blake3(label.encode()).digest())


def xof(label: str, size: int) -> bytes:
    return blake3(label.encode()).digest(length=size)


class FakeRandom:
    """A stand-in for os.urandom: BLAKE3 XOF of (label, call number), with a record of calls."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.outputs: list[bytes] = []

    def __call__(self, size: int) -> bytes:
        out = xof(f"cairn vectors urandom: {self.label} #{len(self.outputs)}", size)
        self.outputs.append(out)
        return out


@contextmanager
def fixed_random(label: str) -> Iterator[FakeRandom]:
    """Replace os.urandom while one object is encoded (this script only, never in production)."""
    fake = FakeRandom(label)
    saved = os.urandom
    os.urandom = fake
    try:
        yield fake
    finally:
        os.urandom = saved


# ---- JSON views of decoded values (hex for bytes; the tests compare against these) ---------


def node_to_json(node: Node) -> dict[str, Any]:
    return {
        "name": node.name.hex(), "type": node.type.value, "mode": node.mode, "uid": node.uid,
        "gid": node.gid, "user": node.user, "group": node.group, "mtime_ns": node.mtime_ns,
        "atime_ns": node.atime_ns, "ctime_ns": node.ctime_ns, "size": node.size,
        "inode": node.inode, "device": node.device, "links": node.links,
        "content": [c.hex() for c in node.content],
        "subtree": node.subtree.hex() if node.subtree else None,
        "target": node.target.hex(), "rdev": node.rdev,
        "xattrs": [[k.hex(), v.hex()] for k, v in node.xattrs],
    }


def entry_to_json(entry: PackEntry) -> dict[str, Any]:
    return {"type": int(entry.type), "id": entry.id.hex(), "offset": entry.offset,
            "length": entry.length, "raw_length": entry.raw_length}


def snapshot_to_json(snap: Snapshot) -> dict[str, Any]:
    return {
        "time_ns": snap.time_ns, "tz_offset": snap.tz_offset, "hostname": snap.hostname,
        "username": snap.username, "paths": [p.hex() for p in snap.paths],
        "tree": snap.tree.hex(), "tags": list(snap.tags),
        "parent": snap.parent.hex() if snap.parent else None, "checkpoint": snap.checkpoint,
        "excludes": list(snap.excludes), "program": snap.program,
        "stats": {f.name: getattr(snap.stats, f.name) for f in fields(SnapshotStats)},
        "packs": [p.hex() for p in sorted(set(snap.packs))],
    }


# ---- the objects -----------------------------------------------------------------------


def root_tree_nodes(data_ids: list[ObjectId], empty_tree: ObjectId) -> list[Node]:
    """Every node type, every field, a hard link pair, and names that are not UTF-8.

    Modes are permission bits only (st_mode & 0o7777, setgid/setuid included): the type is `t`.
    """
    size = len(DATA_COMPRESSIBLE) + len(DATA_INCOMPRESSIBLE)
    common = {"uid": 1000, "gid": 1000, "user": "alice", "group": "staff",
              "mtime_ns": CREATED_NS - 86_400_000_000_001, "ctime_ns": CREATED_NS - 5}
    return [
        Node(name="caf\u00e9.txt".encode(), type=NodeType.FILE, mode=0o644, size=size,
             inode=1234, device=2049, links=2, content=tuple(data_ids),
             xattrs=((b"user.comment", b"golden \xff vector"), (b"user.empty", b"")),
             **common),
        Node(name=b"hardlink", type=NodeType.FILE, mode=0o644, size=size, inode=1234,
             device=2049, links=2, content=tuple(data_ids), **common),
        Node(name=b"docs", type=NodeType.DIR, mode=0o2755, inode=77, device=2049,
             subtree=empty_tree, **common),
        Node(name=b"bad\xffname\nwith newline", type=NodeType.SYMLINK, mode=0o777,
             target=b"/tmp/\xfe\xff/caf\xc3\xa9.txt", **common),
        Node(name=b"pipe", type=NodeType.FIFO, mode=0o600, **common),
        Node(name=b"null", type=NodeType.CHARDEV, mode=0o666, rdev=0x103, uid=0, gid=0,
             user="root", group="root"),
        Node(name=b"sda", type=NodeType.BLOCKDEV, mode=0o660, rdev=0x800, group="disk"),
        Node(name=b"sock", type=NodeType.SOCKET, mode=0o755, uid=1000, gid=1000,
             mtime_ns=-1_000_000_123),  # before 1970: negative times survive
        Node(name=b"empty", type=NodeType.FILE, mode=0o4700),
    ]


def seal_pack(
    label: str, blob_type: BlobType, blobs: list[tuple[ObjectId, bytes]],
) -> tuple[ObjectId, bytes, list[PackEntry], list[bytes]]:
    """A pack of `blobs`, sealed with nonces from fixed_random(label)."""
    with fixed_random(label) as fake:
        writer = PackWriter(blob_type)
        for blob_id, plain in blobs:
            sealed = encode_blob(ENCRYPTION_KEY, blob_type, blob_id, plain, ZSTD_LEVEL)
            writer.add(blob_id, sealed, len(plain))
        pack_id, data, entries = writer.finish(ENCRYPTION_KEY)
    return pack_id, data, list(entries), fake.outputs


def pack_json(file: str, pack_id: ObjectId, data: bytes, entries: list[PackEntry],
              plains: list[bytes], outputs: list[bytes]) -> dict[str, Any]:
    header_len = int.from_bytes(data[-TRAILER_SIZE:], "little")
    blobs = []
    for entry, plain in zip(entries, plains, strict=True):
        sealed = data[entry.offset:entry.offset + entry.length]
        inner = open_sealed(ENCRYPTION_KEY, sealed, blob_aad(entry.type, entry.id))
        blobs.append({**entry_to_json(entry), "compression": inner[0],
                      "plaintext": plain.hex()})
    return {"file": file, "kind": "packs", "id": pack_id.hex(),
            "urandom": [o.hex() for o in outputs],
            "value": {"header_length": header_len, "blobs": blobs}}


def build() -> tuple[dict[str, Any], dict[str, bytes]]:
    """Every vector: (vectors.json content, file name -> bytes)."""
    keys = MasterKeys(ENCRYPTION_KEY, CHUNK_ID_KEY)
    files: dict[str, bytes] = {}
    objects: dict[str, Any] = {}

    # config
    config = VaultConfig(vault_id=VAULT_ID, created_ns=CREATED_NS, chunk_avg=DEFAULT_AVG,
                         chunk_min=DEFAULT_MIN, chunk_max=DEFAULT_MAX, pack_size=PACK_SIZE,
                         zstd_level=ZSTD_LEVEL)
    files["config.bin"] = encode_config(config, keys.config_mac)
    objects["config"] = {
        "file": "config.bin", "kind": "config", "urandom": [],
        "value": {"version": config.version, "vault_id": VAULT_ID.hex(),
                  "created_ns": CREATED_NS, "chunker": "fastcdc2020-nc1",
                  "chunk_avg": config.chunk_avg, "chunk_min": config.chunk_min,
                  "chunk_max": config.chunk_max, "pack_size": config.pack_size,
                  "zstd_level": config.zstd_level},
    }

    # key slots
    with fixed_random("passphrase slot") as fake:
        kdf = new_params(ops=CHEAP_KDF_OPS, mem=CHEAP_KDF_MEM)
        slot = make_passphrase_slot(keys, VAULT_ID, PASSPHRASE, created_ns=CREATED_NS,
                                    hostname="laptop", label="initial", kdf=kdf)
    files["key-passphrase.bin"] = encode_key_slot(slot)
    objects["key_passphrase"] = {
        "file": "key-passphrase.bin", "kind": "keys", "urandom": [o.hex() for o in fake.outputs],
        "value": {"type": "passphrase", "created_ns": CREATED_NS, "hostname": "laptop",
                  "label": "initial", "kdf": {"alg": "argon2id", "ops": CHEAP_KDF_OPS,
                                              "mem": CHEAP_KDF_MEM, "salt": kdf.salt.hex()},
                  "sealed": slot.sealed.hex()},
    }
    with fixed_random("recovery slot") as fake:
        rslot, recovery_text = make_recovery_slot(keys, VAULT_ID, created_ns=CREATED_NS + 1,
                                                  hostname="laptop", label="recovery")
    files["key-recovery.bin"] = encode_key_slot(rslot)
    objects["key_recovery"] = {
        "file": "key-recovery.bin", "kind": "keys", "urandom": [o.hex() for o in fake.outputs],
        "value": {"type": "recovery", "created_ns": CREATED_NS + 1, "hostname": "laptop",
                  "label": "recovery", "kdf": None, "sealed": rslot.sealed.hex()},
    }
    recovery_secret = parse_recovery_key(recovery_text)
    assert recovery_secret is not None

    # data pack: one compressible blob, one that zstd cannot shrink
    plains = [DATA_COMPRESSIBLE, DATA_INCOMPRESSIBLE]
    data_ids = [keyed_id(CHUNK_ID_KEY, p) for p in plains]
    data_pack, data_bytes, data_entries, outputs = seal_pack(
        "data pack", BlobType.DATA, list(zip(data_ids, plains, strict=True)))
    files["pack-data.bin"] = data_bytes
    objects["pack_data"] = pack_json("pack-data.bin", data_pack, data_bytes, data_entries,
                                     plains, outputs)

    # trees: an empty directory and the root
    empty_tree = encode_tree([])
    empty_id = keyed_id(CHUNK_ID_KEY, empty_tree)
    nodes = root_tree_nodes(data_ids, empty_id)
    root_tree = encode_tree(nodes)
    root_id = keyed_id(CHUNK_ID_KEY, root_tree)
    files["tree-root.msgpack"] = root_tree
    objects["tree_root"] = {
        "file": "tree-root.msgpack", "kind": "tree blob plaintext", "blob_id": root_id.hex(),
        "value": {"nodes": [node_to_json(n) for n in sorted(nodes, key=lambda n: n.name)]},
    }
    files["tree-empty.msgpack"] = empty_tree
    objects["tree_empty"] = {"file": "tree-empty.msgpack", "kind": "tree blob plaintext",
                             "blob_id": empty_id.hex(), "value": {"nodes": []}}
    tree_plains = [root_tree, empty_tree]
    tree_pack, tree_bytes, tree_entries, outputs = seal_pack(
        "tree pack", BlobType.TREE, [(root_id, root_tree), (empty_id, empty_tree)])
    files["pack-tree.bin"] = tree_bytes
    objects["pack_tree"] = pack_json("pack-tree.bin", tree_pack, tree_bytes, tree_entries,
                                     tree_plains, outputs)

    # index segment naming both packs
    older_index = fake_id("an older index segment")
    segment = IndexSegment({data_pack: tuple(data_entries), tree_pack: tuple(tree_entries)},
                           (older_index,))
    with fixed_random("index") as fake:
        files["index.bin"] = encode_index(ENCRYPTION_KEY, segment)
    objects["index"] = {
        "file": "index.bin", "kind": "index", "urandom": [o.hex() for o in fake.outputs],
        "value": {"packs": {pid.hex(): [entry_to_json(e) for e in entries]
                            for pid, entries in sorted(segment.packs.items())},
                  "supersedes": [older_index.hex()]},
    }

    # snapshot
    snap = Snapshot(
        time_ns=SNAPSHOT_NS, tz_offset=3600, hostname="laptop", username="alice",
        paths=(b"/home/alice", b"/srv/caf\xe9"), tree=root_id, tags=("daily", "golden"),
        parent=fake_id("a parent snapshot"), checkpoint=False, excludes=("*.tmp", "/proc"),
        program="cairn 0.1.0",
        stats=SnapshotStats(files=4, dirs=2, bytes=2 * len(b"".join(plains)), new_files=3,
                            changed_files=1, unchanged_files=0, new_blobs=4,
                            new_bytes=len(b"".join(plains + tree_plains)),
                            stored_bytes=len(data_bytes) + len(tree_bytes), problems=1,
                            seconds_ms=1_234),
        packs=(tree_pack, data_pack),
    )
    with fixed_random("snapshot") as fake:
        files["snapshot.bin"] = encode_snapshot(ENCRYPTION_KEY, snap)
    objects["snapshot"] = {"file": "snapshot.bin", "kind": "snapshots",
                           "urandom": [o.hex() for o in fake.outputs],
                           "value": snapshot_to_json(snap)}

    # deletion marker
    marker = DeletionMarker(SNAPSHOT_NS + 60_000_000_000,
                            (fake_id("a pruned pack 2"), fake_id("a pruned pack 1")))
    files["deletion.bin"] = encode_deletion(marker)
    objects["deletion"] = {"file": "deletion.bin", "kind": "deletions", "urandom": [],
                           "value": {"time_ns": marker.time_ns,
                                     "packs": [p.hex() for p in sorted(marker.packs)]}}

    for obj in objects.values():
        obj["object_id"] = object_id(files[obj["file"]]).hex()
    # The config MAC is the keyed BLAKE3 of the config map without "mac"; see FORMAT.md.
    objects["config"]["value"]["mac"] = config_mac_of(files["config.bin"], keys.config_mac)

    spec = {
        "comment": ("Golden vectors of Cairn vault format v1 (docs/FORMAT.md). Generated by "
                    "tests/shared/make_vectors.py; bytes are hex. A change here is a format "
                    "change."),
        "format_version": FORMAT_VERSION,
        "keys": {"encryption": ENCRYPTION_KEY.hex(), "chunk_id": CHUNK_ID_KEY.hex(),
                 "vault_id": VAULT_ID.hex(), "config_mac_key": keys.config_mac.hex(),
                 "chunker_seed": keys.chunker_seed},
        "passphrase": PASSPHRASE,
        "recovery_key": recovery_text,
        "recovery_secret": recovery_secret.hex(),
        "recovery_kek": _recovery_kek(recovery_secret).hex(),
        "passphrase_kek": _passphrase_kek(kdf.salt).hex(),
        "objects": objects,
        "chunker": chunker_vectors(keys.chunker_seed),
    }
    return spec, files


def config_mac_of(data: bytes, mac_key: bytes) -> str:
    import msgpack

    body = msgpack.unpackb(data, raw=False)
    mac = body.pop("mac")
    assert mac == keyed_id(mac_key, msgpack.packb(body, use_bin_type=True)).raw
    return bytes(mac).hex()


def _recovery_kek(secret: bytes) -> bytes:
    return blake3(secret, derive_key_context="cairn 2026-11 recovery key v1").digest()


def _passphrase_kek(salt: bytes) -> bytes:
    from nacl.pwhash import argon2id

    kek: bytes = argon2id.kdf(32, PASSPHRASE.encode(), salt, opslimit=CHEAP_KDF_OPS,
                              memlimit=CHEAP_KDF_MEM)
    return kek


def chunker_vectors(seed: int) -> list[dict[str, Any]]:
    """Chunk lengths for a fixed input: with the vault's seed, with seed 0, and small sizes."""
    data = xof(CHUNKER_INPUT_LABEL, CHUNKER_INPUT_SIZE)
    out = []
    for avg, mn, mx, s in ((DEFAULT_AVG, DEFAULT_MIN, DEFAULT_MAX, seed),
                           (DEFAULT_AVG, DEFAULT_MIN, DEFAULT_MAX, 0),
                           (4096, 1024, 16384, seed)):
        size = CHUNKER_INPUT_SIZE if avg == DEFAULT_AVG else 256 * 1024
        chunker = FastCdcChunker(ChunkerParams(avg, mn, mx, s))
        lengths = [len(c) for c in chunker.split_buffer(data[:size])]
        out.append({"avg": avg, "min": mn, "max": mx, "seed": s,
                    "input": {"blake3_xof": CHUNKER_INPUT_LABEL, "length": size},
                    "lengths": lengths})
    return out


def write(spec: dict[str, Any], files: dict[str, bytes], folder: Path = VECTORS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    text = json.dumps(spec, indent=1, ensure_ascii=False) + "\n"
    (folder / "vectors.json").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None, emit: Callable[[str], None] = print) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else VECTORS
    spec, files = build()
    write(spec, files, folder)
    emit(f"wrote {len(files) + 1} files to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
