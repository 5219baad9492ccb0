"""Deduplication state of one backup: which blobs may be reused and which the snapshot uses.

A blob is known if the index has it in a pack no deletion marker names, or if this run stores
it. Owns the known/used sets and the marked packs; it must not read files or store anything.
"""

import logging
import threading

from client_gui.engine.vault import BlobIndex
from shared.format.deletion import DeletionMarker
from shared.format.tree import Node
from shared.ids import ObjectId

logger = logging.getLogger(__name__)


class BlobLedger:
    """Known and used blob IDs of one run; safe to call from any of its threads."""

    def __init__(self) -> None:
        self.known: set[bytes] = set()
        self.known_lock = threading.Lock()
        self.marked_packs: set[ObjectId] = set()
        self.used: set[bytes] = set()

    def apply_markers(self, index: BlobIndex, markers: dict[ObjectId, DeletionMarker]) -> None:
        """Trust no blob in a pack that `markers` (or any marker seen before) names."""
        # Accumulate: once swept, a pack's marker is gone too, but the pack stays untrusted.
        self.marked_packs |= {p for m in markers.values() for p in m.packs}
        known: set[bytes] = set()
        for pid, entries in index.packs.items():
            if pid not in self.marked_packs:
                known.update(e.id.raw for e in entries)
        with self.known_lock:
            # Blobs this run added stay known (their packs are new and unmarked).
            self.known = known | (self.known - index.raw_ids())

    def is_known(self, blob_id: ObjectId) -> bool:
        with self.known_lock:
            return blob_id.raw in self.known

    def claim(self, blob_id: ObjectId) -> bool:
        """True if the blob is new and this caller must store it (once per run)."""
        with self.known_lock:
            if blob_id.raw in self.known:
                return False
            self.known.add(blob_id.raw)
            return True

    def use(self, blob_id: ObjectId) -> None:
        """Record that the snapshot being written refers to `blob_id`."""
        self.used.add(blob_id.raw)

    def reuse(self, node: Node) -> bool:
        """True if every chunk of `node` is stored (or being stored); marks them used."""
        return self.reuse_ids([c.raw for c in node.content])

    def reuse_ids(self, raw_ids: list[bytes]) -> bool:
        """`reuse` for a file's chunks given by raw ID."""
        with self.known_lock:
            known = self.known
            for raw in raw_ids:
                if raw not in known:
                    return False
        self.used.update(raw_ids)
        return True

    def used_packs(self, index: BlobIndex) -> set[ObjectId]:
        """The packs holding the blobs used so far (the snapshot's plain pack list).

        The index gives one location per blob, maybe in a pack marked for deletion while the
        blob was stored again elsewhere: name the unmarked copy then. A blob found only in
        marked packs was used before the marker was seen; its pack is named (FORMAT.md §16.4).
        """
        packs: set[ObjectId] = set()
        in_marked: dict[bytes, ObjectId] = {}
        marked = self.marked_packs
        for raw in self.used:
            pack = index.pack_of(raw)
            if pack is None:
                continue
            if pack in marked:
                in_marked[raw] = pack
            else:
                packs.add(pack)
        if in_marked:
            for pid, entries in index.packs.items():
                if pid in self.marked_packs:
                    continue
                found = [e.id.raw for e in entries if e.id.raw in in_marked]
                if found:
                    packs.add(pid)
                    for raw in found:
                        in_marked.pop(raw, None)
            packs.update(in_marked.values())
        return packs
