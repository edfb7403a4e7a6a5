"""Task results: accuracy per policy x task x length x depth as CSV/Markdown, and heatmaps.

Heatmaps are drawn with matplotlib's object API on an Agg canvas (no ``pyplot``), so writing a
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

RESULT_COLUMNS = ("policy", "task", "length", "depth", "accuracy", "samples")


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean score and sample count per (policy label, task, length, depth), policies in the
    order they first appear."""
    scores: dict[tuple, list[float]] = defaultdict(list)
    policy_order: dict[str, int] = {}
    for record in records:
        policy_order.setdefault(record["label"], len(policy_order))
        scores[(record["label"], record["task"], record["length"], record["depth"])].append(record["score"])
    keys = sorted(scores, key=lambda k: (policy_order[k[0]], k[1], k[2], k[3]))
    return [
        {"policy": k[0], "task": k[1], "length": k[2], "depth": k[3],
         "accuracy": sum(scores[k]) / len(scores[k]), "samples": len(scores[k])}
        for k in keys
    ]


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


def plot_heatmap(rows: Sequence[dict[str, Any]], policy: str, task: str, path: str | Path) -> None:
    """Accuracy over depth (x) and length (y) for one policy and task, as a PNG."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("heatmaps need matplotlib: pip install 'streaming_llm[tasks]'") from None
    lengths, depths, cells = _grid(rows, policy, task)
    grid = [[cells.get((length, d), float("nan")) for d in depths] for length in lengths]
    figure = Figure(figsize=(max(5.0, 1.5 + 0.9 * len(depths)), max(3.0, 1.4 + 0.5 * len(lengths))))
    FigureCanvasAgg(figure)
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
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)  # readers never see half a PNG


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
