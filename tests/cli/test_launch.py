"""The entry point's head start: Argon2id of a folder vault's first passphrase slot begins
while the program loads, and `Vault.open` takes that result (or derives as usual)."""

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_gui.cli.launch import start_unlock
from client_gui.engine.vault import Vault
from shared.crypto import kdf
from shared.crypto.kdf import new_params
from shared.crypto.keys import RECOVERY_SIZE, format_recovery_key
from shared.storage.local import LocalStore

PASS = "correct horse battery staple"


@pytest.fixture(autouse=True)
def no_head_start_left() -> Iterator[None]:
    kdf._ahead.clear()
    yield
    kdf._ahead.clear()


@pytest.fixture
def vault_dir(tmp_path: Path) -> Path:
    async def make() -> None:
        store = await LocalStore.create(tmp_path / "vault", fsync=False)
        vault, _ = await Vault.create(store, PASS, kdf=new_params(1, 8 << 20),
                                      recovery_key=True)
        await vault.add_passphrase("a second one", kdf=new_params(1, 8 << 20))

    asyncio.run(make())
    return tmp_path / "vault"


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in ("CAIRN_PASSPHRASE", "CAIRN_PASSPHRASE_FILE", "CAIRN_VAULT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_the_first_passphrase_slot_is_derived_ahead_and_taken(
        vault_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, CAIRN_PASSPHRASE=PASS)
    assert start_unlock(["--vault", str(vault_dir), "backup", "/x"])
    assert len(kdf._ahead) == 1
    asyncio.run(Vault.open(LocalStore(vault_dir), PASS))
    assert kdf._ahead == {}  # Vault.open took it


@pytest.mark.parametrize("argv", [["--vault=VAULT", "snapshots"],
                                  ["snapshots", "--vault", "VAULT"]])
def test_the_vault_option_is_found_anywhere(vault_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                            argv: list[str]) -> None:
    _env(monkeypatch, CAIRN_PASSPHRASE=PASS)
    argv = [a.replace("VAULT", str(vault_dir)) for a in argv]
    assert start_unlock(argv)


def test_cairn_vault_from_the_environment(vault_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, CAIRN_PASSPHRASE=PASS, CAIRN_VAULT=str(vault_dir))
    assert start_unlock(["snapshots"])


def test_a_wrong_passphrase_head_start_is_harmless(vault_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, CAIRN_PASSPHRASE="not it")
    assert start_unlock(["--vault", str(vault_dir), "snapshots"])
    asyncio.run(Vault.open(LocalStore(vault_dir), PASS))  # derives PASS itself
    assert len(kdf._ahead) == 1  # the unused guess stays unused


@pytest.mark.parametrize("case", ["passphrase file option", "passphrase file env",
                                  "no passphrase", "server vault", "recovery key", "no vault",
                                  "not a vault", "damaged slots", "a FIFO among the slots"])
def test_no_head_start_when_it_cannot_be_known(vault_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    argv = ["--vault", str(vault_dir), "snapshots"]
    env = {"CAIRN_PASSPHRASE": PASS}
    if case == "passphrase file option":
        argv += ["--passphrase-file", str(tmp_path / "pw")]
    elif case == "passphrase file env":
        env["CAIRN_PASSPHRASE_FILE"] = str(tmp_path / "pw")
    elif case == "no passphrase":
        env = {}
    elif case == "server vault":
        argv = ["--vault", "https://backup.example:8443/laptop", "snapshots"]
    elif case == "recovery key":
        env["CAIRN_PASSPHRASE"] = format_recovery_key(bytes(RECOVERY_SIZE))
    elif case == "no vault":
        argv = ["snapshots"]
    elif case == "not a vault":
        argv = ["--vault", str(tmp_path / "nothing"), "snapshots"]
    elif case == "damaged slots":
        for slot in (vault_dir / "keys").iterdir():
            slot.write_bytes(b"\x00" * 10)
    else:  # opening it for reading would wait for a writer forever
        for slot in (vault_dir / "keys").iterdir():
            slot.unlink()
        os.mkfifo(vault_dir / "keys" / ("0" * 64))
    _env(monkeypatch, **env)
    assert not start_unlock(argv)
    assert kdf._ahead == {}
