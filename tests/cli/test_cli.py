"""The `cairn` command line, run as a real subprocess: the contract scripts rely on, every
bad-input path (one clear line, a non-zero exit code, no traceback, nothing written)."""

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from tests.conftest import CliResult, make_tree

PASS = "correct horse battery staple"
Cairn = Callable[..., CliResult]


def assert_one_line_error(res: CliResult, code: int, text: str) -> None:
    assert res.code == code, (res.code, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert text in lines[0], lines[0]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {
        "a.txt": "hello\n" * 100,
        "docs/report.odt": os.urandom(300_000),
        "docs/notes.md": "# notes\n",
        "empty": b"",
        "sub/deeper/x.bin": os.urandom(2000),
    })


@pytest.fixture
def env(tmp_path: Path, cairn: Cairn) -> dict[str, str]:
    e = {"CAIRN_VAULT": str(tmp_path / "vault"), "CAIRN_PASSPHRASE": PASS}
    res = cairn("--json", "init", env=e)
    assert res.code == 0, res.stderr
    e["RECOVERY"] = json.loads(res.stdout)["recovery_key"]
    return e


def restored_path(target: Path, src: Path) -> Path:
    return target / str(src).lstrip("/")


def tree_bytes(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "dir"
    return out


# ---- the contract -----------------------------------------------------------------------

def test_cli_backup_snapshots_restore_round_trip(cairn: Cairn, env: dict[str, str], src: Path,
                                                 tmp_path: Path) -> None:
    res = cairn("backup", str(src), env=env)
    assert res.code == 0, res.stderr
    assert "saved" in res.stdout
    res = cairn("snapshots", "--json", env=env)  # --json after the command works too
    assert res.code == 0, res.stderr
    snaps = json.loads(res.stdout)
    assert len(snaps) == 1
    assert {"id", "time", "paths"} <= snaps[0].keys()
    assert snaps[0]["paths"] == [str(src)]
    target = tmp_path / "out"
    res = cairn("restore", "latest", "--target", str(target), env=env)
    assert res.code == 0, res.stderr
    assert tree_bytes(restored_path(target, src)) == tree_bytes(src)
    target2 = tmp_path / "out2"
    res = cairn("restore", snaps[0]["id"][:8], "--target", str(target2), "--path",
                str(src / "docs"), env=env)
    assert res.code == 0, res.stderr
    got = restored_path(target2, src)
    assert (got / "docs" / "report.odt").read_bytes() == (src / "docs/report.odt").read_bytes()
    assert not (got / "a.txt").exists()


def test_cli_backup_json_lines_end_with_summary(cairn: Cairn, env: dict[str, str],
                                                src: Path) -> None:
    res = cairn("--json", "backup", str(src), env=env)
    assert res.code == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert lines[-1]["type"] == "summary"
    assert lines[-1]["files"] == 5
    assert len(lines[-1]["snapshot_id"]) == 64


def test_cli_second_backup_reads_nothing_unchanged(cairn: Cairn, env: dict[str, str],
                                                   src: Path) -> None:
    assert cairn("backup", str(src), env=env).code == 0
    res = cairn("--json", "backup", str(src), env=env)
    summary = json.loads(res.stdout.splitlines()[-1])
    assert summary["unchanged_files"] == 5
    assert summary["new_files"] == summary["changed_files"] == 0
    # Only tree blobs may be new: the folders above src (e.g. /tmp) change under us.
    assert summary["new_bytes"] < 16 * 1024


def test_cli_recovery_key_opens_the_vault(cairn: Cairn, env: dict[str, str]) -> None:
    res = cairn("snapshots", env={**env, "CAIRN_PASSPHRASE": env["RECOVERY"]})
    assert res.code == 0, res.stderr


def test_cli_passphrase_file(cairn: Cairn, env: dict[str, str], tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASS + "\n")
    no_env = {**env, "CAIRN_PASSPHRASE": ""}
    assert cairn("--passphrase-file", str(pwfile), "snapshots", env=no_env).code == 0
    assert cairn("snapshots", env={**no_env, "CAIRN_PASSPHRASE_FILE": str(pwfile)}).code == 0


def test_cli_ls_find_diff_stats(cairn: Cairn, env: dict[str, str], src: Path) -> None:
    assert cairn("backup", str(src), env=env).code == 0
    (src / "a.txt").write_text("changed\n")
    (src / "new.txt").write_text("new\n")
    assert cairn("backup", str(src), env=env).code == 0
    res = cairn("ls", "latest", str(src / "docs"), env=env)
    assert res.code == 0, res.stderr
    assert f"{src}/docs/notes.md" in res.stdout
    res = cairn("--json", "find", "*.txt", env=env)
    found = [json.loads(line) for line in res.stdout.splitlines()]
    assert sorted(f["path"] for f in found) == sorted(
        [f"{src}/a.txt", f"{src}/a.txt", f"{src}/new.txt"])
    snaps = json.loads(cairn("--json", "snapshots", env=env).stdout)
    res = cairn("diff", snaps[0]["id"], snaps[1]["id"], env=env)
    assert res.code == 0, res.stderr
    assert f"M    {src}/a.txt" in res.stdout
    assert f"+    {src}/new.txt" in res.stdout
    res = cairn("--json", "stats", env=env)
    stats = json.loads(res.stdout)
    assert stats["snapshots"] == 2 and stats["files"] == 11


def test_cli_forget_and_prune(cairn: Cairn, env: dict[str, str], src: Path) -> None:
    for i in range(3):
        (src / "a.txt").write_text(f"version {i}\n" * 1000)
        assert cairn("backup", str(src), env=env).code == 0
    res = cairn("forget", "--keep-last", "1", "--prune", "--grace", "0", env=env)
    assert res.code == 0, res.stderr
    assert len(json.loads(cairn("--json", "snapshots", env=env).stdout)) == 1
    res = cairn("check", "--read-data", env=env)
    assert res.code == 0, res.stdout + res.stderr


def test_cli_key_add_list_remove(cairn: Cairn, env: dict[str, str]) -> None:
    res = cairn("--json", "key", "add", env={**env, "CAIRN_NEW_PASSPHRASE": "second one"})
    assert res.code == 0, res.stderr
    new_id = json.loads(res.stdout)["id"]
    assert cairn("snapshots", env={**env, "CAIRN_PASSPHRASE": "second one"}).code == 0
    slots = json.loads(cairn("--json", "key", "list", env=env).stdout)
    assert len(slots) == 3 and sum(s["current"] for s in slots) == 1
    assert cairn("key", "remove", new_id[:8], env=env).code == 0
    res = cairn("snapshots", env={**env, "CAIRN_PASSPHRASE": "second one"})
    assert_one_line_error(res, 4, "wrong passphrase")
    current = next(s for s in slots if s["current"])
    assert_one_line_error(cairn("key", "remove", current["id"][:8], env=env), 5, "in use")


def test_cli_cache_is_only_a_cache(cairn: Cairn, env: dict[str, str], src: Path,
                                   tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    e = {**env, "CAIRN_CACHE_DIR": str(cache)}
    assert cairn("backup", str(src), env=e).code == 0
    assert any(cache.rglob("*"))
    for f in cache.rglob("*"):
        if f.is_file() and f.name != "CACHEDIR.TAG":
            f.write_bytes(b"garbage")  # damaged entries are fetched again
    assert cairn("backup", str(src), env=e).code == 0
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    assert cairn("snapshots", env=e).code == 0
    assert cairn("restore", "latest", "--target", str(tmp_path / "r"), env=e).code == 0


# ---- bad input ----------------------------------------------------------------------------

def test_cli_wrong_passphrase(cairn: Cairn, env: dict[str, str]) -> None:
    res = cairn("snapshots", env={**env, "CAIRN_PASSPHRASE": "nope"})
    assert_one_line_error(res, 4, "wrong passphrase")


def test_cli_no_passphrase_without_terminal(cairn: Cairn, env: dict[str, str]) -> None:
    res = cairn("snapshots", env={**env, "CAIRN_PASSPHRASE": ""})
    assert_one_line_error(res, 4, "no passphrase")


def test_cli_missing_backup_path_writes_nothing(cairn: Cairn, env: dict[str, str],
                                                tmp_path: Path, src: Path) -> None:
    res = cairn("backup", str(src), str(tmp_path / "nope"), env=env)
    assert_one_line_error(res, 5, "path not found")
    assert json.loads(cairn("--json", "snapshots", env=env).stdout) == []
    assert not list((tmp_path / "vault" / "packs").rglob("*")) or all(
        p.is_dir() for p in (tmp_path / "vault" / "packs").rglob("*"))


def test_cli_folder_not_a_vault(cairn: Cairn, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file").write_text("x")
    res = cairn("--vault", str(tmp_path / "plain"), "snapshots", env={"CAIRN_PASSPHRASE": PASS})
    assert_one_line_error(res, 2, "not a Cairn vault")


def test_cli_vault_folder_missing(cairn: Cairn, tmp_path: Path) -> None:
    res = cairn("--vault", str(tmp_path / "nowhere"), "snapshots",
                env={"CAIRN_PASSPHRASE": PASS})
    assert_one_line_error(res, 2, "does not exist")


def test_cli_no_vault_given(cairn: Cairn) -> None:
    assert_one_line_error(cairn("snapshots"), 5, "no vault given")


def test_cli_init_refuses_existing_vault_and_non_empty_folder(cairn: Cairn, env: dict[str, str],
                                                              tmp_path: Path) -> None:
    assert_one_line_error(cairn("init", env=env), 2, "already exists")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    res = cairn("--vault", str(tmp_path / "full"), "init", env={"CAIRN_PASSPHRASE": PASS})
    assert_one_line_error(res, 5, "not empty")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_cli_unknown_snapshot(cairn: Cairn, env: dict[str, str], src: Path,
                              tmp_path: Path) -> None:
    assert_one_line_error(cairn("restore", "latest", "--target", str(tmp_path / "o"), env=env),
                          5, "no snapshot")
    assert cairn("backup", str(src), env=env).code == 0
    res = cairn("restore", "deadbeef", "--target", str(tmp_path / "o"), env=env)
    assert_one_line_error(res, 5, "no snapshot")
    res = cairn("restore", "zz", "--target", str(tmp_path / "o"), env=env)
    assert_one_line_error(res, 5, "bad snapshot ID")


def test_cli_restore_path_not_in_snapshot(cairn: Cairn, env: dict[str, str], src: Path,
                                          tmp_path: Path) -> None:
    assert cairn("backup", str(src), env=env).code == 0
    res = cairn("restore", "latest", "--target", str(tmp_path / "o"), "--path", "/no/such",
                env=env)
    assert_one_line_error(res, 5, "not found in snapshot")


def test_cli_newer_vault_format_refused(cairn: Cairn, env: dict[str, str],
                                        tmp_path: Path) -> None:
    from shared.hashing import object_id

    config_dir = tmp_path / "vault" / "config"
    (old,) = config_dir.iterdir()
    body = msgpack.unpackb(old.read_bytes())
    body["v"] = 99
    data = msgpack.packb(body)
    old.unlink()
    (config_dir / object_id(data).hex()).write_bytes(data)
    assert_one_line_error(cairn("snapshots", env=env), 2, "upgrade cairn")


def test_cli_bad_arguments_exit_non_zero(cairn: Cairn, env: dict[str, str]) -> None:
    res = cairn("forget", env=env)
    assert_one_line_error(res, 5, "--keep")
    res = cairn("prune", "--grace", "soon", env=env)
    assert res.code == 2 and "Traceback" not in res.stderr
    assert "bad duration" in res.stderr


def test_cli_damage_found_exits_3(cairn: Cairn, env: dict[str, str], src: Path,
                                  tmp_path: Path) -> None:
    assert cairn("backup", str(src), env=env).code == 0
    packs = sorted((tmp_path / "vault" / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    biggest = [p for p in packs if p.is_file()][-1]
    data = bytearray(biggest.read_bytes())
    data[100] ^= 0xFF
    biggest.write_bytes(bytes(data))
    res = cairn("check", env=env)
    assert res.code == 3, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "DAMAGE" in res.stdout
    assert str(src) in res.stdout  # names the files affected


def test_cli_unreadable_file_exits_1_with_summary(cairn: Cairn, env: dict[str, str],
                                                   src: Path) -> None:
    if os.geteuid() == 0:
        # root reads any file of ours; a write-only sysctl refuses even root.
        unreadable = Path("/proc/sys/vm/compact_memory")
        if not unreadable.exists():
            pytest.skip("no file here that root cannot read")
    else:
        unreadable = src / "secret.txt"
        unreadable.write_text("private")
        unreadable.chmod(0)
    res = cairn("backup", str(src), str(unreadable), env=env)
    assert res.code == 1, res.stdout + res.stderr
    assert unreadable.name in res.stderr and "cannot read" in res.stderr
    assert "could not be backed up" in res.stdout
    assert "Traceback" not in res.stderr
    snaps = json.loads(cairn("--json", "snapshots", env=env).stdout)
    assert len(snaps) == 1 and snaps[0]["stats"]["files"] == 5


def test_cli_init_compression_level(cairn: Cairn, tmp_path: Path) -> None:
    """`init --compression` sets the zstd level of the vault's data (default 2, 0 = none);
    a level out of range is one line and exit 5 (usage), and creates nothing."""
    import asyncio

    from client_gui.engine.vault import Vault
    from shared.compression import DEFAULT_BLOB_LEVEL
    from shared.storage.local import LocalStore

    def level(folder: Path) -> int:
        config, _ = asyncio.run(Vault.read_config(LocalStore(folder)))
        return config.zstd_level

    env = {"CAIRN_PASSPHRASE": PASS}
    assert cairn("--vault", str(tmp_path / "a"), "init", env=env).code == 0
    assert level(tmp_path / "a") == DEFAULT_BLOB_LEVEL == 2
    assert cairn("--vault", str(tmp_path / "b"), "init", "--compression", "0", env=env).code == 0
    assert level(tmp_path / "b") == 0
    assert cairn("--vault", str(tmp_path / "c"), "init", "--compression", "9", env=env).code == 0
    assert level(tmp_path / "c") == 9
    for bad in ("20", "-1"):
        res = cairn("--vault", str(tmp_path / "d"), "init", "--compression", bad, env=env)
        assert_one_line_error(res, 5, "--compression must be between 0 (none) and 19")
        assert not (tmp_path / "d").exists()
