"""`cairn init | key | check | forget | prune | stats`: managing the vault itself."""

import argparse
import dataclasses
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from client_gui.cli.context import Context
from client_gui.cli.output import format_time
from client_gui.engine import browse
from client_gui.engine.check import check
from client_gui.engine.forget import forget
from client_gui.engine.progress import CancelToken
from client_gui.engine.prune import prune
from client_gui.engine.retention import RetentionRules
from client_gui.engine.secrets import vault_account
from client_gui.engine.vault import Vault
from shared.compression import DEFAULT_BLOB_LEVEL, MAX_LEVEL
from shared.errors import DamageFound, UsageError, VaultExists
from shared.storage.local import LocalStore
from shared.units import human_size


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `12h`, `7d`, `2w`, or combinations like `1d12h`; `0` means none."""
    if text.strip() == "0":
        return timedelta(0)
    parts = re.fullmatch(r"((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?", text.strip())
    if not text.strip() or parts is None:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 30m, 12h, 7d, 1d12h)")
    w, d, h, m, s = (int(parts.group(i) or 0) for i in (2, 4, 6, 8, 10))
    return timedelta(weeks=w, days=d, hours=h, minutes=m, seconds=s)


def add_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("init", help="create a new vault")
    p.add_argument("--no-recovery-key", dest="recovery_key", action="store_false",
                   help="do not create a printed recovery key")
    p.add_argument("--remember", action="store_true",
                   help="store the passphrase in the OS keyring")
    p.add_argument("--pack-size", type=int, default=16, metavar="MIB",
                   help="target pack file size in MiB (16-64)")
    p.add_argument("--compression", type=int, default=DEFAULT_BLOB_LEVEL, metavar="LEVEL",
                   help=f"zstd level of the data (0: none, 1-{MAX_LEVEL}; higher is smaller "
                        f"and slower; default {DEFAULT_BLOB_LEVEL})")
    p.set_defaults(func=init)

    p = sub.add_parser("key", help="manage the passphrases and recovery keys of the vault")
    ksub = p.add_subparsers(dest="key_command", required=True, metavar="COMMAND")
    k = ksub.add_parser("list", help="list key slots")
    k.set_defaults(func=key_list)
    k = ksub.add_parser("add", help="add a passphrase (or, with --recovery, a recovery key)")
    k.add_argument("--recovery", action="store_true", help="add a printed recovery key")
    k.add_argument("--label", default="", help="a note to recognise the slot by")
    k.add_argument("--new-passphrase-file", metavar="FILE",
                   help="read the new passphrase from FILE (or set CAIRN_NEW_PASSPHRASE)")
    k.set_defaults(func=key_add)
    k = ksub.add_parser("remove", help="remove a key slot")
    k.add_argument("slot", metavar="ID", help="key slot ID (prefix)")
    k.set_defaults(func=key_remove)
    k = ksub.add_parser("remember", help="store the passphrase in the OS keyring")
    k.set_defaults(func=key_remember)
    k = ksub.add_parser("forget", help="remove the passphrase from the OS keyring")
    k.set_defaults(func=key_forget)

    p = sub.add_parser("check", help="verify the vault and explain any damage")
    p.add_argument("--read-data", action="store_true",
                   help="also decrypt and verify every blob (reads the whole vault)")
    p.set_defaults(func=run_check, needs_cancel=True)

    p = sub.add_parser("forget", help="remove snapshots by ID or by a retention policy")
    p.add_argument("ids", nargs="*", metavar="ID", help="snapshots to remove")
    for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        p.add_argument(f"--keep-{name}", type=int, default=0, metavar="N",
                       help=f"keep the {name} N snapshots" if name == "last" else
                       f"keep the newest snapshot of each of the last N {name} periods "
                       "(-1: all)")
    p.add_argument("--keep-within", type=parse_duration, metavar="DURATION",
                   help="keep every snapshot newer than this (e.g. 7d)")
    p.add_argument("--keep-tag", action="append", default=[], metavar="TAG",
                   help="keep every snapshot with this tag")
    p.add_argument("--host", help="only consider snapshots of this host")
    p.add_argument("--tag", action="append", default=[], help="only consider these tags")
    p.add_argument("-n", "--dry-run", action="store_true", help="only show what would go")
    p.add_argument("--prune", action="store_true", help="run prune afterwards")
    p.add_argument("--grace", type=parse_duration, default=timedelta(hours=1),
                   metavar="DURATION", help="prune grace period (with --prune)")
    p.set_defaults(func=run_forget, needs_cancel=True)

    p = sub.add_parser("prune", help="free the space of data no snapshot needs (two phases)")
    p.add_argument("--grace", type=parse_duration, default=timedelta(hours=1),
                   metavar="DURATION",
                   help="how long marked data waits before deletion, so concurrent backups "
                   "stay safe (default 1h; 0 only if no other backup can be running)")
    p.add_argument("-n", "--dry-run", action="store_true", help="only show what would happen")
    p.set_defaults(func=run_prune, needs_cancel=True)

    p = sub.add_parser("stats", help="sizes, deduplication and compression")
    p.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="default: all")
    p.set_defaults(func=run_stats)


# ---- init and keys ------------------------------------------------------------------------

async def init(ctx: Context) -> int:
    args = ctx.args
    if not 16 <= args.pack_size <= 64:
        raise UsageError("--pack-size must be between 16 and 64 (MiB)")
    if not 0 <= args.compression <= MAX_LEVEL:
        raise UsageError(f"--compression must be between 0 (none) and {MAX_LEVEL}")
    root = ctx.local_root()
    if root is None:
        creator = await ctx.new_remote_vault()
        passphrase = ctx.new_passphrase()
        store = await creator.create()
        where = ctx.vault_spec
    else:
        _check_new_vault_folder(root)
        passphrase = ctx.new_passphrase()
        try:
            await LocalStore.create(root)
        except OSError as exc:
            raise UsageError(f"cannot create {root}: {exc.strerror}") from exc
        store = ctx.raw_store()
        where = str(root)
    vault, recovery = await Vault.create(store, passphrase, pack_size=args.pack_size << 20,
                                         zstd_level=args.compression,
                                         recovery_key=args.recovery_key)
    remembered = args.remember and ctx.secrets.set(vault_account(vault.config.vault_id),
                                                   passphrase)
    await vault.close()
    ctx.out.emit({"vault_id": vault.config.vault_id.hex(), "path": where,
                  "recovery_key": recovery, "remembered": remembered})
    ctx.out.line(f"created vault {vault.config.vault_id.hex()[:8]} at {where}")
    if recovery:
        ctx.out.line("")
        ctx.out.line("Recovery key (print it or write it down and keep it somewhere safe;")
        ctx.out.line("it opens the vault if the passphrase is lost, and it is shown only once):")
        ctx.out.line("")
        ctx.out.line(f"    {recovery}")
        ctx.out.line("")
    if args.remember and not remembered:
        ctx.out.info("note: no OS keyring is available; the passphrase was not stored")
    return 0


def _check_new_vault_folder(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if (root / "config").is_dir() and any((root / "config").iterdir()):
            raise VaultExists(f"a vault already exists at {root}")
        raise UsageError(f"{root} is not empty; choose an empty or new folder")


async def key_list(ctx: Context) -> int:
    async with ctx.open_vault(load_index=False) as vault:
        slots = await Vault.load_key_slots(vault.store)
        current = vault.slot_name
    rows = [{"id": name, "short_id": name[:8], "type": slot.slot_type, "host": slot.hostname,
             "label": slot.label, "created": format_time(slot.created_ns),
             "current": name == current} for name, slot in slots]
    if ctx.out.json:
        ctx.out.emit(rows)
        return 0
    ctx.out.line(f"  {'ID':<8}  {'Type':<10}  {'Created':<19}  {'Host':<16}  Label")
    for r in rows:
        mark = "*" if r["current"] else " "
        ctx.out.line(f"{mark} {r['short_id']:<8}  {r['type']:<10}  {r['created']:<19}  "
                     f"{r['host']:<16.16}  {r['label']}")
    return 0


async def key_add(ctx: Context) -> int:
    args = ctx.args
    async with ctx.open_vault(load_index=False) as vault:
        if args.recovery:
            name, text = await vault.add_recovery_key(args.label or "recovery")
            ctx.out.emit({"id": name, "type": "recovery", "recovery_key": text})
            ctx.out.line(f"added recovery key slot {name[:8]}:")
            ctx.out.line(f"    {text}")
            return 0
        passphrase = ctx.new_passphrase("passphrase for the new key slot")
        name = await vault.add_passphrase(passphrase, args.label)
    ctx.out.emit({"id": name, "type": "passphrase"})
    ctx.out.line(f"added key slot {name[:8]}")
    return 0


async def key_remove(ctx: Context) -> int:
    async with ctx.open_vault(load_index=False) as vault:
        name = await vault.remove_key_slot(ctx.args.slot)
    ctx.out.emit({"removed": name})
    ctx.out.line(f"removed key slot {name[:8]}")
    return 0


async def key_remember(ctx: Context) -> int:
    async with ctx.open_vault(load_index=False) as vault:
        passphrase = ctx.passphrase_for(vault.config)
        ok = ctx.secrets.set(vault_account(vault.config.vault_id), passphrase)
    if not ok:
        raise UsageError("no OS keyring is available on this system")
    ctx.out.line("passphrase stored in the OS keyring")
    return 0


async def key_forget(ctx: Context) -> int:
    _, config = await ctx.read_config()
    ctx.secrets.delete(vault_account(config.vault_id))
    ctx.out.line("passphrase removed from the OS keyring")
    return 0


# ---- check, forget, prune, stats ------------------------------------------------------------

async def run_check(ctx: Context, cancel: CancelToken) -> int:
    out = ctx.out
    async with ctx.open_vault(load_index=False, cached_trees=False) as vault:
        report = await check(vault, read_data=ctx.args.read_data,
                             verify_pack_hashes=ctx.local_root() is not None,
                             progress=out, cancel=cancel)
    out.stop_progress()
    out.emit({"ok": report.ok, "snapshots": report.snapshots, "trees": report.trees,
              "blobs": report.blobs, "packs": report.packs, "bytes_read": report.bytes_read,
              "warnings": list(report.warnings),
              "damage": [{"kind": d.kind, "object": d.object, "message": d.message,
                          "snapshots": list(d.snapshots), "paths": list(d.paths),
                          "more_paths": d.more_paths}
                         for d in report.damage]})
    for w in report.warnings:
        out.line(f"warning: {w}")
    for d in report.damage:
        out.line(f"DAMAGE: {d.message}")
        if d.snapshots:
            out.line(f"  snapshots affected: {', '.join(s[:8] for s in d.snapshots)}")
        for path in d.paths:
            out.line(f"  file affected: {path}")
        if d.more_paths:
            out.line(f"  ... and {d.more_paths} more")
    out.line(f"checked {report.snapshots} snapshots, {report.trees} trees, {report.blobs} "
             f"blobs, {report.packs} packs ({human_size(report.bytes_read)} read)")
    if not report.ok:
        raise DamageFound(f"the vault is damaged: {len(report.damage)} problem(s) found")
    out.line("no damage found")
    return 0


def _rules(args: argparse.Namespace) -> RetentionRules | None:
    rules = RetentionRules(last=args.keep_last, hourly=args.keep_hourly,
                           daily=args.keep_daily, weekly=args.keep_weekly,
                           monthly=args.keep_monthly, yearly=args.keep_yearly,
                           within=args.keep_within, tags=frozenset(args.keep_tag))
    return None if rules.is_empty() else rules


async def run_forget(ctx: Context, cancel: CancelToken) -> int:
    args = ctx.args
    rules = _rules(args)
    if rules is None and not args.ids:
        raise UsageError("give snapshot IDs or at least one --keep-* rule")
    if rules is not None and args.ids:
        raise UsageError("give either snapshot IDs or --keep-* rules, not both")
    out = ctx.out
    if not args.dry_run:
        await ctx.require_delete("forget" + (" --prune" if args.prune else ""))
    async with ctx.open_vault(load_index=False) as vault:
        result = await forget(vault, rules=rules, ids=args.ids, host=args.host,
                              tags=args.tag, dry_run=args.dry_run)
        payload: dict[str, Any] = {"removed": list(result.removed), "dry_run": args.dry_run,
                                   "groups": []}
        for g in result.groups:
            payload["groups"].append({
                "host": g.host, "paths": list(g.paths),
                "snapshots": [{"id": d.candidate.id, "keep": d.keep,
                               "reasons": list(d.reasons)} for d in g.decisions]})
            out.line(f"host {g.host}, paths {' '.join(g.paths)}:")
            for d in g.decisions:
                verb = "keep  " if d.keep else ("would remove" if args.dry_run else "remove")
                out.line(f"  {verb} {d.candidate.id[:8]}  {d.candidate.time:%Y-%m-%d %H:%M:%S}"
                         f"  {', '.join(d.reasons)}")
        verb = "would remove" if args.dry_run else "removed"
        out.line(f"{verb} {len(result.removed)} snapshot(s)")
        if args.prune and not args.dry_run:
            await vault.load_index()
            pr = await prune(vault, grace=args.grace, progress=out, cancel=cancel)
            payload["prune"] = _prune_json(pr)
            _prune_lines(ctx, pr)
    out.emit(payload)
    return 0


def _prune_json(pr: Any) -> dict[str, Any]:
    return dataclasses.asdict(pr)


def _prune_lines(ctx: Context, pr: Any) -> None:
    ctx.out.line(f"deleted {pr.deleted_packs} pack(s), {human_size(pr.deleted_bytes)} freed")
    ctx.out.line(f"repacked {pr.repacked_packs} partly used pack(s) "
                 f"({human_size(pr.repacked_bytes)})")
    ctx.out.line(f"marked {pr.marked_packs} pack(s) ({human_size(pr.marked_bytes)}) for "
                 f"deletion after the grace period; {pr.pending_packs} pack(s) pending")
    ctx.out.line(f"index segments: {pr.index_segments_before} -> {pr.index_segments_after}")


async def run_prune(ctx: Context, cancel: CancelToken) -> int:
    if not ctx.args.dry_run:
        await ctx.require_delete("prune")
    async with ctx.open_vault() as vault:
        pr = await prune(vault, grace=ctx.args.grace, dry_run=ctx.args.dry_run,
                         progress=ctx.out, cancel=cancel)
    ctx.out.stop_progress()
    ctx.out.emit(_prune_json(pr))
    if ctx.args.dry_run:
        ctx.out.line("dry run: nothing was changed")
    _prune_lines(ctx, pr)
    return 0


async def run_stats(ctx: Context) -> int:
    async with ctx.open_vault() as vault:
        refs = await vault.list_snapshots()
        if ctx.args.snapshots:
            refs = [await vault.find_snapshot(s, refs) for s in ctx.args.snapshots]
        st = await browse.stats(vault, refs)
    ctx.out.emit(dataclasses.asdict(st))
    dedup = st.restore_size / st.unique_size if st.unique_size else 0.0
    comp = st.unique_size / st.stored_size if st.stored_size else 0.0
    ctx.out.line(f"snapshots:            {st.snapshots}")
    ctx.out.line(f"files (all snapshots): {st.files}")
    ctx.out.line(f"restore size:         {human_size(st.restore_size)}")
    ctx.out.line(f"unique data:          {human_size(st.unique_size)} in {st.unique_blobs} "
                 f"blobs (deduplication {dedup:.2f}x)")
    ctx.out.line(f"stored:               {human_size(st.stored_size)} "
                 f"(compression {comp:.2f}x)")
    ctx.out.line(f"vault packs:          {human_size(st.vault_size)} in {st.packs} packs")
    return 0
