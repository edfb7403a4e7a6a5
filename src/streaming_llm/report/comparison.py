"""Comparisons of runs on the same stream against StreamingLLM (and the full cache), and the
files that report them: per comparison ``summary.json`` + ``readable.txt`` + ``results.md``
(seed 000's output files), and the aggregate ``report.md/.csv/.json`` of a sweep.

Improvement is seed 000's ``(PPL_streaming - PPL) / PPL_streaming``; gap closure is
``(PPL_streaming - PPL) / (PPL_streaming - PPL_full)`` when a full-cache run is present.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..policies import get_policy_config_class, is_bounded
from . import csv_text, markdown_table, write_atomic, write_json
from .plots import markdown_images, plot_ppl_along_stream, run_label, write_standard_plots

BASELINE = "streaming"
COMPARISON_COLUMNS = ("policy", "params", "cache_bytes_max", "ppl", "improvement_pct", "gap_closure",
                      "tok_per_s", "speed_x", "peak_rss_bytes")
AGGREGATE_COLUMNS = ("scenario", "profile", "model", "text", "tokens", "context", *COMPARISON_COLUMNS)


def shown_params(policy: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a table row shows (the policy decides: :meth:`PolicyConfig.table_params`)."""
    return get_policy_config_class(policy).table_params(params)


def _is_reference(record: dict[str, Any]) -> bool:
    """An unbounded run (the full cache): the reference bounded policies close the gap to."""
    return not is_bounded(record["policy"])


