"""Decode throughput of our caches against transformers' DynamicCache, side by side in one run.

Each cache streams the same tokens one at a time (the StreamingLLM protocol); the first
``--warmup`` steps are not timed. Prints tok/s and the ratio to DynamicCache, so the overhead of
BoundedCache (and the saving of a bounded cache at long lengths) is read off one table.

    .venv/bin/python benchmarks/decode_throughput.py --tokens 2048
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import DynamicCache

from streaming_llm import make_cache
from streaming_llm.data import tokenize_stream
from streaming_llm.models import load_model
from streaming_llm.report import console_table


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_tok_per_s(model, cache, ids: torch.Tensor, warmup: int) -> float:
    device = ids.device
    for t in range(warmup):
        model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
    _synchronize(device)
    start = time.perf_counter()
    for t in range(warmup, ids.shape[1]):
        model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
    _synchronize(device)
    return (ids.shape[1] - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text", default="builtin:pioneer-days")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--budget", type=int, default=256, help="slots of the bounded caches")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    device = next(model.parameters()).device
    ids = torch.tensor([tokenize_stream(tokenizer, text=args.text, num_tokens=args.tokens)], device=device)
    caches = {
        "DynamicCache (transformers)": lambda: DynamicCache(config=model.config),
        "full": lambda: make_cache(model, "full"),
        f"sliding_window {args.budget}": lambda: make_cache(model, "sliding_window", window_size=args.budget),
        f"streaming 4+{args.budget - 4}": lambda: make_cache(model, "streaming", start_size=4, recent_size=args.budget - 4),
    }
    rows = []
    for name, build in caches.items():
        rows.append({"cache": name, "tok_per_s": decode_tok_per_s(model, build(), ids, args.warmup)})
    baseline = rows[0]["tok_per_s"]
    for row in rows:
        row["ratio_vs_dynamic"] = row["tok_per_s"] / baseline
    print(f"{args.model}, {ids.shape[1]} tokens decoded one by one, {args.dtype} on {device}")
    print(console_table(rows, ["cache", "tok_per_s", "ratio_vs_dynamic"]))


if __name__ == "__main__":
    main()
