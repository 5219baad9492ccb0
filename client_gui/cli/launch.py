"""`cairn`'s entry point: starts deriving a folder vault's key while the program loads.

Unlocking a passphrase slot costs one Argon2id derivation (~0.15-0.25 s), and loading the
command-line program costs about as much again; the derivation runs without the GIL, so the
two go side by side. This module imports almost nothing itself: it looks for the vault and
passphrase the command will use (only `--vault PATH`/$CAIRN_VAULT with $CAIRN_PASSPHRASE, and
no passphrase file, which would come first), reads the vault's key slots straight from its
folder, starts `kdf.derive_ahead` for the passphrase slot `Vault.open` tries first, then hands
over to client_gui.cli.main. Whatever goes wrong here is ignored: main does all the real
checks (the slots it reads are verified there, and only a derivation with exactly the same
passphrase and parameters is taken).
"""

import os
import stat
import sys
from collections.abc import Sequence


def _option(argv: Sequence[str], name: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


def start_unlock(argv: Sequence[str]) -> bool:
    """Start deriving the key of the vault `argv` names, if it can be known this early;
    True if a derivation was started."""
    if os.environ.get("CAIRN_PASSPHRASE_FILE") or _option(argv, "--passphrase-file"):
        return False
    passphrase = os.environ.get("CAIRN_PASSPHRASE")
    vault = _option(argv, "--vault") or os.environ.get("CAIRN_VAULT")
    if not passphrase or not vault or "://" in vault:
        return False
    try:
        return _start(vault, passphrase)
    except Exception:  # only a head start: main opens the vault (and reports) properly
        return False


def _start(vault: str, passphrase: str) -> bool:
    from shared.crypto.kdf import derive_ahead
    from shared.crypto.keys import (
        MAX_UNLOCK_MEM,
        MAX_UNLOCK_OPS,
        SlotType,
        decode_key_slot,
        parse_recovery_key,
    )
    from shared.hashing import object_id
    from shared.ids import ObjectKind

    if parse_recovery_key(passphrase) is not None:
        return False  # a recovery key opens its slot without Argon2id
    folder = os.path.join(vault, ObjectKind.KEY.value)
    slots = []
    for name in sorted(os.listdir(folder)):
        data = _read_regular(os.path.join(folder, name))
        if data is None or object_id(data).hex() != name:
            continue
        slot = decode_key_slot(data)
        if slot.slot_type == SlotType.PASSPHRASE and slot.kdf is not None:
            slots.append((slot.created_ns, name, slot.kdf))
    if not slots:
        return False
    _, _, kdf = min(slots)  # the order Vault.open tries them in
    if kdf.mem > MAX_UNLOCK_MEM or kdf.ops > MAX_UNLOCK_OPS:
        return False
    derive_ahead(passphrase, kdf)
    return True


def _read_regular(path: str) -> bytes | None:
    """The first MiB of `path` if it is a regular file; never waits on a FIFO put there."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def main() -> None:
    start_unlock(sys.argv[1:])
    from client_gui.cli.main import main as run

    run()


if __name__ == "__main__":
    main()