def compare(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run with its improvement, gap closure and speed against the first
    StreamingLLM run (``None`` where there is no baseline or no full run)."""
    baseline = next((r for r in records if r["policy"] == BASELINE), None)
    full = next((r for r in records if _is_reference(r)), None)
    rows = []
    for record in records:
        row = {c: record.get(c) for c in COMPARISON_COLUMNS}
        row["params"] = shown_params(record["policy"], record.get("params", {}))
        row["improvement_pct"] = row["gap_closure"] = row["speed_x"] = None
        if baseline is not None:
            base_ppl = baseline["ppl"]
            row["improvement_pct"] = 100.0 * (base_ppl - record["ppl"]) / base_ppl
            row["speed_x"] = record["tok_per_s"] / baseline["tok_per_s"] if baseline["tok_per_s"] else None
            if full is not None and base_ppl > full["ppl"]:
                row["gap_closure"] = (base_ppl - record["ppl"]) / (base_ppl - full["ppl"])
        rows.append(row)
    return rows


def _context(record: dict[str, Any]) -> Any:
    return (record.get("model_info") or {}).get("max_position_embeddings")


def _header_lines(title: str, records: Sequence[dict[str, Any]], description: str = "") -> list[str]:
    first = records[0]
    lines = [title]
    if description:
        lines.append(description)
    lines.append(f"model {first['model']} (context {_context(first)}), data {first['text']}, {first['tokens']} tokens, "
                 f"chunk {first['chunk_size']}, {first['dtype']} on {first['device']}")
    targets = {r.get("cache_bytes_target") for r in records if r.get("cache_bytes_target")}
    if targets:
        lines.append("equal memory: bounded policies sized to " + ", ".join(f"{t:,}" for t in sorted(targets))
                     + " cache bytes")
    return lines


def readable_text(title: str, records: Sequence[dict[str, Any]], failed: dict[str, str], description: str = "") -> str:
    """Seed 000's readable.txt: the comparison in words and each run's logged stats lines."""
    lines = _header_lines(title, records, description) + [""]
    for row, record in zip(compare(records), records):
        parts = [f"{run_label(record):<48} PPL {row['ppl']:8.3f}", f"{row['tok_per_s']:8.1f} tok/s",
                 f"cache {row['cache_bytes_max']:>12,} B"]
        if row["improvement_pct"] is not None and record["policy"] != BASELINE:
            parts.append(f"vs streaming {row['improvement_pct']:+.1f}%")
        if row["gap_closure"] is not None and record["policy"] != BASELINE and not _is_reference(record):
            parts.append(f"gap closure {row['gap_closure']:+.2f}")
        lines.append("  ".join(parts))
    for policy, error in failed.items():
        lines.append(f"{policy:<48} FAILED: {error}")
    for record in records:
        if record.get("log"):
            lines += ["", f"-- {run_label(record)}: logged during the run --", *record["log"]]
    return "\n".join(lines) + "\n"


def write_pair_report(directory: Path, records: Sequence[dict[str, Any]], scenario=None, profile=None,
                      failed: dict[str, str] | None = None, title: str | None = None) -> Path:
    """``summary.json``, ``readable.txt``, ``results.md`` and the figures of one comparison."""
    failed = failed or {}
    names = [n for n in (getattr(scenario, "name", None), getattr(profile, "name", None)) if n]
    title = title or " / ".join(names) or "comparison"
    description = " ".join(d for d in (getattr(scenario, "description", ""), getattr(profile, "description", "")) if d)
    rows = compare(records)
    summary = {
        "title": title,
        "scenario": getattr(scenario, "name", None),
        "profile": getattr(profile, "name", None),
        "description": description,
        "model": records[0]["model"],
        "text": records[0]["text"],
        "tokens": records[0]["tokens"],
        "chunk_size": records[0]["chunk_size"],
        "model_info": records[0].get("model_info"),
        "job_keys": [r.get("job_key") for r in records],
        "comparison": rows,
        "failed": failed,
    }
    write_json(directory / "summary.json", summary)
    write_atomic(directory / "readable.txt", readable_text(title, records, failed, description))
    # one figure per comparison; the bytes figures are per scenario in the aggregate report
    stream_plot = plot_ppl_along_stream(records, directory / "ppl_stream.png", f"Perplexity along the stream — {title}")
    plots = {"ppl_stream": stream_plot} if stream_plot else {}
    body = "\n\n".join(_header_lines(f"# {title}", records, description)) + "\n\n"
    body += markdown_table(rows, COMPARISON_COLUMNS) + "\n" + markdown_images(plots, directory)
    write_atomic(directory / "results.md", body)
    return directory / "summary.json"


def write_aggregate_report(root: Path, records: Sequence[dict[str, Any]], failures: dict[str, str]) -> Path | None:
    """``report.md`` / ``report.csv`` / ``report.json`` over all (scenario, profile) comparisons,
    with per-scenario figures in ``plots/``."""
    if not records:
        return None
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        labels = record.get("labels", {})
        by_pair[(labels.get("scenario", ""), labels.get("profile", ""))].append(record)
    rows = []
    for (scenario, profile), pair_records in by_pair.items():
        for row, record in zip(compare(pair_records), pair_records):
            rows.append({"scenario": scenario, "profile": profile, "model": record["model"], "text": record["text"],
                         "tokens": record["tokens"], "context": _context(record), **row})
    write_json(root / "report.json", rows)
    write_atomic(root / "report.csv", csv_text(rows, AGGREGATE_COLUMNS))
    sections = ["# streaming_llm sweep report\n",
                "PPL: perplexity over the stream (lower is better). improvement_pct: (PPL_streaming - PPL) / "
                "PPL_streaming. gap_closure: (PPL_streaming - PPL) / (PPL_streaming - PPL_full). speed_x: tok/s "
                "relative to streaming. Bounded policies of a profile with equal memory are sized to the bytes "
                "of its streaming run (see each comparison's summary.json).\n",
                markdown_table(rows, AGGREGATE_COLUMNS)]
    if failures:
        sections.append(f"\n{len(failures)} run(s) failed; see failures.json.\n")
    for scenario in dict.fromkeys(s for s, _ in by_pair):
        scenario_records = [r for (s, _), rs in by_pair.items() if s == scenario for r in rs]
        unique = list({r["id"]: r for r in scenario_records}.values())
        plots = write_standard_plots(unique, root / "plots" / scenario, scenario)
        sections.append(f"\n## {scenario}\n\n" + markdown_images(plots, root))
    write_atomic(root / "report.md", "\n".join(sections))
    return root / "report.md"
