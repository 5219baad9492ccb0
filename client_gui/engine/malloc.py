"""glibc malloc settings for a process that moves gigabytes through short-lived buffers.

Chunks (up to 4 MiB), sealed blobs and 16 MiB packs are allocated and freed by several threads.
glibc gives each thread that allocates under contention an arena of its own (up to 8 per core)
and keeps freed memory in them; a backup's peak RSS was 250-300 MiB of which the live Python
objects were about 100 MiB. Two arenas (one per core) bring it down without slowing the
pipeline. Trimming while a job runs was measured and dropped: the pages given back are faulted
in again for the next pack or range, and on a VM that is costly. After every pack it took a
backup's peak to ~190 MiB but cost ~20 % of the time; after every 8 MiB range of a restore it
saved ~8 MiB of peak and cost ~0.7 s of system time in 7.5 s. A restore trims once, at its end.

Only glibc has these knobs: elsewhere these functions do nothing.
"""

import ctypes
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

ARENAS = 2
_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# keep_freed: allocations up to this size come from the arenas, not from mmap of their own...
KEEP_MMAP_BELOW = 32 << 20
# ...and an arena keeps up to this much free memory at its top instead of handing it back.
KEEP_TOP = 16 << 20
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


def keep_freed() -> None:
    """For a job that allocates and frees buffers of a few MiB over and over (a restore's pack
    ranges and blobs): keep freed memory for the next buffer instead of giving it back and
    faulting new pages in (costly on this VM). Fixed thresholds also stop glibc from adapting
    them. A 2 GiB restore had half the page faults (~120k against ~250k) and took ~4 % less
    time at the same peak; in a backup the peak grew by 7-10 MiB, so backups do not call it.
    The settings are the whole process's and stay: the `restore` command calls it, a process
    that only restores; a long-lived app does not."""
    libc = _glibc()
    if libc and not (libc.mallopt(_M_MMAP_THRESHOLD, KEEP_MMAP_BELOW)
                     and libc.mallopt(_M_TRIM_THRESHOLD, KEEP_TOP)):
        logger.debug("mallopt(M_MMAP_THRESHOLD, M_TRIM_THRESHOLD) refused")


def trim() -> None:
    """Give the free memory at the top and in the middle of every arena back to the system."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
