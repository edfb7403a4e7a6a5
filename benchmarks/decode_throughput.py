"""Streaming throughput of our caches against transformers' DynamicCache, side by side in one run.

Each cache streams the same tokens, one at a time (the StreamingLLM protocol, the default) or in
chunks of ``--chunk-size`` tokens per forward (the protocol of ``streaming-llm eval``/``sweep``
runs); the first ``--warmup`` tokens are not timed. With ``--repeats R`` every cache runs R
times, the caches interleaved within each round so that a drift of the machine's speed hits them
all alike; the table gives the median and the spread (min-max) of tok/s.

Prints tok/s, the ratio to DynamicCache (the overhead of BoundedCache, and the saving of a
bounded cache at long lengths) and the ratio to plain StreamingLLM on SDPA (the overhead of the
attention hook: its SDPA path, and its path that materialises attention probabilities for H2O /
TOVA / attention-scored ADMS). ADMS runs at the bytes of streaming 4+(budget-4).

    .venv/bin/python benchmarks/decode_throughput.py --tokens 2048
    .venv/bin/python benchmarks/decode_throughput.py --tokens 4096 --chunk-size 32 --repeats 3 \\
        --caches streaming h2o adms_attention_low_rank_1.0
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from transformers import DynamicCache

from streaming_llm import cache_from_config, make_cache, make_policy_config
from streaming_llm.attention import attention_hook
from streaming_llm.compat import cache_kwargs
from streaming_llm.data import tokenize_stream
from streaming_llm.models import load_model
from streaming_llm.report import console_table
from streaming_llm.sizing import KVGeometry, size_to_bytes


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def stream_tok_per_s(model, cache, ids: torch.Tensor, warmup: int, chunk_size: int) -> float:
    """tok/s over ``ids[warmup:]`` fed ``chunk_size`` tokens per forward (warm-up rounded up to a chunk)."""
    device = ids.device
    starts = range(0, ids.shape[1], chunk_size)
    timed_from = -(-warmup // chunk_size) * chunk_size
    cache_arg = cache_kwargs(model, cache)
    for t in (s for s in starts if s < timed_from):
        model(input_ids=ids[:, t : t + chunk_size], **cache_arg, use_cache=True)
    _synchronize(device)
    start = time.perf_counter()
    for t in (s for s in starts if s >= timed_from):
        model(input_ids=ids[:, t : t + chunk_size], **cache_arg, use_cache=True)
    _synchronize(device)
    return max(ids.shape[1] - timed_from, 0) / (time.perf_counter() - start)


def build_runs(model, budget: int) -> dict[str, tuple[str, object, bool]]:
    """key -> (label, cache factory, route attention through the hook even if the policy does not need it)."""
    b, half = budget, budget // 2
    runs = {
        "dynamic": ("DynamicCache (transformers)", lambda: DynamicCache(config=model.config), False),
        "full": ("full", lambda: make_cache(model, "full"), False),
        "sliding_window": (f"sliding_window {b}", lambda: make_cache(model, "sliding_window", window_size=b), False),
        "streaming": (f"streaming 4+{b - 4}", lambda: make_cache(model, "streaming", start_size=4, recent_size=b - 4), False),
        "streaming_hook": (f"streaming 4+{b - 4}, via hook (SDPA path)",
                           lambda: make_cache(model, "streaming", start_size=4, recent_size=b - 4), True),
        "h2o": (f"h2o {half}+{half} (hook, probabilities)",
                lambda: make_cache(model, "h2o", heavy_size=half, recent_size=half), False),
        "tova": (f"tova {b} (hook, probabilities)", lambda: make_cache(model, "tova", cache_size=b), False),
    }
    # ADMS at the bytes of streaming 4+(b-4): sinks 4, a mid budget of b/2, the recent window sized to fit
    geometry = KVGeometry.of(model)
    equal_bytes = geometry.num_layers * b * geometry.bytes_per_slot(make_policy_config("streaming"))
    variants = [("value_norm", "low_rank", 0.5), ("value_norm", "low_rank", 1.0), ("value_norm", "vq", 0.5),
                ("value_norm", "summary", 0.5), ("attention", "low_rank", 0.5), ("attention", "low_rank", 1.0)]
    for metric, compressor, ratio in variants:
        config = size_to_bytes(make_policy_config(
            "adms", start_size=4, enable_dynamic_sink=False, compressed_budget=half, compressor_type=compressor,
            importance_ratio=ratio, importance_metric=metric), model, equal_bytes)
        key = f"adms_{metric}_{compressor}_{ratio}"
        runs[key] = (f"adms {compressor} ratio {ratio}, {metric}, mid {half}, recent {config.recent_size}",
                     lambda config=config: cache_from_config(model, config), False)
    return runs


def time_run(model, build, force_hook: bool, ids: torch.Tensor, warmup: int, chunk_size: int) -> float:
    cache = build()
    with contextlib.ExitStack() as stack:
        if force_hook:
            stack.enter_context(attention_hook(model))
        if hasattr(cache, "disable"):
            stack.callback(cache.disable)
        return stream_tok_per_s(model, cache, ids, warmup, chunk_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--text", default="builtin:pioneer-days")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=32, help="untimed tokens at the start of each run")
    parser.add_argument("--chunk-size", type=int, default=1, help="tokens per forward (default 1: token by token)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; each round runs every cache once")
    parser.add_argument("--budget", type=int, default=256, help="slots of the bounded caches")
    parser.add_argument("--caches", nargs="+", default=None, metavar="KEY",
                        help="run only these caches (default: all; the reference 'streaming' always runs)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    for name in ("tokens", "chunk_size", "repeats", "budget"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    device = next(model.parameters()).device
    ids = torch.tensor([tokenize_stream(tokenizer, text=args.text, num_tokens=args.tokens)], device=device)
    runs = build_runs(model, args.budget)
    keys = list(runs) if args.caches is None else list(dict.fromkeys(["streaming", *args.caches]))
    unknown = [key for key in keys if key not in runs]
    if unknown:
        parser.error(f"--caches: unknown {', '.join(unknown)}; choose from {', '.join(runs)}")
    speeds: dict[str, list[float]] = {key: [] for key in keys}
    for round_index in range(args.repeats):
        order = keys[round_index % len(keys):] + keys[: round_index % len(keys)]  # rotate who runs first
        for key in order:
            _, build, force_hook = runs[key]
            speeds[key].append(time_run(model, build, force_hook, ids, args.warmup, args.chunk_size))
    medians = {key: statistics.median(values) for key, values in speeds.items()}
    rows = []
    for key in keys:
        row = {"key": key, "cache": runs[key][0], "tok_per_s": medians[key],
               "min_max": f"{min(speeds[key]):.1f}-{max(speeds[key]):.1f}",
               "ratio_vs_streaming_sdpa": medians[key] / medians["streaming"]}
        if "dynamic" in medians:
            row["ratio_vs_dynamic"] = medians[key] / medians["dynamic"]
        rows.append(row)
    columns = ["key", "cache", "tok_per_s", "min_max", "ratio_vs_streaming_sdpa"]
    if "dynamic" in medians:
        columns.append("ratio_vs_dynamic")
    print(f"{args.model}, {ids.shape[1]} tokens, {args.chunk_size} per forward, {args.warmup} warm-up, "
          f"{args.repeats} round(s), median tok/s, {args.dtype} on {device}")
    print(console_table(rows, columns))


if __name__ == "__main__":
    main()
