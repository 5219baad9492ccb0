"""The real `cairn` CLI against real cairn-server processes on 127.0.0.1: every command works on
`--vault http(s)://127.0.0.1:PORT/NAME` as on a folder, with the owner's password
($CAIRN_USER/$CAIRN_PASSWORD) or a device token from `cairn destination add` (kept in a keyring
shared by the processes of a test); append-only tokens cannot delete; TLS trust by CA, by pin or
on first use; a backup cut off by a server crash resumes without uploading again what arrived;
and every refusal is one line on stderr with a non-zero exit code, never a traceback.
"""

import itertools
import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from client_gui.engine.destinations import DestinationBook, token_account
from tests.cli.test_cli import assert_one_line_error
from tests.conftest import REPO, SERVER_PASSWORD, SERVER_USER, CliResult, make_tree
from tests.e2e.conftest import assert_same_tree, make_source, pack_sizes, restored, summary
from tests.support import file_keyring
from tests.support.certs import ServerCert, make_server_cert
from tests.support.server import CairnServer

PASS = "e2e server passphrase"
OTHER_USER, OTHER_PASSWORD = "h3bob", "bob's own password"
QUOTA_USER, QUOTA_PASSWORD = "h3quota", "small quota password"
Cairn = Callable[..., CliResult]
_names = itertools.count()


def vault_name() -> str:
    """A vault name of its own for each test (the session server is shared)."""
    return f"h3-{os.getpid()}-{next(_names)}"


@pytest.fixture(scope="module")
def server(session_cairn_server: CairnServer) -> CairnServer:
    """The session's plain-http server, plus a second user and one with a tiny quota."""
    users = session_cairn_server.run("user", "list")
    if OTHER_USER not in users:
        session_cairn_server.add_user(OTHER_USER, OTHER_PASSWORD)
        session_cairn_server.add_user(QUOTA_USER, QUOTA_PASSWORD, quota="200KiB")
    return session_cairn_server


