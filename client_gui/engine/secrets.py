"""Where passphrases live on the client: the SecretStore protocol, the OS keyring, memory.

Secrets never go to files, logs or argv. The keyring is used behind a lock (unlock prompts may
block) and a missing keyring backend is not an error: callers fall back to asking.
"""

import logging
import threading
from types import ModuleType
from typing import Protocol

logger = logging.getLogger(__name__)
SERVICE = "cairn"


class SecretStore(Protocol):
    def get(self, account: str) -> str | None: ...
    def set(self, account: str, secret: str) -> bool:
        """Store; False if no backend could take it."""
        ...
    def delete(self, account: str) -> None: ...


def vault_account(vault_id: bytes) -> str:
    return f"vault:{vault_id.hex()}"


def _keyring() -> ModuleType:
    """The keyring package, imported when first needed: it takes ~40 ms (a fifth of the start
    of a scripted backup whose passphrase comes from the environment)."""
    import keyring
    import keyring.errors

    return keyring


class KeyringSecretStore:
    _lock = threading.Lock()

    def get(self, account: str) -> str | None:
        keyring = _keyring()
        with self._lock:
            try:
                value: str | None = keyring.get_password(SERVICE, account)
                return value
            except keyring.errors.KeyringError as exc:
                logger.debug("keyring unavailable: %s", type(exc).__name__)
                return None

    def set(self, account: str, secret: str) -> bool:
        keyring = _keyring()
        with self._lock:
            try:
                keyring.set_password(SERVICE, account, secret)
                return True
            except keyring.errors.KeyringError as exc:
                logger.debug("keyring unavailable: %s", type(exc).__name__)
                return False

    def delete(self, account: str) -> None:
        keyring = _keyring()
        with self._lock:
            try:
                keyring.delete_password(SERVICE, account)
            except keyring.errors.KeyringError:
                pass


class MemorySecretStore:
    """For tests and for a session without a keyring: forgotten when the process ends."""

    def __init__(self) -> None:
        self._secrets: dict[str, str] = {}

    def get(self, account: str) -> str | None:
        return self._secrets.get(account)

    def set(self, account: str, secret: str) -> bool:
        self._secrets[account] = secret
        return True

    def delete(self, account: str) -> None:
        self._secrets.pop(account, None)
