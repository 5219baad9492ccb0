"""One runner per tool and mode behind one interface, and the two servers for the HTTP mode.

Settings are each tool's defaults except where the comparison needs them equal: restic with
its default compression (zstd "auto"), Borg with `--compression zstd,3` and `repokey-blake2`,
Cairn with its defaults. Passphrases go through environment variables. Every runner keeps its
own cache folder for the whole round, as a real user's machine would.

Borg has no HTTP mode (`borg serve` runs over SSH), so it is measured on local repositories only.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

from bench import measure
from bench.measure import PeakRss, RunResult
from bench.tools import ToolError, Toolset

logger = logging.getLogger(__name__)

PASSPHRASE = "bench-passphrase-not-secret"
SERVER_USER, SERVER_PASSWORD = "bench", "bench-password-not-secret"
TOOLS = ("cairn", "restic", "borg")
MODES = ("local", "http")


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CAIRN_", "RESTIC_", "BORG_", "PYTHON"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"),
               XDG_CONFIG_HOME=str(home / ".config"), LC_ALL="C.UTF-8")
    return env


# --- servers ---------------------------------------------------------------------------------


class Server(ABC):
    """A server on 127.0.0.1 and a free port, for one round; `rss` follows its peak RSS."""

    def __init__(self, tools: Toolset, data_dir: Path, log: Path):
        self.tools = tools
        self.data_dir = data_dir
        self.log = log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss: PeakRss | None = None

    @abstractmethod
    def _command(self) -> list[str]: ...

    @abstractmethod
    def _prepare(self) -> None:
        """Creates accounts and settings in the (new) data folder, before `serve`."""

    def start(self) -> None:
        self.port = measure.free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self._command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=_base_env(self.data_dir))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ToolError(f"{type(self).__name__} exited at start: "
                                f"{self.log.read_text(errors='replace').strip()[-200:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                self.rss = PeakRss(self.proc.pid)
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ToolError(f"{type(self).__name__} did not listen within 30 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class CairnServer(Server):
    def __init__(self, tools: Toolset, data_dir: Path, log: Path):
        super().__init__(tools, data_dir, log)
        assert tools.cairn_server is not None
        self.binary = tools.cairn_server

    def _prepare(self) -> None:
        data = str(self.data_dir)
        env = _base_env(self.data_dir)
        for cmd in ([str(self.binary), "init", "--data", data, "--listen",
                     f"127.0.0.1:{self.port}"],
                    [str(self.binary), "user", "add", SERVER_USER, "--data", data]):
            result = measure.run(cmd, env={**env, "CAIRN_PASSWORD": SERVER_PASSWORD},
                                 log=self.log, timeout=120)
            if result.error:
                raise ToolError(f"cairn-server {cmd[1]}: {result.error}")

    def _command(self) -> list[str]:
        return [str(self.binary), "serve", "--data", str(self.data_dir),
                "--listen", f"127.0.0.1:{self.port}"]

    def vault_dir(self, name: str) -> Path:
        found = sorted(self.data_dir.glob(f"vaults/*/{name}"))
        return found[0] if found else self.data_dir


def _bcrypt(password: str) -> str | None:
    """A bcrypt hash from the C library's crypt(3), or None where Python has no crypt module."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # deprecated in 3.11, gone in 3.13
        hashed: str | None = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=32))
    except (ImportError, AttributeError, ValueError):
        return None
    return hashed if hashed and hashed.startswith("$2") else None


class RestServer(Server):
    """restic's REST server, with a bcrypt .htpasswd (cost 5, like `htpasswd -B`)."""

    def __init__(self, tools: Toolset, data_dir: Path, log: Path):
        super().__init__(tools, data_dir, log)
        assert tools.rest_server is not None
        self.binary = tools.rest_server
        self.auth = True

    def _prepare(self) -> None:
        hashed = _bcrypt(SERVER_PASSWORD)
        if hashed is None:
            self.auth = False
            logger.warning("no bcrypt available: the REST server runs with --no-auth")
            return
        (self.data_dir / ".htpasswd").write_text(f"{SERVER_USER}:{hashed}\n")

    def _command(self) -> list[str]:
        cmd = [str(self.binary), "--path", str(self.data_dir),
               "--listen", f"127.0.0.1:{self.port}"]
        return cmd if self.auth else [*cmd, "--no-auth"]

    def url(self, name: str) -> str:
        credentials = f"{SERVER_USER}:{SERVER_PASSWORD}@" if self.auth else ""
        return f"rest:http://{credentials}127.0.0.1:{self.port}/{name}"


# --- runners ---------------------------------------------------------------------------------


