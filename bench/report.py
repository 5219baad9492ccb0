"""From a results document (the JSON the run writes) to tables of medians and ratios, the
chart's data and the Markdown page (docs/PERFORMANCE.md).

Everything here is a pure function of the results document, so `python -m bench report FILE`
rebuilds the page of an earlier run.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from bench.dataset import format_size

TOOL_NAMES = {"cairn": "Cairn", "restic": "restic", "borg": "Borg"}
PHASE_NAMES = {"initial": "initial backup", "unchanged": "no-change backup",
               "edited": "backup after a day of work", "restore": "full restore"}
# (case, mode, phase) in table order.
ROWS = [("home", "local", p) for p in PHASE_NAMES] + [("home", "http", p) for p in PHASE_NAMES] + [
    ("small", "local", "initial"), ("small", "local", "unchanged")]
# Issue 4's targets: (label, case, mode, phase, metric, limit); ratios are Cairn / restic.
TARGETS = [
    ("initial backup, local", "home", "local", "initial", "wall", 0.5),
    ("no-change backup of the small files", "small", "local", "unchanged", "wall", 0.5),
    ("backup after a day of work, local", "home", "local", "edited", "wall", 0.7),
    ("full restore, local", "home", "local", "restore", "wall", 0.7),
    ("initial backup over loopback HTTP", "home", "http", "initial", "wall", 0.6),
    ("repository size after three backups, local", "home", "local", "edited", "repo_bytes", 1.02),
    ("peak RSS (largest of the local operations)", "home", "local", "*", "rss", 1.0),
]

Key = tuple[str, str, str, str]  # case, mode, phase, tool
Results = Mapping[str, Any]


def rounds_text(rounds: object) -> str:
    return "1 round" if rounds == 1 else f"{rounds} rounds"


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def medians(samples: Sequence[Mapping[str, Any]]) -> dict[Key, dict[str, float | None]]:
    """Median wall, rss, server_rss, repo_bytes, CPU (user + system) and system time of the
    successful samples, by key."""
    groups: dict[Key, list[Mapping[str, Any]]] = defaultdict(list)
    for s in samples:
        if s.get("error") is None:
            groups[(s["case"], s["mode"], s["phase"], s["tool"])].append(s)
    out: dict[Key, dict[str, float | None]] = {}
    for key, group in groups.items():
        out[key] = {
            metric: median([float(s[metric]) for s in group if s.get(metric) is not None])
            for metric in ("wall", "rss", "server_rss", "repo_bytes", "data_bytes", "sys")
        }
        out[key]["cpu"] = median([float(s["user"]) + float(s["sys"]) for s in group
                                  if s.get("user") is not None and s.get("sys") is not None])
        out[key]["n"] = float(len(group))
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f} s" if value >= 10 else f"{value:.2f} s"


def fmt_mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:.0f} MiB"


def row_label(case: str, mode: str, phase: str, results: Results) -> str:
    if case == "small":
        files = results.get("dataset", {}).get("small", {}).get("files", 0)
        return f"{files:,} small files: {PHASE_NAMES[phase]}"
    return f"{PHASE_NAMES[phase].capitalize()}" + (" (HTTP)" if mode == "http" else "")


class _Notes:
    """Footnotes for cells without a number."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.notes:
            self.notes.append(text)
        return f"n/a [{self.notes.index(text) + 1}]"

    def render(self) -> str:
        return "\n".join(f"[{i}] {t}  " for i, t in enumerate(self.notes, 1))


def _why_missing(results: Results, case: str, mode: str, phase: str, tool: str) -> str:
    skipped = results.get("skipped", {}).get(f"{tool}-{mode}")
    if skipped:
        return f"{TOOL_NAMES[tool]}, {mode}: {skipped}"
    errors = [s for s in results.get("samples", [])
              if (s["case"], s["mode"], s["tool"]) == (case, mode, tool) and s.get("error")]
    if errors:  # this phase's own error, else the earlier step that failed
        first = min(errors, key=lambda s: s["phase"] != phase)
        what = PHASE_NAMES.get(first["phase"], first["phase"])
        return f"{TOOL_NAMES[tool]}, {mode}, {what}: {first['error']}"
    if tool not in results.get("config", {}).get("tools", TOOL_NAMES):
        return f"{TOOL_NAMES[tool]} not selected in this run"
    return (f"{TOOL_NAMES[tool]}, {mode}, {PHASE_NAMES[phase]}: not measured "
            "(an earlier step failed)")


def _rows(results: Results) -> list[tuple[str, str, str]]:
    config = results.get("config", {})
    modes = config.get("modes", ["local", "http"])
    small = results.get("dataset", {}).get("small")
    return [r for r in ROWS if r[1] in modes and (r[0] == "home" or small)]


