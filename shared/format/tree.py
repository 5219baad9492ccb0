"""Tree blobs: one per directory, a deterministic msgpack list of nodes sorted by name.

    tree = {"v": 1, "nodes": [node...]}; node = map with short keys in a fixed order, absent
    values omitted. Names and link targets are raw bytes (any file name survives).
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from shared.errors import IntegrityError, UnsupportedFormat
from shared.format.codec import id_bytes, pack, unpack
from shared.ids import ObjectId

TREE_VERSION = 1


class NodeType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    FIFO = "fifo"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"
    SOCKET = "socket"


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """One directory entry with its metadata (times in ns since the epoch)."""

    name: bytes
    type: NodeType
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    device: int = 0
    links: int = 1
    content: tuple[ObjectId, ...] = ()
    subtree: ObjectId | None = None
    target: bytes = b""
    rdev: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()

    def __post_init__(self) -> None:
        if not self.name or b"/" in self.name or self.name in (b".", b".."):
            raise IntegrityError(f"bad file name in tree: {self.name!r}")
        if self.type == NodeType.DIR and self.subtree is None:
            raise IntegrityError(f"directory {self.name!r} has no subtree")


# (key, attribute, default) in the encoded order; defaults are omitted when encoding.
_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("m", "mode", 0), ("u", "uid", 0), ("g", "gid", 0), ("U", "user", ""), ("G", "group", ""),
    ("mt", "mtime_ns", 0), ("at", "atime_ns", 0), ("ct", "ctime_ns", 0), ("s", "size", 0),
    ("i", "inode", 0), ("d", "device", 0), ("l", "links", 1), ("ln", "target", b""),
    ("r", "rdev", 0),
)
_TYPES = {"mode": int, "uid": int, "gid": int, "user": str, "group": str, "mtime_ns": int,
          "atime_ns": int, "ctime_ns": int, "size": int, "inode": int, "device": int,
          "links": int, "target": bytes, "rdev": int}


def _encode_node(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"n": node.name, "t": node.type.value}
    for key, attr, default in _FIELDS:
        value = getattr(node, attr)
        if value != default:
            out[key] = value
    if node.content:
        out["c"] = [c.raw for c in node.content]
    if node.subtree is not None:
        out["sub"] = node.subtree.raw
    if node.xattrs:
        out["x"] = [[k, v] for k, v in node.xattrs]
    return out


def encode_tree(nodes: "Sequence[Node | StoredNode]") -> bytes:
    """Encode nodes (sorted here by name; duplicate names are refused). A StoredNode is
    written as it was stored."""
    ordered = sorted(nodes, key=lambda n: n.name)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.name == b.name:
            raise ValueError(f"duplicate name in tree: {a.name!r}")
    return pack({"v": TREE_VERSION, "nodes": [
        n.raw if isinstance(n, StoredNode) else _encode_node(n) for n in ordered]})


# Decoding tables: key -> (attribute, exact type). msgpack yields exact int/str/bytes, so an
# exact type check is both the strict one (a bool is no int here) and the fast one.
_BY_KEY: dict[str, tuple[str, type]] = {key: (attr, _TYPES[attr]) for key, attr, _ in _FIELDS}
_NODE_TYPES: dict[Any, NodeType] = {t.value: t for t in NodeType}


def _node_fields(raw: Any, what: str) -> dict[str, Any]:
    """The checked fields of a stored node (content and subtree as raw IDs): everything that
    `_decode_node` and `Node` check, without making a Node."""
    if type(raw) is not dict or type(name := raw.get("n")) is not bytes:
        raise IntegrityError(f"{what} is damaged: bad node")
    if not name or b"/" in name or name in (b".", b".."):
        raise IntegrityError(f"bad file name in tree: {name!r}")
    ntype = _NODE_TYPES.get(raw.get("t"))
    if ntype is None:
        raise IntegrityError(f"{what} is damaged: unknown node type")
    kwargs: dict[str, Any] = {"name": name, "type": ntype}
    for key, value in raw.items():
        spec = _BY_KEY.get(key)
        if spec is not None:
            if type(value) is not spec[1]:
                raise IntegrityError(f"{what} is damaged: field {key!r} has the wrong type")
            kwargs[spec[0]] = value
    if "c" in raw:
        content = raw["c"]
        if type(content) is not list:
            raise IntegrityError(f"{what} is damaged: bad content list")
        for c in content:
            id_bytes(c, what)
        kwargs["content"] = content
    if "sub" in raw:
        kwargs["subtree"] = id_bytes(raw["sub"], what)
    elif ntype == NodeType.DIR:
        raise IntegrityError(f"directory {name!r} has no subtree")
    if "x" in raw:
        xs = raw["x"]
        if not isinstance(xs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, bytes) for v in p)
            for p in xs
        ):
            raise IntegrityError(f"{what} is damaged: bad xattrs")
        kwargs["xattrs"] = xs
    return kwargs


def _decode_node(raw: Any, what: str) -> Node:
    return _node(_node_fields(raw, what))


def _node(kwargs: dict[str, Any]) -> Node:
    if "content" in kwargs:
        kwargs["content"] = tuple([ObjectId(c) for c in kwargs["content"]])
    if "subtree" in kwargs:
        kwargs["subtree"] = ObjectId(kwargs["subtree"])
    if "xattrs" in kwargs:
        kwargs["xattrs"] = tuple((k, v) for k, v in kwargs["xattrs"])
    return Node(**kwargs)


def _tree_nodes(data: bytes | memoryview, what: str) -> list[Any]:
    body = unpack(data, what)
    if not isinstance(body, dict) or "v" not in body:
        raise IntegrityError(f"{what} is damaged: not a tree")
    if body["v"] != TREE_VERSION:
        raise UnsupportedFormat(f"{what}: unknown tree version {body['v']}")
    nodes = body.get("nodes")
    if not isinstance(nodes, list):
        raise IntegrityError(f"{what} is damaged: no node list")
    return nodes


def decode_tree(data: bytes, what: str = "tree") -> tuple[Node, ...]:
    return tuple([_decode_node(n, what) for n in _tree_nodes(data, what)])


@dataclass(frozen=True, slots=True, eq=False)
class StoredNode:
    """A file's entry as a stored tree holds it (its checked, encoded map), reused as it is:
    a backup keeps an unchanged file's entry without making a Node of it, and `encode_tree`
    writes the map back unchanged."""

    name: bytes
    raw: dict[str, Any]
    size: int
    type: ClassVar[NodeType] = NodeType.FILE

    @property
    def content_ids(self) -> list[bytes]:
        """The raw IDs of the file's chunks, in order."""
        ids: list[bytes] = self.raw.get("c", [])
        return ids


