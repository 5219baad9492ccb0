"""A test-only keyring backend: one JSON file at $CAIRN_TEST_KEYRING, shared by every process of a
test (the CLI subprocesses and the test itself). Never shipped: it lives in tests/.

Select it with PYTHON_KEYRING_BACKEND=tests.support.file_keyring.FileKeyring (subprocesses run
from the repository root, so `tests` is importable). It is viable only when named that way and
when $CAIRN_TEST_KEYRING is set, so keyring's own backend discovery never picks it.
"""

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keyring.backend
import keyring.errors
from keyring.compat import properties

NAME = f"{__name__}.FileKeyring"
ENV = "CAIRN_TEST_KEYRING"


def _path() -> Path:
    value = os.environ.get(ENV)
    if not value:
        raise keyring.errors.NoKeyringError(f"${ENV} is not set")
    return Path(value)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _load(path: Path) -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads(path.read_text())
        return data
    except FileNotFoundError:
        return {}


def _store(path: Path, data: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_all() -> dict[str, str]:
    """Every entry, as "service/account" -> secret (for tests to look at)."""
    return _load(_path())


class FileKeyring(keyring.backend.KeyringBackend):
    @properties.classproperty
    def priority(cls) -> float:
        if os.environ.get("PYTHON_KEYRING_BACKEND") != NAME or not os.environ.get(ENV):
            raise RuntimeError("only used when named by PYTHON_KEYRING_BACKEND in tests")
        return 1

    def _update(self, change: Callable[[dict[str, str]], Any]) -> Any:
        path = _path()
        with _locked(path):
            data = _load(path)
            result = change(data)
            _store(path, data)
            return result

    def get_password(self, service: str, username: str) -> str | None:
        path = _path()
        with _locked(path):
            return _load(path).get(f"{service}/{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        self._update(lambda data: data.__setitem__(f"{service}/{username}", password))

    def delete_password(self, service: str, username: str) -> None:
        def remove(data: dict[str, str]) -> None:
            if data.pop(f"{service}/{username}", None) is None:
                raise keyring.errors.PasswordDeleteError("no such password")

        self._update(remove)
