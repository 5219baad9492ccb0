"""Writing large files past the page cache (O_DIRECT), for pack files and restored files.

On the VM this project is measured on, a page the page cache has not used lately costs about
2.4 ms per MiB the first time it is touched (the host has taken it back): `dd` of 2 GiB through
the page cache took 5-6 s of system time, and with O_DIRECT 0.2 s (1.4 s of wall time, the
disk's own speed). Elsewhere it still spares the user's page cache, as `POSIX_FADV_DONTNEED`
does after the fact.

O_DIRECT wants the file offset, the length and the memory aligned: callers write whole pages
from page-aligned buffers (anonymous `mmap`s) and send the rest through an ordinary descriptor
of the same file. Where the system has no O_DIRECT, or a file system or device refuses it
(EINVAL: tmpfs before Linux 6.6, some network file systems, other alignment needs), everything
goes through the page cache as before.
"""

import errno
import logging
import mmap
import os
import threading
from typing import Final

logger = logging.getLogger(__name__)

ALIGN: Final = max(4096, mmap.PAGESIZE)  # offsets, lengths and buffers of direct writes
O_DIRECT: Final = getattr(os, "O_DIRECT", 0)  # 0: not on this system
PIECE = 1 << 20  # the most a direct write takes at once: the size of the pooled buffers
_KEEP = 4  # pooled buffers kept for the next writes (a new one is new pages to fault in)
_pool: list[mmap.mmap] = []
_pool_lock = threading.Lock()


def anonymous_buffer(size: int) -> mmap.mmap:
    """Zeroed private memory, page-aligned, whose pages exist only once written."""
    if hasattr(mmap, "MAP_PRIVATE"):
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mmap.mmap(-1, size)  # Windows: the paging file backs it


def take_buffer() -> mmap.mmap:
    """A page-aligned buffer of at least PIECE bytes, from the pool if it has one."""
    with _pool_lock:
        while _pool:
            buffer = _pool.pop()
            if len(buffer) >= PIECE:
                return buffer
    return anonymous_buffer(PIECE)


def give_back(buffer: mmap.mmap) -> None:
    """Return a buffer from take_buffer. One the pool does not keep is left to the garbage
    collector, not closed: a view of it may still live (in a traceback, say)."""
    with _pool_lock:
        if len(_pool) < _KEEP:
            _pool.append(buffer)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of `data` at `offset` (pwrite may write less than asked)."""
    view = memoryview(data)
    if not hasattr(os, "pwrite"):  # Windows
        os.lseek(fd, offset, os.SEEK_SET)
        while view:
            view = view[os.write(fd, view):]
        return
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def open_direct(path: bytes | str | os.PathLike[str], flags: int) -> int:
    """A second descriptor of the existing file `path` with O_DIRECT; -1 if there is none
    (no O_DIRECT here, or the file system refuses it)."""
    if not O_DIRECT:
        return -1
    try:
        return os.open(path, flags | O_DIRECT)
    except OSError as exc:
        logger.debug("no direct writes to %s (%s)", path, exc.strerror)
        return -1


def write_pages(direct: int, fd: int, pages: memoryview, offset: int) -> bool:
    """Write `pages` (a view of a page-aligned buffer, a multiple of ALIGN long, at an aligned
    `offset`) through the O_DIRECT descriptor `direct`. What a direct write refuses (EINVAL) or
    leaves short is written through `fd`, the same file's ordinary descriptor, and False
    tells the caller to send the rest of the file that way too."""
    try:
        written = os.pwrite(direct, pages, offset)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        logger.info("direct writes refused (%s): through the page cache", exc.strerror)
        written = 0
    if written < len(pages):
        pwrite_all(fd, pages[written:], offset + written)
        return False
    return True
