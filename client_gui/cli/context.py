"""What every CLI command needs: the vault location, the passphrase, an opened vault.

A vault is a folder (`--vault PATH`) or a vault on a cairn-server
(`--vault https://HOST:PORT/NAME`; plain http only to this computer). Both give the same
ObjectStore interface, so every command works the same on either.

Passphrase sources, in order: --passphrase-file, $CAIRN_PASSPHRASE_FILE, $CAIRN_PASSPHRASE,
the OS keyring, a prompt on a terminal. Never argv.

Server credentials, in order: $CAIRN_USER + $CAIRN_PASSWORD (the owner's own password: a
fresh sign-in with every scope, delete included), else the device token `cairn destination add`
stored in the OS keyring (renewed tokens are stored back). TLS trust: --cacert/$CAIRN_CACERT,
else what `cairn destination add` saved (a pinned fingerprint or a CA bundle), else the
system CAs.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import platformdirs

from client_gui.cli.output import Output
from client_gui.engine.cache import CachingStore
from client_gui.engine.secrets import KeyringSecretStore, SecretStore, vault_account
from client_gui.engine.vault import Vault, hostname
from shared.errors import (
    AuthError,
    NotAVault,
    PermissionDenied,
    RateLimited,
    UsageError,
    VaultExists,
    WrongPassphrase,
)
from shared.format.config import VaultConfig
from shared.protocol.models import Scope
from shared.storage.base import ObjectStore
from shared.storage.local import LocalStore
from shared.storage.wrappers import ForwardingStore, RetryingStore

if TYPE_CHECKING:  # the HTTP client (aiohttp, TLS, JWT) is imported only for server vaults:
    # a local vault's command starts ~0.2 s sooner and ~25 MiB smaller without it.
    from client_gui.engine.destinations import DestinationBook
    from client_gui.engine.remote import Credentials, RemoteServer
    from client_gui.engine.tls import TlsPolicy

# Retries of a transient server error span ~15-25 s (0.2 s doubling, at most 10 s apart):
# enough to ride through a server restart (systemd restarts it 5 s after a crash) or a Wi-Fi
# hand-over; a longer outage fails the run, and the next run resumes where it stopped.
REMOTE_ATTEMPTS = 8
REMOTE_MAX_DELAY = 10.0

# A password sign-in is the owner at the keyboard (or their script): every scope but admin.
PASSWORD_SCOPES = (Scope.BACKUP, Scope.RESTORE, Scope.MAINTAIN)


class _ClosesOnce(ForwardingStore):
    """Lets both the Vault and the Context close the store: only the first close goes through."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self._closed = False

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._inner.close()