@pytest.fixture
def keyring_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A keyring every process of this test shares (tests/support/file_keyring.py)."""
    path = tmp_path / "keyring.json"
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", file_keyring.NAME)
    monkeypatch.setenv(file_keyring.ENV, str(path))
    return path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {
        "a.txt": "hello server\n" * 200,
        "docs/report.bin": os.urandom(200_000),
        "docs/notes.md": "# notes\n",
        "empty": b"",
    })


def password_env(server: CairnServer, vault: str, user: str = SERVER_USER,
                 password: str = SERVER_PASSWORD) -> dict[str, str]:
    return {"CAIRN_VAULT": f"{server.url}/{vault}", "CAIRN_PASSPHRASE": PASS,
            "CAIRN_USER": user, "CAIRN_PASSWORD": password}


def ok(res: CliResult) -> CliResult:
    assert res.code == 0, (res.code, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    return res


# ---- the same commands as on a folder ------------------------------------------------------------

def test_server_backup_browse_restore_with_password(cairn: Cairn, server: CairnServer, src: Path,
                                                    tmp_path: Path) -> None:
    vault = vault_name()
    env = password_env(server, vault)
    created = json.loads(ok(cairn("--json", "init", "--no-recovery-key", env=env)).stdout)
    assert created["path"] == f"{server.url}/{vault}"
    assert (server.vault_dir(SERVER_USER, vault) / "config").is_dir()
    first = summary(ok(cairn("--json", "backup", str(src), env=env)).stdout)
    assert first["files"] == 4
    snaps = json.loads(ok(cairn("--json", "snapshots", env=env)).stdout)
    assert [s["id"] for s in snaps] == [first["snapshot_id"]]
    listed = ok(cairn("ls", "latest", str(src / "docs"), env=env)).stdout
    assert f"{src}/docs/report.bin" in listed
    found = [json.loads(line) for line in
             ok(cairn("--json", "find", "*.md", env=env)).stdout.splitlines()]
    assert [f["path"] for f in found] == [f"{src}/docs/notes.md"]
    ok(cairn("restore", "latest", "--target", str(tmp_path / "out"), env=env))
    assert_same_tree(restored(tmp_path / "out", src), src)


def test_server_forget_prune_check_with_password(cairn: Cairn, server: CairnServer,
                                                 src: Path) -> None:
    env = password_env(server, vault_name())
    ok(cairn("init", "--no-recovery-key", env=env))
    for i in range(2):
        (src / "a.txt").write_text(f"version {i}\n" * 3000)
        ok(cairn("backup", str(src), env=env))
    ok(cairn("forget", "--keep-last", "1", "--prune", "--grace", "0", env=env))
    assert len(json.loads(ok(cairn("--json", "snapshots", env=env)).stdout)) == 1
    res = ok(cairn("--json", "check", "--read-data", env=env))
    report = json.loads(res.stdout.splitlines()[-1])
    assert report["ok"] and report["snapshots"] == 1 and report["bytes_read"] > 0


def test_server_init_refuses_existing_vault(cairn: Cairn, server: CairnServer) -> None:
    env = password_env(server, vault_name())
    ok(cairn("init", "--no-recovery-key", env=env))
    assert_one_line_error(cairn("init", env=env), 2, "a vault already exists at")


# ---- device tokens from `cairn destination add` --------------------------------------------------

def add_destination(cairn: Cairn, url: str, *extra: str, user: str = SERVER_USER,
                    password: str = SERVER_PASSWORD) -> CliResult:
    return cairn("destination", "add", url, "--user", user, "--device", "e2e laptop", *extra,
                 env={"CAIRN_PASSWORD": password})


def test_server_destination_token_does_everything(cairn: Cairn, server: CairnServer,
                                                  keyring_file: Path, src: Path,
                                                  tmp_path: Path) -> None:
    vault = vault_name()
    res = ok(add_destination(cairn, f"{server.url}/{vault}", "--allow-delete"))
    assert "backup, restore and delete" in res.stdout
    (dest,) = DestinationBook().load().values()
    assert dest.base_url == server.url and dest.user == SERVER_USER
    assert dest.device == "e2e laptop" and dest.can_delete
    token = file_keyring.read_all()[f"cairn/{token_account(server.url)}"]
    assert SERVER_PASSWORD not in DestinationBook().path.read_text()
    assert token not in DestinationBook().path.read_text()
    env = {"CAIRN_VAULT": f"{server.url}/{vault}", "CAIRN_PASSPHRASE": PASS}
    ok(cairn("init", "--no-recovery-key", env=env))
    ok(cairn("backup", str(src), env=env))
    (src / "a.txt").write_text("changed\n")
    ok(cairn("backup", str(src), env=env))
    ok(cairn("forget", "--keep-last", "1", "--prune", "--grace", "0", env=env))
    ok(cairn("restore", "latest", "--target", str(tmp_path / "out"), env=env))
    assert_same_tree(restored(tmp_path / "out", src), src)


def test_server_append_only_token_cannot_delete(cairn: Cairn, server: CairnServer,
                                                keyring_file: Path, src: Path) -> None:
    vault = vault_name()
    res = ok(add_destination(cairn, server.url))
    assert "append-only" in res.stdout
    env = {"CAIRN_VAULT": f"{server.url}/{vault}", "CAIRN_PASSPHRASE": PASS}
    ok(cairn("init", "--no-recovery-key", env=env))
    ok(cairn("backup", str(src), env=env))
    ok(cairn("backup", str(src), env=env))
    for args in (("forget", "--keep-last", "1", "--prune", "--grace", "0"), ("prune",)):
        assert_one_line_error(cairn(*args, env=env), 2, "append-only")
    assert len(json.loads(ok(cairn("--json", "snapshots", env=env)).stdout)) == 2
    ok(cairn("forget", "--keep-last", "1", "--dry-run", env=env))  # looking is allowed


def test_server_destination_remove_signs_out(cairn: Cairn, server: CairnServer,
                                             keyring_file: Path) -> None:
    ok(add_destination(cairn, server.url))
    ok(cairn("destination", "remove", server.url))
    assert file_keyring.read_all() == {} and DestinationBook().load() == {}
    res = cairn("--vault", f"{server.url}/{vault_name()}", "snapshots")
    assert_one_line_error(res, 5, f"not signed in to {server.url}")


# ---- refusals: one line, non-zero, no traceback --------------------------------------------------

def test_server_wrong_password(cairn: Cairn, server: CairnServer, keyring_file: Path) -> None:
    env = password_env(server, vault_name(), password="not the password")
    assert_one_line_error(cairn("snapshots", env=env), 2,
                          f"cannot sign in to {server.url} as {SERVER_USER}: wrong user name")
    res = add_destination(cairn, server.url, password="not the password")
    assert_one_line_error(res, 2, f"cannot sign in to {server.url} as {SERVER_USER}")
    assert DestinationBook().load() == {} and file_keyring.read_all() == {}


def test_server_other_users_vault_is_not_found(cairn: Cairn, server: CairnServer) -> None:
    vault = vault_name()
    ok(cairn("init", "--no-recovery-key", env=password_env(server, vault)))
    env = password_env(server, vault, OTHER_USER, OTHER_PASSWORD)
    assert_one_line_error(cairn("snapshots", env=env), 2, "no vault at")


def test_server_quota_exceeded(cairn: Cairn, server: CairnServer, tmp_path: Path) -> None:
    env = password_env(server, vault_name(), QUOTA_USER, QUOTA_PASSWORD)
    ok(cairn("init", "--no-recovery-key", env=env))
    big = make_tree(tmp_path / "big", {"data.bin": os.urandom(400_000)})
    assert_one_line_error(cairn("backup", str(big), env=env), 2, "quota")


def test_server_not_signed_in(cairn: Cairn, server: CairnServer) -> None:
    res = cairn("--vault", f"{server.url}/{vault_name()}", "init",
                env={"CAIRN_PASSPHRASE": PASS})
    assert_one_line_error(res, 5, f"not signed in to {server.url}")


# ---- TLS -----------------------------------------------------------------------------------------

def shown(fingerprint: str) -> str:
    """A fingerprint as people see it: AB:CD:...."""
    return ":".join(fingerprint[i:i + 2] for i in range(0, 64, 2)).upper()


@pytest.fixture
def tls_cert(tmp_path: Path) -> ServerCert:
    return make_server_cert(tmp_path / "certs")


@pytest.fixture
def tls_server(cairn_servers: Callable[..., CairnServer], tls_cert: ServerCert) -> CairnServer:
    return cairn_servers(tls=tls_cert, fsync="false")


def test_server_tls_with_ca_bundle(cairn: Cairn, tls_server: CairnServer, tls_cert: ServerCert,
                                   keyring_file: Path) -> None:
    res = ok(add_destination(cairn, tls_server.url, "--cacert", str(tls_cert.ca)))
    (dest,) = DestinationBook().load().values()
    assert dest.ca_file == tls_cert.ca and dest.fingerprint is None
    assert tls_server.url in res.stdout
    env = {"CAIRN_VAULT": f"{tls_server.url}/{vault_name()}", "CAIRN_PASSPHRASE": PASS}
    ok(cairn("init", "--no-recovery-key", env=env))  # trusts the saved CA bundle
    ok(cairn("snapshots", env=env))


def test_server_tls_untrusted_certificate_needs_a_decision(
        cairn: Cairn, tls_server: CairnServer, tls_cert: ServerCert, keyring_file: Path) -> None:
    res = add_destination(cairn, tls_server.url)
    assert_one_line_error(res, 2, f"--fingerprint {tls_cert.fingerprint}")
    assert shown(tls_cert.fingerprint) in res.stderr
    assert DestinationBook().load() == {} and file_keyring.read_all() == {}
    res = add_destination(cairn, tls_server.url, "--fingerprint", "00" * 32)
    assert_one_line_error(res, 2, "not the pinned one")
    env = {**password_env(tls_server, vault_name()), "CAIRN_PASSPHRASE": PASS}
    assert_one_line_error(cairn("snapshots", env=env), 2, "is not trusted")
    res = cairn("--cacert", str(tls_cert.ca), "snapshots", env=env)  # trusted: on to the vault
    assert_one_line_error(res, 2, "no vault at")


def test_server_tls_pinned_fingerprint(cairn: Cairn, tls_server: CairnServer,
                                       tls_cert: ServerCert, keyring_file: Path) -> None:
    ok(add_destination(cairn, tls_server.url, "--fingerprint", shown(tls_cert.fingerprint)))
    (dest,) = DestinationBook().load().values()
    assert dest.fingerprint == tls_cert.fingerprint and dest.ca_file is None
    env = {"CAIRN_VAULT": f"{tls_server.url}/{vault_name()}", "CAIRN_PASSPHRASE": PASS}
    ok(cairn("init", "--no-recovery-key", env=env))
    ok(cairn("snapshots", env=env))


def test_server_tls_yes_trusts_blindly_with_a_warning(
        cairn: Cairn, tls_server: CairnServer, tls_cert: ServerCert, keyring_file: Path) -> None:
    res = ok(add_destination(cairn, tls_server.url, "--yes"))
    assert "unchecked" in res.stderr
    assert DestinationBook().load()[tls_server.url].fingerprint == tls_cert.fingerprint


@pytest.mark.parametrize(("answer", "trusted"), [("y", True), ("n", False)])
def test_server_tls_asks_on_a_terminal(tls_server: CairnServer, tls_cert: ServerCert,
                                       keyring_file: Path, answer: str, trusted: bool) -> None:
    res = run_on_terminal(["destination", "add", tls_server.url, "--user", SERVER_USER],
                          answer + "\n", {"CAIRN_PASSWORD": SERVER_PASSWORD})
    assert "Trust this certificate? [y/N]" in res.stderr
    assert shown(tls_cert.fingerprint) in res.stderr and "Traceback" not in res.stderr
    assert (res.code == 0) is trusted, res.stderr
    pinned = DestinationBook().load().get(tls_server.url)
    assert (pinned is not None and pinned.fingerprint == tls_cert.fingerprint) is trusted


def run_on_terminal(args: list[str], typed: str, env: dict[str, str]) -> CliResult:
    """`cairn ARGS` with a pseudo-terminal as stdin (so it asks), `typed` typed into it."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "client_gui.cli.main", *args],
                                stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **env}, cwd=REPO)
        os.write(controller, typed.encode())
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    return CliResult(proc.returncode, out.decode(), err.decode())


