"""Soak run: stream a long token sequence (default 100,000 tokens) in chunks through one cache per
policy and check what must hold however long the stream:

- the cache's bytes stop changing once it is full (constant after warm-up),
- the process's resident memory grows by less than ``--rss-tolerance`` (5%) after warm-up,
- every logit is finite (no NaN, no inf).

Each policy runs in a fresh child process (so its RSS is its own, not the sum of every policy
before it) and writes ``<output>/runs/soak-<policy>-<hash>.json`` through the run store: a rerun
skips finished policies, and a killed one restarts only the policy in flight. While a policy runs,
``<output>/progress/<key>.json`` is rewritten atomically every ``--sample-every`` tokens, so an
interrupted soak still says how far each policy got.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/soak.py --output-dir outputs/soak

Bytes are the cache's own count of resident K/V (+ policy state) bytes, summed over layers; RSS is
``/proc/self/status`` VmRSS of the child. The unbounded ``full`` policy is skipped unless named:
its cache grows by design.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("soak")

DEFAULT_MEMORY = {"memory_passive_blocks": 64}  # a bounded passive store; the default (None) grows by design


def soak_policies(names: list[str] | None) -> list[str]:
    """The named policies, or every bounded one of ``list_policies()`` plus ``streaming+memory``."""
    from streaming_llm import list_policies
    from streaming_llm.policies import is_bounded

    if names:
        return names
    return [n for n in list_policies() if is_bounded(n)] + ["streaming+memory"]


def policy_config(name: str, slots: int):
    from streaming_llm import make_policy_config

    params = dict(DEFAULT_MEMORY) if name.endswith("+memory") else {}
    return make_policy_config(name, **params).sized(slots)


def token_stream(tokenizer, num_tokens: int) -> list[int]:
    """The three shipped books joined, repeated until ``num_tokens`` (a soak checks stability, not quality)."""
    from streaming_llm.data import load_text

    books = ["builtin:pioneer-days", "builtin:dragons-blood", "builtin:travels-in-morocco"]
    ids: list[int] = []
    for book in books:
        ids += tokenizer(load_text(book), add_special_tokens=False)["input_ids"]
    return (ids * math.ceil(num_tokens / len(ids)))[:num_tokens]


def judge(samples: list[dict[str, Any]], warmup: int, rss_tolerance: float) -> dict[str, Any]:
    """The soak's verdicts from its samples (each: tokens, cache_bytes, rss_bytes, finite)."""
    after = [s for s in samples if s["tokens"] >= warmup]
    finite = all(s["finite"] for s in samples)
    if not after:
        return {"finite": finite, "warm": False}
    cache = [s["cache_bytes"] for s in after]
    rss0, rss_max = after[0]["rss_bytes"], max(s["rss_bytes"] for s in after)
    growth = (rss_max - rss0) / rss0
    return {
        "warm": True,
        "finite": finite,
        "cache_bytes_after_warmup": [min(cache), max(cache)],
        "cache_constant": min(cache) == max(cache),
        "rss_at_warmup_bytes": rss0,
        "rss_max_after_warmup_bytes": rss_max,
        "rss_growth": growth,
        "rss_ok": growth < rss_tolerance,
    }


def run_one(args: argparse.Namespace, name: str, key: str, progress_path: Path) -> dict[str, Any]:
    """Soak ``name`` in this process; returns its record."""
    import torch

    from streaming_llm import cache_from_config
    from streaming_llm.compat import cache_kwargs
    from streaming_llm.evaluation.memory import current_rss_bytes
    from streaming_llm.models import load_model
    from streaming_llm.runs import write_json

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device="cpu")
    config = policy_config(name, args.slots)
    ids = torch.tensor(token_stream(tokenizer, args.tokens))[None]
    cache = cache_from_config(model, config)
    kwargs = cache_kwargs(model, cache)
    samples: list[dict[str, Any]] = []
    finite = True
    start = time.perf_counter()

    def sample(tokens: int) -> None:
        samples.append({"tokens": tokens, "cache_bytes": cache.cache_bytes(), "passive_bytes": cache.passive_bytes(),
                        "cache_tokens": max(cache.cache_tokens()), "rss_bytes": current_rss_bytes(), "finite": finite,
                        "seconds": round(time.perf_counter() - start, 2)})
        write_json(progress_path, {"policy": name, "tokens_reached": tokens, "samples": samples})

    with torch.no_grad():
        for begin in range(0, args.tokens, args.chunk_size):
            logits = model(input_ids=ids[:, begin:begin + args.chunk_size], **kwargs, use_cache=True).logits
            finite = finite and bool(torch.isfinite(logits).all())
            done = min(begin + args.chunk_size, args.tokens)
            if done // args.sample_every != begin // args.sample_every or done == args.tokens:
                sample(done)
    cache.disable()
    record = {"policy": name, "params": config.to_dict(), "model": args.model, "dtype": args.dtype,
              "chunk_size": args.chunk_size, "tokens": args.tokens, "warmup_tokens": args.warmup,
              "threads": args.threads, "allocator": allocator_settings(),
              "seconds": round(time.perf_counter() - start, 1), "samples": samples,
              **judge(samples, args.warmup, args.rss_tolerance)}
    record["passed"] = bool(record["finite"] and record.get("cache_constant") and record.get("rss_ok"))
    return record


