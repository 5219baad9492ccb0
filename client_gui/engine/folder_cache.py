"""The folder cache: which folders are unchanged since the last backup, without reading a tree.

For every folder a backup saves, the cache keeps a signature of its entries' metadata, the ID
of the tree it was saved as, its own file count and bytes, and the packs holding its own blobs
(its tree and its files' chunks). The next backup of the same paths lstat()s each folder's
entries as always; when the signature matches and every subfolder matches too, the folder's
tree is the one saved last time. Its ID is reused as it is: no parent tree is loaded or
decoded, no node is built, and the index is not loaded at all unless something changed. This
is Borg's files cache one level up, and what makes a no-change backup cost one lstat a file.
A folder with no record of its own (moved or renamed since) is looked up by its signature: the
same names with the same inodes, sizes and change times are the same files, so its old tree is
reused instead of its files being read again.

A signature covers what the backup compares to decide a file is unchanged (size, mtime, ctime,
inode) and every stat field other entries' nodes hold. It is computed from the nodes the backup
saved, not from what the walk saw, so a file that changed while it was read (whose node is
older than its lstat) does not match next time and is read again.

It is only a cache, tied to one snapshot. It is used only when the backup's parent snapshot is
the one it was written with, when every index segment it saw still exists and no deletion
marker does (a prune that deletes or moves packs always writes a marker and replaces every
segment), so every pack it names still holds the blobs it names them for. The file is
authenticated with a key derived from the vault's keys, and it names folders by keyed hashes
of their paths, not by the paths. Deleting it is always safe.
"""

import logging
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.crypto.keys import MasterKeys
from shared.errors import IntegrityError
from shared.format.codec import pack, unpack
from shared.format.tree import Node, NodeType, StoredNode
from shared.hashing import derive_key, keyed_id, object_id
from shared.ids import ID_SIZE, ObjectId

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
MAGIC = b"cairn folder cache\n"
SIG_SIZE = 16
KEY_SIZE = 16
_MAC_CONTEXT = "cairn 2026-11 folder cache mac v1"
_PATH_CONTEXT = "cairn 2026-11 folder cache paths v1"

# One entry: type, name length, mode, uid, gid, mtime, ctime, inode, device, links, and the
# size of a file or the device number of a device node; then the name.
_ENTRY = struct.Struct("<BIQQQqqQQQQ")
_STAT_TYPES = {stat.S_IFREG: 1, stat.S_IFDIR: 2, stat.S_IFLNK: 3, stat.S_IFIFO: 4,
               stat.S_IFCHR: 5, stat.S_IFBLK: 6, stat.S_IFSOCK: 7}
_NODE_TYPES = {NodeType.FILE: 1, NodeType.DIR: 2, NodeType.SYMLINK: 3, NodeType.FIFO: 4,
               NodeType.CHARDEV: 5, NodeType.BLOCKDEV: 6, NodeType.SOCKET: 7}
_FILE, _CHARDEV, _BLOCKDEV = 1, 5, 6


def stat_entry(name: bytes, st: os.stat_result) -> bytes:
    """The signature entry of directory entry `name` as lstat() sees it now.

    A file counts as unchanged on size, mtime, ctime and inode (as the backup's own check);
    other types on every stat field their node holds. Types a backup skips give b"".
    """
    code = _STAT_TYPES.get(stat.S_IFMT(st.st_mode), 0)
    if code == _FILE:
        return _ENTRY.pack(code, len(name), 0, 0, 0, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                           0, 0, st.st_size) + name
    if code == 0:
        return b""
    extra = st.st_rdev if code in (_CHARDEV, _BLOCKDEV) else 0
    return _ENTRY.pack(code, len(name), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                       st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, st.st_nlink,
                       extra) + name


