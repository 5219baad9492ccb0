"""End-to-end helpers: the real `cairn` CLI in subprocesses (run to completion, or started in
the background to race or to be killed), seeded source trees, byte-exact tree comparison and
a look at the vault folder (packs, snapshots, temp files) as another process sees it.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shared.hashing import object_id
from tests.conftest import REPO, CliResult

PASS = "e2e correct horse"
PACK_SIZE = 16 << 20  # `cairn init`'s default --pack-size
POLL = 0.01  # seconds between looks at the vault folder while waiting for a process

Digest = dict[str, tuple[str, int, bytes]]


# ---- running the CLI ------------------------------------------------------------------------


@dataclass
class Job:
    """A `cairn` process started in the background; output goes to files, never to pipes."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self) -> CliResult:
        assert self.proc.returncode is not None
        return CliResult(self.proc.returncode, self.out.read_text(), self.err.read_text())

    def wait(self, timeout: float) -> CliResult:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"cairn did not finish within {timeout} s: {self.err.read_text()[-2000:]}"
            ) from None
        return self.result()

    def kill(self) -> None:
        """SIGKILL, like a power cut for this process; then reap it."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@dataclass
class Cli:
    """`cairn` against one vault folder, with the passphrase in the environment."""

    vault: Path
    logs: Path
    jobs: list[Job] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CAIRN_VAULT": str(self.vault), "CAIRN_PASSPHRASE": PASS}

    def run(self, *args: str, timeout: float = 120) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "client_gui.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, timeout: float = 120) -> CliResult:
        """Run and insist on exit code 0."""
        res = self.run(*args, timeout=timeout)
        assert res.code == 0, (args, res.code, res.stdout[-3000:], res.stderr[-3000:])
        return res

    def start(self, *args: str) -> Job:
        n = len(self.jobs)
        self.logs.mkdir(parents=True, exist_ok=True)
        out, err = self.logs / f"job{n}.out", self.logs / f"job{n}.err"
        with out.open("wb") as fo, err.open("wb") as fe:
            proc = subprocess.Popen(
                [sys.executable, "-m", "client_gui.cli.main", *args],
                env=self.env,
                stdout=fo,
                stderr=fe,
                cwd=REPO,
            )
        job = Job(proc, out, err, time.monotonic())
        self.jobs.append(job)
        return job

    def init(self) -> None:
        self.ok("init", "--no-recovery-key")

    def backup(
        self, *paths: Path | str, extra: tuple[str, ...] = (), timeout: float = 300
    ) -> dict[str, Any]:
        """A backup that must succeed; returns its JSON summary."""
        res = self.ok("--json", "backup", *extra, *map(str, paths), timeout=timeout)
        return summary(res.stdout)

    def snapshots(self) -> list[dict[str, Any]]:
        snaps: list[dict[str, Any]] = json.loads(self.ok("--json", "snapshots").stdout)
        return snaps

    def restore(self, snapshot: str, target: Path, *paths: str, timeout: float = 300) -> CliResult:
        extra = [a for p in paths for a in ("--path", p)]
        return self.ok("restore", snapshot, "--target", str(target), *extra, timeout=timeout)

    def check_clean(self, *, quick: bool = True) -> None:
        """`cairn check` (unless not `quick`) and `cairn check --read-data` pass (warnings
        allowed)."""
        if quick:
            self.ok("check")
        self.ok("check", "--read-data", timeout=300)

    def stop_all(self) -> None:
        for job in self.jobs:
            if job.running:
                job.kill()


@pytest.fixture
def make_cli(tmp_path: Path) -> Iterator[Callable[[str], Cli]]:
    """Cli objects for vaults under tmp_path; processes still running at the end are killed."""
    made: list[Cli] = []

    def make(name: str = "vault") -> Cli:
        cli = Cli(tmp_path / name, tmp_path / f"{name}-jobs")
        made.append(cli)
        return cli

    try:
        yield make
    finally:
        for cli in made:
            cli.stop_all()


def summary(stdout: str) -> dict[str, Any]:
    """The final {"type": "summary"} line of `cairn --json backup|restore`."""
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines and lines[-1].get("type") == "summary", stdout[-2000:]
    result: dict[str, Any] = lines[-1]
    return result


# ---- source trees -----------------------------------------------------------------------------


def make_source(
    root: Path, total: int, seed: int, *, max_file: int = 12 << 20, folders: int = 7
) -> Path:
    """About `total` bytes of files under `root`: half random, half hex text (compresses
    about 2:1, still unique), sizes from tiny to `max_file`, spread over nested folders."""
    rng = random.Random(seed)
    done = i = 0
    sizes = (4 << 10, 256 << 10, 2 << 20, max_file)
    while done < total:
        folder = root / f"d{i % folders:02d}" / f"s{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        top = min(sizes[rng.randrange(len(sizes))], max_file)
        size = min(rng.randint(1, top), max(total - done, 1))
        if rng.random() < 0.5:
            data = rng.randbytes(size)
        else:
            data = rng.randbytes(size // 2 + 1).hex().encode()[:size]
        (folder / f"f{i:05d}.bin").write_bytes(data)
        done += size
        i += 1
    (root / "empty").mkdir(exist_ok=True)
    (root / "empty-file").write_bytes(b"")
    return root


def make_small_files(root: Path, files: int, folders: int, seed: int) -> Path:
    """`files` random files of 1-4 KiB in `folders` folders (two levels deep)."""
    rng = random.Random(seed)
    per = -(-files // folders)
    for f in range(folders):
        folder = root / f"g{f // 100:02d}" / f"dir{f:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(min(per, files - f * per)):
            (folder / f"file{j:03d}.dat").write_bytes(rng.randbytes(rng.randint(1024, 4096)))
    return root


def digest(root: Path) -> Digest:
    """Relative path -> (type, size, BLAKE3 of content) for everything below root."""
    out: Digest = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", 0, os.fsencode(os.readlink(p)))
            elif p.is_file():
                data = p.read_bytes()
                out[rel] = ("file", len(data), object_id(data).raw)
            else:
                out[rel] = ("dir", 0, b"")
    return out


def restored(target: Path, src: Path) -> Path:
    """Where `cairn restore --target target` puts the backed-up folder `src`."""
    return target / str(src.absolute()).lstrip("/")


def assert_same_tree(got: Path, want: Path) -> None:
    a, b = digest(got), digest(want)
    missing = sorted(set(b) - set(a))[:5]
    extra = sorted(set(a) - set(b))[:5]
    differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])[:5]
    assert not (missing or extra or differ), (
        f"restored tree differs: missing {missing}, extra {extra}, different {differ}"
    )


# ---- the vault folder -------------------------------------------------------------------------


def pack_sizes(vault: Path) -> dict[str, int]:
    """Every pack in the vault folder -> its size (what a concurrent reader would list)."""
    out: dict[str, int] = {}
    try:
        shards = list(os.scandir(vault / "packs"))
    except FileNotFoundError:
        return out
    for shard in shards:
        if not shard.is_dir():
            continue
        try:
            with os.scandir(shard.path) as entries:
                for e in entries:
                    try:
                        out[e.name] = e.stat().st_size
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            continue
    return out


def object_names(vault: Path, kind: str) -> set[str]:
    try:
        return {e.name for e in os.scandir(vault / kind)}
    except FileNotFoundError:
        return set()


def wait_for(predicate: Callable[[], bool], job: Job, timeout: float) -> bool:
    """Poll until `predicate()` holds (True) or `job` exits first (False); bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if not job.running:
            return predicate()
        time.sleep(POLL)
    job.kill()
    raise AssertionError(f"nothing happened within {timeout} s: {job.err.read_text()[-2000:]}")