def allocator_settings() -> str:
    """The glibc malloc tunables of this process (``MALLOC_*`` variables), or ``"default"``. They
    change the RSS check: with glibc's dynamic mmap threshold, tova's and snapkv's RSS swung by up
    to 10% without a trend; with ``MALLOC_MMAP_THRESHOLD_=131072`` it stayed flat (docs/reliability.md)."""
    tunables = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_"))
    return " ".join(tunables) or "default"


def partial_record(progress: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """The verdicts of an interrupted policy from the samples it reached (``None``: it never started)."""
    if not progress.exists():
        return None
    state = json.loads(progress.read_text())
    samples = state["samples"]
    record = {"policy": state["policy"], "samples": samples, "seconds": samples[-1]["seconds"],
              **judge(samples, args.warmup, args.rss_tolerance)}
    record["passed"] = f"unfinished ({state['tokens_reached']} of {args.tokens} tokens)"
    return record


def definition(args: argparse.Namespace, name: str) -> dict[str, Any]:
    return {"policy": name, "model": args.model, "dtype": args.dtype, "tokens": args.tokens,
            "chunk_size": args.chunk_size, "slots": args.slots, "warmup": args.warmup}


def summary_table(records: list[dict[str, Any]]) -> str:
    lines = ["| policy | tokens | cache bytes after warm-up (min..max) | constant | RSS at warm-up MiB | RSS growth | "
             "finite | allocator | s | passed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lo, hi = r.get("cache_bytes_after_warmup", [None, None])
        lines.append(f"| {r['policy']} | {r['samples'][-1]['tokens']} | {lo}..{hi} | {r.get('cache_constant')} | "
                     f"{r.get('rss_at_warmup_bytes', 0) / 2**20:.0f} | {100 * r.get('rss_growth', float('nan')):+.2f}% | "
                     f"{r['finite']} | {r.get('allocator', 'not recorded')} | {r['seconds']} | {r['passed']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", nargs="+", help="default: every bounded policy + streaming+memory")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--slots", type=int, default=512, help="cache budget per layer (policy.sized)")
    parser.add_argument("--warmup", type=int, default=10_000, help="tokens before the checks start")
    parser.add_argument("--sample-every", type=int, default=2_048)
    parser.add_argument("--rss-tolerance", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output-dir", default="outputs/soak")
    parser.add_argument("--report-only", action="store_true",
                        help="write soak.md from the records and progress files in --output-dir; run nothing")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child: soak this policy and write its record
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from streaming_llm.runs import RunStore, job_key, write_atomic

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    output = Path(args.output_dir)
    store = RunStore(output / "runs", required=("policy", "samples", "passed"))
    if args.one:
        key = job_key(f"soak-{args.one.replace('+', '_')}", definition(args, args.one))
        store.save(key, run_one(args, args.one, key, output / "progress" / f"{key}.json"))
        return 0
    records = []
    for name in soak_policies(args.policies):
        policy_config(name, args.slots)  # a bad name or size fails here, before any child starts
        key = job_key(f"soak-{name.replace('+', '_')}", definition(args, name))
        if args.report_only:  # a finished record, else how far the policy got (its progress file)
            record = store.load(key) or partial_record(output / "progress" / f"{key}.json", args)
            if record is not None:
                records.append(record)
            continue
        if store.load(key) is None:
            log.info("soak %s: %d tokens", name, args.tokens)
            child = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--one", name]
            result = subprocess.run(child)
            if result.returncode != 0:
                log.error("soak %s failed (exit %d); see its progress file", name, result.returncode)
                continue
        record = store.load(key)
        records.append(record)
        log.info("soak %s: %s", name, json.dumps({k: v for k, v in record.items() if k not in ("samples", "params")}))
    if records:
        command = "OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/soak.py " + " ".join(argv or sys.argv[1:])
        write_atomic(output / "soak.md", f"# Soak\n\nCommand: `{command}`\n\n" + summary_table(records))
        print(summary_table(records))
    return 0 if records and all(r["passed"] is True for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
