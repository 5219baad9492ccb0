"""`cairn destination add | list | remove`: signing this computer in to a cairn-server.

`add` signs in with the user's password once and keeps only the device token the server
returns, in the OS keyring; the settings file (engine.destinations) remembers the user, the
device and how the server's certificate is trusted. Vault commands then reach
`--vault https://HOST:PORT/NAME` with that token and never need the password again.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import datetime
from typing import TYPE_CHECKING

from client_gui.cli.context import Context, sign_in_error
from client_gui.engine.secrets import KeyringSecretStore
from client_gui.engine.vault import hostname
from shared.errors import AuthError, UsageError
from shared.protocol.models import (
    MAX_DEVICE_NAME,
    Scope,
    TokenResponse,
    validate_user_name,
)

if TYPE_CHECKING:  # the HTTP client is imported when a command runs, not with the CLI
    from client_gui.engine.destinations import Destination
    from client_gui.engine.remote import PasswordCredentials
    from client_gui.engine.tls import TlsPolicy

NO_KEYRING = ("no OS keyring is available to store the device token, so nothing was stored; "
              "set CAIRN_USER and CAIRN_PASSWORD for each run instead")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("destination", help="sign in to a cairn-server; list or forget servers")
    dsub = p.add_subparsers(dest="destination_command", required=True, metavar="COMMAND")

    a = dsub.add_parser(
        "add", help="sign this computer in to a cairn-server",
        description="Sign in to a cairn-server once and store the device token in the OS "
        "keyring, so `--vault URL/VAULT` works without a password. The password comes from "
        "$CAIRN_PASSWORD or a prompt on a terminal, never from the command line. The token is "
        "append-only (backup and restore) unless --allow-delete is given.")
    a.add_argument("url", metavar="URL",
                   help="https://HOST:PORT (a trailing /VAULT is ignored); plain http:// only "
                   "to this computer")
    a.add_argument("--user", help="user name on the server (default $CAIRN_USER)")
    a.add_argument("--device", help="a name for this computer on the server (default: the "
                   "host name)")
    a.add_argument("--allow-delete", action="store_true",
                   help="also allow forget and prune from this computer (the maintain scope); "
                   "without it a stolen token cannot delete history")
    a.add_argument("--fingerprint", metavar="SHA256",
                   help="trust the server's certificate only if its SHA-256 fingerprint is this "
                   "(as `cairn-server` shows it; for self-signed servers and scripts)")
    a.add_argument("--yes", action="store_true",
                   help="DANGEROUS: trust whatever certificate the server presents, without "
                   "asking; someone intercepting the connection would be trusted too")
    a.set_defaults(func=add)

    k = dsub.add_parser("list", help="list the servers this computer is signed in to")
    k.set_defaults(func=list_destinations)

    r = dsub.add_parser("remove", help="forget a server and delete its token from the keyring")
    r.add_argument("url", metavar="URL", help="the server's URL (a trailing /VAULT is ignored)")
    r.set_defaults(func=remove)


# ---- add ----------------------------------------------------------------------------------

def _user(ctx: Context, base_url: str) -> str:
    name = ctx.args.user or os.environ.get("CAIRN_USER")
    if not name:
        if not sys.stdin.isatty():
            raise UsageError("no user name: use --user NAME or set CAIRN_USER")
        name = ctx.out.ask(f"User name on {base_url}: ")
    return validate_user_name(name.strip())


def _password(base_url: str, user: str) -> str:
    password = os.environ.get("CAIRN_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        raise UsageError("no password: set CAIRN_PASSWORD or run on a terminal to be asked")
    try:
        password = getpass.getpass(f"Password of {user} on {base_url}: ")
    except EOFError as exc:
        raise UsageError("no password entered") from exc
    if not password:
        raise UsageError("no password entered")
    return password


def _device(ctx: Context) -> str:
    device = (ctx.args.device or hostname() or "cairn").strip()
    if not device or len(device) > MAX_DEVICE_NAME or not device.isprintable():
        raise UsageError(f"the device name must be 1-{MAX_DEVICE_NAME} printable characters")
    return device


async def _trust_on_first_use(ctx: Context, base_url: str) -> TlsPolicy:
    """Pin the certificate the server presents, after the user compared its fingerprint (or
    said --yes); UntrustedCertificate/UsageError when not confirmed."""
    from client_gui.engine.tls import (
        TlsPolicy,
        UntrustedCertificate,
        fetch_fingerprint,
        format_fingerprint,
    )

    fingerprint = await fetch_fingerprint(base_url)
    shown = format_fingerprint(fingerprint)
    if ctx.args.yes:
        ctx.out.info(f"warning: trusting the certificate of {base_url} unchecked (--yes); its "
                     f"SHA-256 fingerprint is {shown}")
        return TlsPolicy(fingerprint=fingerprint)
    if not sys.stdin.isatty():
        raise UntrustedCertificate(
            f"the certificate of {base_url} is not signed by a CA this computer trusts; its "
            f"SHA-256 fingerprint is {shown}: if that is what the server shows, run again with "
            f"--fingerprint {fingerprint} (or name its CA with --cacert FILE)")
    answer = ctx.out.ask(
        f"The certificate of {base_url} is not signed by a CA this computer trusts.\n"
        f"Its SHA-256 fingerprint is:\n\n    {shown}\n\n"
        "Compare it with the fingerprint the server shows (`cairn-server status`).\n"
        "Trust this certificate? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise UsageError("the certificate was not trusted; nothing was stored")
    return TlsPolicy(fingerprint=fingerprint)


async def _sign_in(base_url: str, credentials: PasswordCredentials,
                   tls: TlsPolicy) -> TokenResponse:
    from client_gui.engine.remote import RemoteServer

    server = RemoteServer(base_url, credentials, tls=tls)
    try:
        return await server.sign_in()
    except AuthError as exc:
        raise sign_in_error(exc, base_url, credentials.user) from exc
    finally:
        await server.close()


async def add(ctx: Context) -> int:
    from client_gui.engine.destinations import (
        keyring_available,
        new_destination,
        server_url,
        token_account,
    )
    from client_gui.engine.remote import PasswordCredentials
    from client_gui.engine.tls import TlsPolicy, UntrustedCertificate, normalise_fingerprint

    args = ctx.args
    base_url = server_url(args.url)
    https = base_url.startswith("https://")
    if args.fingerprint and not https:
        raise UsageError(f"--fingerprint needs an https:// server; {base_url} is plain http")
    user = _user(ctx, base_url)
    device = _device(ctx)
    if isinstance(ctx.secrets, KeyringSecretStore) and not keyring_available():
        raise UsageError(NO_KEYRING)
    password = _password(base_url, user)
    scopes = (Scope.BACKUP, Scope.RESTORE) + ((Scope.MAINTAIN,) if args.allow_delete else ())
    credentials = PasswordCredentials(user, password, device, scopes)
    if args.fingerprint:
        tls = TlsPolicy(fingerprint=normalise_fingerprint(args.fingerprint))
    else:
        tls = ctx.cacert_policy() or TlsPolicy()
    try:
        token = await _sign_in(base_url, credentials, tls)
    except UntrustedCertificate:
        # Only a server the system CAs do not vouch for is offered for pinning; a pin that
        # does not match or a named CA bundle that does not cover it stays an error.
        if not https or tls != TlsPolicy():
            raise
        tls = await _trust_on_first_use(ctx, base_url)
        token = await _sign_in(base_url, credentials, tls)
    if not ctx.secrets.set(token_account(base_url), token.token):
        raise UsageError(NO_KEYRING)
    dest = new_destination(base_url, token.user, device, token.device_id, token.scopes, tls)
    ctx.destinations.save(dest)
    ctx.out.emit({"added": _row(ctx, dest)})
    ctx.out.line(f"signed in to {base_url} as {token.user} (device {device!r}, "
                 f"{_access(dest)}); the token is in the OS keyring")
    ctx.out.line(f"use it with: cairn --vault {base_url}/VAULT init (or any other command)")
    return 0


# ---- list and remove ------------------------------------------------------------------------

def _access(dest: Destination) -> str:
    return ("backup, restore and delete" if dest.can_delete else
            "append-only: backup and restore")


def _trust(dest: Destination) -> str:
    from client_gui.engine.tls import format_fingerprint

    if dest.base_url.startswith("http://"):
        return "none (plain http to this computer)"
    if dest.fingerprint:
        return f"pinned {format_fingerprint(dest.fingerprint)[:23]}..."
    if dest.ca_file:
        return f"CA {dest.ca_file}"
    return "system CAs"


def _row(ctx: Context, dest: Destination) -> dict[str, object]:
    from client_gui.engine.destinations import token_account

    return {**dest.to_json(), "trust": _trust(dest),
            "token_stored": ctx.secrets.get(token_account(dest.base_url)) is not None}


async def list_destinations(ctx: Context) -> int:
    dests = sorted(ctx.destinations.load().values(), key=lambda d: d.base_url)
    rows = [_row(ctx, d) for d in dests]
    if ctx.out.json:
        ctx.out.emit(rows)
        return 0
    if not dests:
        ctx.out.line("no destinations; add one with `cairn destination add URL`")
        return 0
    for dest, row in zip(dests, rows, strict=True):
        added = datetime.fromtimestamp(dest.added_at).strftime("%Y-%m-%d %H:%M")
        ctx.out.line(dest.base_url)
        ctx.out.line(f"  user:    {dest.user} (device {dest.device!r}, {dest.device_id[:8]})")
        ctx.out.line(f"  access:  {_access(dest)}")
        ctx.out.line(f"  trust:   {row['trust']}")
        ctx.out.line(f"  token:   {'in the OS keyring' if row['token_stored'] else 'MISSING'}")
        ctx.out.line(f"  added:   {added}")
    return 0


async def remove(ctx: Context) -> int:
    from client_gui.engine.destinations import server_url, token_account

    base_url = server_url(ctx.args.url)
    dest = ctx.destinations.get(base_url)
    account = token_account(base_url)
    had_token = ctx.secrets.get(account) is not None
    if dest is None and not had_token:
        raise UsageError(f"no destination {base_url} (see `cairn destination list`)")
    ctx.secrets.delete(account)
    ctx.destinations.remove(base_url)
    ctx.out.emit({"removed": base_url, "device_id": dest.device_id if dest else None})
    ctx.out.line(f"removed {base_url} and its token from this computer")
    if dest is not None:
        ctx.out.line(f"its device {dest.device!r} ({dest.device_id}) stays registered on the "
                     "server until revoked there (`cairn-server device revoke ID`)")
    return 0
