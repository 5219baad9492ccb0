"""Fixtures for every test: an isolated environment (no real keyring, cache or log folders),
a vault factory with cheap key derivation, a small file-tree builder, and a CLI runner.
"""

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.certs import ServerCert
from tests.support.server import CairnServer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep tests away from the user's keyring, cache and logs."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("CAIRN_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("CAIRN_LOG_DIR", str(home / "log"))
    monkeypatch.setenv("CAIRN_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "xdg-cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "xdg-state"))
    for name in ("CAIRN_VAULT", "CAIRN_PASSPHRASE", "CAIRN_PASSPHRASE_FILE",
                 "CAIRN_NEW_PASSPHRASE", "CAIRN_USER", "CAIRN_PASSWORD", "CAIRN_CACERT"):
        monkeypatch.delenv(name, raising=False)
    yield


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cairn(tmp_path: Path) -> Callable[..., CliResult]:
    """Run the real `cairn` CLI in a subprocess: cairn("backup", path, env={...})."""

    def run(*args: str, env: Mapping[str, str] | None = None, input: str | None = None,
            timeout: float = 120) -> CliResult:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "client_gui.cli.launch", *args],
                              env=full_env, input=input, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def make_tree(root: Path, spec: Mapping[str, bytes | str | None]) -> Path:
    """Create files from {relative path: content}; None makes a folder; str is UTF-8 text."""
    for rel, content in spec.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


# ---- real cairn-server processes --------------------------------------------------------------

SERVER_USER = "tester"
SERVER_PASSWORD = "test server password"


@pytest.fixture
def cairn_servers(tmp_path: Path) -> Iterator[Callable[..., CairnServer]]:
    """Start real cairn-server processes on 127.0.0.1 for this test; all stop at teardown.

    `cairn_servers(tls=None, users={name: password}, **toml_options)` -> a started server;
    by default one user SERVER_USER / SERVER_PASSWORD."""
    started: list[CairnServer] = []

    def start(*, tls: ServerCert | None = None, users: Mapping[str, str] | None = None,
              **options: str) -> CairnServer:
        server = CairnServer(tmp_path / f"server{len(started)}", tls=tls).init(**options)
        started.append(server)
        for name, password in (users or {SERVER_USER: SERVER_PASSWORD}).items():
            server.add_user(name, password)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def session_cairn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CairnServer]:
    """One plain-HTTP cairn-server for the whole session (per xdist worker), with the user
    SERVER_USER / SERVER_PASSWORD. Tests share it: give each its own vault."""
    server = CairnServer(tmp_path_factory.mktemp("cairn-server")).init(fsync="false")
    server.add_user(SERVER_USER, SERVER_PASSWORD)
    server.start()
    yield server
    server.stop()
