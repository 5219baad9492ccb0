"""The admin commands of `cairn-server`: init, serve, user ..., device ..., status.

They work on the data folder directly (SQLite is safe to share with a running server), so an
admin needs no token and the server need not be running. Passwords come from $CAIRN_PASSWORD
or standard input, never from the command line.
"""

import argparse
import asyncio
import getpass
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.auth.passwords import MAX_PASSWORD, hash_password
from server.config import (
    ServerConfig,
    init_data_dir,
    load_config,
    parse_listen,
    parse_size,
    with_overrides,
)
from server.db.database import Database, NoSuchUser
from shared.errors import UsageError
from shared.protocol.models import validate_device_id, validate_user_name
from shared.protocol.paths import HEALTHZ
from shared.units import human_size


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _data_dir(args: argparse.Namespace) -> Path:
    value = args.data or os.environ.get("CAIRN_SERVER_DATA")
    if not value:
        raise UsageError("no data folder: use --data DIR or set CAIRN_SERVER_DATA")
    return Path(value).expanduser().absolute()


def _config(args: argparse.Namespace) -> ServerConfig:
    return load_config(_data_dir(args))


@contextmanager
def _database(args: argparse.Namespace) -> Iterator[Database]:
    db = Database.open(_config(args).db_path)
    try:
        yield db
    finally:
        db.close()


def _size_text(n: int | None) -> str:
    return "none" if n is None else human_size(n)


def read_password(what: str = "password") -> str:
    """The password from $CAIRN_PASSWORD, else a no-echo prompt (twice) on a terminal, else
    the first line of standard input."""
    env = os.environ.get("CAIRN_PASSWORD")
    if env is not None:
        password = env
    elif sys.stdin.isatty():
        password = getpass.getpass(f"New {what}: ")
        if getpass.getpass(f"Repeat the new {what}: ") != password:
            raise UsageError("the passwords do not match")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError(f"no {what}: set CAIRN_PASSWORD or give it on standard input")
    if len(password.encode()) > MAX_PASSWORD:
        raise UsageError(f"the {what} is longer than {MAX_PASSWORD} bytes")
    return password


def _quota(text: str | None) -> int | None:
    if text is None or text.lower() in ("none", "unlimited"):
        return None
    return parse_size(text)


# ---- commands ---------------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    config = init_data_dir(_data_dir(args), listen=args.listen)
    _out(f"created data folder {config.data_dir}")
    _out(f"next: cairn-server user add NAME --data {config.data_dir}")
    _out(f"then: cairn-server serve --data {config.data_dir}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from server.serve import serve

    config = _config(args)
    host = port = None
    if args.listen:
        host, port = parse_listen(args.listen)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    config = with_overrides(
        config, listen_host=host, listen_port=port,
        tls_cert=Path(args.tls_cert).absolute() if args.tls_cert else None,
        tls_key=Path(args.tls_key).absolute() if args.tls_key else None)
    asyncio.run(serve(config))
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    name = validate_user_name(args.name)
    quota = _quota(args.quota)
    with _database(args) as db:
        if db.get_user(name) is not None:
            raise UsageError(f"user {name} already exists")
        db.add_user(name, hash_password(read_password()), admin=args.admin, quota=quota)
    _out(f"added user {name}" + (" (admin)" if args.admin else "")
         + (f" with a quota of {_size_text(quota)}" if quota else ""))
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    with _database(args) as db:
        rows: list[dict[str, Any]] = []
        devices = db.list_devices()
        for user in db.list_users():
            vaults = db.list_vaults(user.id)
            rows.append({
                "name": user.name, "admin": user.admin, "disabled": user.disabled,
                "quota": user.quota, "used": sum(v.size for v in vaults), "vaults": len(vaults),
                "devices": sum(1 for d in devices if d.user_id == user.id and not d.revoked)})
    if args.json:
        _out(json.dumps(rows))
        return 0
    _out(f"{'USER':<20} {'ADMIN':<6} {'STATE':<9} {'USED':>11} {'QUOTA':>11} VAULTS DEVICES")
    for r in rows:
        _out(f"{r['name']:<20} {'yes' if r['admin'] else 'no':<6} "
             f"{'disabled' if r['disabled'] else 'active':<9} {_size_text(r['used']):>11} "
             f"{_size_text(r['quota']):>11} {r['vaults']:>6} {r['devices']:>7}")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    with _database(args) as db:
        db.set_disabled(validate_user_name(args.name), True)
    _out(f"disabled user {args.name}: sign-ins and existing tokens are refused")
    return 0


def cmd_user_enable(args: argparse.Namespace) -> int:
    with _database(args) as db:
        db.set_disabled(validate_user_name(args.name), False)
    _out(f"enabled user {args.name}")
    return 0


def cmd_user_passwd(args: argparse.Namespace) -> int:
    name = validate_user_name(args.name)
    with _database(args) as db:
        if db.get_user(name) is None:
            raise NoSuchUser(f"no user {name}")
        db.set_password(name, hash_password(read_password()))
    _out(f"changed the password of {name}")
    return 0


def cmd_user_quota(args: argparse.Namespace) -> int:
    quota = _quota(args.size)
    with _database(args) as db:
        db.set_quota(validate_user_name(args.name), quota)
    _out(f"quota of {args.name}: {_size_text(quota)}")
    return 0


def cmd_device_list(args: argparse.Namespace) -> int:
    with _database(args) as db:
        names = {u.id: u.name for u in db.list_users()}
        devices = db.list_devices(validate_user_name(args.user) if args.user else None)
    rows: list[dict[str, Any]] = [
        {"id": d.id, "user": names.get(d.user_id, "?"), "name": d.name,
         "scopes": [s.value for s in d.scopes], "vaults": list(d.vaults),
         "created_at": d.created_at, "last_seen": d.last_seen, "revoked": d.revoked}
        for d in devices]
    if args.json:
        _out(json.dumps(rows))
        return 0
    _out(f"{'DEVICE ID':<32}  {'USER':<12} {'NAME':<20} {'SCOPES':<24} {'LAST SEEN':<16} STATE")
    for r in rows:
        seen = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["last_seen"]))
        _out(f"{r['id']:<32}  {r['user']:<12} {r['name'][:20]:<20} "
             f"{','.join(r['scopes']):<24} {seen:<16} {'revoked' if r['revoked'] else 'active'}")
    return 0


