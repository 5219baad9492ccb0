"""The server's configuration: `DATA/server.toml`, read into a frozen ServerConfig.

A data folder holds everything a server needs (the embedded defaults, nothing to install):

    DATA/server.toml        this configuration
    DATA/server.db          users, devices, vaults, usage (SQLite, WAL)
    DATA/keys/signing.pem   Ed25519 key that signs device tokens (0600)
    DATA/vaults/<user id>/<vault>/   each vault's objects (the LocalStore layout)

`init_data_dir` creates it; `load_config` reads it, and command-line options override it.
"""

import logging
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from shared.errors import UsageError
from shared.protocol.paths import DEFAULT_MAX_OBJECT_SIZE

logger = logging.getLogger(__name__)

CONFIG_NAME = "server.toml"
DEFAULT_PORT = 8420
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B?|B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_object_size: int = DEFAULT_MAX_OBJECT_SIZE
    json_body_limit: int = 4 << 20
    token_lifetime: int = 30 * 86400  # seconds
    sign_in_max_failures: int = 5  # failures per user and per address within the window
    sign_in_window: float = 300.0  # seconds
    fsync: bool = True
    server_id: str = "cairn"  # the tokens' issuer

    @property
    def db_path(self) -> Path:
        return self.data_dir / "server.db"

    @property
    def vaults_dir(self) -> Path:
        return self.data_dir / "vaults"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def signing_key_path(self) -> Path:
        return self.keys_dir / "signing.pem"

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"


def parse_size(text: str | int) -> int:
    """Bytes from `123`, `"64MiB"`, `"1.5 GB"` (binary units either way); UsageError if bad."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"a size cannot be negative: {text}")
        return text
    match = _SIZE_RE.fullmatch(str(text))
    if not match:
        raise UsageError(f"not a size: {text!r} (examples: 500MiB, 2GiB, 1TiB)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "")[:1].upper()])


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) -> (host, port); UsageError if malformed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen wants HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}; got {text!r}")
    return host, int(port)


# The TOML file: [server] listen, tls_cert, tls_key, server_id; [limits] max_object_size,
# json_body_limit; [auth] token_lifetime_days, sign_in_max_failures, sign_in_window_seconds;
# [storage] fsync.
_TEMPLATE = """\
# cairn-server configuration (see README.md, "Running a server").
[server]
listen = "{listen}"
# HTTPS: a certificate and its key (PEM). Leave empty for plain HTTP on a trusted network.
tls_cert = ""
tls_key = ""
server_id = "{server_id}"

[limits]
# Largest object a client may upload (packs are 16-64 MiB).
max_object_size = "128MiB"

[auth]
token_lifetime_days = 30
# Failed sign-ins allowed per user name and per client address within the window.
sign_in_max_failures = 5
sign_in_window_seconds = 300

[storage]
# Flush every object to disk before acknowledging it. Turn off only for throwaway servers.
fsync = true
"""


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise UsageError(f"{CONFIG_NAME}: [{name}] must be a table")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise UsageError(
            f"{path.parent} is not a cairn-server data folder (no {CONFIG_NAME}); "
            f"create one with `cairn-server init --data {path.parent}`"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def _optional_path(base: Path, value: object, name: str) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise UsageError(f"{CONFIG_NAME}: {name} must be a path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _typed(value: object, kind: type, name: str) -> Any:
    if kind in (int, float) and isinstance(value, bool) or not isinstance(value, kind):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise UsageError(f"{CONFIG_NAME}: {name} must be a {kind.__name__}")
    return value


def load_config(data_dir: Path, **overrides: Any) -> ServerConfig:
    """The configuration in `data_dir`, with `overrides` (ServerConfig fields) on top."""
    data_dir = Path(data_dir).absolute()
    doc = _read_toml(data_dir / CONFIG_NAME)
    server, limits = _section(doc, "server"), _section(doc, "limits")
    auth, storage = _section(doc, "auth"), _section(doc, "storage")
    values: dict[str, Any] = {"data_dir": data_dir}
    if "listen" in server:
        values["listen_host"], values["listen_port"] = parse_listen(
            _typed(server["listen"], str, "server.listen"))
    values["tls_cert"] = _optional_path(data_dir, server.get("tls_cert"), "server.tls_cert")
    values["tls_key"] = _optional_path(data_dir, server.get("tls_key"), "server.tls_key")
    if "server_id" in server:
        values["server_id"] = _typed(server["server_id"], str, "server.server_id")
    if "max_object_size" in limits:
        values["max_object_size"] = parse_size(limits["max_object_size"])
    if "json_body_limit" in limits:
        values["json_body_limit"] = parse_size(limits["json_body_limit"])
    if "token_lifetime_days" in auth:
        days = _typed(auth["token_lifetime_days"], float, "auth.token_lifetime_days")
        values["token_lifetime"] = int(days * 86400)
    if "sign_in_max_failures" in auth:
        values["sign_in_max_failures"] = _typed(auth["sign_in_max_failures"], int,
                                                "auth.sign_in_max_failures")
    if "sign_in_window_seconds" in auth:
        values["sign_in_window"] = _typed(auth["sign_in_window_seconds"], float,
                                          "auth.sign_in_window_seconds")
    if "fsync" in storage:
        values["fsync"] = _typed(storage["fsync"], bool, "storage.fsync")
    known = {f.name for f in fields(ServerConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown ServerConfig fields: {sorted(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = ServerConfig(**values)
    _check(config)
    return config


def _check(config: ServerConfig) -> None:
    if (config.tls_cert is None) != (config.tls_key is None):
        raise UsageError("HTTPS needs both a certificate and its key (tls_cert and tls_key)")
    if config.max_object_size < 1 << 20:
        raise UsageError("max_object_size must be at least 1MiB")
    if config.token_lifetime < 60:
        raise UsageError("token lifetime must be at least a minute")
    if config.sign_in_max_failures < 1 or config.sign_in_window <= 0:
        raise UsageError("sign-in limits must be positive")


def init_data_dir(data_dir: Path, *, listen: str | None = None) -> ServerConfig:
    """Create a new data folder: configuration, signing key, empty database and vault folder.

    Refuses (UsageError) a folder that already holds a configuration or other files."""
    from server.auth.tokens import generate_signing_key
    from server.db.database import Database

    data_dir = Path(data_dir).absolute()
    if (data_dir / CONFIG_NAME).exists():
        raise UsageError(f"{data_dir} is already a cairn-server data folder")
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise UsageError(f"{data_dir} is not empty; choose an empty or new folder")
    host, port = parse_listen(listen or f"127.0.0.1:{DEFAULT_PORT}")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        config = ServerConfig(data_dir, host, port, server_id=f"cairn-{secrets.token_hex(8)}")
        config.vaults_dir.mkdir()
        config.keys_dir.mkdir(mode=0o700)
        generate_signing_key(config.signing_key_path)
        Database.open(config.db_path).close()
        listen_text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # The config goes last: a folder without it is not a data folder yet.
        tmp = data_dir / f".{CONFIG_NAME}.tmp"
        tmp.write_text(_TEMPLATE.format(listen=listen_text, server_id=config.server_id))
        tmp.replace(config.config_path)
    except OSError as exc:
        raise UsageError(f"cannot create {data_dir}: {exc.strerror or exc}") from exc
    logger.info("initialised data folder %s", data_dir)
    return load_config(data_dir)


def with_overrides(config: ServerConfig, **changes: Any) -> ServerConfig:
    """`config` with some fields changed (None values are ignored), checked again."""
    config = replace(config, **{k: v for k, v in changes.items() if v is not None})
    _check(config)
    return config
