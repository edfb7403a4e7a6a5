"""The experiment's tables and figures, rebuilt from its records.

A record is a synthetic task cell (``streaming-llm tasks``' kind, with ``length``) or a benchmark
example (``streaming-llm benchmark``'s kind, with ``benchmark`` and ``max_length``); both carry
the answer's score, prefill and decode seconds, and the cache's peak bytes. Here every record
becomes one row keyed by (method, benchmark, task, context size), and rows are averaged into:

- ``efficiency.csv``: per method and context size, peak cache bytes (memory usage), mean
  seconds per answer (inference time), and tokens per second over prompt + answer (throughput),
  also as a ratio to the unbounded method measured in the same run;
- ``accuracy.csv``: per method, benchmark, task and context size, the mean score.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..policies import get_policy_config_class
from ..report import csv_text, markdown_table, write_atomic
from ..report.plots import markdown_images, plot_series

SYNTHETIC = "synthetic"
EFFICIENCY_COLUMNS = ("method", "policy", "context_size", "units", "prompt_tokens", "cache_tokens_max",
                      "cache_mib_max", "seconds", "tok_per_s", "speed_vs_full")
ACCURACY_COLUMNS = ("method", "benchmark", "task", "context_size", "score", "samples")


def experiment_row(record: dict[str, Any]) -> dict[str, Any]:
    """One record as (method, benchmark, task, context size) and what the tables average."""
    benchmark = record.get("benchmark", SYNTHETIC)
    seconds = record["prefill_seconds"] + record["decode_seconds"]
    return {
        "method": record["label"], "policy": record["policy"], "benchmark": benchmark, "task": record["task"],
        "context_size": record["length"] if benchmark == SYNTHETIC else record["max_length"],
        "score": record["score"], "prompt_tokens": record["prompt_tokens"],
        "tokens": record["prompt_tokens"] + record["generated_tokens"], "seconds": seconds,
        "cache_tokens_max": record["cache_tokens_max"], "cache_bytes_max": record["cache_bytes_max"],
    }


def _groups(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows by ``("method", *rest)`` key, methods in the order they first appear, the rest sorted
    (records come prompt by prompt; tables read method by method)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[f] for f in fields)].append(row)
    order = {method: i for i, method in enumerate(dict.fromkeys(row["method"] for row in rows))}
    return {key: groups[key] for key in sorted(groups, key=lambda k: (order[k[0]], *k[1:]))}


def efficiency(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Memory, time and throughput per (method, context size). ``speed_vs_full``: throughput over
    that of the unbounded method at the same context size (the only speed figure that survives a
    loaded machine: both were measured in one run)."""
    table = []
    for (method, size), group in _groups(rows, ("method", "context_size")).items():
        seconds = sum(r["seconds"] for r in group)
        table.append({
            "method": method, "policy": group[0]["policy"], "context_size": size, "units": len(group),
            "prompt_tokens": sum(r["prompt_tokens"] for r in group) / len(group),
            "cache_tokens_max": max(r["cache_tokens_max"] for r in group),
            "cache_mib_max": max(r["cache_bytes_max"] for r in group) / 2**20,
            "seconds": seconds / len(group),
            "tok_per_s": sum(r["tokens"] for r in group) / seconds if seconds > 0 else None,
        })
    reference = {r["context_size"]: r["tok_per_s"] for r in table
                 if not get_policy_config_class(r["policy"]).bounded and r["tok_per_s"]}
    for row in table:
        full = reference.get(row["context_size"])
        row["speed_vs_full"] = row["tok_per_s"] / full if full and row["tok_per_s"] else None
    return table


def accuracy(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
    """Mean score and sample count per (method, *fields)."""
    return [
        {"method": key[0], **dict(zip(fields, key[1:])), "score": sum(r["score"] for r in group) / len(group),
         "samples": len(group)}
        for key, group in _groups(rows, ("method", *fields)).items()
    ]


def accuracy_pivot(mean_rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Mean scores as one row per (method, context size), one column per benchmark."""
    benchmarks = sorted(dict.fromkeys(r["benchmark"] for r in mean_rows), key=lambda b: b != SYNTHETIC)  # ours first
    table: dict[tuple, dict[str, Any]] = {}
    for r in mean_rows:
        table.setdefault((r["method"], r["context_size"]), {"method": r["method"], "context_size": r["context_size"]})[
            r["benchmark"]] = r["score"]
    return list(table.values()), ["method", "context_size", *benchmarks]


def write_figures(efficiency_rows: Sequence[dict[str, Any]], mean_rows: Sequence[dict[str, Any]],
                  folder: Path) -> dict[str, Path]:
    """``memory_usage.png``, ``inference_time.png``, ``throughput.png``, ``accuracy.png``."""
    x = dict(x="context_size", xlabel="context size (prompt tokens)", log_x=True)
    made = {
        "memory usage": plot_series(efficiency_rows, y="cache_mib_max", path=folder / "memory_usage.png",
                                    ylabel="peak KV cache (MiB)", title="Memory usage", **x),
        "inference time": plot_series(efficiency_rows, y="seconds", path=folder / "inference_time.png",
                                      ylabel="seconds per answer (prefill + decode)", title="Inference time", **x),
        "throughput": plot_series(efficiency_rows, y="tok_per_s", path=folder / "throughput.png",
                                  ylabel="tokens / s (prompt + answer)", title="Throughput", **x),
        "accuracy": plot_series(mean_rows, y="score", path=folder / "accuracy.png", panel="benchmark",
                                ylabel="mean score", title="Accuracy", y_range=(-0.02, 1.02), **x),
    }
    return {name: path for name, path in made.items() if path is not None}


def write_reports(output_dir: Path, records: Sequence[dict[str, Any]], header: str) -> dict[str, Path]:
    """``efficiency.csv``, ``accuracy.csv``, the four figures and ``results.md`` (``header`` first)."""
    rows = [experiment_row(r) for r in records]
    speed = efficiency(rows)
    per_task = accuracy(rows, ("benchmark", "task", "context_size"))
    mean = accuracy(rows, ("benchmark", "context_size"))
    write_atomic(output_dir / "efficiency.csv", csv_text(speed, EFFICIENCY_COLUMNS))
    write_atomic(output_dir / "accuracy.csv", csv_text(per_task, ACCURACY_COLUMNS))
    figures = write_figures(speed, mean, output_dir)
    sections = [
        header,
        "## Memory, time and throughput per method and context size\n",
        "`cache_mib_max`: the largest resident KV-cache bytes any answer reached (prefill included); "
        "`seconds`: mean prefill + decode time per answer; `tok_per_s`: prompt + answer tokens over those "
        "seconds; `speed_vs_full`: that throughput over the unbounded method's at the same context size.\n",
        markdown_table(speed, EFFICIENCY_COLUMNS),
        "\n## Accuracy per method and context size (mean score over each benchmark's tasks and samples)\n",
        markdown_table(*accuracy_pivot(mean)),
        "\n## Accuracy per task\n",
        markdown_table(per_task, ACCURACY_COLUMNS),
        "\n## Figures\n",
        markdown_images(figures, output_dir),
    ]
    write_atomic(output_dir / "results.md", "\n".join(sections))
    return figures
