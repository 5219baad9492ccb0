"""`python -m bench`: install the tools, generate the data, run the comparison, write the page.

    python -m bench run [--size 2GiB] [--rounds 3] [--small-files 100000] [--only cairn,restic]
                        [--modes local,http] [--quick] [--no-profile] [--no-pipeline]
                        [--work DIR]
    python -m bench pipeline [--size ..] [--into FILE]  # the 2-core pipeline limit only
    python -m bench install          # restic, rest-server, Borg, matplotlib, py-spy
    python -m bench data [--size ..] # generate (or check) the data only
    python -m bench report FILE      # rebuild the page from a results JSON

`run` writes bench/results/<UTC time>.json and, except with --quick, docs/PERFORMANCE.md and
docs/performance.png. A quick run writes its page next to its JSON instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import dataset, measure, mutation, page, pipeline, profiling, report, tools
from bench.runners import MODES, TOOLS
from bench.suite import Sample, SuiteConfig, run_suite, sample_dicts

logger = logging.getLogger("bench")

RESULTS_DIR = tools.BENCH_DIR / "results"
DEFAULT_WORK = tools.BENCH_DIR / "work"
DEFAULT_PAGE = tools.REPO_DIR / "docs/PERFORMANCE.md"
QUICK_SIZE, QUICK_SMALL_FILES = "200MiB", 10_000


class BenchError(Exception):
    """A one-line error for the user."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install restic, rest-server, Borg, matplotlib, py-spy")

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--size", default=None, help="home tree size (default 2GiB; quick 200MiB)")
        p.add_argument("--small-files", type=int, default=None,
                       help="many-small-files case: file count (default 100000; 0 = skip)")
        p.add_argument("--seed", type=int, default=42)
        p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                       help=f"data and repositories (default {DEFAULT_WORK})")
        p.add_argument("--quick", action="store_true",
                       help="~200 MiB, one round, 10,000 small files: a check in < 2 min")

    data_options(sub.add_parser("data", help="generate the data only"))
    run = sub.add_parser("run", help="install, generate, measure, write the page")
    data_options(run)
    run.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
    run.add_argument("--only", default=",".join(TOOLS), help="tools, comma-separated")
    run.add_argument("--modes", default=",".join(MODES), help="local,http")
    run.add_argument("--no-profile", action="store_true", help="skip profiling Cairn")
    run.add_argument("--no-pipeline", action="store_true",
                     help="skip measuring the 2-core pipeline limit")
    run.add_argument("--timeout", type=float, default=3600.0, help="per command, seconds")
    run.add_argument("--output", type=Path, default=None,
                     help="the page (default docs/PERFORMANCE.md; quick: next to the JSON)")
    run.add_argument("--note", default="", help="a sentence for the page about this run")
    pipe = sub.add_parser("pipeline", help="measure the 2-core pipeline limit only")
    data_options(pipe)
    pipe.add_argument("--into", type=Path, default=None,
                      help="add it to this results JSON of the same tree (then `report` it)")
    rep = sub.add_parser("report", help="rebuild the page from a results JSON")
    rep.add_argument("file", type=Path)
    rep.add_argument("--output", type=Path, default=DEFAULT_PAGE)
    return parser


def _settings(args: argparse.Namespace) -> tuple[int, int]:
    size_text = args.size or (QUICK_SIZE if args.quick else "2GiB")
    try:
        size = dataset.parse_size(str(size_text))
    except ValueError as exc:
        raise BenchError(str(exc)) from exc
    small = args.small_files
    if small is None:
        small = QUICK_SMALL_FILES if args.quick else 100_000
    if size < dataset.MiB or small < 0:
        raise BenchError("--size must be at least 1MiB and --small-files at least 0")
    return size, small


def _data(args: argparse.Namespace) -> tuple[dataset.Dataset, dataset.Dataset | None]:
    size, small_count = _settings(args)
    data_dir = args.work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    need = size * 8 + small_count * 8192 * 4
    free = shutil.disk_usage(data_dir).free
    if free < need:
        raise BenchError(f"{data_dir} has {dataset.format_size(free)} free; a run of this size "
                         f"needs about {dataset.format_size(need)}")
    if mutation.revert(data_dir / "home"):
        logger.info("undid the day of work left by an interrupted run")
    started = time.monotonic()
    home = dataset.generate_home(data_dir / "home", size, args.seed)
    small = dataset.generate_small(data_dir / "small", small_count, args.seed) if small_count \
        else None
    logger.info("data ready in %.1f s: %d files, %s%s", time.monotonic() - started, home.files,
                dataset.format_size(home.bytes),
                f"; {small.files} small files" if small else "")
    return home, small


def _dataset_json(d: dataset.Dataset) -> dict[str, Any]:
    return {"files": d.files, "bytes": d.bytes, "symlinks": d.symlinks, "empty": d.empty,
            "path": str(d.root)}


