"""Exclusion rules for backups: glob patterns on raw byte paths, and CACHEDIR.TAG detection.

Pattern rules: `*`, `?` and `[...]` (`[!...]` negates) stay within one path component, `**`
spans components (`a/**/b` matches a/b, a/x/b, a/x/y/b); a pattern without `/` matches a name
anywhere; with a leading `/` it is anchored at the file system root; otherwise it matches any
trailing part of the path. A trailing `/` is ignored. A matched directory is skipped whole.
"""

import os
import re
from collections.abc import Iterable

from shared.errors import UsageError

CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def _translate(pattern: bytes) -> bytes:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i:i + 1]
        if pattern.startswith(b"**/", i):
            out.append(b"(?:.*/)?")  # zero or more whole components
            i += 3
            continue
        if pattern.startswith(b"**", i):
            out.append(b".*")
            i += 2
            continue
        if c == b"*":
            out.append(b"[^/]*")
        elif c == b"?":
            out.append(b"[^/]")
        elif c == b"[":
            start = i + 1
            negate = pattern.startswith(b"!", start)
            if negate:
                start += 1
            # A `]` right after `[` or `[!` is a member, not the end.
            end = pattern.find(b"]", start + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                # Members are escaped one by one (keeping `-` ranges), so `[[]` or `[&&]` mean
                # what they say in the glob, not in the regex; no class matches `/`.
                body = b"".join(b"-" if b == 0x2D else re.escape(bytes([b]))
                                for b in pattern[start:end])
                out.append(b"(?!/)[" + (b"^" if negate else b"") + body + b"]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return b"".join(out)


class Excluder:
    """Decides whether an absolute byte path is excluded."""

    def __init__(self, patterns: Iterable[str], exact: Iterable[bytes] = ()) -> None:
        parts = []
        for pattern in patterns:
            raw = os.fsencode(pattern.strip())
            if not raw:
                continue
            raw = raw.rstrip(b"/") or b"/"
            body = _translate(raw.lstrip(b"/"))
            part = b"/" + body if raw.startswith(b"/") else b"(?:.*/)?" + body
            try:
                re.compile(part)
            except re.error as exc:  # e.g. a reversed range, [z-a]
                raise UsageError(f"bad exclude pattern {pattern!r}: {exc}") from exc
            parts.append(part)
        self._regex = re.compile(b"(?:" + b"|".join(parts) + b")\\Z", re.S) if parts else None
        self._exact = {os.path.normpath(p) for p in exact}

    def excluded(self, path: bytes) -> bool:
        if path in self._exact:
            return True
        return self._regex is not None and self._regex.match(path) is not None


def load_exclude_file(path: str) -> list[str]:
    """Patterns from a file: one a line; blank lines and lines starting with # are ignored."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]


def is_cache_dir(path: bytes) -> bool:
    """True if `path` holds a valid CACHEDIR.TAG (https://bford.info/cachedir/)."""
    try:
        with open(os.path.join(path, b"CACHEDIR.TAG"), "rb") as f:
            return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False
