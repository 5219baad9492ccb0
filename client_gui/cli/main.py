"""`cairn`: the command-line entry point. Parses arguments, sets up logging, runs one command,
turns errors into one line on stderr and an exit code (0 ok, 1 item problems, 2+ errors).
"""

import argparse
import asyncio
import copy
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import platformdirs

from client_gui.cli import backup, browse, destination, restore, vault
from client_gui.cli.context import Context
from client_gui.cli.output import Output
from client_gui.engine import malloc
from client_gui.engine.progress import CancelToken
from shared.errors import CairnError

logger = logging.getLogger("client_gui.cli")


def add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options every command takes, before or after the command name."""

    def d(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--vault", metavar="PATH|URL", default=d(None),
                        help="the vault: a folder, or https://HOST:PORT/NAME on a cairn-server; "
                        "default $CAIRN_VAULT")
    parser.add_argument("--passphrase-file", metavar="FILE", default=d(None),
                        help="read the passphrase from FILE")
    parser.add_argument("--cacert", metavar="FILE", default=d(None),
                        help="trust the cairn-server certificates this CA bundle (PEM) signed; "
                        "default $CAIRN_CACERT")
    parser.add_argument("--json", action="store_true", default=d(False),
                        help="machine-readable output (JSON; one object per line for jobs)")
    parser.add_argument("-q", "--quiet", action="store_true", default=d(False),
                        help="no progress display")
    parser.add_argument("-v", "--verbose", action="count", default=d(0),
                        help="more log output on stderr (-vv for debug)")
    parser.add_argument("--cache-dir", metavar="DIR", default=d(None),
                        help="local cache folder")
    parser.add_argument("--no-cache", action="store_true", default=d(False),
                        help="do not use the local cache")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                out += [child, *_subparsers(child)]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn", description="Encrypted, deduplicated backups.",
        epilog="The passphrase comes from --passphrase-file, $CAIRN_PASSPHRASE_FILE, "
        "$CAIRN_PASSPHRASE, the OS keyring or a prompt; never from the command line. "
        "A vault on a cairn-server uses the token of `cairn destination add`, or "
        "$CAIRN_USER and $CAIRN_PASSWORD.")
    add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    vault.add_parsers(sub)
    backup.add_parser(sub)
    restore.add_parser(sub)
    browse.add_parsers(sub)
    destination.add_parsers(sub)
    for child in _subparsers(parser):
        add_common(child, suppress=True)
    return parser


class _ConsoleFormatter(logging.Formatter):
    """One line per record on the terminal: tracebacks go to the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        record = copy.copy(record)
        record.exc_info = None
        record.exc_text = None
        return super().format(record)


def log_file() -> Path:
    env = os.environ.get("CAIRN_LOG_DIR")
    folder = Path(env) if env else platformdirs.user_log_path("cairn")
    return folder / "cairn.log"


def setup_logging(verbose: int) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else
                     logging.WARNING)
    console.setFormatter(_ConsoleFormatter("cairn: %(levelname)s: %(message)s"))
    root.addHandler(console)
    path = log_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 << 20, backupCount=3,
                                                       encoding="utf-8")
    except OSError:
        return  # no log file is no reason to fail a backup
    handler.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


async def _run(ctx: Context) -> int:
    try:
        return await _call(ctx)
    finally:
        await ctx.close()


async def _call(ctx: Context) -> int:
    func = ctx.args.func
    if not getattr(ctx.args, "needs_cancel", False):
        result: int = await func(ctx)
        return result
    cancel = CancelToken()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, cancel.cancel)
    try:
        result = await func(ctx, cancel)
        return result
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    out = Output(json_mode=args.json, quiet=args.quiet)
    try:
        return asyncio.run(_run(Context(args, out)))
    except CairnError as exc:
        out.error(f"error: {exc}" if str(exc) else f"error: {exc.code}")
        logger.info("command failed: %s: %s", exc.code, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except Exception as exc:  # the top of the process: never a traceback on the terminal
        logger.error("internal error", exc_info=True)
        out.error(f"internal error: {type(exc).__name__}: {exc} (details in {log_file()})")
        return 2
    finally:
        out.stop_progress()


def main() -> None:
    malloc.tune()
    code = run()
    # Everything is written and closed by now. Tearing the interpreter down (freeing every
    # object, one at a time) took 0.2-0.3 s, a third of a no-change backup: skip it.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
