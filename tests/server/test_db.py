"""The metadata database: users, devices, vaults, usage; and its async wrapper."""

import sqlite3

import pytest

from server.db.database import (
    AsyncDatabase,
    Database,
    NoSuchDevice,
    NoSuchUser,
    UserExists,
)
from shared.errors import UsageError, VaultExists
from shared.protocol.models import Scope


@pytest.fixture
def db(tmp_path):
    database = Database.open(tmp_path / "server.db")
    yield database
    database.close()


def test_db_user_lifecycle(db) -> None:
    alice = db.add_user("alice", "$argon2id$hash", quota=100)
    assert alice.name == "alice" and not alice.admin and alice.quota == 100
    assert "hash" not in repr(alice)
    with pytest.raises(UserExists):
        db.add_user("alice", "x")
    db.set_disabled("alice", True)
    db.set_quota("alice", None)
    db.set_password("alice", "new")
    got = db.get_user("alice")
    assert got.disabled and got.quota is None and got.password_hash == "new"
    assert db.get_user_by_id(alice.id) == got
    assert db.get_user("nobody") is None
    with pytest.raises(NoSuchUser):
        db.set_disabled("nobody", True)


def test_db_devices_find_update_revoke(db) -> None:
    alice = db.add_user("alice", "h")
    dev = db.add_device(alice.id, "laptop", (Scope.BACKUP, Scope.RESTORE), ("*",))
    assert len(dev.id) == 32 and dev.scopes == (Scope.BACKUP, Scope.RESTORE)
    assert db.find_device(alice.id, "laptop") == dev
    updated = db.update_device(dev.id, (Scope.MAINTAIN,), ("home",))
    assert updated.scopes == (Scope.MAINTAIN,) and updated.vaults == ("home",)
    db.revoke_device(dev.id)
    assert db.get_device(dev.id).revoked
    assert db.find_device(alice.id, "laptop") is None  # a revoked device is never reused
    assert [d.id for d in db.list_devices("alice")] == [dev.id]
    with pytest.raises(NoSuchDevice):
        db.revoke_device("f" * 32)
    with pytest.raises(NoSuchUser):
        db.list_devices("nobody")


def test_db_vault_names_are_per_user(db) -> None:
    alice, bob = db.add_user("alice", "h"), db.add_user("bob", "h")
    a = db.add_vault(alice.id, "laptop")
    b = db.add_vault(bob.id, "laptop")
    assert a.id != b.id
    with pytest.raises(VaultExists):
        db.add_vault(alice.id, "laptop")
    assert db.get_vault(alice.id, "laptop") == a
    assert db.get_vault(alice.id, "other") is None
    assert [v.name for v in db.list_vaults(bob.id)] == ["laptop"]


def test_db_usage_adds_up_and_never_goes_negative(db) -> None:
    alice = db.add_user("alice", "h")
    v1, v2 = db.add_vault(alice.id, "a"), db.add_vault(alice.id, "b")
    db.add_usage(v1.id, 100, 1)
    db.add_usage(v2.id, 50, 2)
    assert db.user_usage(alice.id) == 150
    db.add_usage(v1.id, -500, -5)
    assert db.get_vault(alice.id, "a").size == 0
    db.set_usage(v2.id, 7, 1)
    assert db.user_usage(alice.id) == 7


def test_db_written_by_a_newer_server_is_refused(tmp_path) -> None:
    Database.open(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(UsageError, match="newer"):
        Database.open(tmp_path / "s.db")


async def test_async_db_runs_the_same_calls(tmp_path) -> None:
    db = await AsyncDatabase.open(tmp_path / "server.db")
    try:
        user = await db.add_user("carol", "h", admin=True)
        vault = await db.add_vault(user.id, "v")
        await db.add_usage(vault.id, 10, 1)
        assert await db.user_usage(user.id) == 10
        assert (await db.get_user("carol")).admin
    finally:
        await db.close()


def test_db_of_an_older_build_gets_new_columns(tmp_path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
                 "password_hash TEXT NOT NULL, admin INTEGER NOT NULL DEFAULT 0, "
                 "disabled INTEGER NOT NULL DEFAULT 0, quota INTEGER, "
                 "created_at INTEGER NOT NULL)")
    conn.execute("INSERT INTO users (name, password_hash, created_at) VALUES ('old', 'h', 1)")
    conn.commit()
    conn.close()
    db = Database.open(tmp_path / "old.db")
    try:
        assert db.get_user("old").tokens_valid_after == 0
    finally:
        db.close()
