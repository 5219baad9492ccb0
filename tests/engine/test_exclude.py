"""Exclusion rules: glob patterns on raw byte paths, exclude files, and CACHEDIR.TAG detection."""

from pathlib import Path

import pytest

from client_gui.engine.exclude import (
    CACHEDIR_SIGNATURE,
    Excluder,
    is_cache_dir,
    load_exclude_file,
)
from shared.errors import UsageError

# (pattern, path, excluded?)
PATTERN_CASES: list[tuple[str, bytes, bool]] = [
    # A pattern without "/" matches a name at any depth, and only a whole name.
    ("*.tmp", b"/home/me/a.tmp", True),
    ("*.tmp", b"/a.tmp", True),
    ("*.tmp", b"/home/me/a.tmp.keep", False),
    ("*.tmp", b"/home/me.tmp/a", False),  # the folder itself would be matched on its own path
    ("*.tmp", b"/home/me.tmp", True),
    ("node_modules", b"/src/app/node_modules", True),
    ("node_modules", b"/src/app/node_modules2", False),
    ("node_modules", b"/src/app/my_node_modules", False),
    (".*", b"/home/me/.cache", True),
    (".*", b"/home/me/cache", False),
    # `*` never crosses a "/".
    ("a*b", b"/x/a/b", False),
    ("a*b", b"/x/a-long-b", True),
    ("a*b", b"/x/ab", True),
    # A leading "/" anchors at the root.
    ("/home/*/Downloads", b"/home/me/Downloads", True),
    ("/home/*/Downloads", b"/home/me/x/Downloads", False),
    ("/home/*/Downloads", b"/mnt/home/me/Downloads", False),
    ("/tmp", b"/tmp", True),
    ("/tmp", b"/var/tmp", False),
    ("/", b"/", True),
    ("/", b"/etc", False),
    # A relative pattern with "/" matches any trailing run of whole components.
    ("me/Downloads", b"/home/me/Downloads", True),
    ("me/Downloads", b"/home/someme/Downloads", False),
    ("build/*.o", b"/src/build/main.o", True),
    ("build/*.o", b"/src/build/sub/main.o", False),
    # `**` spans components, including none.
    ("/src/**/*.o", b"/src/main.o", True),
    ("/src/**/*.o", b"/src/a/b/c/main.o", True),
    ("/src/**/*.o", b"/other/a/main.o", False),
    ("a/**/b", b"/r/a/b", True),
    ("a/**/b", b"/r/a/x/y/b", True),
    ("a/**/b", b"/r/a/xb", False),
    ("a/**/b", b"/r/ab", False),
    ("**/foo", b"/r/x/foo", True),
    ("**/foo", b"/r/xfoo", False),
    ("/data/**", b"/data/a/b/c", True),
    ("/data/**", b"/database", False),
    ("x**y", b"/x/1/2/y", True),
    # `?` is exactly one character, never "/".
    ("file?.txt", b"/d/file1.txt", True),
    ("file?.txt", b"/d/file.txt", False),
    ("file?.txt", b"/d/file12.txt", False),
    ("a?b", b"/d/a/b", False),
    # Character classes, ranges, negation; a class never matches "/".
    ("file[0-9].log", b"/var/file7.log", True),
    ("file[0-9].log", b"/var/filex.log", False),
    ("file[!0-9].log", b"/var/filex.log", True),
    ("file[!0-9].log", b"/var/file7.log", False),
    ("a[!x]b", b"/d/a/b", False),
    ("a[!x]b", b"/d/ayb", True),
    ("[ab]c", b"/d/bc", True),
    ("[ab]c", b"/d/cc", False),
    ("x[]]y", b"/d/x]y", True),
    ("x[!]]y", b"/d/x]y", False),
    ("x[!]]y", b"/d/xzy", True),
    ("x[[]y", b"/d/x[y", True),
    ("x[&&]y", b"/d/x&y", True),
    ("x[a-]y", b"/d/x-y", True),
    ("x[\\]y", b"/d/x\\y", True),
    ("x[y", b"/d/x[y", True),  # an unclosed "[" is literal
    # Regex metacharacters are literal.
    ("a.b", b"/d/axb", False),
    ("a+b(c)", b"/d/a+b(c)", True),
    ("$HOME", b"/d/$HOME", True),
    # A trailing "/" is ignored: the name is matched whatever its type.
    ("cache/", b"/home/me/cache", True),
    ("/var/cache/", b"/var/cache", True),
    ("cache/", b"/home/me/cache/x", False),
    # Surrounding white space and empty patterns are ignored.
    ("  *.bak  ", b"/d/x.bak", True),
    ("", b"/d/x", False),
    # Names may hold newlines.
    ("*.tmp", b"/d/line\nbreak.tmp", True),
    ("line*", b"/d/line\nbreak", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), PATTERN_CASES)