class Runner(ABC):
    """One tool in one mode with one repository (`name` tells which) and its own cache."""

    tool = ""

    def __init__(self, tools: Toolset, mode: str, case: str, workdir: Path,
                 server: Server | None = None):
        self.tools, self.mode, self.case, self.server = tools, mode, case, server
        self.dir = workdir / f"{self.tool}-{mode}-{case}"
        self.log = self.dir / "commands.log"
        self.repo = self.dir / "repo"
        self.home = self.dir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.backups = 0
        self.timeout = 3600.0
        self.wrapper: list[str] = []  # prepended to commands (a profiler)

    @property
    def name(self) -> str:
        return f"{self.tool}-{self.mode}"

    def _run(self, cmd: list[str], env: Mapping[str, str], cwd: Path | None = None) -> RunResult:
        return measure.run([*self.wrapper, *cmd], env={**_base_env(self.home), **env},
                           log=self.log, cwd=cwd, timeout=self.timeout)

    @abstractmethod
    def init(self) -> RunResult: ...

    @abstractmethod
    def backup(self, source: Path) -> RunResult: ...

    @abstractmethod
    def restore(self, target: Path) -> RunResult: ...

    def repo_dir(self) -> Path:
        """The folder holding this runner's repository (on the server's side over HTTP)."""
        return self.repo

    def repo_size(self) -> int:
        return measure.dir_size(self.repo_dir())


class CairnRunner(Runner):
    tool = "cairn"

    def _cairn(self, *args: str) -> RunResult:
        assert self.tools.cairn is not None
        if self.mode == "http":
            assert isinstance(self.server, CairnServer)
            vault = f"http://127.0.0.1:{self.server.port}/{self.case}"
            extra = {"CAIRN_USER": SERVER_USER, "CAIRN_PASSWORD": SERVER_PASSWORD}
        else:
            vault, extra = str(self.repo), {}
        env = {"CAIRN_PASSPHRASE": PASSPHRASE, "CAIRN_CONFIG_DIR": str(self.home / "config"),
               "CAIRN_LOG_DIR": str(self.home / "logs"),
               "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring", **extra}
        cmd = [str(self.tools.cairn), "--vault", vault, "--cache-dir", str(self.dir / "cache"),
               "-q", *args]
        return self._run(cmd, env)

    def init(self) -> RunResult:
        return self._cairn("init", "--no-recovery-key")

    def backup(self, source: Path) -> RunResult:
        return self._cairn("backup", str(source))

    def restore(self, target: Path) -> RunResult:
        return self._cairn("restore", "latest", "--target", str(target))

    def repo_dir(self) -> Path:
        if isinstance(self.server, CairnServer):
            return self.server.vault_dir(self.case)
        return self.repo


class ResticRunner(Runner):
    tool = "restic"

    def _restic(self, *args: str) -> RunResult:
        assert self.tools.restic is not None
        server = self.server
        repo = server.url(self.case) if isinstance(server, RestServer) else str(self.repo)
        env = {"RESTIC_PASSWORD": PASSPHRASE, "RESTIC_REPOSITORY": repo,
               "RESTIC_CACHE_DIR": str(self.dir / "cache")}
        return self._run([str(self.tools.restic), *args], env)

    def init(self) -> RunResult:
        return self._restic("init", "-q")

    def backup(self, source: Path) -> RunResult:
        return self._restic("backup", "-q", str(source))

    def restore(self, target: Path) -> RunResult:
        return self._restic("restore", "latest", "--target", str(target), "-q")

    def repo_dir(self) -> Path:
        if isinstance(self.server, RestServer):
            return self.server.data_dir / self.case
        return self.repo


class BorgRunner(Runner):
    tool = "borg"

    def _borg(self, *args: str, cwd: Path | None = None) -> RunResult:
        assert self.tools.borg is not None
        env = {"BORG_PASSPHRASE": PASSPHRASE, "BORG_BASE_DIR": str(self.home),
               "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
        return self._run([str(self.tools.borg), *args], env, cwd=cwd)

    def init(self) -> RunResult:
        return self._borg("init", "--encryption", "repokey-blake2", str(self.repo))

    def backup(self, source: Path) -> RunResult:
        self.backups += 1
        return self._borg("create", "--compression", "zstd,3",
                          f"{self.repo}::backup-{self.backups}", str(source))

    def restore(self, target: Path) -> RunResult:
        target.mkdir(parents=True, exist_ok=True)
        return self._borg("extract", f"{self.repo}::backup-{self.backups}", cwd=target)


RUNNERS: dict[str, type[Runner]] = {"cairn": CairnRunner, "restic": ResticRunner,
                                    "borg": BorgRunner}


def unavailable(tools: Toolset, tool: str, mode: str) -> str | None:
    """Why `tool` cannot run in `mode` here, or None when it can."""
    if tool == "borg" and mode == "http":
        return "Borg has no HTTP mode (borg serve runs over SSH)"
    binary = {"cairn": tools.cairn, "restic": tools.restic, "borg": tools.borg}[tool]
    if binary is None:
        return tools.missing.get(tool, f"{tool} not installed")
    if mode == "http" and tool == "restic" and tools.rest_server is None:
        return f"rest-server {tools.missing.get('rest-server', 'not installed')}"
    return None


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
