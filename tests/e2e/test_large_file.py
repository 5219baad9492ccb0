"""A file over 4 GiB (sparse, with data at both ends and across the 4 GiB boundary)
backs up and restores byte for byte through the real CLI, and stays sparse on restore."""

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult

SIZE = (4 << 30) + (300 << 20)  # 4.3 GiB
PIECES = {0: b"head" * 50_000, (4 << 30) - 100_000: os.urandom(300_000), SIZE - 5: b"tail!"}


def digest(path: Path) -> str:
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.mark.slow
def test_large_sparse_file_round_trips(cairn: Callable[..., CliResult], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "disk.img"
    with open(big, "wb") as f:
        f.truncate(SIZE)
        for offset, data in PIECES.items():
            f.seek(offset)
            f.write(data)
    env = {"CAIRN_VAULT": str(tmp_path / "vault"), "CAIRN_PASSPHRASE": "pw"}
    assert cairn("init", env=env).code == 0
    res = cairn("--json", "backup", str(src), env=env, timeout=600)
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout.splitlines()[-1])
    assert summary["bytes"] == SIZE
    assert summary["stored_bytes"] < 8 << 20  # the zeros deduplicate and compress away
    target = tmp_path / "out"
    res = cairn("restore", "latest", "--target", str(target), env=env, timeout=600)
    assert res.code == 0, res.stderr
    out = target / str(big).lstrip("/")
    assert out.stat().st_size == SIZE
    assert out.stat().st_blocks * 512 < 64 << 20  # still sparse
    assert digest(out) == digest(big)
