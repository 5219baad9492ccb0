"""`cairn backup`: argparse wiring and output around engine.backup."""

import argparse
import dataclasses

from client_gui.cli.context import Context
from client_gui.cli.output import human_duration
from client_gui.engine.backup import BackupPlan, backup
from client_gui.engine.exclude import load_exclude_file
from client_gui.engine.progress import CancelToken
from client_gui.engine.scan import abs_paths
from shared.errors import UsageError
from shared.units import human_size


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("backup", help="back up files and folders into the vault")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to back up")
    p.add_argument("-e", "--exclude", action="append", default=[], metavar="PATTERN",
                   help="skip matching paths (*, ?, [..], ** across folders; a pattern "
                   "without / matches names anywhere)")
    p.add_argument("--exclude-file", action="append", default=[], metavar="FILE",
                   help="read exclude patterns from FILE, one a line")
    p.add_argument("--no-exclude-caches", dest="exclude_caches", action="store_false",
                   help="also back up the contents of folders tagged with CACHEDIR.TAG")
    p.add_argument("-x", "--one-file-system", action="store_true",
                   help="do not cross into other file systems")
    p.add_argument("--tag", action="append", default=[], help="tag the snapshot")
    p.add_argument("--host", default="", help="record this host name instead of this machine's")
    p.add_argument("--parent", help="snapshot to compare with (default: the latest of this "
                   "host with the same paths)")
    p.add_argument("--checkpoint-interval", type=float, default=300.0, metavar="SECONDS",
                   help="write a checkpoint snapshot this often during long backups")
    p.set_defaults(func=run, needs_cancel=True)


async def run(ctx: Context, cancel: CancelToken) -> int:
    args = ctx.args
    if args.checkpoint_interval <= 0:
        raise UsageError("--checkpoint-interval must be positive")
    excludes = list(args.exclude)
    for path in args.exclude_file:
        try:
            excludes += load_exclude_file(path)
        except OSError as exc:
            raise UsageError(f"cannot read exclude file {path}: {exc.strerror}") from exc
    skip = []
    if (root := ctx.local_root()) is not None:
        skip.append(str(root))
    if (cache := ctx.cache_root()) is not None:
        skip.append(str(cache))
    plan = BackupPlan(paths=tuple(args.paths), excludes=tuple(excludes),
                      exclude_paths=tuple(skip), exclude_caches=args.exclude_caches,
                      one_file_system=args.one_file_system, tags=tuple(args.tag),
                      hostname=args.host, parent=args.parent,
                      checkpoint_interval=args.checkpoint_interval)
    abs_paths(plan.paths)  # the engine's own check, run before asking for a passphrase
    out = ctx.out
    async with ctx.open_vault(load_index=False) as vault:  # backup loads it if it must
        result = await backup(vault, plan, progress=out, cancel=cancel)
    out.stop_progress()
    s = result.snapshot.stats
    out.emit({"type": "summary", "snapshot_id": result.snapshot_id.hex(),
              "short_id": result.snapshot_id.short(),
              **dataclasses.asdict(s),
              "problems": len(result.problems)})
    out.line(f"snapshot {result.snapshot_id.short()} saved")
    out.line(f"  files:     {s.new_files} new, {s.changed_files} changed, "
             f"{s.unchanged_files} unchanged ({s.files} in all, {s.dirs} folders)")
    out.line(f"  added:     {human_size(s.new_bytes)} ({human_size(s.stored_bytes)} stored "
             "after compression)")
    out.line(f"  processed: {human_size(s.bytes)} in {human_duration(s.seconds_ms / 1000)}")
    if result.problems:
        out.line(f"  problems:  {len(result.problems)} file(s) could not be backed up "
                 "(listed above)")
        return 1
    return 0

