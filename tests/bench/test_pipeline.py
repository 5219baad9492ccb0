"""The 2-core pipeline limit (bench/pipeline.py) and its page section, on a tree of a few
hundred KiB made here."""

import json
import os
import random
from pathlib import Path

import pytest

from bench import dataset, page, pipeline
from bench.__main__ import main

KiB = 1024


def make_tree(root: Path) -> dataset.Dataset:
    """Incompressible and compressible files, an exact duplicate, an empty file, a symlink."""
    rng = random.Random(3)
    noise = rng.randbytes(300 * KiB)
    files = {
        "photos/a.jpg": noise,
        "photos/copy-of-a.jpg": noise,
        "notes/todo.txt": b"buy milk, write tests\n" * 10_000,
        "notes/empty.txt": b"",
        "src/main.py": rng.randbytes(20 * KiB).hex().encode(),
    }
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    os.symlink("photos/a.jpg", root / "link.jpg")
    size = sum(len(b) for b in files.values())
    return dataset.Dataset(root=root, kind="home", size=size, seed=1, files=len(files),
                           bytes=size, symlinks=1, empty=1)


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    home = make_tree(tmp_path_factory.mktemp("p") / "home")
    small_root = tmp_path_factory.mktemp("p") / "small"
    small = dataset.generate_small(small_root, 50, seed=1)
    return {"home": home, "small": small,
            "result": pipeline.measure(home, small, seed=1).to_json()}


def test_pipeline_measures_every_stage_and_both_chains(measured: dict[str, object]) -> None:
    home = measured["home"]
    result = measured["result"]
    assert isinstance(home, dataset.Dataset) and isinstance(result, dict)
    assert result["cores"] == 2 and result["files"] == 5 and result["bytes"] == home.bytes
    stages = {s["stage"]: s for s in result["stages"]}
    assert list(stages) == list(pipeline.STAGES)
    assert all(s["seconds"] >= 0 for s in stages.values())
    assert stages["read"]["bytes"] == stages["hash"]["bytes"] == home.bytes
    # The duplicate photo is compressed and encrypted once; the text shrinks before encryption.
    assert stages["compress"]["bytes"] == home.bytes - 300 * KiB
    assert stages["encrypt"]["bytes"] < stages["compress"]["bytes"]
    assert result["limit_seconds"] == pytest.approx(
        sum(s["seconds"] for s in stages.values()) / 2, abs=0.002)
    one, two = result["chains"]
    assert (one["threads"], two["threads"]) == (1, 2)
    for chain in (one, two):
        assert chain["bytes"] == home.bytes and chain["files"] == 5 and chain["seconds"] > 0
        assert chain["distinct_bytes"] == stages["compress"]["bytes"]
    assert one["distinct_chunks"] == two["distinct_chunks"] < one["chunks"]
    assert result["small"]["files"] == 50 and result["small"]["threads"] == 2
    json.dumps(result)  # goes into the results document as it is


def initial(tool: str, wall: float, case: str = "home") -> dict[str, object]:
    return {"round": 1, "case": case, "tool": tool, "mode": "local", "phase": "initial",
            "wall": wall, "rss": None, "server_rss": None, "repo_bytes": None,
            "data_bytes": 1 << 30, "error": None}


def test_pipeline_section_renders_measured_results(measured: dict[str, object]) -> None:
    results = {"pipeline": measured["result"], "samples": [initial("restic", 10.0)]}
    text = page.pipeline_section(results)
    assert text.startswith("## The 2-core pipeline limit")
    assert "| **2-core limit** (sum ÷ 2) |" in text and "whole chain, 2 threads" in text
    assert "| restic, initial backup (local, median) | 10.0 s | 1.00× |" in text
    assert "50 files" in text and "µs a file" in text


@pytest.mark.parametrize(("restic", "says"), [
    (10.0, "could not go below 0.60× restic's time"),
    (20.0, "would allow 0.30× restic's time, within the ≤ 0.50× target"),
])
def test_pipeline_verdict_is_computed_from_restic(restic: float, says: str) -> None:
    stages = [{"stage": s, "seconds": 2.4, "bytes": 1 << 30} for s in pipeline.STAGES]
    chain = {"threads": 2, "seconds": 7.0, "files": 10, "bytes": 1 << 30, "chunks": 9,
             "distinct_chunks": 8, "distinct_bytes": 1 << 29}
    results = {"pipeline": {"cores": 2, "files": 10, "bytes": 1 << 30, "stages": stages,
                            "chains": [chain], "limit_seconds": 6.0, "small": None},
               "samples": [initial("restic", restic), initial("cairn", 9.0)]}
    text = page.pipeline_section(results)
    assert says in text
    assert f"Cairn measured {9.0 / restic:.2f}× restic: 1.50× the limit, 3.00 s above it." in text


def test_page_says_when_the_pipeline_was_not_measured() -> None:
    text = page.render({"samples": [], "config": {"rounds": 1}}, None)
    assert "## The 2-core pipeline limit\n\nNot measured in this run." in text


def test_pipeline_command_adds_to_a_results_file(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    home = dataset.generate_home(tmp_path / "data/home", dataset.MiB, seed=5)
    into = tmp_path / "results.json"
    into.write_text(json.dumps({"samples": [], "dataset": {"home": {"bytes": home.bytes}}}))
    code = main(["pipeline", "--size", "1MiB", "--small-files", "0", "--seed", "5",
                 "--work", str(tmp_path), "--into", str(into)])
    assert code == 0
    assert json.loads(into.read_text())["pipeline"]["bytes"] == home.bytes
    assert "## The 2-core pipeline limit" in capsys.readouterr().out


def test_pipeline_of_another_tree_is_not_compared(measured: dict[str, object]) -> None:
    results = {"pipeline": measured["result"], "samples": [initial("restic", 10.0)],
               "dataset": {"home": {"bytes": 2 << 30}}}
    text = page.pipeline_section(results)
    assert "measured on another tree" in text and "÷ restic" not in text
