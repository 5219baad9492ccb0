"""What the threads of one backup run share: the first error, cancellation, counters, problems.

The walker, the file readers, the sealers and the upload callbacks all record here, and each
checks it between steps so the first error stops them all. It must not do I/O or own threads.
"""

import logging
import threading
from dataclasses import dataclass, field

from client_gui.engine.progress import CancelToken, ItemProblem

logger = logging.getLogger(__name__)


@dataclass
class BackupStats:
    """The running counts of a backup (what the snapshot holds so far); updated under stats_lock."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0
    new_files: int = 0
    changed_files: int = 0
    unchanged_files: int = 0
    new_blobs: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    bytes_read: int = 0


@dataclass
class BackupState:
    """The shared, mutable state of one backup run (never passed outside the engine)."""

    cancel: CancelToken
    error: BaseException | None = None
    stats: BackupStats = field(default_factory=BackupStats)
    stats_lock: threading.Lock = field(default_factory=threading.Lock)  # also for `problems`
    problems: list[ItemProblem] = field(default_factory=list)

    def check(self) -> None:
        """Raise the run's first error, or Cancelled if the caller cancelled."""
        if self.error is not None:
            raise self.error
        self.cancel.check()

    def fail(self, exc: BaseException) -> None:
        """Record `exc` as the run's error unless one came first; every thread stops at check."""
        if self.error is None:
            self.error = exc