class Context:
    def __init__(self, args: argparse.Namespace, out: Output,
                 secrets: SecretStore | None = None,
                 destinations: DestinationBook | None = None) -> None:
        self.args = args
        self.out = out
        self.secrets = secrets or KeyringSecretStore()
        self._destinations = destinations
        self._stores: list[ObjectStore] = []
        self._server: RemoteServer | None = None
        self._credentials: Credentials | None = None

    @property
    def destinations(self) -> DestinationBook:
        if self._destinations is None:
            from client_gui.engine.destinations import DestinationBook

            self._destinations = DestinationBook()
        return self._destinations

    async def close(self) -> None:
        """Close every store this context opened, and the server connection (which may have
        been used without a store); safe to call again."""
        stores, self._stores = self._stores, []
        for store in stores:
            await store.close()
        if self._server is not None:
            await self._server.close()  # idempotent: closing its store closed it already

    # ---- where ----------------------------------------------------------------------------

    @property
    def vault_spec(self) -> str:
        spec: str | None = self.args.vault or os.environ.get("CAIRN_VAULT")
        if not spec:
            raise UsageError("no vault given: use --vault PATH or set CAIRN_VAULT")
        return spec

    def local_root(self) -> Path | None:
        """The vault folder, or None for a vault on a server."""
        spec = self.vault_spec
        if is_remote(spec):
            return None
        return Path(spec.removeprefix("file://")).expanduser().absolute()

    def remote_target(self) -> tuple[str, str] | None:
        """(server base URL, vault name) for a vault on a server, else None."""
        spec = self.vault_spec
        if not is_remote(spec):
            return None
        from client_gui.engine.remote import parse_vault_url

        return parse_vault_url(spec)

    def raw_store(self) -> ObjectStore:
        """The vault's store, not yet touched: a LocalStore, or for a server vault an HttpStore
        behind a RetryingStore (transient errors are retried with back-off). Closed by close()."""
        target = self.remote_target()
        if target is None:
            root = self.local_root()
            assert root is not None
            return self._track(LocalStore(root))
        base_url, name = target
        return self._track(RetryingStore(self.server(base_url).store(name),
                                         attempts=REMOTE_ATTEMPTS, max_delay=REMOTE_MAX_DELAY))

    def _track(self, store: ObjectStore) -> ObjectStore:
        once = _ClosesOnce(store)
        self._stores.append(once)
        return once

    # ---- servers --------------------------------------------------------------------------

    def cacert_policy(self) -> TlsPolicy | None:
        """The TLS policy --cacert / $CAIRN_CACERT asks for, if any."""
        path = getattr(self.args, "cacert", None) or os.environ.get("CAIRN_CACERT")
        if not path:
            return None
        ca_file = Path(path).expanduser().absolute()
        if not ca_file.is_file():
            raise UsageError(f"CA bundle {ca_file} does not exist")
        from client_gui.engine.tls import TlsPolicy

        return TlsPolicy(ca_file=ca_file)

    def credentials(self, base_url: str) -> Credentials:
        """$CAIRN_USER + $CAIRN_PASSWORD, else the stored device token; UsageError if neither."""
        from client_gui.engine.destinations import token_account
        from client_gui.engine.remote import PasswordCredentials, TokenCredentials

        user, password = os.environ.get("CAIRN_USER"), os.environ.get("CAIRN_PASSWORD")
        if user and password:
            # A device of its own, apart from the one `destination add` signed in: re-signing
            # in one device narrows the scopes of that device's older tokens.
            device = f"{hostname() or 'cairn'} (CAIRN_USER)"
            return PasswordCredentials(user, password, device, PASSWORD_SCOPES)
        account = token_account(base_url)
        token = self.secrets.get(account)
        if token:
            def store_renewed(new_token: str) -> None:
                if not self.secrets.set(account, new_token):
                    self.out.info(f"note: the renewed token for {base_url} could not be stored "
                                  "in the OS keyring")

            return TokenCredentials(token, on_renewed=store_renewed)
        raise UsageError(f"not signed in to {base_url}: run `cairn destination add {base_url}` "
                         "or set CAIRN_USER and CAIRN_PASSWORD")

    def server(self, base_url: str) -> RemoteServer:
        """The RemoteServer for this run (one per process), with credentials and TLS trust."""
        from client_gui.engine.remote import RemoteServer
        from client_gui.engine.tls import TlsPolicy

        if self._server is None:
            dest = self.destinations.get(base_url)
            cacert = self.cacert_policy()
            if dest is not None and dest.tls.fingerprint:
                # A pinned certificate stays pinned: a CA bundle (say a global $CAIRN_CACERT)
                # must not widen what is trusted for this server.
                if cacert is not None:
                    self.out.info(f"note: {base_url} has a pinned certificate; "
                                  "--cacert/CAIRN_CACERT is not used for it")
                tls = dest.tls
            else:
                tls = cacert or (dest.tls if dest is not None else TlsPolicy())
            self._credentials = self.credentials(base_url)
            self._server = RemoteServer(base_url, self._credentials, tls=tls)
        return self._server

    async def require_delete(self, what: str) -> None:
        """For a server vault: PermissionDenied now, before the vault is opened, if the token
        cannot delete (append-only). The server enforces it anyway; this says it clearly."""
        target = self.remote_target()
        if target is None:
            return
        base_url = target[0]
        try:
            who = await self.server(base_url).whoami()
        except (AuthError, RateLimited) as exc:
            raise self._sign_in_error(exc, base_url) from exc
        if Scope.MAINTAIN not in who.scopes:
            raise PermissionDenied(
                f"the token of this device for {base_url} is append-only (scopes "
                f"{', '.join(who.scopes)}): {what} needs delete rights; sign in again with "
                f"`cairn destination add {base_url} --allow-delete`, or set CAIRN_USER and "
                "CAIRN_PASSWORD")

    async def check_remote_vault(self) -> bool:
        """First contact with a server vault: True if the vault exists, False if not.
        Raises the server's errors (cannot reach, wrong password, expired token, ...) one
        request early, without the back-off of the store's retries."""
        target = self.remote_target()
        assert target is not None
        base_url, name = target
        try:
            await self.server(base_url).vault_info(name)
        except NotAVault:
            return False
        except (AuthError, RateLimited) as exc:
            raise self._sign_in_error(exc, base_url) from exc
        return True

    def _sign_in_error(self, exc: AuthError, base_url: str) -> AuthError:
        """`exc` as a new error to raise from it (naming the user for a password sign-in)."""
        from client_gui.engine.remote import PasswordCredentials

        creds = self._credentials
        if isinstance(creds, PasswordCredentials):
            return sign_in_error(exc, base_url, creds.user)
        return type(exc)(str(exc))

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
        if root is None and not await self.check_remote_vault():
            raise NotAVault(f"no vault at {self.vault_spec}: the server has no vault of that "
                            "name for this user (create one with `cairn init`)")
        try:
            config, _ = await Vault.read_config(store)
        except NotAVault as exc:
            raise NotAVault(f"{self.vault_spec} is {exc}") from exc
        return store, config

    async def new_remote_vault(self) -> RemoteVaultCreator:
        """For `cairn init` on a server: checks that the vault does not exist with a config
        yet (VaultExists), before anything is created or a passphrase asked for."""
        store = self.raw_store()
        exists = await self.check_remote_vault()
        if exists:
            try:
                await Vault.read_config(store)
            except NotAVault:
                pass  # created on the server by an earlier init that stopped: use it
            else:
                raise VaultExists(f"a vault already exists at {self.vault_spec}")
        target = self.remote_target()
        assert target is not None
        return RemoteVaultCreator(self.server(target[0]), target[1], store, exists)

    @asynccontextmanager
    async def open_vault(self, *, load_index: bool = True,
                         cached_trees: bool = True) -> AsyncIterator[Vault]:
        """The opened vault. `cached_trees=False` reads every tree from the vault itself (for
        `check`, which must judge the vault's copy, not the local cache's)."""
        store, config = await self.read_config()
        cache = self.cache_root()
        if cache is not None:
            # On a server every read is a round trip: keep whole tree packs locally too.
            store = CachingStore(store, cache / config.vault_id.hex(),
                                 cache_tree_packs=cached_trees and self.local_root() is None)
        vault = await Vault.open(store, self.passphrase_for)  # the store: closed by close()
        try:
            if load_index:
                await vault.load_index()
            yield vault
        finally:
            await vault.close()


class RemoteVaultCreator:
    """The second step of `cairn init` on a server: create the vault there (if it is not
    there yet) and hand back its store."""

    def __init__(self, server: RemoteServer, name: str, store: ObjectStore,
                 exists: bool) -> None:
        self._server, self._name, self._store, self._exists = server, name, store, exists

    async def create(self) -> ObjectStore:
        if not self._exists:
            try:
                await self._server.create_vault(self._name)
            except VaultExists:
                pass  # another init got there first; Vault.create refuses a second config
        return self._store


def sign_in_error(exc: AuthError, base_url: str, user: str) -> AuthError:
    """A refused password sign-in, saying where and as whom (other AuthErrors, such as an
    untrusted certificate, already say what to do: a copy with the same message)."""
    if type(exc) not in (AuthError, RateLimited):
        return type(exc)(str(exc))
    return type(exc)(f"cannot sign in to {base_url} as {user}: {exc}")


def is_remote(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


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
