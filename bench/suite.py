"""The measured run: rounds of alternating tools, phase by phase, on fresh repositories.

One round, phase by phase, every runner in turn (local first, then HTTP; the order of the
tools turns by one each round, so none always goes first):

1. `initial`: every runner backs up the home tree into its new, empty repository;
2. `unchanged`: every runner backs it up again (its cache kept, as a user's would be);
3. the day of work is applied; `edited`: every runner backs up again;
4. `restore`: every runner restores its latest snapshot into an empty folder, which is then
   checked (file count, bytes and symlinks against the tree); the restored trees are deleted
   once all runners have restored (see run_suite); the day is undone;
5. the many-small-files tree: `initial` and `unchanged` backups by every local runner.

Before each measured command, what it will read is read once, untimed: the tree for a backup,
the repository for a restore, and the runner's cache either way. The kernel here gives back
page-cache pages that were not used for some seconds, so without this the first tool of a phase
read cold files and the next ones warm files. Each measured command is followed by an untimed
`sync`, so dirty pages of one tool do not slow the next. Servers and repositories are new each
round and deleted at its end.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from bench import mutation
from bench.dataset import Dataset, read_all
from bench.measure import RunResult, summarize
from bench.mutation import Mutation
from bench.runners import (
    RUNNERS,
    CairnServer,
    RestServer,
    Runner,
    Server,
    cleanup,
    unavailable,
)
from bench.tools import ToolError, Toolset

logger = logging.getLogger(__name__)

HOME_PHASES = ("initial", "unchanged", "edited", "restore")
SMALL_PHASES = ("initial", "unchanged")


@dataclass(frozen=True)
class Sample:
    """One measured command."""

    round: int
    case: str  # "home" or "small"
    tool: str
    mode: str
    phase: str
    wall: float | None
    user: float | None
    sys: float | None
    rss: int | None  # client peak RSS, bytes
    server_rss: int | None  # server peak RSS during the command, bytes (HTTP only)
    repo_bytes: int | None  # after the command (backups only)
    data_bytes: int  # size of the tree backed up or restored
    error: str | None


@dataclass(frozen=True)
class SuiteConfig:
    rounds: int
    tools: Sequence[str]
    modes: Sequence[str]
    seed: int
    timeout: float


def _servers(tools: Toolset, names: Sequence[str], workdir: Path,
             skipped: dict[str, str]) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    wanted: list[tuple[str, type[Server]]] = []
    if "cairn" in names and unavailable(tools, "cairn", "http") is None:
        wanted.append(("cairn", CairnServer))
    if "restic" in names and unavailable(tools, "restic", "http") is None:
        wanted.append(("restic", RestServer))
    for tool, cls in wanted:
        server = cls(tools, workdir / f"{tool}-server", workdir / f"{tool}-server.log")
        try:
            server.start()
            servers[tool] = server
        except ToolError as exc:
            logger.error("%s server: %s", tool, exc)
            skipped[f"{tool}-http"] = f"server did not start: {exc}"
    return servers


class _Round:
    def __init__(self, number: int, config: SuiteConfig, tools: Toolset, workdir: Path,
                 record: Callable[[Sample], None], skipped: dict[str, str]):
        self.number, self.config, self.tools, self.workdir = number, config, tools, workdir
        self.record, self.skipped = record, skipped
        self.failed: dict[str, str] = {}

    def runners(self, case: str, modes: Sequence[str],
                servers: dict[str, Server]) -> list[Runner]:
        runners = []
        for mode in modes:
            turn = (self.number - 1) % len(self.config.tools)
            for tool in [*self.config.tools[turn:], *self.config.tools[:turn]]:
                if unavailable(self.tools, tool, mode) is not None:
                    continue
                server = servers.get(tool) if mode == "http" else None
                if mode == "http" and server is None:
                    continue
                runner = RUNNERS[tool](self.tools, mode, case, self.workdir, server)
                runner.timeout = self.config.timeout
                runners.append(runner)
        return runners

    def _key(self, runner: Runner) -> str:
        return f"{runner.name}-{runner.case}"

    def step(self, runner: Runner, phase: str, data_bytes: int, reads: Path,
             action: Callable[[], RunResult], check: Callable[[], str | None] | None = None,
             ) -> None:
        key = self._key(runner)
        if key in self.failed:
            return
        for folder in (reads, runner.dir / "cache", runner.home):  # untimed: see the top
            if folder.is_dir():
                read_all(folder)
        rss = runner.server.rss if runner.server is not None else None
        if rss is not None:
            rss.reset()
        result = action()
        server_rss = rss.read() if rss is not None else None
        os.sync()
        error = result.error or (check() if check is not None else None)
        repo = runner.repo_size() if phase != "restore" and error is None else None
        if error is not None:
            self.failed[key] = error
            logger.error("round %d, %s %s %s: %s", self.number, runner.name, runner.case,
                         phase, error)
        else:
            logger.info("round %d, %-12s %-5s %-9s %7.2f s  %6.0f MiB RSS", self.number,
                        runner.name, runner.case, phase, result.wall, result.max_rss / 2**20)
        self.record(Sample(
            round=self.number, case=runner.case, tool=runner.tool, mode=runner.mode,
            phase=phase, wall=result.wall if error is None else None, user=result.user,
            sys=result.sys, rss=result.max_rss if error is None else None,
            server_rss=server_rss if error is None else None, repo_bytes=repo,
            data_bytes=data_bytes, error=error))

    def init(self, runners: list[Runner]) -> None:
        for runner in runners:
            result = runner.init()
            if result.error:
                self.failed[self._key(runner)] = f"init: {result.error}"
                logger.error("%s init: %s", runner.name, result.error)
                self.record(Sample(
                    round=self.number, case=runner.case, tool=runner.tool, mode=runner.mode,
                    phase="init", wall=None, user=None, sys=None, rss=None, server_rss=None,
                    repo_bytes=None, data_bytes=0, error=f"init: {result.error}"))

    def restore(self, runner: Runner, source: Path, data_bytes: int) -> None:
        target = self.workdir / "restore" / runner.name
        cleanup(target)
        expected = summarize(source)

        def check() -> str | None:
            got = summarize(target / source.relative_to(source.anchor))
            if got != expected:
                return (f"restore differs: {got.files} files, {got.bytes} bytes, "
                        f"{got.symlinks} symlinks; expected {expected.files}, "
                        f"{expected.bytes}, {expected.symlinks}")
            return None

        self.step(runner, "restore", data_bytes, runner.repo_dir(),
                  lambda: runner.restore(target), check)
        # Not deleted yet: see run_suite.


@dataclass(frozen=True)
class Outcome:
    skipped: dict[str, str]  # "tool-mode" -> why it did not run
    mutation: Mutation | None  # what the day of work did


def run_suite(config: SuiteConfig, tools: Toolset, home: Dataset, small: Dataset | None,
              workdir: Path, record: Callable[[Sample], None]) -> Outcome:
    """Runs every round; calls `record` for each sample as soon as it is measured."""
    skipped: dict[str, str] = {}
    day: Mutation | None = None
    for tool in config.tools:
        for mode in config.modes:
            reason = unavailable(tools, tool, mode)
            if reason is not None:
                skipped[f"{tool}-{mode}"] = reason
    for number in range(1, config.rounds + 1):
        round_dir = workdir / f"round-{number}"
        cleanup(round_dir)
        round_dir.mkdir(parents=True)
        started = time.monotonic()
        servers = (_servers(tools, config.tools, round_dir, skipped)
                   if "http" in config.modes else {})
        rnd = _Round(number, config, tools, round_dir, record, skipped)
        try:
            runners = rnd.runners("home", config.modes, servers)
            rnd.init(runners)
            for phase in ("initial", "unchanged"):
                for runner in runners:
                    rnd.step(runner, phase, home.bytes, home.root,
                             partial(runner.backup, home.root))
            day = mutation.apply(home, config.seed)
            try:
                edited = summarize(home.root).bytes
                for runner in runners:
                    rnd.step(runner, "edited", edited, home.root,
                             partial(runner.backup, home.root))
                for runner in runners:
                    rnd.restore(runner, home.root, edited)
            finally:
                mutation.revert(home.root)
                # The restored trees go only after every tool's restore, then a sync: ext4
                # without a journal (this machine's) skips inodes freed in the last minute
                # when it creates files, so a restore that came right after the previous one's
                # 30,000 files were deleted spent ~20 s more in the kernel.
                cleanup(round_dir / "restore")
                os.sync()
            if small is not None:
                local = rnd.runners("small", [m for m in config.modes if m == "local"], {})
                rnd.init(local)
                for phase in SMALL_PHASES:
                    for runner in local:
                        rnd.step(runner, phase, small.bytes, small.root,
                                 partial(runner.backup, small.root))
        finally:
            for server in servers.values():
                server.stop()
            cleanup(round_dir)
            os.sync()
        logger.info("round %d done in %.0f s", number, time.monotonic() - started)
    return Outcome(skipped=skipped, mutation=day)


def sample_dicts(samples: Sequence[Sample]) -> list[dict[str, object]]:
    return [asdict(s) for s in samples]

