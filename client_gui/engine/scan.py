"""File-system side of a backup: the paths to back up, file metadata as tree nodes, opening files.

Owns path normalisation, the owner-name cache, xattrs and the open flags for reading. It must
not touch the vault, keep job state or start threads: backup.py decides what to read and when.
"""

import grp
import logging
import os
import pwd
import stat
from typing import Any

from shared.errors import UsageError
from shared.format.tree import Node, NodeType

logger = logging.getLogger(__name__)


def abs_paths(paths: tuple[str, ...]) -> list[bytes]:
    """Absolute, normalised byte paths; nested duplicates dropped; missing ones refused."""
    out: list[bytes] = []
    for given in paths:
        raw = os.path.normpath(os.path.abspath(os.fsencode(given)))
        if not os.path.lexists(raw):
            raise UsageError(f"path not found: {given}")
        out.append(raw)
    # Sort by components, not bytes: b"/a-b" sorts between b"/a" and b"/a/b" as bytes, which
    # hid b"/a/b" from the check against the last kept path.
    out.sort(key=lambda p: p.split(b"/"))
    kept: list[bytes] = []
    for p in out:
        if kept and (p == kept[-1] or p.startswith(kept[-1].rstrip(b"/") + b"/")):
            continue
        kept.append(p)
    return kept


def path_trie(paths: list[bytes]) -> dict[bytes, Any]:
    """The directories above `paths` as nested dicts by name; a backed-up path maps to None."""
    trie: dict[bytes, Any] = {}
    for p in paths:
        parts = [c for c in p.split(b"/") if c]
        node = trie
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = None
    return trie


def virtual_paths(paths: list[bytes]) -> list[bytes]:
    """The folders above `paths` that a backup walks (b"" for the top, then "/a", "/a/b"...)."""
    out = [b""]
    todo: list[tuple[bytes, dict[bytes, Any]]] = [(b"", path_trie(paths))]
    while todo:
        path, trie = todo.pop()
        for name, sub in trie.items():
            if sub is not None:
                out.append(path + b"/" + name)
                todo.append((path + b"/" + name, sub))
    return out


class OwnerNames:
    """uid/gid -> user/group name, looked up once each ("" when the id has no name)."""

    def __init__(self) -> None:
        self.users: dict[int, str] = {}
        self.groups: dict[int, str] = {}

    def names(self, st: os.stat_result) -> tuple[str, str]:
        user = self.users.get(st.st_uid)
        if user is None:
            try:
                user = pwd.getpwuid(st.st_uid).pw_name
            except KeyError:
                user = ""
            self.users[st.st_uid] = user
        group = self.groups.get(st.st_gid)
        if group is None:
            try:
                group = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                group = ""
            self.groups[st.st_gid] = group
        return user, group


def stat_node(name: bytes, ntype: NodeType, st: os.stat_result, owners: OwnerNames,
              **extra: Any) -> Node:
    """A tree node carrying the metadata of `st`, plus the type-specific `extra` fields."""
    user, group = owners.names(st)
    return Node(name=name, type=ntype, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                gid=st.st_gid, user=user, group=group, mtime_ns=st.st_mtime_ns,
                ctime_ns=st.st_ctime_ns, inode=st.st_ino, device=st.st_dev,
                links=st.st_nlink, **extra)


def read_xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The extended attributes of `path` (not followed if a symlink), sorted; () if unreadable."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in sorted(names):
        try:
            out.append((os.fsencode(n), os.getxattr(path, n, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(out)


def open_file(path: bytes) -> int:
    """Open `path` for reading without following a symlink or updating its atime if allowed."""
    # O_NONBLOCK: if a FIFO took the file's place since lstat, open must not wait for a
    # writer (the type check after it reports the change); regular files ignore it.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        try:
            return os.open(path, flags | noatime)
        except PermissionError:
            pass  # O_NOATIME needs ownership; fall back to a plain open
    return os.open(path, flags)
