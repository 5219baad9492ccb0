"""Draws the benchmark chart; run as a script by the helper venv's Python (it has matplotlib).

    python bench/chart.py CHART.json OUT.png

CHART.json: {"title": str, "tools": [name, ...], "groups": [{"label": str,
"values": {tool: seconds or null}}, ...]}. One horizontal group of bars per operation, one bar
per tool, wall time on a log scale (operations range from about a second to minutes), each bar
labelled with its value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {"cairn": "Cairn", "restic": "restic", "borg": "Borg"}
COLOURS = {"cairn": "#1b7f5f", "restic": "#3b6fb6", "borg": "#c8793a"}


def draw(spec: dict[str, object], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    tools = [str(t) for t in spec["tools"]]  # type: ignore[attr-defined]
    groups = list(spec["groups"])  # type: ignore[call-overload]
    height = 0.8 / max(1, len(tools))
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(groups) * len(tools) + 1.4), dpi=110)
    for t, tool in enumerate(tools):
        ys, xs = [], []
        for g, group in enumerate(groups):
            value = group["values"].get(tool)
            if value:
                ys.append(g + (t - (len(tools) - 1) / 2) * height)
                xs.append(value)
        bars = ax.barh(ys, xs, height=height, color=COLOURS.get(tool, "#888888"),
                       label=NAMES.get(tool, tool))
        for bar, value in zip(bars, xs, strict=True):
            ax.text(bar.get_width() * 1.04, bar.get_y() + bar.get_height() / 2,
                    f"{value:.1f} s" if value >= 1 else f"{value:.2f} s",
                    va="center", fontsize=7)
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels([g["label"] for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("wall time, median (seconds, log scale; shorter is better)")
    ax.set_title(str(spec.get("title", "")), fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize=8)
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo, hi * 2.2)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: chart.py CHART.json OUT.png")
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))


if __name__ == "__main__":
    main()
