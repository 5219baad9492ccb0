"""Which cairn-servers this computer signed in to ("destinations"), and how it trusts them.

One small JSON file, `destinations.json`, in the user's config folder ($CAIRN_CONFIG_DIR, else
platformdirs' user_config_path("cairn")), written atomically with mode 0600. Per server base
URL it holds the user, the device name and id the server gave, the token's scopes, how the TLS
certificate is trusted (a pinned SHA-256 fingerprint and/or a CA bundle path) and when it was
added. It never holds a token or a password: the device token lives in the OS keyring under
`token_account(base_url)`.

Base URLs are always the form `parse_vault_url` gives, so the CLI finds the entry and the token
of `--vault https://host:port/name` by the same key `cairn destination add` stored them under.
"""

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keyring
import keyring.backends.fail
import keyring.errors
import platformdirs

from client_gui.engine.remote import parse_vault_url
from client_gui.engine.tls import TlsPolicy, normalise_fingerprint
from shared.errors import UsageError
from shared.protocol.models import Scope, parse_scopes, validate_device_id, validate_user_name

logger = logging.getLogger(__name__)

FILE_NAME = "destinations.json"
FORMAT_VERSION = 1


def config_dir() -> Path:
    """The client's config folder: $CAIRN_CONFIG_DIR, else the platform's user config folder."""
    env = os.environ.get("CAIRN_CONFIG_DIR")
    return Path(env) if env else platformdirs.user_config_path("cairn")


def token_account(base_url: str) -> str:
    """The keyring account of the device token for the server at `base_url`."""
    return f"token:{base_url}"


def server_url(text: str) -> str:
    """The base URL (`scheme://host:port`) of a server URL given with or without a vault name
    (`https://host:port`, `https://host:port/`, `https://host:port/NAME`); UsageError on
    anything else, including plain http to a host that is not this computer."""
    stripped = text.strip()
    scheme, sep, rest = stripped.partition("://")
    if sep and "/" not in rest.rstrip("/"):
        # No vault name: borrow one so parse_vault_url checks and normalises the server part.
        base, _ = parse_vault_url(f"{stripped.rstrip('/')}/x")
        return base
    base, _ = parse_vault_url(stripped)
    return base


def keyring_available() -> bool:
    """False when the OS keyring has no usable backend at all (tokens cannot be stored)."""
    try:
        backend = keyring.get_keyring()
    except (keyring.errors.KeyringError, RuntimeError, ImportError) as exc:
        logger.debug("no keyring backend: %s", exc)
        return False
    return not isinstance(backend, keyring.backends.fail.Keyring)


@dataclass(frozen=True, slots=True)
class Destination:
    """One signed-in server. `fingerprint` pins the certificate (no CA check); `ca_file`
    trusts the CAs in that bundle; neither means the system CAs."""

    base_url: str
    user: str
    device: str
    device_id: str
    scopes: tuple[Scope, ...]
    fingerprint: str | None = None
    ca_file: Path | None = None
    added_at: int = 0  # Unix seconds

    @property
    def tls(self) -> TlsPolicy:
        return TlsPolicy(ca_file=self.ca_file, fingerprint=self.fingerprint)

    @property
    def can_delete(self) -> bool:
        return Scope.MAINTAIN in self.scopes

    def to_json(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "user": self.user, "device": self.device,
                "device_id": self.device_id, "scopes": [s.value for s in self.scopes],
                "fingerprint": self.fingerprint,
                "ca_file": None if self.ca_file is None else str(self.ca_file),
                "added_at": self.added_at}

    @classmethod
    def from_json(cls, body: object) -> "Destination":
        """Validates everything; UsageError on a malformed entry."""
        if not isinstance(body, dict):
            raise UsageError("a destination entry is not an object")
        base_url, device = body.get("base_url"), body.get("device")
        fingerprint, ca_file = body.get("fingerprint"), body.get("ca_file")
        added_at = body.get("added_at", 0)
        if not isinstance(base_url, str) or server_url(base_url) != base_url:
            raise UsageError(f"bad server URL {str(base_url)[:80]!r}")
        if not isinstance(device, str) or not device:
            raise UsageError("bad device name")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise UsageError("bad fingerprint")
        if ca_file is not None and not isinstance(ca_file, str):
            raise UsageError("bad CA file")
        if not isinstance(added_at, int):
            raise UsageError("bad added_at")
        return cls(base_url, validate_user_name(body.get("user")), device,
                   validate_device_id(body.get("device_id")), parse_scopes(body.get("scopes")),
                   None if fingerprint is None else normalise_fingerprint(fingerprint),
                   None if ca_file is None else Path(ca_file), added_at)


class DestinationBook:
    """The destinations file. Reads are cheap and uncached; every change rewrites the whole
    file atomically (temp file + fsync + rename, mode 0600), so a reader never sees half of
    it. Two concurrent changes race (the last rename wins): changes are rare, manual acts."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder if folder is not None else config_dir()

    @property
    def path(self) -> Path:
        return self.folder / FILE_NAME

    def load(self) -> dict[str, Destination]:
        """Every destination by base URL ({} if there is no file yet)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UsageError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            body = json.loads(text)
            if not isinstance(body, dict) or not isinstance(body.get("destinations"), list):
                raise UsageError("no destinations list")
            if body.get("version") != FORMAT_VERSION:
                raise UsageError(f"unknown version {body.get('version')!r}")
            found = [Destination.from_json(d) for d in body["destinations"]]
        except (ValueError, UsageError) as exc:
            raise UsageError(f"{self.path} is damaged ({exc}): fix or delete it and run "
                             "`cairn destination add` again") from exc
        return {d.base_url: d for d in found}

    def get(self, base_url: str) -> Destination | None:
        return self.load().get(base_url)

    def save(self, dest: Destination) -> None:
        """Add `dest`, or replace the entry for the same server."""
        entries = self.load()
        entries[dest.base_url] = dest
        self._write(entries)

    def remove(self, base_url: str) -> bool:
        """Forget a server; False if there was no entry for it."""
        entries = self.load()
        if entries.pop(base_url, None) is None:
            return False
        self._write(entries)
        return True

    def _write(self, entries: dict[str, Destination]) -> None:
        body = {"version": FORMAT_VERSION,
                "destinations": [entries[k].to_json() for k in sorted(entries)]}
        data = (json.dumps(body, indent=2) + "\n").encode()
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".destinations.", suffix=".tmp")
        except OSError as exc:
            raise UsageError(f"cannot write {self.path}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as f:  # mkstemp creates it with mode 0600
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise UsageError(f"cannot write {self.path}: {exc.strerror}") from exc
        logger.info("saved %d destination(s) to %s", len(entries), self.path)


def new_destination(base_url: str, user: str, device: str, device_id: str,
                    scopes: tuple[Scope, ...], tls: TlsPolicy) -> Destination:
    """A Destination for a fresh sign-in, stamped with the current time."""
    return Destination(base_url, user, device, device_id, scopes, tls.fingerprint,
                       None if tls.ca_file is None else tls.ca_file.absolute(),
                       int(time.time()))
