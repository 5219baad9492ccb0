"""JSON and table forms of snapshots, shared by the listing commands."""

import dataclasses
from typing import Any

from client_gui.cli.output import format_time, iso_time
from client_gui.engine.vault import SnapshotRef
from shared.units import human_size


def path_text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def snapshot_json(ref: SnapshotRef) -> dict[str, Any]:
    s = ref.snapshot
    return {
        "id": ref.id.hex(), "short_id": ref.id.short(), "time": iso_time(s.time_ns, s.tz_offset),
        "hostname": s.hostname, "username": s.username, "paths": [path_text(p) for p in s.paths],
        "tags": list(s.tags), "parent": s.parent.hex() if s.parent else None,
        "tree": s.tree.hex(), "checkpoint": s.checkpoint, "program": s.program,
        "excludes": list(s.excludes),
        "stats": dataclasses.asdict(s.stats),
    }


def snapshot_row(ref: SnapshotRef) -> str:
    s = ref.snapshot
    flag = " (checkpoint)" if s.checkpoint else ""
    tags = ",".join(s.tags)
    paths = " ".join(path_text(p) for p in s.paths)
    return (f"{ref.id.short()}  {format_time(s.time_ns)}  {s.hostname:<12.12}  {tags:<10.10}  "
            f"{s.stats.files:>8}  {human_size(s.stats.bytes):>10}  {paths}{flag}")


SNAPSHOT_HEADER = (f"{'ID':<8}  {'Time':<19}  {'Host':<12}  {'Tags':<10}  {'Files':>8}  "
                   f"{'Size':>10}  Paths")
