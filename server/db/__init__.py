"""The server's metadata: users, devices, vaults and usage (SQLite by default)."""

from server.db.database import (
    AsyncDatabase,
    Database,
    DeviceRecord,
    NoSuchDevice,
    NoSuchUser,
    UserExists,
    UserRecord,
    VaultRecord,
)

__all__ = ["AsyncDatabase", "Database", "DeviceRecord", "NoSuchDevice", "NoSuchUser",
           "UserExists", "UserRecord", "VaultRecord"]