def cmd_device_revoke(args: argparse.Namespace) -> int:
    with _database(args) as db:
        db.revoke_device(validate_device_id(args.id))
    _out(f"revoked device {args.id}: its tokens are refused from now on")
    return 0


def _probe(config: ServerConfig) -> str:
    host = config.listen_host if config.listen_host not in ("0.0.0.0", "::") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    url = f"{config.scheme}://{host}:{config.listen_port}{HEALTHZ}"
    try:
        import ssl

        context = ssl._create_unverified_context() if config.scheme == "https" else None
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return f"running ({json.load(response).get('status', '?')}) at {url}"
    except (OSError, ValueError, urllib.error.URLError):
        return f"not answering at {url}"


def cmd_status(args: argparse.Namespace) -> int:
    config = _config(args)
    with _database(args) as db:
        users = db.list_users()
        vaults = db.list_vaults()
        devices = [d for d in db.list_devices() if not d.revoked]
    disk = shutil.disk_usage(config.vaults_dir)
    status: dict[str, Any] = {
        "data": str(config.data_dir), "server": _probe(config), "users": len(users),
        "disabled_users": sum(u.disabled for u in users), "devices": len(devices),
        "vaults": len(vaults), "stored_bytes": sum(v.size for v in vaults),
        "objects": sum(v.objects for v in vaults), "disk_free_bytes": disk.free,
        "disk_total_bytes": disk.total,
    }
    if config.tls_cert is not None:
        from server.serve import cert_fingerprint

        status["tls_fingerprint"] = cert_fingerprint(config.tls_cert)
    if args.json:
        _out(json.dumps(status))
        return 0
    _out(f"data folder: {status['data']}")
    _out(f"server:      {status['server']}")
    _out(f"users:       {status['users']} ({status['disabled_users']} disabled), "
         f"{status['devices']} active devices")
    _out(f"vaults:      {status['vaults']}, {status['objects']} objects, "
         f"{_size_text(status['stored_bytes'])}")
    _out(f"disk:        {_size_text(disk.free)} free of {_size_text(disk.total)}")
    if "tls_fingerprint" in status:
        _out(f"TLS certificate SHA-256: {status['tls_fingerprint']}")
    return 0


# ---- argument table ----------------------------------------------------------------------------

def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    def command(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str,
                func: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--data", metavar="DIR",
                       help="the server's data folder (default: $CAIRN_SERVER_DATA)")
        p.set_defaults(func=func)
        return p

    p = command(commands, "init", cmd_init, "create a data folder: config, signing key, database")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (default "
                   "127.0.0.1:8420; written to server.toml)")
    p = command(commands, "serve", cmd_serve, "serve the API until stopped (SIGTERM)")
    p.add_argument("--listen", metavar="HOST:PORT", help="override server.toml's address")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) for HTTPS")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key for HTTPS")
    command(commands, "status", cmd_status, "users, vaults, usage, disk, is the server up") \
        .add_argument("--json", action="store_true")

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="user_command", metavar="ACTION", required=True)
    p = command(user, "add", cmd_user_add,
                "add a user (password from $CAIRN_PASSWORD or standard input)")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="may sign in with the admin scope")
    p.add_argument("--quota", metavar="SIZE", help="e.g. 500GiB (default: none)")
    command(user, "list", cmd_user_list, "list users with usage").add_argument(
        "--json", action="store_true")
    command(user, "disable", cmd_user_disable, "refuse the user's sign-ins and tokens") \
        .add_argument("name")
    command(user, "enable", cmd_user_enable, "accept a disabled user again").add_argument("name")
    command(user, "passwd", cmd_user_passwd,
            "set a new password ($CAIRN_PASSWORD or standard input)").add_argument("name")
    p = command(user, "quota", cmd_user_quota, "set a user's quota")
    p.add_argument("name")
    p.add_argument("size", metavar="SIZE", help="e.g. 200GiB, or 'none'")

    device = commands.add_parser("device", help="manage devices").add_subparsers(
        dest="device_command", metavar="ACTION", required=True)
    p = command(device, "list", cmd_device_list, "list devices (signed-in clients)")
    p.add_argument("--user", metavar="NAME")
    p.add_argument("--json", action="store_true")
    command(device, "revoke", cmd_device_revoke, "refuse a device's tokens from now on") \
        .add_argument("id", metavar="ID")
