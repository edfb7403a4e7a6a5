"""Speed of the memory tier against plain StreamingLLM at equal active bytes, side by side in one run.

For each ``--lengths`` L and each of ``--books``: ``streaming 4+508`` and ``streaming+memory`` sized to
the same active bytes (``size_to_bytes``) prefill the book's first L tokens in chunks of
``--chunk-size``, then decode ``--decode`` tokens one per forward (the book's next tokens, fed as
a greedy decode would feed its own: the cost per step is the same). Both run in the same process,
one after the other, alternating which goes first from cell to cell, so load drift hits both.

Prints and writes (``--output-dir``: ``memory_speed.json`` and ``memory_speed.md``, atomically;
finished cells are kept and skipped on a rerun) per cell: prefill and decode tok/s and their ratio
to streaming, the memory tier's LRU hit rate and KiB moved per decode step (all layers), its
passive bytes, and the peak RSS of the cell (VmHWM, reset before it; the model is counted in both).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/memory_speed.py --lengths 4096 16384
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from streaming_llm import cache_from_config, make_policy_config
from streaming_llm.compat import cache_kwargs
from streaming_llm.data import tokenize_stream
from streaming_llm.evaluation.runs import RunSpec
from streaming_llm.evaluation.memory import peak_rss_bytes, reset_peak_memory
from streaming_llm.models import load_model
from streaming_llm.runs.atomic import write_atomic
from streaming_llm.sizing import cache_bytes_of, size_to_bytes

log = logging.getLogger("memory_speed")
REFERENCE = {"start_size": 4, "recent_size": 508}
MIB = 2**20


@torch.no_grad()
def run_cell(model, config, ids: torch.Tensor, length: int, decode: int, chunk_size: int) -> dict[str, Any]:
    """Prefill ``ids[:, :length]`` in chunks, then decode ``decode`` tokens one per forward."""
    cache = cache_from_config(model, config)
    reset_peak_memory(ids.device)
    try:
        arg = cache_kwargs(model, cache)
        start = time.perf_counter()
        for t in range(0, length, chunk_size):
            model(input_ids=ids[:, t : min(t + chunk_size, length)], **arg, use_cache=True)
            if (t // chunk_size) % 16 == 15:
                log.info("  %s prefill %d/%d tokens", config.name, t + chunk_size, length)
        prefill_s = time.perf_counter() - start
        before = cache.stats
        start = time.perf_counter()
        for t in range(length, length + decode):
            model(input_ids=ids[:, t : t + 1], **arg, use_cache=True)
        decode_s = time.perf_counter() - start
        after = cache.stats
    finally:
        cache.disable()
    moved = after.get("memory_bytes_moved", 0) - before.get("memory_bytes_moved", 0)
    hits = after.get("memory_lru_hits", 0) - before.get("memory_lru_hits", 0)
    misses = after.get("memory_lru_misses", 0) - before.get("memory_lru_misses", 0)
    return {
        "prefill_tok_s": length / prefill_s,
        "decode_tok_s": decode / decode_s,
        "active_bytes": after["bytes_max"],
        "passive_bytes": after.get("memory_passive_bytes", 0),
        "decode_lru_hit_rate": hits / (hits + misses) if hits + misses else None,
        "decode_kib_moved_per_step": moved / decode / 1024 if "memory_bytes_moved" in after else None,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def table(cells: dict[str, dict[str, Any]]) -> str:
    lines = ["| book | tokens | policy | prefill tok/s | decode tok/s | prefill x | decode x | active MiB | passive MiB "
             "| decode LRU hit rate | KiB moved / decode step | peak RSS MiB |", "|---" * 12 + "|"]
    for key in sorted(cells, key=lambda k: (cells[k]["length"], cells[k]["book"], cells[k]["policy"] != "streaming")):
        c = cells[key]
        reference = cells.get(f"{c['book']}|{c['length']}|streaming")
        ratio = (lambda name: f"{c[name] / reference[name]:.2f}") if reference else (lambda name: "–")
        hit = "–" if c["decode_lru_hit_rate"] is None else f"{c['decode_lru_hit_rate']:.2f}"
        moved = "–" if c["decode_kib_moved_per_step"] is None else f"{c['decode_kib_moved_per_step']:.0f}"
        lines.append(f"| {c['book']} | {c['length']} | {c['policy']} | {c['prefill_tok_s']:.1f} | {c['decode_tok_s']:.2f} "
                     f"| {ratio('prefill_tok_s')} | {ratio('decode_tok_s')} | {c['active_bytes'] / MIB:.2f} "
                     f"| {c['passive_bytes'] / MIB:.1f} | {hit} | {moved} | {c['peak_rss_bytes'] / MIB:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--books", nargs="+", default=["pioneer-days"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[4096, 16384])
    parser.add_argument("--decode", type=int, default=32, help="tokens decoded one per forward after the prefill")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--memory-policy", default="streaming+memory",
                        help="the memory policy as a --policy spec, e.g. streaming+memory:memory_recall_interval=4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output-dir", default="outputs/memory_speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    reference = make_policy_config("streaming", **REFERENCE)
    budget = cache_bytes_of(reference, model)
    memory = size_to_bytes(RunSpec.parse(args.memory_policy).config(), model, budget)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = out / "memory_speed.json"
    cells = json.loads(records.read_text()) if records.exists() else {}
    order = 0
    for length in args.lengths:
        for book in args.books:
            ids = torch.tensor([tokenize_stream(tokenizer, text=f"builtin:{book}", num_tokens=length + args.decode)])
            if ids.shape[1] < length + args.decode:
                raise SystemExit(f"memory_speed: error: {book} has only {ids.shape[1]} tokens; "
                                 f"--lengths {length} with --decode {args.decode} needs {length + args.decode}")
            pair = [("streaming", reference), ("streaming+memory", memory)]
            for name, config in pair if order % 2 == 0 else pair[::-1]:
                key = f"{book}|{length}|{name}"
                if key in cells:
                    continue
                log.info("%s %s %d tokens + %d decoded", book, name, length, args.decode)
                cells[key] = {"book": book, "length": length, "policy": name, "params": config.to_dict(),
                              **run_cell(model, config, ids, length, args.decode, args.chunk_size)}
                write_atomic(records, json.dumps(cells, indent=2, sort_keys=True, default=str) + "\n")
                write_atomic(out / "memory_speed.md", table(cells))
            order += 1
    print(table(cells))


if __name__ == "__main__":
    main()
