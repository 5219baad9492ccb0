"""Tree blobs: one per directory, a deterministic msgpack list of nodes sorted by name.

    tree = {"v": 1, "nodes": [node...]}; node = map with short keys in a fixed order, absent
    values omitted. Names and link targets are raw bytes (any file name survives).
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

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


def encode_tree(nodes: list[Node] | tuple[Node, ...]) -> bytes:
    """Encode nodes (sorted here by name; duplicate names are refused)."""
    ordered = sorted(nodes, key=lambda n: n.name)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.name == b.name:
            raise ValueError(f"duplicate name in tree: {a.name!r}")
    return pack({"v": TREE_VERSION, "nodes": [_encode_node(n) for n in ordered]})


# Decoding tables: key -> (attribute, exact type). msgpack yields exact int/str/bytes, so an
# exact type check is both the strict one (a bool is no int here) and the fast one.
_BY_KEY: dict[str, tuple[str, type]] = {key: (attr, _TYPES[attr]) for key, attr, _ in _FIELDS}
_NODE_TYPES: dict[Any, NodeType] = {t.value: t for t in NodeType}


def _decode_node(raw: Any, what: str) -> Node:
    if type(raw) is not dict or type(raw.get("n")) is not bytes:
        raise IntegrityError(f"{what} is damaged: bad node")
    ntype = _NODE_TYPES.get(raw.get("t"))
    if ntype is None:
        raise IntegrityError(f"{what} is damaged: unknown node type")
    kwargs: dict[str, Any] = {"name": raw["n"], "type": ntype}
    for key, value in raw.items():
        spec = _BY_KEY.get(key)
        if spec is not None:
            if type(value) is not spec[1]:
                raise IntegrityError(f"{what} is damaged: field {key!r} has the wrong type")
            kwargs[spec[0]] = value
    if "c" in raw:
        if type(raw["c"]) is not list:
            raise IntegrityError(f"{what} is damaged: bad content list")
        kwargs["content"] = tuple([ObjectId(id_bytes(c, what)) for c in raw["c"]])
    if "sub" in raw:
        kwargs["subtree"] = ObjectId(id_bytes(raw["sub"], what))
    if "x" in raw:
        xs = raw["x"]
        if not isinstance(xs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, bytes) for v in p)
            for p in xs
        ):
            raise IntegrityError(f"{what} is damaged: bad xattrs")
        kwargs["xattrs"] = tuple((k, v) for k, v in xs)
    return Node(**kwargs)


def decode_tree(data: bytes, what: str = "tree") -> tuple[Node, ...]:
    body = unpack(data, what)
    if not isinstance(body, dict) or "v" not in body:
        raise IntegrityError(f"{what} is damaged: not a tree")
    if body["v"] != TREE_VERSION:
        raise UnsupportedFormat(f"{what}: unknown tree version {body['v']}")
    nodes = body.get("nodes")
    if not isinstance(nodes, list):
        raise IntegrityError(f"{what} is damaged: no node list")
    return tuple([_decode_node(n, what) for n in nodes])
