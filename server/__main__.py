"""`cairn-server`: parse arguments, set up logging, run a command (serve, init, users, ...).

Every CairnError ends as one line on stderr and its exit code; an unexpected exception is
logged with its traceback and reported in one line too.
"""

import argparse
import logging
import sys

from server import cli, logs
from shared.errors import CairnError

logger = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cairn-server",
        description="Cairn backup server: stores encrypted vaults for users' devices.")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # `serve` logs JSON lines to stdout; admin commands only warn (their output is the answer).
    logs.configure(args.log_level if args.command == "serve" else "warning")
    try:
        code: int = args.func(args)
        return code
    except CairnError as exc:
        sys.stderr.write(f"cairn-server: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("cairn-server: interrupted\n")
        return 130
    except Exception as exc:  # the top of the process: one line, traceback to the log
        logger.exception("unexpected error")
        sys.stderr.write(f"cairn-server: unexpected error: {type(exc).__name__}: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