# ---- a server that crashes mid-backup ------------------------------------------------------------

def backup_until_first_pack(source: Path, env: dict[str, str], packs_dir: Path, log: Path,
                            *options: str) -> subprocess.Popen[bytes]:
    """A `cairn backup` process (stderr to `log`), returned once the server holds a pack."""
    with log.open("wb") as err:
        job = subprocess.Popen([sys.executable, "-m", "client_gui.cli.main", *options, "backup",
                                str(source)], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=err)
    deadline = time.monotonic() + 120
    while not pack_sizes(packs_dir) and job.poll() is None:
        if time.monotonic() >= deadline:
            job.kill()
            job.wait()
            raise AssertionError("no pack arrived in time")
        time.sleep(0.01)
    return job


@pytest.mark.slow
def test_server_backup_resumes_after_server_crash(
        cairn: Cairn, cairn_servers: Callable[..., CairnServer], tmp_path: Path) -> None:
    srv = cairn_servers(fsync="false")
    vault = vault_name()
    env = {**os.environ, **password_env(srv, vault)}
    ok(cairn("init", "--no-recovery-key", env=env))
    source = make_source(tmp_path / "src", 72 << 20, seed=3, max_file=8 << 20)
    packs_dir = srv.vault_dir(SERVER_USER, vault)
    log = tmp_path / "first.err"
    first = backup_until_first_pack(source, env, packs_dir, log, "--json")
    try:
        srv.kill()
        assert first.wait(timeout=60) != 0, "the backup finished before the server died"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    error = [line for line in log.read_text().splitlines() if line.startswith("cairn: error")]
    assert error and "Traceback" not in log.read_text(), log.read_text()[-2000:]
    kept = pack_sizes(packs_dir)
    assert kept, "the pack uploaded before the crash is gone"
    srv.start()
    second = summary(ok(cairn("--json", "backup", str(source), env=env, timeout=300)).stdout)
    final = pack_sizes(packs_dir)
    assert set(kept) <= set(final)  # the packs that arrived before the crash are used ...
    source_bytes = sum(f.stat().st_size for f in source.rglob("*") if f.is_file())
    # ... and their data is not uploaded again: the second run adds less than the source,
    # and no pack in the vault holds data that no index or snapshot uses.
    assert second["new_bytes"] < source_bytes - sum(kept.values()) // 2
    stats = json.loads(ok(cairn("--json", "stats", env=env)).stdout)
    assert stats["vault_size"] == sum(final.values())
    assert stats["vault_size"] - stats["stored_size"] < min(kept.values()) // 2
    ok(cairn("restore", "latest", "--target", str(tmp_path / "out"), env=env, timeout=300))
    assert_same_tree(restored(tmp_path / "out", source), source)


