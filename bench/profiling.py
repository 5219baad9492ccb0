"""Where Cairn's time goes: one profiled initial backup and one profiled no-change backup of the
many-small-files tree, outside the measured rounds.

py-spy (sampling, every thread, native code counted against the Python function that called
it) is used when it is installed; otherwise cProfile, which sees only the main thread. Samples
are folded into functions (own time: the function was on top of the stack; cumulative: it was
anywhere on the stack) and into source files.
"""

from __future__ import annotations

import logging
import pstats
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from bench.dataset import Dataset
from bench.runners import CairnRunner, cleanup
from bench.tools import Toolset

logger = logging.getLogger(__name__)

TOP = 8
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Frames that wrap everything and say nothing about the cost.
_PLUMBING = ("threading.py", "concurrent/futures/", "runpy.py", "asyncio/", "selectors.py",
             "<string>", "cProfile.py", "profile.py")


# cProfile names built-ins like "<method 'poll' of 'select.epoll' objects>".
_CPROFILE_WAITING = ("'poll'", "'select'", "'acquire'", "'wait'", "sleep")
_CPROFILE_WRAPPERS = ("builtins.exec", "builtins.__import__", "_imp.")


def _parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), ""
    return match.group("func"), match.group("file")


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker.startswith("/lib"):
                file = "stdlib:" + file.split("/", 1)[-1]
    for root in ("client_gui/", "shared/", "server/"):
        if f"/{root}" in file:
            file = root + file.split(f"/{root}", 1)[1]
    return file


def _plumbing(file: str, func: str) -> bool:
    return func in ("<module>", "main", "<lambda>") or any(p in file for p in _PLUMBING)


def _importing(file: str) -> bool:
    return file.startswith("<frozen importlib")


def fold_stacks(stacks: Iterable[tuple[list[tuple[str, str]], float]]) -> dict[str, object]:
    """Own/cumulative/per-file shares from (stack root-first, weight) pairs.

    Own time leaves out samples whose top frame is plumbing (thread pools, locks, the event
    loop: waiting that the sampler still counted) or the import machinery; their shares are
    reported as `waiting` and `imports` (any sample with an import under way).
    """
    own: defaultdict[tuple[str, str], float] = defaultdict(float)
    cumulative: defaultdict[tuple[str, str], float] = defaultdict(float)
    files: defaultdict[str, float] = defaultdict(float)
    total = waiting = imports = 0.0
    for stack, weight in stacks:
        if not stack:
            continue
        total += weight
        func, file = stack[-1]
        short = _short(file)
        if any(_importing(f) for _func, f in stack):
            imports += weight
        if _plumbing(short, func):
            waiting += weight
        elif not _importing(file):
            own[(func, short)] += weight
            files[short] += weight
        for key in {(f, _short(p)) for f, p in stack}:
            if not _importing(key[1]):
                cumulative[key] += weight
    return _tops(own, cumulative, files, total, waiting=waiting, imports=imports)


def _tops(own: dict[tuple[str, str], float], cumulative: dict[tuple[str, str], float],
          files: dict[str, float], total: float, *, waiting: float | None = None,
          imports: float | None = None) -> dict[str, object]:
    def share(x: float) -> float:
        return round(100.0 * x / total, 1) if total else 0.0

    def ranked(d: dict[tuple[str, str], float]) -> list[tuple[tuple[str, str], float]]:
        return sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))

    cum = [(k, v) for k, v in ranked(cumulative) if not _plumbing(k[1], k[0])]
    by_file = sorted(files.items(), key=lambda kv: (-kv[1], kv[0]))
    out: dict[str, object] = {
        "samples": total,
        "own": [[f, p, share(v)] for (f, p), v in ranked(own)[:TOP]],
        "cumulative": [[f, p, share(v)] for (f, p), v in cum[:TOP]],
        "files": [[p, share(v)] for p, v in by_file[:5]],
    }
    if waiting is not None:
        out["waiting"] = share(waiting)
    if imports is not None:
        out["imports"] = share(imports)
    return out


def parse_pyspy_raw(text: str) -> dict[str, object]:
    """Folds py-spy's raw (collapsed) output: `frame;frame;... count` per line, root first."""
    stacks = []
    for line in text.splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        stacks.append(([_parse_frame(f) for f in head.split(";")], float(count)))
    return fold_stacks(stacks)


def parse_cprofile(path: Path) -> dict[str, object]:
    """Folds a cProfile dump (main thread only; shares of its CPU seconds)."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    own: defaultdict[tuple[str, str], float] = defaultdict(float)
    cumulative: defaultdict[tuple[str, str], float] = defaultdict(float)
    files: defaultdict[str, float] = defaultdict(float)
    total = waiting = 0.0
    for (file, _line, func), (_cc, _nc, tt, ct, _callers) in stats.items():
        short = "built-in" if file == "~" else _short(file)
        key = (func, short)
        total += tt
        if _plumbing(short, func) or any(w in func for w in _CPROFILE_WAITING):
            waiting += tt
            continue
        if _importing(file) or any(b in func for b in _CPROFILE_WRAPPERS):
            continue
        own[key] += tt
        files[short] += tt
        cumulative[key] = max(cumulative[key], ct)
    out = _tops(own, cumulative, files, total, waiting=waiting)
    out["unit"] = "CPU seconds of the main thread"
    return out


def _profile_backup(tools: Toolset, runner: CairnRunner, source: Path, out: Path
                    ) -> dict[str, object]:
    if tools.py_spy is not None:
        method = "py-spy"
        runner.wrapper = [str(tools.py_spy), "record", "--format", "raw", "--rate", "100",
                          "--nonblocking", "--output", str(out), "--"]
    else:
        method = "cProfile (main thread only)"
        assert tools.cairn_python is not None
        runner.wrapper = [str(tools.cairn_python), "-m", "cProfile", "-o", str(out)]
    try:
        result = runner.backup(source)
    finally:
        runner.wrapper = []
    if result.error:
        return {"method": method, "error": result.error}
    try:
        folded = (parse_pyspy_raw(out.read_text(errors="replace")) if method == "py-spy"
                  else parse_cprofile(out))
    except (OSError, ValueError, TypeError) as exc:
        return {"method": method, "error": f"cannot read the profile: {exc}"}
    return {"method": method, "wall": round(result.wall, 2), **folded}


def profile_cairn(tools: Toolset, home: Dataset, small: Dataset | None, workdir: Path,
                  timeout: float) -> dict[str, dict[str, object]]:
    """Profiles an initial backup of `home` and a no-change backup of `small` (fresh vaults)."""
    profiles: dict[str, dict[str, object]] = {}
    if tools.cairn is None:
        return profiles
    cleanup(workdir)
    workdir.mkdir(parents=True)
    try:
        cases: list[tuple[str, Dataset, bool]] = [("initial backup of the home tree", home, False)]
        if small is not None:
            cases.append((f"no-change backup of {small.files:,} small files", small, True))
        for title, dataset, again in cases:
            logger.info("profiling cairn: %s", title)
            runner = CairnRunner(tools, "local", dataset.kind, workdir)
            runner.timeout = timeout
            init = runner.init()
            first = runner.backup(dataset.root) if again and init.error is None else init
            if first.error:
                profiles[title] = {"error": first.error}
                continue
            profiles[title] = _profile_backup(tools, runner, dataset.root,
                                              workdir / f"{dataset.kind}.profile")
    finally:
        cleanup(workdir)
    return profiles
