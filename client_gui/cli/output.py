"""Everything the CLI prints: human text, JSON (lines or documents) and progress bars.

The only module of the CLI that writes to stdout/stderr. JSON is serialised from the same
engine dataclasses the GUI receives.
"""

import dataclasses
import json
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TextIO

from client_gui.engine.progress import (
    BackupProgress,
    CheckProgress,
    ItemProblem,
    Progress,
    RestoreProgress,
)

JSON_PROGRESS_INTERVAL = 1.0  # seconds between JSON progress lines: enough for a script


def human_duration(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


def format_time(time_ns: int, tz_offset: int | None = None) -> str:
    tz = timezone(timedelta(seconds=tz_offset)) if tz_offset is not None else None
    dt = datetime.fromtimestamp(time_ns / 1e9, tz=tz or UTC)
    return (dt if tz else dt.astimezone()).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(time_ns: int, tz_offset: int) -> str:
    tz = timezone(timedelta(seconds=tz_offset))
    return datetime.fromtimestamp(time_ns / 1e9, tz=tz).isoformat(timespec="seconds")


class Output:
    """Human or JSON output, plus a progress display on a terminal."""

    def __init__(self, *, json_mode: bool, quiet: bool = False, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.json = json_mode
        self.quiet = quiet
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._bar: Any = None
        self._task: Any = None
        self._last_json = 0.0

    # ---- plain output ---------------------------------------------------------------------

    def line(self, text: str = "") -> None:
        """Human output (suppressed in JSON mode)."""
        if not self.json:
            print(text, file=self.out, flush=True)

    def info(self, text: str) -> None:
        """A human note on stderr (never mixed into stdout data)."""
        if not self.json and not self.quiet:
            print(text, file=self.err, flush=True)

    def emit(self, obj: Any) -> None:
        """One JSON document / line (JSON mode only)."""
        if self.json:
            print(json.dumps(obj, ensure_ascii=False), file=self.out, flush=True)

    def ask(self, question: str) -> str:
        """Ask on the terminal (stderr) and read one line of stdin; "" at end of input."""
        self.stop_progress()
        print(question, end="", file=self.err, flush=True)
        return sys.stdin.readline().strip()

    def error(self, text: str) -> None:
        self.stop_progress()
        print(f"cairn: {text}", file=self.err, flush=True)

    # ---- progress (ProgressSink) ----------------------------------------------------------

    def progress(self, p: Progress) -> None:
        if self.json:
            now = time.monotonic()
            if now - self._last_json >= JSON_PROGRESS_INTERVAL:
                self._last_json = now
                self.emit({"type": "progress", "job": _job(p), **dataclasses.asdict(p)})
            return
        if self.quiet or not self.err.isatty():
            return
        self._show_bar(p)

    def problem(self, item: ItemProblem) -> None:
        if self.json:
            self.emit({"type": "problem", "path": item.path, "message": item.message,
                       "code": item.code})
        else:
            self._print_above(f"warning: {item.path}: {item.message}")

    def _print_above(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.err, flush=True)

    def _show_bar(self, p: Progress) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        if self._bar is None:
            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                TransferSpeedColumn(), TextColumn("{task.fields[files]}"), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(), console=Console(file=self.err),
                transient=True)
            self._bar.start()
            self._task = self._bar.add_task(_job(p), total=None, files="")
        if isinstance(p, BackupProgress):
            files = f"{p.files_done} files" + (f"/{p.files_total}" if p.files_total else "")
            self._bar.update(self._task, completed=p.bytes_done, total=p.bytes_total,
                             files=files)
        elif isinstance(p, RestoreProgress):
            self._bar.update(self._task, completed=p.bytes_done, total=p.bytes_total,
                             files=f"{p.files_done}/{p.files_total} files")
        elif isinstance(p, CheckProgress):
            self._bar.update(self._task, description=f"check: {p.phase}", completed=p.done,
                             total=p.total or None, files="")

    def stop_progress(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _job(p: Progress) -> str:
    if isinstance(p, BackupProgress):
        return "backup"
    if isinstance(p, RestoreProgress):
        return "restore"
    return "check"
