"""`cairn snapshots | ls | find | diff`: read-only views of the vault."""

import argparse
import stat

from client_gui.cli.context import Context
from client_gui.cli.output import format_time
from client_gui.cli.snapshot_json import SNAPSHOT_HEADER, snapshot_json, snapshot_row
from client_gui.engine import browse
from client_gui.engine.walk import display
from shared.format.tree import Node, NodeType
from shared.units import human_size


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("snapshots", help="list snapshots")
    p.add_argument("--host", help="only snapshots of this host")
    p.add_argument("--tag", action="append", default=[], help="only snapshots with this tag")
    p.add_argument("--path", action="append", default=[], help="only snapshots of this path")
    p.set_defaults(func=snapshots)

    p = sub.add_parser("ls", help="list files in a snapshot")
    p.add_argument("snapshot", metavar="SNAPSHOT")
    p.add_argument("path", nargs="?", metavar="PATH", help="folder or file inside the snapshot")
    p.add_argument("-l", "--long", action="store_true", help="show mode, owner, size, time")
    p.add_argument("--no-recursive", dest="recursive", action="store_false",
                   help="list only the folder's own entries")
    p.set_defaults(func=ls)

    p = sub.add_parser("find", help="find files by name or path in every snapshot")
    p.add_argument("pattern", metavar="PATTERN",
                   help="glob on names (e.g. '*.odt'), or on whole paths if it contains '/'")
    p.add_argument("--snapshot", action="append", default=[], metavar="ID",
                   help="search only these snapshots")
    p.set_defaults(func=find)

    p = sub.add_parser("diff", help="show what changed between two snapshots")
    p.add_argument("first", metavar="SNAPSHOT1")
    p.add_argument("second", metavar="SNAPSHOT2")
    p.set_defaults(func=diff)


async def snapshots(ctx: Context) -> int:
    args = ctx.args
    async with ctx.open_vault(load_index=False) as vault:
        refs = await vault.list_snapshots()
    if args.host:
        refs = [r for r in refs if r.snapshot.hostname == args.host]
    if args.tag:
        refs = [r for r in refs if set(args.tag) <= set(r.snapshot.tags)]
    if args.path:
        wanted = {p.rstrip("/") for p in args.path}
        refs = [r for r in refs if wanted <= {p.decode("utf-8", "surrogateescape")
                                              for p in r.snapshot.paths}]
    if ctx.out.json:
        ctx.out.emit([snapshot_json(r) for r in refs])
        return 0
    ctx.out.line(SNAPSHOT_HEADER)
    for r in refs:
        ctx.out.line(snapshot_row(r))
    ctx.out.line(f"{len(refs)} snapshot(s)")
    return 0


def _mode_text(node: Node) -> str:
    kind = {NodeType.DIR: stat.S_IFDIR, NodeType.SYMLINK: stat.S_IFLNK,
            NodeType.FIFO: stat.S_IFIFO, NodeType.CHARDEV: stat.S_IFCHR,
            NodeType.BLOCKDEV: stat.S_IFBLK, NodeType.SOCKET: stat.S_IFSOCK}.get(
        node.type, stat.S_IFREG)
    return stat.filemode(kind | node.mode)


def node_json(path: bytes, node: Node) -> dict[str, object]:
    return {"path": display(path), "type": node.type.value, "mode": node.mode,
            "uid": node.uid, "gid": node.gid, "user": node.user, "group": node.group,
            "size": node.size, "mtime": format_time(node.mtime_ns),
            "mtime_ns": node.mtime_ns,
            "target": node.target.decode("utf-8", "backslashreplace") if node.target else None}


async def ls(ctx: Context) -> int:
    args = ctx.args
    async with ctx.open_vault() as vault:
        ref = await vault.find_snapshot(args.snapshot)
        async for entry in browse.ls(vault, ref, args.path, recursive=args.recursive):
            node = entry.node
            if ctx.out.json:
                ctx.out.emit(node_json(entry.path, node))
            elif args.long:
                target = f" -> {node.target.decode('utf-8', 'backslashreplace')}" \
                    if node.target else ""
                ctx.out.line(f"{_mode_text(node)} {node.user or node.uid:>8} "
                             f"{node.group or node.gid:>8} {node.size:>12} "
                             f"{format_time(node.mtime_ns)} {display(entry.path)}{target}")
            else:
                ctx.out.line(display(entry.path))
    return 0


async def find(ctx: Context) -> int:
    args = ctx.args
    count = 0
    async with ctx.open_vault() as vault:
        refs = await vault.list_snapshots()
        if args.snapshot:
            refs = [await vault.find_snapshot(s, refs) for s in args.snapshot]
        async for found in browse.find(vault, refs, args.pattern):
            count += 1
            s = found.snapshot.snapshot
            if ctx.out.json:
                ctx.out.emit({"snapshot": found.snapshot.id.hex(),
                              "snapshot_time": format_time(s.time_ns),
                              **node_json(found.path, found.node)})
            else:
                ctx.out.line(f"{found.snapshot.id.short()}  {format_time(s.time_ns)}  "
                             f"{human_size(found.node.size):>10}  "
                             f"{format_time(found.node.mtime_ns)}  {display(found.path)}")
    ctx.out.info(f"{count} match(es) in {len(refs)} snapshot(s)")
    return 0


async def diff(ctx: Context) -> int:
    args = ctx.args
    counts: dict[str, int] = {}
    async with ctx.open_vault() as vault:
        refs = await vault.list_snapshots()
        a = await vault.find_snapshot(args.first, refs)
        b = await vault.find_snapshot(args.second, refs)
        async for change in browse.diff(vault, a, b):
            counts[change.kind] = counts.get(change.kind, 0) + 1
            node = change.new or change.old
            suffix = "/" if node is not None and node.type == NodeType.DIR else ""
            if ctx.out.json:
                ctx.out.emit({"change": change.kind, "path": display(change.path) + suffix})
            else:
                ctx.out.line(f"{change.kind}    {display(change.path)}{suffix}")
    names = {"+": "added", "-": "removed", "M": "modified", "T": "type changed",
             "m": "metadata changed"}
    summary = ", ".join(f"{counts.get(k, 0)} {v}" for k, v in names.items())
    ctx.out.info(f"{a.id.short()} -> {b.id.short()}: {summary}")
    return 0
