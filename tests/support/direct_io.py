"""Watching and breaking O_DIRECT writes (shared/storage/direct.py) in tests, through os.open
and os.pwrite: which descriptors are direct, how much went each way, and direct writes that
are refused or come back short."""

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.storage import direct

# How a test makes direct writes fail: at open (EINVAL), at a write (EINVAL), or a short write.
FAILURES = ("open refused", "write refused", "short write")


@dataclass
class DirectWrites:
    """What went through os.open and os.pwrite while watched."""

    fds: set[int] = field(default_factory=set)  # descriptors open with O_DIRECT now
    opened: list[str] = field(default_factory=list)  # names of the files opened so
    direct: int = 0  # bytes written through them
    cached: int = 0  # bytes written through other descriptors


def direct_works(folder: Path) -> bool:
    """Whether the file system of `folder` takes O_DIRECT writes (tmpfs before Linux 6.6, for
    one, does not)."""
    probe = folder / "direct-probe"
    probe.touch()
    fd = direct.open_direct(probe, os.O_WRONLY)
    try:
        if fd < 0:
            return False
        buffer = direct.anonymous_buffer(direct.ALIGN)
        try:
            os.pwrite(fd, memoryview(buffer), 0)
            return True
        except OSError:
            return False
    finally:
        if fd >= 0:
            os.close(fd)
        probe.unlink()


def watch_direct_writes(monkeypatch: pytest.MonkeyPatch, fail: str | None = None
                        ) -> DirectWrites:
    """Record direct and cached writes from now on; with `fail` (one of FAILURES), make the
    direct ones fail that way. Skips the test where the system has no O_DIRECT."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        pytest.skip("no O_DIRECT on this system")
    assert fail is None or fail in FAILURES
    real_open, real_pwrite, real_close = os.open, os.pwrite, os.close
    seen = DirectWrites()

    def fake_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & flag and fail == "open refused":
            raise OSError(errno.EINVAL, "Invalid argument")
        fake_flags = flags & ~flag if fail else flags  # a faked failure may use any buffer
        fd = real_open(path, fake_flags, *args, **kwargs)  # type: ignore[arg-type]
        if flags & flag:
            seen.fds.add(fd)
            seen.opened.append(os.path.basename(os.fsdecode(path)))  # type: ignore[arg-type]
        return fd

    def fake_pwrite(fd: int, data: memoryview, offset: int) -> int:
        if fd in seen.fds:
            if fail == "write refused":
                raise OSError(errno.EINVAL, "Invalid argument")
            if fail == "short write":
                data = data[:4096]
            n = real_pwrite(fd, data, offset)
            assert offset % 4096 == 0 and n % 4096 == 0, "an unaligned direct write"
            seen.direct += n
            return n
        n = real_pwrite(fd, data, offset)
        seen.cached += n
        return n

    def fake_close(fd: int) -> None:
        seen.fds.discard(fd)  # its number may be reused by an ordinary descriptor
        real_close(fd)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "pwrite", fake_pwrite)
    monkeypatch.setattr(os, "close", fake_close)
    return seen