def _write_chart(toolset: tools.Toolset, results: dict[str, Any], png: Path) -> str | None:
    """Draws the chart; returns why not, or None."""
    if toolset.plot_python is None:
        return toolset.missing.get("matplotlib", "matplotlib not installed")
    spec = png.with_suffix(".chart.json")
    spec.write_text(json.dumps(report.chart_spec(results)))
    try:
        proc = subprocess.run([str(toolset.plot_python), str(tools.BENCH_DIR / "chart.py"),
                               str(spec), str(png)], capture_output=True, text=True,
                              timeout=300, check=False)
    finally:
        spec.unlink(missing_ok=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return f"chart.py failed: {lines[-1] if lines else proc.returncode}"
    return None


def _run(args: argparse.Namespace) -> int:
    started = datetime.now(UTC)
    selected = [t.strip() for t in args.only.split(",") if t.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not selected or set(selected) - set(TOOLS) or not modes or set(modes) - set(MODES):
        raise BenchError(f"--only takes {','.join(TOOLS)}; --modes takes {','.join(MODES)}")
    rounds = args.rounds or (1 if args.quick else 3)
    size, small_count = _settings(args)
    toolset = tools.install()
    for tool, reason in toolset.missing.items():
        logger.warning("%s: %s", tool, reason)
    home, small = _data(args)
    t0 = time.monotonic()
    warm = dataset.read_all(home.root) + (dataset.read_all(small.root) if small else 0)
    warmup = {"bytes": warm, "seconds": round(time.monotonic() - t0, 2)}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    json_path = RESULTS_DIR / f"{'quick-' if args.quick else ''}{stamp}.json"
    config = SuiteConfig(rounds=rounds, tools=selected, modes=modes, seed=args.seed,
                         timeout=args.timeout)
    results: dict[str, Any] = {
        "version": 1, "started": started.strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
        "config": {"size": size, "rounds": rounds, "small_files": small_count,
                   "seed": args.seed, "tools": selected, "modes": modes, "note": args.note},
        "machine": tools.machine(args.work), "versions": dict(toolset.versions),
        "missing": dict(toolset.missing), "warmup": warmup, "rss_method": measure.RSS_METHOD,
        "dataset": {"home": _dataset_json(home), **({"small": _dataset_json(small)}
                                                    if small else {})},
        "mutation": {}, "samples": [], "profiles": {},
    }
    samples: list[Sample] = []

    def record(sample: Sample) -> None:
        samples.append(sample)
        results["samples"] = sample_dicts(samples)
        json_path.write_text(json.dumps(results, indent=1))

    outcome = run_suite(config, toolset, home, small, args.work / "runs", record)
    results["skipped"] = outcome.skipped
    results["mutation"] = asdict(outcome.mutation) if outcome.mutation else {}
    if not args.no_pipeline:
        results["pipeline"] = _pipeline(home, small, args.seed)
        json_path.write_text(json.dumps(results, indent=1))
    if not args.no_profile and "cairn" in selected:
        results["profiles"] = profiling.profile_cairn(toolset, home, small,
                                                      args.work / "profile", args.timeout)
    results["machine_after"] = {"loadavg": tools.machine(args.work)["loadavg"]}
    results["duration_s"] = round((datetime.now(UTC) - started).total_seconds())
    json_path.write_text(json.dumps(results, indent=1))
    output = args.output or (json_path.with_suffix(".md") if args.quick else DEFAULT_PAGE)
    _write_page(toolset, results, output)
    print(report.metric_table(results, "wall", report.fmt_seconds, "wall time, median"))
    print(f"\nresults: {json_path}\npage: {output}")
    return 0


def _pipeline(home: dataset.Dataset, small: dataset.Dataset | None, seed: int) -> dict[str, Any]:
    """The pipeline measurement for the results document; an error there does not end a run."""
    logger.info("measuring the 2-core pipeline limit")
    try:
        return pipeline.measure(home, small, seed).to_json()
    except OSError as exc:
        logger.error("pipeline: %s", exc)
        return {"error": f"{exc.strerror or exc}: {exc.filename or ''}"}


def _load_results(path: Path) -> dict[str, Any]:
    try:
        results: dict[str, Any] = json.loads(path.read_text())
        results["samples"]  # noqa: B018 - a results document has samples
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{path} is not a results file of `bench run`") from exc
    return results


def _pipeline_only(args: argparse.Namespace) -> int:
    target = _load_results(args.into) if args.into else None
    home, small = _data(args)
    if target is not None and target.get("dataset", {}).get("home", {}).get("bytes") != home.bytes:
        raise BenchError(f"{args.into} measured another tree; use its --size and --seed")
    measured = pipeline.measure(home, small, args.seed).to_json()
    if target is not None:
        results, json_path = target, args.into
        results["pipeline"] = measured
    else:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        json_path = RESULTS_DIR / f"pipeline-{stamp}.json"
        results = {"version": 1, "pipeline": measured, "machine": tools.machine(args.work),
                   "dataset": {"home": _dataset_json(home),
                               **({"small": _dataset_json(small)} if small else {})}}
    json_path.write_text(json.dumps(results, indent=1))
    print(page.pipeline_section(results))
    print(f"results: {json_path}")
    return 0


def _write_page(toolset: tools.Toolset, results: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    png = output.with_name("performance.png" if output.name == "PERFORMANCE.md"
                           else output.stem + ".png")
    error = _write_chart(toolset, results, png)
    if error:
        logger.warning("no chart: %s", error)
        results["chart_error"] = error
    output.write_text(page.render(results, None if error else png.name))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "install":
            toolset = tools.install()
            for name, version in toolset.versions.items():
                print(f"{name}: {version}")
            for name, reason in toolset.missing.items():
                print(f"missing {name}: {reason}")
            return 0
        if args.command == "data":
            _data(args)
            return 0
        if args.command == "report":
            results = _load_results(args.file)
            _write_page(tools.install(), results, args.output)
            print(f"page: {args.output}")
            return 0
        if args.command == "pipeline":
            return _pipeline_only(args)
        return _run(args)
    except (BenchError, tools.ToolError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"bench: error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