def test_excluder_matches_pattern(pattern: str, path: bytes, expected: bool) -> None:
    assert Excluder([pattern]).excluded(path) is expected


def test_excluder_matches_any_of_several_patterns() -> None:
    ex = Excluder(["*.tmp", "/var/cache", "build/**"])
    assert ex.excluded(b"/a/x.tmp")
    assert ex.excluded(b"/var/cache")
    assert ex.excluded(b"/src/build/a/b")
    assert not ex.excluded(b"/src/main.c")


def test_excluder_without_rules_excludes_nothing() -> None:
    ex = Excluder([])
    assert not ex.excluded(b"/")
    assert not ex.excluded(b"/anything/at/all")


@pytest.mark.parametrize(("exact", "path", "expected"), [
    (b"/srv/vault", b"/srv/vault", True),
    (b"/srv/vault/", b"/srv/vault", True),  # normalised
    (b"/srv/./vault", b"/srv/vault", True),
    (b"/srv/vault", b"/srv/vault2", False),
    (b"/srv/vault", b"/srv", False),
    (b"/srv/vault", b"/srv/vault/packs", False),  # the walk never enters an excluded folder
])
def test_excluder_exact_paths(exact: bytes, path: bytes, expected: bool) -> None:
    assert Excluder([], [exact]).excluded(path) is expected


def test_excluder_matches_non_utf8_paths() -> None:
    # A pattern with an undecodable byte arrives as a surrogate-escaped str (os.fsdecode).
    pattern = b"caf\xe9*".decode("utf-8", "surrogateescape")
    ex = Excluder([pattern, "*.tmp"], [b"/d/\xff\xfe"])
    assert ex.excluded(b"/d/caf\xe9 menu")
    assert not ex.excluded(b"/d/caf\xc3\xa9 menu")
    assert ex.excluded(b"/d/\x80\x81.tmp")
    assert ex.excluded(b"/d/\xff\xfe")
    assert not ex.excluded(b"/d/\xff")


def test_excluder_rejects_bad_pattern_as_usage_error() -> None:
    with pytest.raises(UsageError, match=r"z-a"):
        Excluder(["file[z-a]"])


def test_load_exclude_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "excludes"
    path.write_bytes(b"# a comment\n*.tmp\n\n   \n/var/cache\n#another\nname with space\n"
                     b"caf\xe9\nlast-no-newline")
    patterns = load_exclude_file(str(path))
    assert patterns == ["*.tmp", "/var/cache", "name with space",
                        b"caf\xe9".decode("utf-8", "surrogateescape"), "last-no-newline"]
    ex = Excluder(patterns)
    assert ex.excluded(b"/x/caf\xe9")
    assert ex.excluded(b"/x/a.tmp")


def test_load_exclude_file_of_crlf_lines_gives_working_patterns(tmp_path: Path) -> None:
    path = tmp_path / "excludes"
    path.write_bytes(b"# windows\r\n*.tmp\r\n\r\n")
    ex = Excluder(load_exclude_file(str(path)))
    assert ex.excluded(b"/x/a.tmp")


def test_is_cache_dir_with_valid_signature(tmp_path: Path) -> None:
    (tmp_path / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n# made by a tool\n")
    assert is_cache_dir(bytes(tmp_path))


def test_is_cache_dir_with_signature_only(tmp_path: Path) -> None:
    (tmp_path / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE)
    assert is_cache_dir(bytes(tmp_path))


@pytest.mark.parametrize("content", [
    b"",
    b"Signature: wrong",
    CACHEDIR_SIGNATURE[:-1],
    b"x" + CACHEDIR_SIGNATURE,
    CACHEDIR_SIGNATURE.lower(),
])
def test_is_cache_dir_with_invalid_signature(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "CACHEDIR.TAG").write_bytes(content)
    assert not is_cache_dir(bytes(tmp_path))


def test_is_cache_dir_without_tag(tmp_path: Path) -> None:
    assert not is_cache_dir(bytes(tmp_path))
    assert not is_cache_dir(bytes(tmp_path / "missing"))


def test_is_cache_dir_with_tag_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "CACHEDIR.TAG").mkdir()
    assert not is_cache_dir(bytes(tmp_path))
