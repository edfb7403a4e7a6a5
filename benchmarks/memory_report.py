"""Tables for issue 16 from the records benchmarks/memory_recall.sh writes (tasks and eval records).

    PYTHONPATH=src .venv/bin/python benchmarks/memory_report.py docs/results/memory

Writes ``<dir>/results.md`` (atomically): passkey answers per cell with speed and recall counters,
and perplexity per book. Figures are copied from the records as they are; nothing is tuned here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from streaming_llm.policies import non_default_params


def read_records(root: Path) -> list[dict]:
    """Every tasks and eval record under ``root``; where one retrieval cell (task, length, book,
    depth, sample, policy label) has records of several job definitions (a parameter the library
    added later changes the job's key, so a rerun writes a second record), the newest file only
    (by modification time, which a fresh clone makes equal: then the last by path; the committed
    records keep one per cell)."""
    newest: dict[tuple, tuple[float, dict]] = {}
    out = []
    for path in sorted(root.glob("*/*/*.json")):  # <cell>/records/, <book>/runs/ (not first-grid/)
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if not isinstance(record, dict):
            continue
        if "task" in record:
            cell = (record["task"], record["length"], _book(record), record["depth"], record.get("sample", 0),
                    record["label"])
            written = path.stat().st_mtime
            if cell not in newest or written >= newest[cell][0]:
                newest[cell] = (written, record)
        elif "ppl" in record:
            out.append(record)
    return out + [record for _, record in newest.values()]


def _memory_columns(record: dict, forwards_key: str = "memory_recall_forwards") -> tuple[str, str, str]:
    stats = record.get("policy_stats") or {}
    hits, misses = stats.get("memory_lru_hits", 0), stats.get("memory_lru_misses", 0)
    forwards = stats.get(forwards_key, 0)
    hit_rate = f"{hits / (hits + misses):.2f}" if hits + misses else "-"
    moved = f"{stats.get('memory_bytes_moved', 0) / forwards / 1024:.1f}" if forwards else "-"
    passive = stats.get("memory_passive_bytes", record.get("passive_bytes", 0)) or 0
    return hit_rate, moved, f"{passive / 2**20:.1f}"


def _book(record: dict) -> str:
    text = record.get("text") or (record.get("task_config") or {}).get("haystack", "")
    return str(text).replace("builtin:", "")


def accuracy_table(records: list[dict]) -> list[str]:
    """Cells answered per (task, length, policy), over every book and depth that ran."""
    cells: dict[tuple, list[float]] = {}
    for r in records:
        if "task" in r:
            cells.setdefault((r["task"], r["length"], r["label"]), []).append(r["score"])
    lines = ["| task | length | policy | answered | cells | share |", "|---|---|---|---|---|---|"]
    for (task, length, label), scores in sorted(cells.items()):
        lines.append(f"| {task} | {length} | `{label}` | {sum(scores):g} | {len(scores)} | {sum(scores) / len(scores):.0%} |")
    return lines


def passkey_table(records: list[dict]) -> list[str]:
    rows = [r for r in records if "task" in r]
    rows.sort(key=lambda r: (r["task"], r["length"], _book(r), r["depth"], r["label"]))
    lines = ["| task | length | book | depth | policy | score | answer | prefill tok/s | decode tok/s | active MiB | "
             "passive MiB | LRU hit rate | KiB moved / layer-forward | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hit_rate, moved, passive = _memory_columns(r)
        layers_forwards = (r.get("policy_stats") or {}).get("memory_recall_forwards", 0)
        prefill = r["prompt_tokens"] / r["prefill_seconds"] if r.get("prefill_seconds") else 0
        decode = r["generated_tokens"] / r["decode_seconds"] if r.get("decode_seconds") else 0
        rss = r.get("peak_rss_bytes")
        lines.append(
            f"| {r['task']} | {r['length']} | {_book(r)} | {r['depth']:g} | `{r['label']}` | {r['score']:g} | "
            f"{r['prediction'].strip()[:40]!r} (want {r['answers'][0]}) | {prefill:.0f} | {decode:.1f} | "
            f"{r['cache_bytes_max'] / 2**20:.2f} | {passive} | {hit_rate} | {moved if layers_forwards else '-'} | "
            f"{f'{rss / 2**20:.0f}' if rss else '-'} |"
        )
    return lines


def ppl_table(records: list[dict]) -> list[str]:
    rows = [r for r in records if "ppl" in r]
    rows.sort(key=lambda r: (_book(r), r["policy"], json.dumps(r.get("params", {}), sort_keys=True)))
    lines = ["| book | policy | params (memory) | tokens | ppl | tok/s | active MiB | passive MiB | LRU hit rate | "
             "KiB moved / layer-forward | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hit_rate, moved, passive = _memory_columns(r)
        params = r.get("params", {})
        differing = non_default_params(r["policy"], params)  # a row with other memory options must not read alike
        shown = {k: v for k, v in params.items() if k in ("start_size", "recent_size") or k in (
            "memory_representatives", "memory_summary", "memory_summary_bits", "memory_placement") or k in differing}
        lines.append(
            f"| {_book(r)} | {r['policy']} | {shown} | {r['tokens']} | {r['ppl']:.3f} | {r['tok_per_s']:.1f} | "
            f"{r['cache_bytes_max'] / 2**20:.2f} | {passive} | {hit_rate} | {moved} | "
            f"{r['peak_rss_bytes'] / 2**20:.0f} |"
        )
    return lines


def main(root: str) -> None:
    path = Path(root)
    records = read_records(path)
    text = "\n".join([
        "# Issue 16 measurements (generated by benchmarks/memory_report.py from the records below)", "",
        "## Retrieval: cells answered (books and depths together)", "", *accuracy_table(records), "",
        "## Retrieval, per cell", "", *passkey_table(records), "", "## Perplexity, 16k tokens, chunk 256", "", *ppl_table(records), "",
    ])
    target = path / "results.md"
    tmp = target.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/memory")