class StoredTree:
    """A tree's nodes as stored, by name, every one checked as `decode_tree` checks it; a Node
    is made only for a name asked for (`get`)."""

    __slots__ = ("_raw", "_nodes")

    def __init__(self, data: bytes | memoryview, what: str = "tree") -> None:
        nodes = _tree_nodes(data, what)
        for n in nodes:
            _node_fields(n, what)
        self._raw: dict[bytes, dict[str, Any]] = {n["n"]: n for n in nodes}
        self._nodes: dict[bytes, Node] = {}

    def __len__(self) -> int:
        return len(self._raw)

    def get(self, name: bytes) -> Node | None:
        node = self._nodes.get(name)
        if node is None:
            raw = self._raw.get(name)
            if raw is None:
                return None
            node = self._nodes[name] = _node(_node_fields(raw, "tree"))
        return node

    def subtrees(self) -> list[ObjectId]:
        """The trees of its subdirectories."""
        return [ObjectId(n["sub"]) for n in self._raw.values() if "sub" in n]

    def unchanged_file(self, name: bytes, st: os.stat_result) -> StoredNode | None:
        """The entry of file `name` if it is one with the size, mtime, ctime and inode of
        `st` (what a backup takes as an unchanged file), else None."""
        raw = self._raw.get(name)
        if (raw is None or raw["t"] != "file" or raw.get("s", 0) != st.st_size
                or raw.get("mt", 0) != st.st_mtime_ns or raw.get("ct", 0) != st.st_ctime_ns
                or raw.get("i", 0) != st.st_ino):
            return None
        return StoredNode(name, raw, st.st_size)
