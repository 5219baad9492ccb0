"""Measuring one command: wall time, CPU time and peak RSS; sizes of folders; a server's peak RSS.

Peak RSS comes from the child's rusage (`os.wait4`): on Linux that is the largest resident set
of the child and of every descendant it waited for, i.e. the client's process tree. A long-
running server is measured per operation through /proc: `clear_refs` (5) resets its high-water
mark before the operation, `VmHWM` reads it after.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """One finished command. `error` is None on success, else one line for the report."""

    wall: float
    user: float
    sys: float
    max_rss: int  # bytes
    returncode: int
    error: str | None = None


def _last_line(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(offset, os.path.getsize(log) - 8192))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _gnu_time() -> str | None:
    path = shutil.which("time", path="/usr/bin:/bin:/usr/local/bin")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return path if "GNU" in out.stdout + out.stderr else None


GNU_TIME = _gnu_time()
RSS_METHOD = ("GNU time's %M (the command's own peak RSS and that of the processes it waited for)"
              if GNU_TIME else
              "rusage of the child (may include the harness's own peak, copied at fork)")


def _time_rss(path: Path) -> int | None:
    try:
        lines = path.read_text().split()
        return int(lines[-1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    finally:
        path.unlink(missing_ok=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass


def run(cmd: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path | None = None,
        timeout: float = 3600.0, ok_codes: tuple[int, ...] = (0,)) -> RunResult:
    """Runs `cmd` to completion with its output appended to `log`, and measures it.

    The command runs in its own session under GNU time (when installed): a child forked from
    this (large) Python process would otherwise report this process's peak RSS as its own.
    On timeout or interruption the whole process group is killed.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    if shutil.which(cmd[0]) is None:
        return RunResult(0.0, 0.0, 0.0, 0, -1, f"cannot start {cmd[0]}: not found")
    rss_file = log.with_name(f".rss-{os.getpid()}-{threading.get_ident()}")
    full = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *cmd] if GNU_TIME else list(cmd)
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        offset = out.tell()
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(full, env=dict(env), cwd=cwd, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as exc:
            return RunResult(0.0, 0.0, 0.0, 0, -1, f"cannot start {cmd[0]}: {exc.strerror}")
        timer = threading.Timer(timeout, _kill_group, (proc,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped here, so Popen must not wait for it again
    rss = _time_rss(rss_file) if GNU_TIME else None
    error = None
    if code not in ok_codes:
        if wall >= timeout:
            error = f"timed out after {timeout:.0f} s"
        else:
            error = f"exit code {code}: {_last_line(log, offset) or 'no output'}"
    return RunResult(wall=wall, user=usage.ru_utime, sys=usage.ru_stime,
                     max_rss=rss if rss is not None else usage.ru_maxrss * 1024,
                     returncode=code, error=error)


class PeakRss:
    """Peak RSS of a running process between `reset()` and `read()`, via /proc."""

    def __init__(self, pid: int):
        self.pid = pid
        self.resettable = True

    def reset(self) -> None:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            self.resettable = False  # then read() is the peak since the process started

    def read(self) -> int | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None


def dir_size(path: Path) -> int:
    """Apparent size (sum of st_size) of the regular files under `path`."""
    return summarize(path).bytes


@dataclass(frozen=True)
class TreeSummary:
    files: int
    bytes: int
    symlinks: int


def summarize(path: Path) -> TreeSummary:
    """Counts regular files (and their bytes) and symlinks under `path`, never following links."""
    files = size = links = 0
    for folder, dirs, names in os.walk(path):
        for name in names + dirs:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                links += 1
            elif stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
    return TreeSummary(files=files, bytes=size, symlinks=links)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
