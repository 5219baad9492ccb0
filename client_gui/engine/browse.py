"""Read-only views of snapshots: ls, find (every version of a path), diff and stats."""

import fnmatch
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from client_gui.engine.vault import SnapshotRef, Vault
from client_gui.engine.walk import join, lookup, split_path, walk
from shared.errors import UsageError
from shared.format.tree import Node, NodeType
from shared.ids import ObjectId


@dataclass(frozen=True, slots=True)
class Entry:
    path: bytes  # relative to the snapshot root
    node: Node


async def ls(vault: Vault, ref: SnapshotRef, path: str | None = None,
             recursive: bool = True) -> AsyncIterator[Entry]:
    """The entries below `path` (default: the whole snapshot), depth-first in name order."""
    tree: ObjectId | None = ref.snapshot.tree
    prefix = b""
    if path and split_path(path):
        node = await lookup(vault, ref.snapshot.tree, path)
        if node is None:
            raise UsageError(f"path not found in snapshot {ref.id.short()}: {path}")
        prefix = b"/".join(split_path(path))
        yield Entry(prefix, node)
        tree = node.subtree if node.type == NodeType.DIR else None
    if tree is None:
        return
    if recursive:
        async for p, n in walk(vault, tree, prefix):
            yield Entry(p, n)
    else:
        for n in await vault.load_tree(tree):
            yield Entry(join(prefix, n.name), n)


def _matcher(pattern: str) -> re.Pattern[bytes]:
    raw = pattern.encode("utf-8", "surrogateescape")
    regex = fnmatch.translate(raw.decode("latin-1")).encode("latin-1")
    return re.compile(regex, re.S)


@dataclass(frozen=True, slots=True)
class Found:
    snapshot: SnapshotRef
    path: bytes
    node: Node


async def find(vault: Vault, refs: Iterable[SnapshotRef], pattern: str) -> AsyncIterator[Found]:
    """Every entry whose name (or, if the pattern has a `/`, whole path) matches, per snapshot.

    Subtrees shared between snapshots are searched once and their matches reused.
    """
    whole_path = "/" in pattern
    matcher = _matcher(pattern.strip("/") if whole_path else pattern)
    # tree -> matches below it; paths relative to the root (whole_path) or to the tree
    memo: dict[tuple[bytes, bytes], list[tuple[bytes, Node]]] = {}

    async def search(tree: ObjectId, prefix: bytes) -> list[tuple[bytes, Node]]:
        base = prefix if whole_path else b""
        key = (tree.raw, base)
        if key not in memo:
            out: list[tuple[bytes, Node]] = []
            for node in await vault.load_tree(tree):
                rel = join(base, node.name)
                if matcher.match(rel if whole_path else node.name):
                    out.append((rel, node))
                if node.type == NodeType.DIR and node.subtree is not None:
                    sub = await search(node.subtree, rel)
                    out.extend(sub if whole_path else [(join(rel, p), n) for p, n in sub])
            memo[key] = out
        return memo[key]

    for ref in refs:
        for path, node in await search(ref.snapshot.tree, b""):
            yield Found(ref, path, node)


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # "+" added, "-" removed, "M" content changed, "T" type changed, "m" metadata
    path: bytes
    old: Node | None
    new: Node | None


def _meta(n: Node) -> tuple[object, ...]:
    return (n.mode, n.uid, n.gid, n.mtime_ns, n.target, n.xattrs, n.rdev)


async def diff(vault: Vault, a: SnapshotRef, b: SnapshotRef) -> AsyncIterator[Change]:
    """What changed from snapshot `a` to snapshot `b` (shared subtrees are skipped)."""

    async def all_below(node: Node, path: bytes, kind: str) -> AsyncIterator[Change]:
        yield Change(kind, path, node if kind == "-" else None, node if kind == "+" else None)
        if node.type == NodeType.DIR and node.subtree is not None:
            async for p, n in walk(vault, node.subtree, path):
                yield Change(kind, p, n if kind == "-" else None, n if kind == "+" else None)

    async def compare(old: ObjectId, new: ObjectId, prefix: bytes) -> AsyncIterator[Change]:
        if old == new:
            return
        before = {n.name: n for n in await vault.load_tree(old)}
        after = {n.name: n for n in await vault.load_tree(new)}
        for name in sorted(before.keys() | after.keys()):
            path = join(prefix, name)
            o, n = before.get(name), after.get(name)
            if o is None and n is not None:
                async for c in all_below(n, path, "+"):
                    yield c
            elif n is None and o is not None:
                async for c in all_below(o, path, "-"):
                    yield c
            elif o is not None and n is not None:
                if o.type != n.type:
                    yield Change("T", path, o, n)
                    continue
                if o.type == NodeType.FILE and (o.content != n.content or o.size != n.size):
                    yield Change("M", path, o, n)
                elif _meta(o) != _meta(n) and o.type != NodeType.DIR:
                    yield Change("m", path, o, n)
                if o.type == NodeType.DIR and o.subtree and n.subtree:
                    async for c in compare(o.subtree, n.subtree, path):
                        yield c

    async for change in compare(a.snapshot.tree, b.snapshot.tree, b""):
        yield change


@dataclass(frozen=True, slots=True, kw_only=True)
class VaultStats:
    snapshots: int
    files: int  # file entries across the chosen snapshots
    restore_size: int  # bytes a full restore of every chosen snapshot would write
    unique_blobs: int
    unique_size: int  # plaintext bytes after deduplication
    stored_size: int  # bytes those blobs take in packs (compressed + encrypted)
    vault_size: int  # every pack in the vault
    packs: int


async def stats(vault: Vault, refs: list[SnapshotRef]) -> VaultStats:
    seen_trees: set[bytes] = set()
    blobs: set[bytes] = set()
    files = 0
    restore_size = 0

    async def visit(tree: ObjectId) -> None:
        nonlocal files, restore_size
        fresh = tree.raw not in seen_trees
        seen_trees.add(tree.raw)
        blobs.add(tree.raw)
        for node in await vault.load_tree(tree):
            if node.type == NodeType.FILE:
                files += 1
                restore_size += node.size
                if fresh:
                    blobs.update(c.raw for c in node.content)
            elif node.type == NodeType.DIR and node.subtree is not None:
                await visit(node.subtree)

    for ref in refs:
        await visit(ref.snapshot.tree)
    unique_size = stored = 0
    for raw in blobs:
        loc = vault.index.get(ObjectId(raw))
        if loc is not None:
            unique_size += loc.raw_length
            stored += loc.length
    packs = await vault.list_packs()
    return VaultStats(snapshots=len(refs), files=files, restore_size=restore_size,
                      unique_blobs=len(blobs), unique_size=unique_size, stored_size=stored,
                      vault_size=sum(packs.values()), packs=len(packs))
