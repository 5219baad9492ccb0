"""glibc malloc settings for a process that moves gigabytes through short-lived buffers.

Chunks (up to 4 MiB), sealed blobs and 16 MiB packs are allocated and freed by several threads.
glibc gives each thread that allocates under contention an arena of its own (up to 8 per core)
and keeps freed memory in them; a backup's peak RSS was 250-300 MiB of which the live Python
objects were about 100 MiB. Two arenas (one per core) bring it down without slowing the
pipeline. Trimming while a job runs was measured and dropped: the pages given back are faulted
in again for the next pack or range, and on a VM that is costly. After every pack it took a
backup's peak to ~190 MiB but cost ~20 % of the time; after every 8 MiB range of a restore it
saved ~8 MiB of peak and cost ~0.7 s of system time in 7.5 s. A restore trims once, at its end.

Only glibc has these knobs: elsewhere both functions do nothing.
"""

import ctypes
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h
_libc: Any = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None)  # the C library this process already uses
                if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt"):
                    _libc = libc
            except OSError:
                pass
    return _libc


def tune() -> None:
    """Limit malloc to ARENAS arenas; call at start, before threads allocate."""
    libc = _glibc()
    if libc and not libc.mallopt(_M_ARENA_MAX, ARENAS):
        logger.debug("mallopt(M_ARENA_MAX) refused")


def trim() -> None:
    """Give the free memory at the top and in the middle of every arena back to the system."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
