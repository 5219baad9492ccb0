"""`cairn destination` and the server side of the CLI context, without a server: the settings
file (no secrets in it, 0600, atomic), server URLs, credential precedence, and every refusal
that happens before a server is contacted (one line, non-zero exit, no traceback)."""

import argparse
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from client_gui.cli.context import PASSWORD_SCOPES, Context
from client_gui.cli.output import Output
from client_gui.engine.destinations import (
    Destination,
    DestinationBook,
    config_dir,
    new_destination,
    server_url,
    token_account,
)
from client_gui.engine.remote import PasswordCredentials, TokenCredentials
from client_gui.engine.secrets import MemorySecretStore
from client_gui.engine.tls import TlsPolicy
from shared.errors import UsageError
from shared.protocol.models import Scope
from tests.cli.test_cli import assert_one_line_error
from tests.conftest import CliResult
from tests.support import file_keyring

Cairn = Callable[..., CliResult]
FP = "ab" * 32
DEVICE_ID = "0123456789abcdef0123456789abcdef"
TOKEN = "header.claims.signature-not-a-real-token"


@pytest.fixture
def keyring_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A keyring that works across processes (tests/support/file_keyring.py)."""
    path = tmp_path / "keyring.json"
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", file_keyring.NAME)
    monkeypatch.setenv(file_keyring.ENV, str(path))
    return path


def dest(base_url: str = "https://backup.example:8420", **changes: object) -> Destination:
    fields: dict[str, object] = {
        "base_url": base_url, "user": "alice", "device": "laptop", "device_id": DEVICE_ID,
        "scopes": (Scope.BACKUP, Scope.RESTORE), "fingerprint": FP, "ca_file": None,
        "added_at": 1_700_000_000}
    fields.update(changes)
    return Destination(**fields)  # type: ignore[arg-type]


def context(vault: str | None = None, cacert: str | None = None) -> Context:
    args = argparse.Namespace(vault=vault, cacert=cacert, no_cache=True, cache_dir=None)
    return Context(args, Output(json_mode=True), secrets=MemorySecretStore())


# ---- server URLs -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "base"), [
    ("https://backup.example:8420", "https://backup.example:8420"),
    ("https://backup.example:8420/", "https://backup.example:8420"),
    ("https://backup.example:8420/laptop", "https://backup.example:8420"),
    ("http://127.0.0.1:9000/v1", "http://127.0.0.1:9000"),
    ("http://localhost:9000", "http://localhost:9000"),
    ("http://[::1]:9000", "http://[::1]:9000"),
])
def test_server_url_accepts_server_with_or_without_vault(text: str, base: str) -> None:
    assert server_url(text) == base


@pytest.mark.parametrize(("text", "message"), [
    ("http://backup.example:8420", "only allowed to this computer"),
    ("ftp://backup.example/v", "not a vault URL"),
    ("https://alice:secret@backup.example/v", "must not contain a user name or password"),
    ("backup.example:8420", "not a vault URL"),
])
def test_server_url_refuses(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        server_url(text)
    assert "secret" not in str(info.value)


# ---- the settings file ---------------------------------------------------------------------------

def test_destination_book_round_trip_is_private_and_secret_free(tmp_path: Path) -> None:
    book = DestinationBook(tmp_path / "cfg")
    assert book.load() == {}
    one = dest()
    two = dest("http://127.0.0.1:9000", fingerprint=None, ca_file=tmp_path / "ca.pem",
               scopes=(Scope.BACKUP, Scope.RESTORE, Scope.MAINTAIN))
    book.save(one)
    book.save(two)
    assert DestinationBook(tmp_path / "cfg").load() == {one.base_url: one, two.base_url: two}
    assert stat.S_IMODE(book.path.stat().st_mode) == 0o600
    assert [p.name for p in book.folder.iterdir()] == ["destinations.json"]  # no temp left
    text = book.path.read_text()
    assert "token" not in text and "password" not in text
    assert one.tls == TlsPolicy(fingerprint=FP)
    assert two.tls == TlsPolicy(ca_file=tmp_path / "ca.pem") and two.can_delete


def test_destination_book_replace_and_remove(tmp_path: Path) -> None:
    book = DestinationBook(tmp_path)
    book.save(dest())
    book.save(dest(device="desk"))
    assert [d.device for d in book.load().values()] == ["desk"]
    assert book.remove("https://backup.example:8420")
    assert not book.remove("https://backup.example:8420")
    assert book.load() == {}


@pytest.mark.parametrize("content", [
    "not json", "[]", '{"version": 1}', '{"version": 7, "destinations": []}',
    '{"version": 1, "destinations": [{"base_url": "http://evil.example:1"}]}',
])
def test_destination_book_damaged_file_is_one_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "destinations.json").write_text(content)
    with pytest.raises(UsageError, match="is damaged") as info:
        DestinationBook(tmp_path).load()
    assert "\n" not in str(info.value)


def test_destination_config_dir_from_environment(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_CONFIG_DIR", str(tmp_path / "elsewhere"))
    assert config_dir() == tmp_path / "elsewhere"
    assert DestinationBook().path == tmp_path / "elsewhere" / "destinations.json"


def test_new_destination_stores_absolute_ca_path_and_time(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    d = new_destination("https://h:1", "alice", "laptop", DEVICE_ID, (Scope.BACKUP,),
                        TlsPolicy(ca_file=Path("ca.pem")))
    assert d.ca_file == tmp_path / "ca.pem" and d.fingerprint is None and d.added_at > 0


# ---- credentials and TLS for --vault URL ---------------------------------------------------------

def test_context_password_from_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context("http://127.0.0.1:9/v")
    ctx.secrets.set(token_account("http://127.0.0.1:9"), TOKEN)
    monkeypatch.setenv("CAIRN_USER", "alice")
    monkeypatch.setenv("CAIRN_PASSWORD", "pw")
    creds = ctx.credentials("http://127.0.0.1:9")
    assert isinstance(creds, PasswordCredentials)
    assert (creds.user, creds.password, creds.scopes) == ("alice", "pw", PASSWORD_SCOPES)
    assert "pw" not in repr(creds)


def test_context_stored_token_and_renewal_stored_back() -> None:
    ctx = context("http://127.0.0.1:9/v")
    account = token_account("http://127.0.0.1:9")
    ctx.secrets.set(account, TOKEN)
    creds = ctx.credentials("http://127.0.0.1:9")
    assert isinstance(creds, TokenCredentials) and creds.token == TOKEN
    assert creds.on_renewed is not None
    creds.on_renewed("renewed-token")
    assert ctx.secrets.get(account) == "renewed-token"


def test_context_not_signed_in() -> None:
    with pytest.raises(UsageError, match="not signed in to http://127.0.0.1:9: run `cairn "
                       "destination add http://127.0.0.1:9`"):
        context("http://127.0.0.1:9/v").credentials("http://127.0.0.1:9")


def test_context_cacert_option_then_environment(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert context().cacert_policy() is None
    monkeypatch.setenv("CAIRN_CACERT", str(ca))
    assert context().cacert_policy() == TlsPolicy(ca_file=ca)
    with pytest.raises(UsageError, match="does not exist"):
        context(cacert=str(tmp_path / "nope.pem")).cacert_policy()


def test_context_remote_target_and_local_root() -> None:
    ctx = context("https://backup.example:8420/laptop")
    assert ctx.remote_target() == ("https://backup.example:8420", "laptop")
    assert ctx.local_root() is None
    assert context("/some/folder").remote_target() is None


# ---- the CLI, before any server is contacted ------------------------------------------

def free_port() -> int:
    """A port nothing listens on (bound and released: connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_cli_destination_list_empty(cairn: Cairn) -> None:
    res = cairn("destination", "list")
    assert res.code == 0, res.stderr
    assert "no destinations" in res.stdout
    res = cairn("--json", "destination", "list")
    assert json.loads(res.stdout) == []


def test_cli_destination_list_and_remove(cairn: Cairn, keyring_file: Path) -> None:
    DestinationBook().save(dest())
    keyring = file_keyring.FileKeyring()
    keyring.set_password("cairn", token_account("https://backup.example:8420"), TOKEN)
    res = cairn("destination", "list")
    assert res.code == 0, res.stderr
    assert "https://backup.example:8420" in res.stdout
    assert "append-only" in res.stdout and "pinned AB:AB:AB" in res.stdout
    assert "in the OS keyring" in res.stdout and TOKEN not in res.stdout
    rows = json.loads(cairn("--json", "destination", "list").stdout)
    assert rows[0]["token_stored"] is True and rows[0]["device_id"] == DEVICE_ID
    assert TOKEN not in json.dumps(rows)
    res = cairn("destination", "remove", "https://backup.example:8420/laptop")
    assert res.code == 0, res.stderr
    assert "cairn-server device revoke" in res.stdout
    assert DestinationBook().load() == {}
    assert file_keyring.read_all() == {}
    assert_one_line_error(cairn("destination", "remove", "https://backup.example:8420"), 5,
                          "no destination https://backup.example:8420")


def test_cli_destination_add_refuses_plain_http_to_other_hosts(cairn: Cairn) -> None:
    res = cairn("destination", "add", "http://backup.example:8420", "--user", "alice",
                env={"CAIRN_PASSWORD": "pw"})
    assert_one_line_error(res, 5, "use https://backup.example:8420")


def test_cli_destination_add_without_keyring_stores_nothing(cairn: Cairn) -> None:
    res = cairn("destination", "add", f"http://127.0.0.1:{free_port()}", "--user", "alice",
                env={"CAIRN_PASSWORD": "pw"})
    assert_one_line_error(res, 5, "no OS keyring is available")
    assert "CAIRN_USER and CAIRN_PASSWORD" in res.stderr
    assert DestinationBook().load() == {}


def test_cli_destination_add_needs_user_and_password(cairn: Cairn, keyring_file: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert_one_line_error(cairn("destination", "add", url, input=""), 5, "no user name")
    assert_one_line_error(cairn("destination", "add", url, "--user", "alice", input=""), 5,
                          "no password: set CAIRN_PASSWORD")
    res = cairn("destination", "add", url, "--fingerprint", FP, env={"CAIRN_USER": "alice"})
    assert_one_line_error(res, 5, "--fingerprint needs an https:// server")


def test_cli_password_never_on_command_line(cairn: Cairn) -> None:
    res = cairn("destination", "add", "http://127.0.0.1:1", "--password", "pw")
    assert res.code == 2 and "unrecognized arguments" in res.stderr


def test_cli_vault_url_not_signed_in(cairn: Cairn) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    res = cairn("--vault", f"{url}/laptop", "snapshots")
    assert_one_line_error(res, 5, f"not signed in to {url}: run `cairn destination add {url}`")


def test_cli_vault_url_plain_http_to_other_host(cairn: Cairn) -> None:
    res = cairn("--vault", "http://backup.example:8420/laptop", "snapshots",
                env={"CAIRN_USER": "alice", "CAIRN_PASSWORD": "pw"})
    assert_one_line_error(res, 5, "plain http:// is only allowed to this computer")


def test_cli_vault_url_connection_refused(cairn: Cairn) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    env = {"CAIRN_USER": "alice", "CAIRN_PASSWORD": "pw", "CAIRN_PASSPHRASE": "x"}
    for args in (("snapshots",), ("init",), ("backup", os.getcwd())):
        res = cairn("--vault", f"{url}/laptop", *args, env=env)
        assert_one_line_error(res, 2, f"cannot reach {url}")