def metric_table(results: Results, metric: str, fmt: Any, title_unit: str,
                 phases: Sequence[str] | None = None,
                 labels: Mapping[str, str] | None = None) -> str:
    """A table of one metric's medians, a column per tool, then Cairn / restic and Cairn / Borg."""
    med = medians(results.get("samples", []))
    notes = _Notes()
    tools = list(TOOL_NAMES)
    head = (f"| {title_unit} | " + " | ".join(TOOL_NAMES[t] for t in tools)
            + " | Cairn / restic | Cairn / Borg |")
    lines = [head, "|---" + "|---:" * (len(tools) + 2) + "|"]
    for case, mode, phase in _rows(results):
        if phases is not None and phase not in phases:
            continue
        values = {t: med.get((case, mode, phase, t), {}).get(metric) for t in tools}
        cells = [fmt(values[t]) if values[t] is not None
                 else notes.mark(_why_missing(results, case, mode, phase, t)) for t in tools]
        label = row_label(case, mode, phase, results)
        if labels and case == "home" and phase in labels:
            label = labels[phase] + (" (HTTP)" if mode == "http" else "")
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {fmt_ratio(ratio(values['cairn'], values['restic']))}"
                     + f" | {fmt_ratio(ratio(values['cairn'], values['borg']))} |")
    return "\n".join(lines) + ("\n\n" + notes.render() if notes.notes else "")


def throughput_table(results: Results) -> str:
    med = medians(results.get("samples", []))
    lines = ["| operation | " + " | ".join(TOOL_NAMES.values()) + " |",
             "|---" + "|---:" * len(TOOL_NAMES) + "|"]
    for case, mode, phase in _rows(results):
        if phase not in ("initial", "restore"):
            continue
        cells = []
        for tool in TOOL_NAMES:
            m = med.get((case, mode, phase, tool), {})
            wall, size = m.get("wall"), m.get("data_bytes")
            cells.append(f"{size / 2**20 / wall:.0f} MiB/s" if wall and size else "–")
        lines.append(f"| {row_label(case, mode, phase, results)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def server_rss_table(results: Results) -> str:
    med = medians(results.get("samples", []))
    lines = ["| operation over HTTP | cairn-server | rest-server |", "|---|---:|---:|"]
    for phase in PHASE_NAMES:
        cells = [fmt_mib(med.get(("home", "http", phase, t), {}).get("server_rss"))
                 for t in ("cairn", "restic")]
        lines.append(f"| {PHASE_NAMES[phase]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_rows(results: Results) -> list[dict[str, Any]]:
    """Issue 4's targets with the measured Cairn / restic ratio and whether it holds."""
    med = medians(results.get("samples", []))
    out = []
    for label, case, mode, phase, metric, limit in TARGETS:
        if phase == "*":
            def peak(tool: str, case: str = case, mode: str = mode,
                     metric: str = metric) -> float | None:
                values = [m[metric] for (c, md, _p, t), m in med.items()
                          if (c, md, t) == (case, mode, tool) and m.get(metric) is not None]
                return max(v for v in values if v is not None) if values else None
            cairn, restic = peak("cairn"), peak("restic")
        else:
            cairn = med.get((case, mode, phase, "cairn"), {}).get(metric)
            restic = med.get((case, mode, phase, "restic"), {}).get(metric)
        r = ratio(cairn, restic)
        out.append({"target": label, "limit": limit, "ratio": r,
                    "met": None if r is None else r <= limit})
    return out


def targets_table(results: Results) -> str:
    lines = ["| target (Cairn / restic) | limit | measured | met |", "|---|---:|---:|:---:|"]
    for row in target_rows(results):
        met = "–" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['target']} | ≤ {row['limit']:.2f}× | {fmt_ratio(row['ratio'])}"
                     f" | {met} |")
    return "\n".join(lines)


def chart_spec(results: Results) -> dict[str, Any]:
    med = medians(results.get("samples", []))
    groups = []
    for case, mode, phase in _rows(results):
        values = {t: med.get((case, mode, phase, t), {}).get("wall") for t in TOOL_NAMES}
        if any(values.values()):
            groups.append({"label": row_label(case, mode, phase, results), "values": values})
    config = results.get("config", {})
    title = (f"Cairn, restic and Borg on a {format_size(config.get('size', 0))} home-like tree, "
             f"median of {rounds_text(config.get('rounds'))}")
    return {"title": title, "tools": list(TOOL_NAMES), "groups": groups}


def samples_table(results: Results) -> str:
    lines = ["| round | data | tool | mode | phase | wall | client RSS | server RSS | repo "
             "| error |",
             "|---:|---|---|---|---|---:|---:|---:|---:|---|"]
    for s in results.get("samples", []):
        lines.append(
            f"| {s['round']} | {s['case']} | {s['tool']} | {s['mode']} | {s['phase']} | "
            f"{fmt_seconds(s.get('wall'))} | {fmt_mib(s.get('rss'))} | "
            f"{fmt_mib(s.get('server_rss'))} | "
            f"{format_size(s['repo_bytes']) if s.get('repo_bytes') else '–'} | "
            f"{s.get('error') or ''} |")
    return "\n".join(lines)
