"""A seeded "day of work" on the home tree, and its undo.

`apply()` edits inside a VM image in place, appends to every log, inserts rows in the middle of
a CSV file, edits, adds, deletes and renames source files, renames a whole project folder,
edits and re-saves documents, and adds and deletes photos. About 2-3 % of the data changes.

Every step is written to a journal (`<root>.undo/journal.jsonl`, next to the tree) before it is
done, with a copy of each file it modifies, so `revert()` brings back the exact generated tree,
also after a crash half-way (the harness reverts a leftover journal before it starts).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.dataset import Dataset, KiB, MiB, TextPools, random_blocks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mutation:
    """What a day of work did, for the report."""

    modified: int
    created: int
    deleted: int
    renamed: int
    written: int  # new bytes: edits, appends and new files


def undo_dir(root: Path) -> Path:
    return root.with_name(root.name + ".undo")


class _Journal:
    def __init__(self, root: Path):
        self.root = root
        self.undo = undo_dir(root)
        self.undo.mkdir(parents=True, exist_ok=False)
        self._log = open(self.undo / "journal.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.modified = self.created = self.deleted = self.renamed = self.written = 0
        self._saved: set[str] = set()

    def _note(self, **entry: str) -> None:
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())

    def close(self) -> None:
        self._log.close()

    def modify(self, rel: str) -> Path:
        """Saves the original of `rel` once; returns its path, free to change."""
        if rel not in self._saved:
            saved = f"saved/{len(self._saved)}"
            (self.undo / "saved").mkdir(exist_ok=True)
            shutil.copy2(self.root / rel, self.undo / saved)
            self._note(op="modified", path=rel, saved=saved)
            self._saved.add(rel)
            self.modified += 1
        return self.root / rel

    def create(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        missing = []
        parent = path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            self._note(op="mkdir", path=str(folder.relative_to(self.root)))
            folder.mkdir()
        self._note(op="created", path=rel)
        path.write_bytes(data)
        self.created += 1
        self.written += len(data)

    def delete(self, rel: str) -> None:
        saved = f"deleted/{self.deleted}"
        (self.undo / "deleted").mkdir(exist_ok=True)
        self._note(op="deleted", path=rel, saved=saved)
        os.rename(self.root / rel, self.undo / saved)
        self.deleted += 1

    def rename(self, old: str, new: str) -> None:
        self._note(op="renamed", path=old, to=new)
        os.rename(self.root / old, self.root / new)
        self.renamed += 1


def revert(root: Path) -> bool:
    """Undoes a day of work recorded next to `root`; False when there was nothing to undo."""
    undo = undo_dir(root)
    journal = undo / "journal.jsonl"
    if not undo.exists():
        return False
    entries = []
    if journal.exists():
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                break  # torn last line of a crashed run: its step never started
    for entry in reversed(entries):
        path = root / entry["path"]
        op = entry["op"]
        if op == "modified" and (undo / entry["saved"]).exists():
            os.replace(undo / entry["saved"], path)
        elif op == "deleted" and (undo / entry["saved"]).exists() and not path.exists():
            os.rename(undo / entry["saved"], path)
        elif op == "renamed" and (root / entry["to"]).exists() and not path.exists():
            os.rename(root / entry["to"], path)
        elif op == "created" and (path.exists() or path.is_symlink()):
            path.unlink()
        elif op == "mkdir" and path.is_dir():
            path.rmdir()
    shutil.rmtree(undo)
    return True


def _insert_line(data: bytes, rng: random.Random, line: bytes) -> bytes:
    at = data.find(b"\n", rng.randrange(len(data))) if data else -1
    at = len(data) if at < 0 else at + 1
    return data[:at] + line + data[at:]


def apply(dataset: Dataset, seed: int) -> Mutation:
    """Applies the day of work for `seed` to the (unmodified) home tree of `dataset`."""
    root = dataset.root
    if undo_dir(root).exists():
        raise RuntimeError(f"{root} already has a pending day of work; revert it first")
    rng = random.Random(f"{seed}:day")
    pools = TextPools(seed + 1, prose_bytes=min(MiB, max(128 * KiB, dataset.size // 64)),
                      code_bytes=min(MiB, max(128 * KiB, dataset.size // 64)))
    cats = dataset.categories
    j = _Journal(root)
    try:
        # 1. A VM writes into its disk image in place.
        for rel in cats.get("vm_a", ()):
            path = j.modify(rel)
            size = path.stat().st_size
            with open(path, "r+b") as f:
                for _ in range(40):
                    n = rng.randrange(4, 65) * KiB
                    f.seek(rng.randrange(max(1, size - n)))
                    f.write(rng.randbytes(n))
                    j.written += n
        # 2. Services append to their logs.
        logs = cats.get("logs", ())
        for rel in logs:
            n = max(4 * KiB, dataset.size * 3 // 1000 // max(1, len(logs)))
            with open(j.modify(rel), "ab") as f:
                f.write(pools.slice(rng, pools.prose, n) + b"\n")
            j.written += n
        # 3. A spreadsheet export gets rows in the middle (shifts everything after them).
        for rel in cats.get("csv", ())[:1]:
            path = j.modify(rel)
            data = path.read_bytes()
            rows = b"".join(b"%d,2025-01-0%d,New,Row,SKU-00000,1,1.00\n" % (i, i % 9 + 1)
                            for i in range(200))
            path.write_bytes(_insert_line(data, rng, rows))
            j.written += len(rows)
        # 4. Programming: a project folder renamed, files edited, added, deleted, renamed.
        source = sorted(cats.get("source", ()))
        projects = sorted({rel.split("/")[1] for rel in source})
        moved = rng.choice(projects) if projects else None
        if moved is not None:
            j.rename(f"projects/{moved}", f"projects/{moved}-renamed")
            source = [rel for rel in source if rel.split("/")[1] != moved]
        rng.shuffle(source)
        n_edit, n_del = max(3, len(source) * 15 // 1000), max(2, len(source) // 200)
        n_ren, n_new = max(2, len(source) * 3 // 1000), max(3, len(source) * 7 // 1000)
        edits = source[:n_edit]
        deletes = source[n_edit:n_edit + n_del]
        renames = source[n_edit + n_del:n_edit + n_del + n_ren]
        for rel in edits:
            path = j.modify(rel)
            line = pools.slice(rng, pools.code, rng.randrange(20, 200)) + b"\n"
            path.write_bytes(_insert_line(path.read_bytes(), rng, line))
            j.written += len(line)
        for rel in deletes:
            j.delete(rel)
        for rel in renames:
            j.rename(rel, rel + ".orig")
        for i, rel in enumerate(source[-n_new:] if source else ()):
            data = pools.slice(rng, pools.code, rng.randrange(200, 12 * KiB))
            j.create(f"{rel.rsplit('/', 1)[0]}/new_module_{i}.py", data)
        for i in range(40):
            j.create(f"projects/new-project/src/pkg{i % 4}/mod_{i}.py",
                     pools.slice(rng, pools.code, rng.randrange(200, 8 * KiB)))
        # 5. Documents: text edited, binary ones saved again (new bytes), new PDFs.
        for rel in sorted(cats.get("documents_text", ()))[:5]:
            path = j.modify(rel)
            line = pools.slice(rng, pools.prose, 400) + b"\n"
            path.write_bytes(_insert_line(path.read_bytes(), rng, line))
            j.written += len(line)
        for rel in sorted(cats.get("documents_binary", ()))[:3]:
            path = j.modify(rel)
            size = path.stat().st_size
            path.write_bytes(b"".join(random_blocks(rng, size, b"%PDF-1.7")))
            j.written += size
        for i in range(2):
            j.create(f"Documents/Work/new-report-{i}.pdf",
                     b"".join(random_blocks(rng, rng.randrange(50, 400) * KiB, b"%PDF-1.7")))
        # 6. Photos from today; two old ones deleted.
        budget = max(MiB, dataset.size // 100)
        i = 0
        while budget > 0:
            n = min(budget, rng.randrange(2 * MiB, 5 * MiB))
            j.create(f"Pictures/2025/2025-01/IMG_NEW_{i:04d}.jpg",
                     b"".join(random_blocks(rng, n, b"\xff\xd8\xff\xe0")))
            budget -= n
            i += 1
        for rel in sorted(cats.get("photos", ()))[:2]:
            j.delete(rel)
    finally:
        j.close()
    return Mutation(modified=j.modified, created=j.created, deleted=j.deleted,
                    renamed=j.renamed, written=j.written)
