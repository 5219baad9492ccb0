"""The benchmark harness's own logic (bench/): seeded data, the undoable day of work, the
measuring of one command, the profile folding and the tables. Tiny sizes only; the benchmark
itself never runs in the test suite."""

import hashlib
import os
import sys
from pathlib import Path

import pytest

from bench import dataset, measure, mutation, page, profiling, report


def fingerprint(root: Path) -> dict[str, str]:
    """Relative path -> content hash (files) or link target (symlinks) or 'dir'."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> dataset.Dataset:
    return dataset.generate_home(tmp_path_factory.mktemp("a") / "home", 3 * dataset.MiB, seed=7)


def test_parse_size() -> None:
    assert dataset.parse_size("2GiB") == 2 << 30
    assert dataset.parse_size("200MiB") == 200 << 20
    assert dataset.parse_size("1.5G") == 3 << 29
    assert dataset.parse_size("4096") == 4096
    with pytest.raises(ValueError, match="not a size"):
        dataset.parse_size("lots")


def test_home_tree_is_seeded_and_has_every_kind(home: dataset.Dataset, tmp_path: Path) -> None:
    again = dataset.generate_home(tmp_path / "home", home.size, seed=7)
    assert fingerprint(again.root) == fingerprint(home.root)
    assert home.symlinks > 0 and home.empty > 0
    assert {"source", "photos", "logs", "csv", "vm_a", "vm_b", "duplicates"} <= set(
        home.categories)
    assert abs(home.bytes - home.size) < home.size * 0.5  # tiny trees overshoot a little
    vm_a = (home.root / home.categories["vm_a"][0]).read_bytes()
    vm_b = (home.root / home.categories["vm_b"][0]).read_bytes()
    same = sum(vm_a[i:i + 65536] == vm_b[i:i + 65536] for i in range(0, len(vm_a), 65536))
    assert len(vm_a) == len(vm_b) and 0.8 < same / (len(vm_a) / 65536) < 1.0
    other = dataset.generate_home(tmp_path / "other", home.size, seed=8)
    assert fingerprint(other.root) != fingerprint(home.root)


def test_existing_tree_is_reused(home: dataset.Dataset) -> None:
    assert dataset.load(home.root, "home", home.size, 7) == home
    assert dataset.load(home.root, "home", home.size, 8) is None


def test_day_of_work_changes_the_tree_and_reverts_exactly(home: dataset.Dataset) -> None:
    before = fingerprint(home.root)
    day = mutation.apply(home, seed=7)
    after = fingerprint(home.root)
    assert day.modified and day.created and day.deleted and day.renamed
    assert after != before
    with pytest.raises(RuntimeError, match="pending"):
        mutation.apply(home, seed=7)
    assert mutation.revert(home.root)
    assert fingerprint(home.root) == before
    assert not mutation.revert(home.root)


def test_small_files(tmp_path: Path) -> None:
    small = dataset.generate_small(tmp_path / "small", 120, seed=1)
    sizes = [p.stat().st_size for p in (tmp_path / "small").rglob("*.txt")]
    assert len(sizes) == small.files == 120
    assert all(1024 <= s <= 4096 for s in sizes) and sum(sizes) == small.bytes


def test_measure_run_reports_time_rss_and_errors(tmp_path: Path) -> None:
    ok = measure.run([sys.executable, "-c", "b = b'x' * (30 << 20)"], env=os.environ,
                     log=tmp_path / "log")
    assert ok.error is None and ok.wall > 0 and ok.max_rss > 30 << 20
    bad = measure.run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                      env=os.environ, log=tmp_path / "log")
    assert bad.error == "exit code 3: boom"
    missing = measure.run([str(tmp_path / "nope")], env=os.environ, log=tmp_path / "log")
    assert missing.error is not None and missing.error.startswith("cannot start")


def test_profile_folding() -> None:
    raw = "\n".join([
        "<module> (cairn:8);run (client_gui/cli/main.py:10);compress (shared/compression.py:5) 6",
        "<module> (cairn:8);run (client_gui/cli/main.py:10);seal (shared/crypto.py:9) 3",
        "_worker (concurrent/futures/thread.py:83);wait (threading.py:320) 1",
    ])
    folded = profiling.parse_pyspy_raw(raw)
    assert folded["samples"] == 10
    assert folded["own"][0] == ["compress", "shared/compression.py", 60.0]
    assert folded["cumulative"][0] == ["run", "client_gui/cli/main.py", 90.0]
    assert folded["waiting"] == 10.0


def sample(tool: str, mode: str, phase: str, wall: float, rnd: int = 1, case: str = "home",
           error: str | None = None) -> dict[str, object]:
    return {"round": rnd, "case": case, "tool": tool, "mode": mode, "phase": phase,
            "wall": None if error else wall, "user": 0.0, "sys": 0.0, "rss": 100 << 20,
            "server_rss": None, "repo_bytes": 1 << 30, "data_bytes": 2 << 30, "error": error}


def test_medians_ratios_and_page() -> None:
    samples = [sample("cairn", "local", "initial", w, r) for r, w in enumerate((9, 10, 30))]
    samples += [sample("restic", "local", "initial", w, r) for r, w in enumerate((20, 19, 21))]
    samples += [sample("borg", "local", "initial", 0, 1, error="exit code 2: broken")]
    results = {"config": {"rounds": 3, "tools": ["cairn", "restic", "borg"], "modes": ["local"],
                          "size": 2 << 30},
               "samples": samples, "skipped": {}, "dataset": {"home": {"bytes": 2 << 30}}}
    med = report.medians(samples)
    assert med[("home", "local", "initial", "cairn")]["wall"] == 10
    table = report.metric_table(results, "wall", report.fmt_seconds, "operation")
    assert "| Initial backup | 10.0 s | 20.0 s | n/a [1] | 0.50× | – |" in table
    assert "[1] Borg, local, initial backup: exit code 2: broken" in table
    target = report.target_rows(results)[0]
    assert target["ratio"] == 0.5 and target["met"] is True
    text = page.render(results, "performance.png")
    assert "## Targets of issue 4" in text and "![wall time" in text