def node_entry(node: Node | StoredNode) -> bytes:
    """The signature entry of a saved node: equal to `stat_entry` of the lstat it came from."""
    if isinstance(node, StoredNode):  # a file's entry as stored (its fields were checked)
        raw = node.raw
        try:
            return _ENTRY.pack(_FILE, len(node.name), 0, 0, 0, raw.get("mt", 0),
                               raw.get("ct", 0), raw.get("i", 0), 0, 0, node.size) + node.name
        except struct.error:
            return b"\xff" + node.name
    code = _NODE_TYPES[node.type]
    try:
        if code == _FILE:
            return _ENTRY.pack(code, len(node.name), 0, 0, 0, node.mtime_ns, node.ctime_ns,
                               node.inode, 0, 0, node.size) + node.name
        extra = node.rdev if code in (_CHARDEV, _BLOCKDEV) else 0
        return _ENTRY.pack(code, len(node.name), node.mode, node.uid, node.gid, node.mtime_ns,
                           node.ctime_ns, node.inode, node.device, node.links,
                           extra) + node.name
    except struct.error:  # a value no lstat gives (an old tree from elsewhere): never matches
        return b"\xff" + node.name


def signature(entries: Iterable[bytes]) -> bytes:
    """A folder's signature from its entries' signature entries, in name order."""
    return object_id(b"".join(entries)).raw[:SIG_SIZE]


@dataclass(frozen=True, slots=True)
class FolderRecord:
    """One folder as the last backup saved it."""

    sig: bytes
    tree: ObjectId
    files: int  # regular files directly in the folder
    bytes: int  # and their size
    packs: frozenset[ObjectId]  # packs holding the folder's tree and its files' chunks


@dataclass(frozen=True, slots=True)
class FolderCache:
    """The folder records written with `snapshot`, and the index segments alive then."""

    snapshot: ObjectId
    segments: frozenset[ObjectId]
    records: dict[bytes, FolderRecord]


class FolderCacheFile:
    """The folder cache of one set of backup options (paths, excludes, ...) of one vault."""

    def __init__(self, folder: Path, keys: MasterKeys, options: bytes) -> None:
        self.mac_key = derive_key(_MAC_CONTEXT, keys.encryption + keys.chunk_id)
        self.path_key = derive_key(_PATH_CONTEXT, keys.encryption + keys.chunk_id)
        self.path = folder / keyed_id(self.mac_key, options).hex()[:32]

    def key(self, path: bytes) -> bytes:
        """The name of folder `path` in the cache (a keyed hash: the cache holds no paths)."""
        return keyed_id(self.path_key, path).raw[:KEY_SIZE]

    def load(self) -> FolderCache | None:
        """The cache, or None if there is none or it is damaged (then it is not used)."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        try:
            return self._decode(data)
        except (IntegrityError, ValueError, TypeError, KeyError, IndexError) as exc:
            logger.info("folder cache %s is unusable (%s); backing up without it",
                        self.path.name, exc)
            return None

    def _decode(self, data: bytes) -> FolderCache:
        head = len(MAGIC) + ID_SIZE
        if not data.startswith(MAGIC) or len(data) < head:
            raise ValueError("not a folder cache")
        body = data[head:]
        if keyed_id(self.mac_key, body).raw != data[len(MAGIC):head]:
            raise ValueError("authentication failed")
        version, snap, segments, packs, records = unpack(body, "folder cache")
        if version != CACHE_VERSION:
            raise ValueError(f"version {version}")
        pack_ids = [ObjectId(p) for p in packs]
        out: dict[bytes, FolderRecord] = {}
        for key, sig, tree, files, size, used in records:
            out[key] = FolderRecord(sig, ObjectId(tree), files, size,
                                    frozenset(pack_ids[i] for i in used))
        return FolderCache(ObjectId(snap), frozenset(ObjectId(s) for s in segments), out)

    def save(self, cache: FolderCache) -> None:
        """Write `cache` in place of the old one (atomically; a failure only logs)."""
        table: dict[ObjectId, int] = {}
        records: list[Any] = []
        for key, rec in cache.records.items():
            used = [table.setdefault(p, len(table)) for p in sorted(rec.packs)]
            records.append([key, rec.sig, rec.tree.raw, rec.files, rec.bytes, used])
        body = pack([CACHE_VERSION, cache.snapshot.raw, sorted(s.raw for s in cache.segments),
                     [p.raw for p in table], records])
        data = MAGIC + keyed_id(self.mac_key, body).raw + body
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            logger.info("cannot write the folder cache: %s", exc)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
