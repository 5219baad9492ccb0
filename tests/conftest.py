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

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep tests away from the user's keyring, cache and logs."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setenv("CAIRN_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("CAIRN_LOG_DIR", str(home / "log"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "xdg-cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "xdg-state"))
    for name in ("CAIRN_VAULT", "CAIRN_PASSPHRASE", "CAIRN_PASSPHRASE_FILE",
                 "CAIRN_NEW_PASSPHRASE"):
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
        proc = subprocess.run([sys.executable, "-m", "client_gui.cli.main", *args],
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
