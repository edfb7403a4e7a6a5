"""Task results as CSV/Markdown and figures: the synthetic tasks' accuracy per policy x task x
length x depth with heatmaps, and benchmark (LongBench, ZeroSCROLLS) scores per policy x task with
a bar chart.

Figures are drawn with matplotlib's object API on an Agg canvas (no ``pyplot``), so writing a
figure changes no global backend state; matplotlib is imported lazily (``[tasks]`` extra).
"""

from __future__ import annotations

import re
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..report import csv_text, markdown_table, write_atomic
from ..runs import replacing

RESULT_COLUMNS = ("policy", "task", "length", "depth", "accuracy", "samples")
SCORE_COLUMNS = ("policy", "benchmark", "task", "metric", "score", "samples")


def mean_scores(records: Sequence[dict[str, Any]], fields: Sequence[str], score_column: str) -> list[dict[str, Any]]:
    """Mean score and sample count per (policy label, *fields), policies in the order they first
    appear, the rest sorted."""
    scores: dict[tuple, list[float]] = defaultdict(list)
    policy_order: dict[str, int] = {}
    for record in records:
        policy_order.setdefault(record["label"], len(policy_order))
        scores[(record["label"], *(record[f] for f in fields))].append(record["score"])
    keys = sorted(scores, key=lambda k: (policy_order[k[0]], *k[1:]))
    return [
        {"policy": k[0], **dict(zip(fields, k[1:])), score_column: sum(scores[k]) / len(scores[k]),
         "samples": len(scores[k])}
        for k in keys
    ]


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Synthetic tasks: accuracy and sample count per (policy label, task, length, depth)."""
    return mean_scores(records, ("task", "length", "depth"), "accuracy")


def benchmark_scores(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Benchmarks: mean score and sample count per (policy label, benchmark, task), with its metric."""
    return mean_scores(records, ("benchmark", "task", "metric"), "score")


def _grid(rows: Sequence[dict[str, Any]], policy: str, task: str):
    cells = {(r["length"], r["depth"]): r["accuracy"] for r in rows if r["policy"] == policy and r["task"] == task}
    lengths = sorted({length for length, _ in cells})
    depths = sorted({depth for _, depth in cells})
    return lengths, depths, cells


def pivot_markdown(rows: Sequence[dict[str, Any]], policy: str, task: str) -> str:
    """One policy and task: a row per length, a column per depth, the mean of the row at the end."""
    lengths, depths, cells = _grid(rows, policy, task)
    columns = ["length", *(f"{d:.0%}" for d in depths), "mean"]
    table = []
    for length in lengths:
        values = [cells.get((length, d)) for d in depths]
        present = [v for v in values if v is not None]
        row = {"length": length, "mean": sum(present) / len(present) if present else None}
        row.update({f"{d:.0%}": v for d, v in zip(depths, values)})
        table.append(row)
    return markdown_table(table, columns)


def slug(text: str) -> str:
    """A file-name-safe form of a policy label such as ``streaming:start_size=4,recent_size=508``."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


def new_figure(size: tuple[float, float]):
    """A matplotlib ``Figure`` on its own Agg canvas: no pyplot, no global backend."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("task figures need matplotlib: pip install 'streaming_llm[tasks]'") from None
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path: str | Path) -> None:
    figure.tight_layout()
    with replacing(path) as tmp:  # readers never see half a PNG
        figure.savefig(tmp, format="png", dpi=100)


def plot_heatmap(rows: Sequence[dict[str, Any]], policy: str, task: str, path: str | Path) -> None:
    """Accuracy over depth (x) and length (y) for one policy and task, as a PNG."""
    lengths, depths, cells = _grid(rows, policy, task)
    grid = [[cells.get((length, d), float("nan")) for d in depths] for length in lengths]
    figure = new_figure((max(5.0, 1.5 + 0.9 * len(depths)), max(3.0, 1.4 + 0.5 * len(lengths))))
    axes = figure.add_subplot()
    image = axes.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto", origin="lower")
    axes.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    axes.set_yticks(range(len(lengths)), [str(length) for length in lengths])
    axes.set_xlabel("needle depth")
    axes.set_ylabel("prompt tokens")
    axes.set_title(textwrap.fill(f"{task}: {policy}", 60), fontsize=8)
    for y, row in enumerate(grid):
        for x, value in enumerate(row):
            if value == value:  # not NaN
                axes.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=8)
    figure.colorbar(image, ax=axes, label="accuracy")
    save_png(figure, path)


def plot_scores(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Mean score per task (x), one bar per policy, as a PNG."""
    tasks = list(dict.fromkeys((r["benchmark"], r["task"]) for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    cells = {(r["policy"], r["benchmark"], r["task"]): r["score"] for r in rows}
    width = 0.8 / len(policies)
    figure = new_figure((max(6.0, 3.0 + 0.4 * len(tasks) * len(policies)), 4.0))
    axes = figure.add_subplot()
    for i, policy in enumerate(policies):
        offset = (i - (len(policies) - 1) / 2) * width
        heights = [cells.get((policy, *task), float("nan")) for task in tasks]
        axes.bar([x + offset for x in range(len(tasks))], heights, width, label=textwrap.shorten(policy, 60))
    axes.set_xticks(range(len(tasks)), [task for _, task in tasks])
    axes.set_ylim(0.0, 1.0)
    axes.set_ylabel("mean score")
    axes.set_title(", ".join(dict.fromkeys(benchmark for benchmark, _ in tasks)), fontsize=9)
    # Outside the axes: policy labels are long and would hide bars.
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_png(figure, path)


def write_benchmark_reports(output_dir: str | Path, records: Sequence[dict[str, Any]], header: str) -> Path:
    """``results.csv``, ``results.md`` and the bar chart ``scores.png``; returns the chart's path."""
    output_dir = Path(output_dir)
    rows = benchmark_scores(records)
    write_atomic(output_dir / "results.csv", csv_text(rows, SCORE_COLUMNS))
    figure = output_dir / "scores.png"
    plot_scores(rows, figure)
    sections = [header, "## Mean score per policy and task\n", markdown_table(rows, SCORE_COLUMNS),
                f"\n![score per task and policy]({figure.name})\n"]
    write_atomic(output_dir / "results.md", "\n".join(sections))
    return figure


def write_reports(output_dir: str | Path, records: Sequence[dict[str, Any]], header: str) -> list[Path]:
    """``results.csv``, ``results.md`` and one ``heatmap-<policy>-<task>.png`` per policy and task."""
    output_dir = Path(output_dir)
    rows = aggregate(records)
    write_atomic(output_dir / "results.csv", csv_text(rows, RESULT_COLUMNS))
    pairs = list(dict.fromkeys((r["policy"], r["task"]) for r in rows))
    sections = [header, "## Accuracy by length and depth\n", markdown_table(rows, RESULT_COLUMNS)]
    figures = []
    for policy, task in pairs:
        figure = output_dir / f"heatmap-{slug(policy)}-{task}.png"
        plot_heatmap(rows, policy, task, figure)
        figures.append(figure)
        sections += [f"\n## {task}: `{policy}`\n", pivot_markdown(rows, policy, task), f"\n![{task} {policy}]({figure.name})\n"]
    write_atomic(output_dir / "results.md", "\n".join(sections))
    return figures
