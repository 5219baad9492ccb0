"""Progress and problem reporting: one dataclass per job type, the ProgressSink protocol,
the CancelToken, and a throttle so no more than ~10 updates a second reach a UI.
"""

import threading
import time
from dataclasses import dataclass
from typing import Protocol

from shared.errors import Cancelled

UPDATES_PER_SECOND = 10  # like borg's BORG_PROGRESS_FPS: smooth enough, cheap for any UI


@dataclass(frozen=True, slots=True, kw_only=True)
class ItemProblem:
    """A per-file problem that does not stop the job (unreadable, changed while read, ...)."""

    path: str
    message: str
    code: str = "item"


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupProgress:
    files_done: int
    dirs_done: int
    bytes_done: int
    bytes_total: int | None  # None until the estimate scan finishes
    files_total: int | None
    bytes_new: int
    bytes_uploaded: int
    elapsed: float
    current: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreProgress:
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    elapsed: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckProgress:
    phase: str
    done: int
    total: int
    elapsed: float


Progress = BackupProgress | RestoreProgress | CheckProgress


class ProgressSink(Protocol):
    def progress(self, p: Progress) -> None:
        """May be called from any thread."""
        ...

    def problem(self, item: ItemProblem) -> None: ...


class NullSink:
    def progress(self, p: Progress) -> None:
        pass

    def problem(self, item: ItemProblem) -> None:
        pass


class Throttle:
    """Lets an update through at most UPDATES_PER_SECOND times a second (thread-safe)."""

    def __init__(self, rate: float = UPDATES_PER_SECOND) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def ready(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                return False
            self._next = now + self._interval
            return True


class CancelToken:
    """Set from any thread; checked by the engine between files and between chunks."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")
