"""Check's tree pass: decodes every tree once, notes the data blobs each file uses (adding
findings for missing blobs and unreadable trees), then attributes every finding to the
snapshots and paths it affects. It keeps only a small tree graph in memory, reads no pack
beyond its trees, and never writes to the vault.
"""

import logging
from collections.abc import Callable

from client_gui.engine.check_damage import DAMAGE_ERRORS, DamageKind, Finding, Findings
from client_gui.engine.check_run import CheckRun
from client_gui.engine.vault import READ_CONCURRENCY, BlobLocation, SnapshotRef
from client_gui.engine.walk import display, join
from shared.format.tree import Node, NodeType, decode_tree
from shared.ids import BlobType, ObjectId, ObjectKey, ObjectKind

logger = logging.getLogger(__name__)


class TreeCheck:
    """The trees of one check, the data blobs they use, and who is affected by what."""

    def __init__(
        self, run: CheckRun, findings: Findings, unindexed: dict[bytes, BlobLocation]
    ) -> None:
        self.run = run
        self.findings = findings
        self.unindexed = unindexed  # blobs of packs that no index names (from the pack pass)
        self.blob_missing: dict[bytes, Finding] = {}
        self.trees_missing = False  # a tree that no pack holds (not merely a damaged one)
        self.trees_seen: set[bytes] = set()
        self.trees_done = 0
        self.data_refs: set[bytes] = set()
        # The tree graph, kept small for the attribution: directory entries and the file
        # entries that use a bad blob. Every other file entry is forgotten once seen.
        self.edges: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}
        self.hits: dict[bytes, tuple[tuple[bytes, bytes], ...]] = {}
        self.dirty: dict[bytes, bool] = {}

    # ---- the walk -------------------------------------------------------------------------

    async def walk(self, refs: list[SnapshotRef]) -> None:
        """Decode every tree once (shared across snapshots); note the blobs each file uses."""
        roots = []
        for ref in refs:
            if ref.snapshot.tree.raw not in self.trees_seen:
                self.trees_seen.add(ref.snapshot.tree.raw)
                roots.append(ref.snapshot.tree)
        self.run.progress("trees", 0, len(self.trees_seen), force=True)
        await self.run.pool(roots, self._visit, READ_CONCURRENCY)
        self.run.progress("trees", self.trees_done, len(self.trees_seen), force=True)

    async def _visit(self, tree_id: ObjectId, push: Callable[[ObjectId], None]) -> None:
        nodes = await self._load_tree(tree_id)
        self.trees_done += 1
        self.run.progress("trees", self.trees_done, len(self.trees_seen))
        if nodes is None:
            return
        hits: list[tuple[bytes, bytes]] = []
        edges: list[tuple[bytes, bytes]] = []
        for node in nodes:
            for blob_id in node.content:
                if self._note_blob(blob_id):
                    hits.append((node.name, blob_id.raw))
            if node.type == NodeType.DIR and node.subtree is not None:
                sub = node.subtree.raw
                edges.append((node.name, sub))
                if sub not in self.trees_seen:
                    self.trees_seen.add(sub)
                    push(node.subtree)
        if hits:
            self.hits[tree_id.raw] = tuple(hits)
        if edges:
            self.edges[tree_id.raw] = tuple(edges)

    def _note_blob(self, blob_id: ObjectId) -> bool:
        """Record a data blob a file uses; True if it is bad (missing, in a damaged pack...)."""
        raw = blob_id.raw
        if raw not in self.data_refs:
            self.data_refs.add(raw)
            if blob_id not in self.run.vault.index:
                loc = self.unindexed.get(raw)
                if loc is not None:
                    self.findings.mark(raw, self.findings.index_missing_for(loc.pack))
                else:
                    self.blob_missing[raw] = self.findings.add(
                        Finding(
                            DamageKind.BLOB_MISSING,
                            f"blobs/{blob_id.hex()}",
                            f"data blob {blob_id.short()} is missing: no pack holds it",
                        ),
                        (raw,),
                    )
        return raw in self.findings.bad

    async def _load_tree(self, tree_id: ObjectId) -> tuple[Node, ...] | None:
        """The tree's nodes, or None after recording why it cannot be read."""
        vault = self.run.vault
        loc = vault.index.get(tree_id)
        if loc is None:
            loc = self.unindexed.get(tree_id.raw)
            if loc is None:
                self.trees_missing = True
                self._tree_damaged(tree_id, "it is missing: no pack holds it")
                return None
            self.findings.mark(tree_id.raw, self.findings.index_missing_for(loc.pack))
        try:
            sealed = await self.run.get(
                ObjectKey.of(ObjectKind.PACK, loc.pack), loc.offset, loc.length
            )
            return decode_tree(
                vault.open_blob(tree_id, BlobType.TREE, sealed), f"tree {tree_id.short()}"
            )
        except DAMAGE_ERRORS as exc:
            self._tree_damaged(tree_id, str(exc))
            return None

    def _tree_damaged(self, tree_id: ObjectId, reason: str) -> None:
        self.findings.add(
            Finding(
                DamageKind.TREE_DAMAGED,
                f"trees/{tree_id.hex()}",
                f"tree {tree_id.short()} cannot be read ({reason}); what lies below "
                "that folder cannot be checked or restored",
            ),
            (tree_id.raw,),
        )

    # ---- attribution: which snapshots and paths each finding affects ----------------------

    def _is_dirty(self, root: bytes) -> bool:
        """Whether a bad blob or tree lies anywhere below `root` (memoised, no recursion)."""
        memo = self.dirty
        bad = self.findings.bad
        stack = [(root, False)]
        while stack:
            tree, expanded = stack.pop()
            if tree in memo:
                continue
            children = self.edges.get(tree, ())
            if not expanded:
                stack.append((tree, True))
                stack.extend((sub, False) for _, sub in children if sub not in memo)
            else:
                memo[tree] = tree in self.hits or any(
                    sub in bad or memo.get(sub, False) for _, sub in children
                )
        return memo[root]

    def _record(self, raw: bytes, snapshot: bytes, path: bytes) -> None:
        shown = display(path)
        for finding in self.findings.bad[raw]:
            finding.hit(snapshot, shown)

    def attribute(self, refs: list[SnapshotRef]) -> None:
        """Walk each snapshot's in-memory graph, only into folders with something bad below.

        Trees are content-addressed by a keyed hash, so the graph has no cycles.
        """
        bad = self.findings.bad
        if not bad:
            return
        for ref in refs:
            sid = ref.id.raw
            root = ref.snapshot.tree.raw
            if root in bad:
                self._record(root, sid, b"")
            stack = [(root, b"")]
            while stack:
                tree, prefix = stack.pop()
                if not self._is_dirty(tree):
                    continue
                for name, blob in self.hits.get(tree, ()):
                    self._record(blob, sid, join(prefix, name))
                for name, sub in self.edges.get(tree, ()):
                    path = join(prefix, name)
                    if sub in bad:
                        self._record(sub, sid, path)
                    stack.append((sub, path))
