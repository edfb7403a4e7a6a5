"""Decode throughput of our caches against transformers' DynamicCache, side by side in one run.

Each cache streams the same tokens one at a time (the StreamingLLM protocol); the first
``--warmup`` steps are not timed. Prints tok/s, the ratio to DynamicCache (the overhead of
BoundedCache, and the saving of a bounded cache at long lengths) and the ratio to plain
StreamingLLM on SDPA (the overhead of the attention hook: its SDPA path, and its path that
materialises attention probabilities for H2O / TOVA).

    .venv/bin/python benchmarks/decode_throughput.py --tokens 2048
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from transformers import DynamicCache

from streaming_llm import cache_from_config, make_cache, make_policy_config
from streaming_llm.attention import attention_hook
from streaming_llm.data import tokenize_stream
from streaming_llm.models import load_model
from streaming_llm.report import console_table
from streaming_llm.sizing import KVGeometry, size_to_bytes


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
    b, half = args.budget, args.budget // 2
    # (name, cache factory, route attention through the hook even if the policy does not need it)
    runs = [
        ("DynamicCache (transformers)", lambda: DynamicCache(config=model.config), False),
        ("full", lambda: make_cache(model, "full"), False),
        (f"sliding_window {b}", lambda: make_cache(model, "sliding_window", window_size=b), False),
        (f"streaming 4+{b - 4}", lambda: make_cache(model, "streaming", start_size=4, recent_size=b - 4), False),
        (f"streaming 4+{b - 4}, via hook (SDPA path)",
         lambda: make_cache(model, "streaming", start_size=4, recent_size=b - 4), True),
        (f"h2o {half}+{half} (hook, probabilities)",
         lambda: make_cache(model, "h2o", heavy_size=half, recent_size=half), False),
        (f"tova {b} (hook, probabilities)", lambda: make_cache(model, "tova", cache_size=b), False),
    ]
    # ADMS at the bytes of streaming 4+(b-4): sinks 4, a mid budget of b/2, the recent window sized to fit
    geometry = KVGeometry.of(model)
    equal_bytes = geometry.num_layers * b * geometry.bytes_per_slot(make_policy_config("streaming"))
    for compressor, ratio in (("low_rank", 0.5), ("low_rank", 1.0), ("vq", 0.5), ("summary", 0.5)):
        config = size_to_bytes(make_policy_config(
            "adms", start_size=4, enable_dynamic_sink=False, compressed_budget=half, compressor_type=compressor,
            importance_ratio=ratio), model, equal_bytes)
        runs.append((f"adms {compressor} ratio {ratio}, mid {half}, recent {config.recent_size}",
                     lambda config=config: cache_from_config(model, config), False))
    rows = []
    for name, build, force_hook in runs:
        cache = build()
        with contextlib.ExitStack() as stack:
            if force_hook:
                stack.enter_context(attention_hook(model))
            if hasattr(cache, "disable"):
                stack.callback(cache.disable)
            rows.append({"cache": name, "tok_per_s": decode_tok_per_s(model, cache, ids, args.warmup)})
    baseline = rows[0]["tok_per_s"]
    plain_streaming = rows[3]["tok_per_s"]
    for row in rows:
        row["ratio_vs_dynamic"] = row["tok_per_s"] / baseline
        row["ratio_vs_streaming_sdpa"] = row["tok_per_s"] / plain_streaming
    print(f"{args.model}, {ids.shape[1]} tokens decoded one by one, {args.dtype} on {device}")
    print(console_table(rows, ["cache", "tok_per_s", "ratio_vs_dynamic", "ratio_vs_streaming_sdpa"]))


if __name__ == "__main__":
    main()
