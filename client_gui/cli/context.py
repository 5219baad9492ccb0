"""What every CLI command needs: the vault location, the passphrase, an opened vault.

Passphrase sources, in order: --passphrase-file, $CAIRN_PASSPHRASE_FILE, $CAIRN_PASSPHRASE,
the OS keyring, a prompt on a terminal. Never argv.
"""

import argparse
import getpass
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import platformdirs

from client_gui.cli.output import Output
from client_gui.engine.cache import CachingStore
from client_gui.engine.secrets import KeyringSecretStore, SecretStore, vault_account
from client_gui.engine.vault import Vault
from shared.errors import NotAVault, UsageError, WrongPassphrase
from shared.format.config import VaultConfig
from shared.storage.base import ObjectStore
from shared.storage.local import LocalStore


class Context:
    def __init__(self, args: argparse.Namespace, out: Output,
                 secrets: SecretStore | None = None) -> None:
        self.args = args
        self.out = out
        self.secrets = secrets or KeyringSecretStore()

    # ---- where ----------------------------------------------------------------------------

    @property
    def vault_spec(self) -> str:
        spec: str | None = self.args.vault or os.environ.get("CAIRN_VAULT")
        if not spec:
            raise UsageError("no vault given: use --vault PATH or set CAIRN_VAULT")
        return spec

    def local_root(self) -> Path | None:
        spec = self.vault_spec
        if spec.startswith(("http://", "https://")):
            return None
        return Path(spec.removeprefix("file://")).expanduser().absolute()

    def raw_store(self) -> ObjectStore:
        root = self.local_root()
        if root is None:
            raise UsageError(f"server vaults ({self.vault_spec}) need cairn-server support, "
                             "which this version does not have yet")
        return LocalStore(root)

    def cache_root(self) -> Path | None:
        if self.args.no_cache:
            return None
        env = os.environ.get("CAIRN_CACHE_DIR")
        if self.args.cache_dir:
            return Path(self.args.cache_dir)
        return Path(env) if env else platformdirs.user_cache_path("cairn")

    # ---- passphrases ----------------------------------------------------------------------

    def passphrase_from_sources(self) -> str | None:
        path = self.args.passphrase_file or os.environ.get("CAIRN_PASSPHRASE_FILE")
        if path:
            return read_secret_file(path, "passphrase file")
        env = os.environ.get("CAIRN_PASSPHRASE")
        if env:
            return env
        return None

    def passphrase_for(self, config: VaultConfig) -> str:
        found = self.passphrase_from_sources()
        if found is not None:
            return found
        stored = self.secrets.get(vault_account(config.vault_id))
        if stored:
            return stored
        if sys.stdin.isatty():
            return prompt("Passphrase (or recovery key): ")
        raise WrongPassphrase("no passphrase: set CAIRN_PASSPHRASE, use --passphrase-file, or "
                              "store it in the keyring with `cairn key remember`")

    def new_passphrase(self, what: str = "passphrase") -> str:
        """A passphrase for a new vault or key slot (prompted twice on a terminal)."""
        if getattr(self.args, "new_passphrase_file", None):
            return read_secret_file(self.args.new_passphrase_file, "new passphrase file")
        env = os.environ.get("CAIRN_NEW_PASSPHRASE")
        if env:
            return env
        if what == "passphrase":
            found = self.passphrase_from_sources()
            if found is not None:
                return found
        if not sys.stdin.isatty():
            raise UsageError(f"no new {what}: set CAIRN_NEW_PASSPHRASE or use "
                             "--new-passphrase-file")
        first = prompt(f"New {what}: ")
        if prompt(f"Repeat the new {what}: ") != first:
            raise UsageError("the passphrases do not match")
        if not first:
            raise UsageError("an empty passphrase is not allowed")
        return first

    # ---- opening --------------------------------------------------------------------------

    async def read_config(self) -> tuple[ObjectStore, VaultConfig]:
        """The vault's store and config (no passphrase needed); errors name the vault."""
        root = self.local_root()
        if root is not None and not root.is_dir():
            raise NotAVault(f"no vault at {root}: the folder does not exist "
                            "(create one with `cairn init`)")
        store = self.raw_store()
        try:
            config, _ = await Vault.read_config(store)
        except NotAVault as exc:
            raise NotAVault(f"{self.vault_spec} is {exc}") from exc
        return store, config

    @asynccontextmanager
    async def open_vault(self, *, load_index: bool = True) -> AsyncIterator[Vault]:
        store, config = await self.read_config()
        cache = self.cache_root()
        if cache is not None:
            store = CachingStore(store, cache / config.vault_id.hex())
        vault = await Vault.open(store, self.passphrase_for)
        try:
            if load_index:
                await vault.load_index()
            yield vault
        finally:
            await vault.close()


def read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc
    secret = text.rstrip("\r\n")
    if not secret:
        raise UsageError(f"{what} {path} is empty")
    return secret


def prompt(text: str) -> str:
    try:
        return getpass.getpass(text)
    except EOFError as exc:
        raise UsageError("no passphrase entered") from exc
