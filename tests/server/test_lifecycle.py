"""Server start (unfinished uploads removed, usage recounted) and log records."""

from server.app import create_app
from server.db.database import Database
from shared.hashing import object_id
from shared.ids import ObjectKey, ObjectKind
from shared.storage.local import LocalStore


async def test_start_recounts_usage_and_removes_temp_files(server_config, aiohttp_client) -> None:
    db = Database.open(server_config.db_path)
    user = db.add_user("alice", "hash")
    record = db.add_vault(user.id, "laptop")
    db.set_usage(record.id, 999, 7)  # as if a crash lost or doubled some counts
    db.close()
    root = server_config.vaults_dir / str(user.id) / "laptop"
    store = await LocalStore.create(root, fsync=False)
    data = b"an encrypted object"
    await store.put(ObjectKey.of(ObjectKind.INDEX, object_id(data)), data)
    (root / "tmp" / "0123abcd.tmp").write_bytes(b"half an upload")

    await aiohttp_client(create_app(server_config))

    db = Database.open(server_config.db_path)
    vault = db.get_vault(user.id, "laptop")
    db.close()
    assert (vault.size, vault.objects) == (len(data), 1)
    assert list((root / "tmp").iterdir()) == []


def test_log_records_carry_the_request_id() -> None:
    import json
    import logging

    from server.logs import JsonFormatter, current_request_id

    record = logging.LogRecord("server.x", logging.INFO, __file__, 1, "stored %s", ("k",), None)
    token = current_request_id.set("abc123")
    try:
        entry = json.loads(JsonFormatter().format(record))
    finally:
        current_request_id.reset(token)
    assert entry["request_id"] == "abc123" and entry["message"] == "stored k"
