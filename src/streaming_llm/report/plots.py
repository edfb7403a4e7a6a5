"""Figures for the reports (matplotlib, drawn off-screen): perplexity along the stream, and
perplexity / throughput against cache bytes with the Pareto front.

Each function takes run records (see :func:`streaming_llm.evaluation.runs.run_perplexity`) and
writes one PNG atomically; it returns the path, or ``None`` when there is nothing to draw.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..policies import get_policy_config_class
from ..runs import replacing


def _new_figure(size: tuple[float, float]):
    # matplotlib's object API (no pyplot): drawing a report changes no global backend state and
    # needs no display
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def _figure(size: tuple[float, float]):
    figure = _new_figure(size)
    return figure, figure.subplots()


def run_label(record: dict[str, Any]) -> str:
    """Short legend label: the policy and the parameters that tell runs apart (the policy's
    :attr:`~streaming_llm.policies.PolicyConfig.label_fields`)."""
    return get_policy_config_class(record["policy"]).legend(record.get("params", {}))


def _save(fig, path: Path) -> Path:
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


def windowed_ppl(nll: Sequence[float], window: int) -> tuple[list[int], list[float]]:
    """Perplexity of consecutive non-overlapping windows of ``window`` predictions: (window end
    token index, PPL). Windows show where along the stream a policy loses, which a running mean hides."""
    ends, values = [], []
    for start in range(0, len(nll) - window + 1, window):
        chunk = nll[start : start + window]
        ends.append(start + window)
        values.append(math.exp(sum(chunk) / window))
    return ends, values


def plot_ppl_along_stream(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    drawable = [r for r in records if r.get("nll")]
    if not drawable:
        return None
    fig, ax = _figure((8, 4.5))
    longest = max(len(r["nll"]) for r in drawable)
    window = max(16, longest // 48)
    for record in drawable:
        ends, values = windowed_ppl(record["nll"], min(window, len(record["nll"])))
        ax.plot(ends, values, label=run_label(record), linewidth=1.2)
    ax.set_xlabel("token position in the stream")
    ax.set_ylabel(f"perplexity (windows of {window} tokens)")
    ax.set_yscale("log")
    ax.set_title(title or "Perplexity along the stream")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def pareto_front(points: Sequence[tuple[float, float]], lower_is_better: bool = True) -> list[tuple[float, float]]:
    """Points not dominated by one with fewer (or equal) bytes and a better value, by bytes."""
    front: list[tuple[float, float]] = []
    best = math.inf if lower_is_better else -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], p[1] if lower_is_better else -p[1])):
        if (y < best) if lower_is_better else (y > best):
            front.append((x, y))
            best = y
    return front


def plot_against_bytes(records: Sequence[dict[str, Any]], path: Path, metric: str = "ppl",
                       title: str = "") -> Path | None:
    """``metric`` (``ppl``: lower is better; ``tok_per_s``: higher) of each run against its peak
    cache bytes, with the Pareto front drawn through the best runs."""
    points = [(r["cache_bytes_max"], r[metric], r) for r in records
              if r.get(metric) is not None and r.get("cache_bytes_max") and math.isfinite(r[metric])]
    if not points:
        return None
    fig, ax = _figure((7, 4.5))
    for x, y, record in points:
        ax.scatter([x / 2**20], [y], s=28)
        ax.annotate(run_label(record), (x / 2**20, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    lower = metric == "ppl"
    front = pareto_front([(x, y) for x, y, _ in points], lower_is_better=lower)
    ax.plot([x / 2**20 for x, _ in front], [y for _, y in front], "k--", linewidth=0.8, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("peak cache (MiB, log scale)")
    ax.set_ylabel({"ppl": "perplexity", "tok_per_s": "tokens / s"}.get(metric, metric))
    ax.set_title(title or f"{metric} vs cache bytes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_standard_plots(records: Sequence[dict[str, Any]], folder: Path, title: str = "") -> dict[str, Path]:
    """The three figures of a comparison, by name: ``ppl_stream``, ``ppl_vs_bytes``, ``speed_vs_bytes``."""
    suffix = f" — {title}" if title else ""
    made = {
        "ppl_stream": plot_ppl_along_stream(records, folder / "ppl_stream.png", "Perplexity along the stream" + suffix),
        "ppl_vs_bytes": plot_against_bytes(records, folder / "ppl_vs_bytes.png", "ppl", "Perplexity vs cache" + suffix),
        "speed_vs_bytes": plot_against_bytes(records, folder / "speed_vs_bytes.png", "tok_per_s",
                                             "Throughput vs cache" + suffix),
    }
    return {name: path for name, path in made.items() if path is not None}


def markdown_images(paths: dict[str, Path], relative_to: Path) -> str:
    return "".join(f"![{name}]({os.path.relpath(path, relative_to)})\n\n" for name, path in paths.items())


def plot_series(rows: Sequence[dict[str, Any]], x: str, y: str, path: Path, *, series: str = "method",
                panel: str | None = None, xlabel: str = "", ylabel: str = "", title: str = "",
                log_x: bool = False, y_range: tuple[float, float] | None = None) -> Path | None:
    """``y`` against ``x``: one line per value of ``series``, one subplot per value of ``panel``
    (e.g. a benchmark). Rows without a finite ``y`` are left out; returns ``None`` when none is left."""
    rows = [r for r in rows if isinstance(r.get(y), (int, float)) and math.isfinite(r[y])]
    if not rows:
        return None
    panels = list(dict.fromkeys(r[panel] for r in rows)) if panel else [None]
    figure = _new_figure((max(6.0, 4.5 * len(panels)), 4.2))
    for index, name in enumerate(panels, start=1):
        ax = figure.add_subplot(1, len(panels), index)
        shown = [r for r in rows if panel is None or r[panel] == name]
        for label in dict.fromkeys(r[series] for r in shown):
            points = sorted((r[x], r[y]) for r in shown if r[series] == label)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", linewidth=1.2, label=str(label))
        if log_x:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r[x] for r in shown}), [str(v) for v in sorted({r[x] for r in shown})])
        if y_range is not None:
            ax.set_ylim(*y_range)
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or y)
        ax.set_title(f"{title} — {name}" if name is not None and title else (title or str(name or "")), fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(figure, path)