def test_server_backup_rides_through_a_server_restart(
        cairn: Cairn, cairn_servers: Callable[..., CairnServer], tmp_path: Path) -> None:
    """SIGKILL the server while packs upload and start it again at once: the running backup
    retries with back-off, completes, and restores byte for byte."""
    srv = cairn_servers(fsync="false")
    vault = vault_name()
    env = {**os.environ, **password_env(srv, vault)}
    ok(cairn("init", "--no-recovery-key", env=env))
    source = make_source(tmp_path / "src", 40 << 20, seed=4, max_file=8 << 20)
    packs_dir = srv.vault_dir(SERVER_USER, vault)
    log = tmp_path / "backup.err"
    backup = backup_until_first_pack(source, env, packs_dir, log)
    try:
        assert backup.poll() is None, "the backup finished before the server was killed"
        srv.kill()
        srv.start()
        assert backup.wait(timeout=120) == 0, log.read_text()[-2000:]
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    text = log.read_text()
    assert "retry 1 of" in text and "Traceback" not in text, text[-2000:]
    ok(cairn("restore", "latest", "--target", str(tmp_path / "out"), env=env, timeout=300))
    assert_same_tree(restored(tmp_path / "out", source), source)


# ---- tokens that are revoked or renewed ----------------------------------------------------------

