"""The CairnError hierarchy: every error Cairn raises on purpose.

Each class has a stable `code` (API error code, log field) and an `exit_code` for the CLI.
Exit codes: 0 ok, 1 finished with item problems, 2 error, 3 damage found, 4 bad passphrase,
5 usage/input error, 130 interrupted.
"""

from typing import ClassVar


class CairnError(Exception):
    """Base of every error we raise on purpose."""

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = 2


class UsageError(CairnError):
    """The user asked for something that cannot be done as asked (bad argument, missing path)."""

    code = "usage"
    exit_code = 5


class StorageError(CairnError):
    code = "storage"


class ObjectNotFound(StorageError):
    code = "not_found"


class ObjectExists(StorageError):
    code = "exists"


class PermissionDenied(StorageError):
    code = "forbidden"


class QuotaExceeded(StorageError):
    code = "quota_exceeded"


class RangeError(StorageError):
    """A ranged read past the end of an object (never a short read)."""

    code = "range"


class PayloadTooLarge(StorageError):
    """An upload bigger than the server accepts for one object."""

    code = "too_large"


class StorageUnavailable(StorageError):
    """Transient: the only retryable storage error."""

    code = "unavailable"


class IntegrityError(CairnError):
    """A hash or MAC did not match: the data is damaged or was tampered with."""

    code = "integrity"
    exit_code = 3


class DamageFound(CairnError):
    """`check` found damage; the message summarises it."""

    code = "damage"
    exit_code = 3


class NotAVault(CairnError):
    code = "not_a_vault"


class VaultExists(CairnError):
    code = "vault_exists"


class WrongPassphrase(CairnError):
    code = "wrong_passphrase"
    exit_code = 4


class UnsupportedFormat(CairnError):
    code = "unsupported_format"


class AuthError(CairnError):
    """Not signed in, a bad or revoked token, or a wrong user name or password."""

    code = "auth"


class TokenExpired(AuthError):
    """The device token is past its expiry: sign in again (renew only works before expiry)."""

    code = "token_expired"


class RateLimited(AuthError):
    """Too many failed sign-ins from this address or for this user; try again later."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until a sign-in is accepted again


class NoSuchSnapshot(CairnError):
    code = "no_such_snapshot"
    exit_code = 5


class Cancelled(CairnError):
    code = "cancelled"
    exit_code = 130


class InternalError(CairnError):
    """An unexpected exception, wrapped at a thread or process boundary."""

    code = "internal"
