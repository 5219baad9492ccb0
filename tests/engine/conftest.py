"""Engine fixtures: real vaults in tmp_path (cheap key derivation, no fsync), reopened the way
a later job would open them, optionally through a wrapping store (counting, failing ...).
"""

from collections.abc import Callable
from pathlib import Path

import pytest

from client_gui.engine.vault import Vault
from shared.crypto.kdf import new_params
from shared.format.pack import DEFAULT_PACK_SIZE
from shared.storage.base import ObjectStore
from shared.storage.local import LocalStore

PASSPHRASE = "correct horse"


class VaultFactory:
    """Makes LocalStore vaults under one folder and reopens them (fresh state, index loaded)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._count = 0

    async def create(self, *, pack_size: int = DEFAULT_PACK_SIZE) -> tuple[Vault, Path]:
        """A new, empty vault and the folder its store lives in."""
        self._count += 1
        root = self.base / f"vault-{self._count}"
        store = await LocalStore.create(root, fsync=False)
        vault, _ = await Vault.create(store, PASSPHRASE, kdf=new_params(1, 8 << 20),
                                      pack_size=pack_size, recovery_key=False)
        return vault, root

    async def open(self, root: Path,
                   wrap: Callable[[ObjectStore], ObjectStore] | None = None) -> Vault:
        """The vault at `root` opened anew, its store wrapped by `wrap`, its index loaded."""
        store: ObjectStore = LocalStore(root, fsync=False)
        if wrap is not None:
            store = wrap(store)
        vault = await Vault.open(store, PASSPHRASE)
        await vault.load_index()
        return vault


@pytest.fixture
def vault_factory(tmp_path: Path) -> VaultFactory:
    return VaultFactory(tmp_path / "vaults")
