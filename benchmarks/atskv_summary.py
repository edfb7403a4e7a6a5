"""Per-book perplexity tables of an ``atskv_ppl.sh`` output folder: ``FOLDER/ppl.md``.

Gap closure of a policy: ``(PPL_streaming - PPL) / (PPL_streaming - PPL_full)`` on the same book
(1 = as good as the full cache, 0 = no better than StreamingLLM, < 0 = worse). It is defined only
where the full cache beats StreamingLLM: past the model's trained positions (SmolLM2 at 16,384
tokens) the full cache is the worse one, the ratio's sign would flip, and the table says "n/a"
instead. The change against StreamingLLM, in percent of its PPL, is shown for every policy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from streaming_llm.report import write_atomic

SHOWN = ("cache_size", "heavy_size", "recent_size", "compressed_budget", "start_size", "predictor")


def book_rows(results: list[dict]) -> list[str]:
    by_policy = {r["policy"]: r for r in results}
    full, streaming = by_policy["full"]["ppl"], by_policy["streaming"]["ppl"]
    rows = []
    for r in results:
        change = "" if r["policy"] == "streaming" else f"{100 * (r['ppl'] - streaming) / streaming:+.1f}%"
        params = ",".join(f"{k}={r['params'][k]}" for k in SHOWN if k in r["params"])
        rows.append(f"| {r['policy']} | {params} | {r['cache_bytes_max']:,} | {r['ppl']:.3f} | {change} | "
                    f"{closure(r, streaming, full)} |")
    return rows


def closure(result: dict, streaming: float, full: float) -> str:
    """The gap closure cell: blank for the references, "n/a" where the full cache does not beat streaming."""
    if result["policy"] in ("full", "streaming"):
        return ""
    if full >= streaming:
        return "n/a (full worse)"
    return f"{(streaming - result['ppl']) / (streaming - full):+.2f}"


def main(folder: str) -> None:
    root = Path(folder)
    lines = [f"# Perplexity at equal bytes: {root.name}", "",
             "SmolLM2-135M fp32, CPU, 32 tokens per forward; bounded policies sized to the bytes of the streaming "
             "reference (`--cache-bytes`). vs streaming = (PPL - PPL_streaming) / PPL_streaming (negative is "
             "better). Closure = (PPL_streaming - PPL) / (PPL_streaming - PPL_full), where the full cache beats "
             "streaming.", ""]
    for book_dir in sorted(p for p in root.iterdir() if (p / "results.json").is_file()):
        results = json.loads((book_dir / "results.json").read_text())
        first = results[0]
        lines += [f"## {first['text']}, {first['tokens']} tokens", "",
                  "| policy | params | cache bytes max | PPL | vs streaming | closure |", "|---|---|---|---|---|---|",
                  *book_rows(results), ""]
    write_atomic(root / "ppl.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
