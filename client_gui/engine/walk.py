"""Walking snapshot trees: depth-first, in name order, yielding (path, node) pairs.

Paths are raw bytes relative to the snapshot root, without a leading slash (b"home/me/a.txt").
"""

from collections.abc import AsyncIterator

from client_gui.engine.vault import Vault
from shared.format.tree import Node, NodeType
from shared.ids import ObjectId


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


async def walk(vault: Vault, tree_id: ObjectId, prefix: bytes = b"") -> AsyncIterator[
        tuple[bytes, Node]]:
    """Every node below `tree_id`; a directory comes before its contents."""
    for node in await vault.load_tree(tree_id):
        path = join(prefix, node.name)
        yield path, node
        if node.type == NodeType.DIR and node.subtree is not None:
            async for item in walk(vault, node.subtree, path):
                yield item


def split_path(path: bytes | str) -> list[bytes]:
    """A snapshot path (absolute or relative, str or bytes) as components."""
    raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
    return [p for p in raw.split(b"/") if p and p != b"."]


async def lookup(vault: Vault, root: ObjectId, path: bytes | str) -> Node | None:
    """The node at `path` in the tree `root`, or None. The root itself has no node."""
    parts = split_path(path)
    tree: ObjectId | None = root
    node: Node | None = None
    for part in parts:
        if tree is None:
            return None
        found = [n for n in await vault.load_tree(tree) if n.name == part]
        if not found:
            return None
        node = found[0]
        tree = node.subtree if node.type == NodeType.DIR else None
    return node


def display(path: bytes) -> str:
    """A path for people and JSON: undecodable bytes shown as \\xNN escapes."""
    return "/" + path.decode("utf-8", "backslashreplace")