def test_server_revoked_device_token_is_refused(cairn: Cairn, server: CairnServer,
                                                keyring_file: Path) -> None:
    ok(add_destination(cairn, server.url))
    server.run("device", "revoke", DestinationBook().load()[server.url].device_id)
    res = cairn("--vault", f"{server.url}/{vault_name()}", "snapshots",
                env={"CAIRN_PASSPHRASE": PASS})
    assert_one_line_error(res, 2, f"sign in again with `cairn destination add {server.url}")


@pytest.mark.slow
def test_server_token_renewal_is_stored_back(cairn: Cairn,
                                             cairn_servers: Callable[..., CairnServer],
                                             keyring_file: Path) -> None:
    srv = cairn_servers(fsync="false", token_lifetime_days="0.0007")  # 60 s, the shortest
    ok(add_destination(cairn, srv.url))
    account = f"cairn/{token_account(srv.url)}"
    issued = file_keyring.read_all()[account]
    env = {"CAIRN_VAULT": f"{srv.url}/{vault_name()}", "CAIRN_PASSPHRASE": PASS}
    ok(cairn("init", "--no-recovery-key", env=env))
    assert file_keyring.read_all()[account] == issued
    time.sleep(41)  # less than a third of its lifetime left: the next command renews it
    ok(cairn("snapshots", env=env))
    renewed = file_keyring.read_all()[account]
    assert renewed != issued
    ok(cairn("snapshots", env=env))  # with the renewed token
    assert file_keyring.read_all()[account] == renewed
