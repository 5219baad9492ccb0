"""`cairn restore`: argparse wiring and output around engine.restore."""

import argparse
from pathlib import Path

from client_gui.cli.context import Context
from client_gui.engine import malloc
from client_gui.engine.progress import CancelToken
from client_gui.engine.restore import RestorePlan, restore
from shared.units import human_size


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("restore", help="restore a snapshot (or part of it) into a folder")
    p.add_argument("snapshot", metavar="SNAPSHOT", help="snapshot ID (prefix) or 'latest'")
    p.add_argument("--target", required=True, metavar="DIR",
                   help="folder to restore into; files keep their full path below it")
    p.add_argument("--path", action="append", default=[], metavar="P",
                   help="restore only this file or folder of the snapshot (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing files (default: keep them and report)")
    p.set_defaults(func=run, needs_cancel=True)


async def run(ctx: Context, cancel: CancelToken) -> int:
    args = ctx.args
    out = ctx.out
    async with ctx.open_vault() as vault:
        ref = await vault.find_snapshot(args.snapshot)
        plan = RestorePlan(snapshot=ref, target=Path(args.target).absolute(),
                           include=tuple(args.path), overwrite=args.overwrite)
        malloc.keep_freed()  # this process only restores: reuse freed ranges' pages
        result = await restore(vault, plan, progress=out, cancel=cancel)
    out.stop_progress()
    out.emit({"type": "summary", "snapshot_id": ref.id.hex(), "files": result.files,
              "dirs": result.dirs, "bytes": result.bytes, "problems": len(result.problems)})
    out.line(f"restored snapshot {ref.id.short()} to {plan.target}: {result.files} files and "
             f"links, {result.dirs} folders (parents included), {human_size(result.bytes)}")
    if result.problems:
        out.line(f"{len(result.problems)} item(s) were not restored (listed above)")
        return 1
    return 0
