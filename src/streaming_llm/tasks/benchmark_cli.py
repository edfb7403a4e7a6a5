"""``streaming-llm benchmark``: LongBench or ZeroSCROLLS tasks answered with each policy's cache.

Examples come from the Hugging Face hub (``--source`` left out; needs the ``[datasets]`` extra)
or from a local download (``--source``: LongBench's unzipped ``data/`` folder, a ZeroSCROLLS
folder of ``<task>/<split>.jsonl``, or one task's ``.jsonl``). Prompts longer than
``--max-length`` tokens are cut in the middle, as LongBench does, and answers are scored with
each task's official metric (the ``[tasks]`` extra).

Every (policy, task, example) is one JSON record under ``<output-dir>/records/``, written
atomically as soon as it is done; a rerun skips examples whose record exists (``--force`` reruns
them). The reports (``results.md``, ``results.csv``, the bar chart ``scores.png``) are rebuilt
from the records at the end.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..cli_args import add_answer_command, answer_words, run_words, spelled_out
from ..evaluation.runs import RunSpec
from ..models import load_model
from ..report import console_table
from ..sizing import size_for_comparison
from .longbench import BENCHMARKS, BenchmarkConfig, encode_example
from .records import load_or_run, record_path
from .report import SCORE_COLUMNS, benchmark_scores, slug, write_benchmark_reports
from .runner import DecodeConfig, answer_prompt, stop_token_ids, warn_beyond_positions

log = logging.getLogger("streaming_llm.tasks")


def add_benchmark_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_answer_command(
        subparsers, "benchmark", help="LongBench / ZeroSCROLLS scores of policies (hub or local .jsonl files)",
        description=__doc__, unit="example",
    )
    parser.add_argument("--benchmark", default="longbench", metavar="NAME",
                        help=f"{' or '.join(BENCHMARKS)} (default longbench)")
    parser.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                        help="; ".join(f"{name}: {', '.join(b.tasks)}" for name, b in BENCHMARKS.items()))
    parser.add_argument("--source", default=None,
                        help="hub dataset id, local folder or one task's .jsonl (default: the benchmark's hub "
                             f"dataset, {', '.join(b.dataset for b in BENCHMARKS.values())})")
    parser.add_argument("--split", default=None, help="default: the split with answers (LongBench test, ZeroSCROLLS validation)")
    parser.add_argument("--samples", type=int, default=None, help="first N examples per task (default: all)")
    parser.add_argument("--max-length", type=int, default=BenchmarkConfig.max_length,
                        help=f"prompt tokens at most, cut in the middle (default {BenchmarkConfig.max_length})")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="answer tokens at most for every task (default: each task's own budget)")
    parser.add_argument("--output-dir", default="outputs/benchmark", help="records/, results.md, results.csv, scores.png")
    parser.set_defaults(func=cmd_benchmark)
    return parser


def _command_line(args: argparse.Namespace, bench: BenchmarkConfig) -> str:
    """The command that reproduces this run, every setting spelled out (defaults included)."""
    words = ["streaming-llm", "benchmark", *run_words(args), *answer_words(args), "--benchmark", bench.benchmark,
             "--tasks", *bench.tasks, "--source", bench.resolved_source, "--split", bench.resolved_split,
             "--max-length", str(bench.max_length), "--output-dir", args.output_dir]
    if bench.num_samples is not None:
        words += ["--samples", str(bench.num_samples)]
    if bench.max_new_tokens is not None:
        words += ["--max-new-tokens", str(bench.max_new_tokens)]
    return spelled_out(words)


def _header(args: argparse.Namespace, bench: BenchmarkConfig, device: str) -> str:
    samples = "all examples" if bench.num_samples is None else f"the first {bench.num_samples} example(s)"
    new_tokens = "each task's own number of" if bench.max_new_tokens is None else f"{bench.max_new_tokens}"
    return (
        f"# streaming_llm benchmark\n\nCommand: `{_command_line(args, bench)}`\n\n"
        f"Model `{args.model}`, {bench.benchmark} from `{bench.resolved_source}` (split `{bench.resolved_split}`), "
        f"{samples} per task, prompts cut in the middle to at most {bench.max_length} tokens, chunk size "
        f"{args.chunk_size}, at most {new_tokens} new tokens, {args.dtype} on {device}. Score = the task's "
        "official metric (column `metric`) in [0, 1], averaged over the examples.\n"
    )


def cmd_benchmark(args: argparse.Namespace) -> int:
    configs = [RunSpec.parse(text).config() for text in args.policies]  # validate everything before loading the model
    bench = BenchmarkConfig(args.benchmark, tuple(dict.fromkeys(args.tasks)), args.source, args.split, args.samples,
                            args.max_length, args.max_new_tokens)
    DecodeConfig(chunk_size=args.chunk_size)  # a bad --chunk-size fails now, not at the first example
    examples = {task: bench.load(task) for task in bench.tasks}  # a missing source fails before the model loads
    if not any(examples.values()):
        raise ValueError(f"{bench.resolved_source} holds no examples for {', '.join(bench.tasks)}")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    device = str(next(model.parameters()).device)
    warn_beyond_positions(model, bench.max_length, max(bench.new_tokens(e) for task in examples.values() for e in task))
    configs = [size_for_comparison(config, model, args.cache_bytes) for config in configs]
    stop, output_dir = stop_token_ids(tokenizer), Path(args.output_dir)
    records = []
    for task, task_examples in examples.items():
        for index, example in enumerate(task_examples):
            prompt_ids = encode_example(tokenizer, example, bench.max_length)
            decode = DecodeConfig(chunk_size=args.chunk_size, max_new_tokens=bench.new_tokens(example))
            for text, config in zip(args.policies, configs):
                identity = {
                    "label": text, "policy": config.name, "params": config.to_dict(), "benchmark": bench.benchmark,
                    "task": task, "split": bench.resolved_split, "example_id": example.id, "index": index,
                    "model": args.model, "max_length": bench.max_length, "chunk_size": decode.chunk_size,
                    "max_new_tokens": decode.max_new_tokens, "dtype": args.dtype, "device": device,
                    "cache_bytes_target": args.cache_bytes,
                }
                # The source is kept but is not identity: the hub and a local copy of it hold the
                # same examples, so either reuses the other's records.
                path = record_path(output_dir, identity, f"{slug(text)}-{bench.benchmark}-{task}-{index}")
                record, ran = load_or_run(path, identity, lambda: {
                    "source": bench.resolved_source, "metric": example.metric, "answers": list(example.answers),
                    **answer_prompt(model, tokenizer, config, prompt_ids, decode, stop, example.score),
                }, force=args.force)
                records.append(record)
                if ran:
                    log.info("%s %s #%d: score %.2f, expected %s, got %r", text, task, index, record["score"],
                             record["answers"], record["prediction"])
    write_benchmark_reports(output_dir, records, _header(args, bench, device))
    print(console_table(benchmark_scores(records), SCORE_COLUMNS))
    print(f"\nreport: {output_dir / 'results.md'}")
    return 0
