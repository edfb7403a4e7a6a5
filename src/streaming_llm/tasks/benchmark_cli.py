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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli_args import add_answer_command, answer_plan, answer_words, executor_from_args, run_words, spelled_out
from ..evaluation.runs import record_store
from ..report import console_table
from ..runs.executors import LocalExecutor, run_units
from .longbench import BENCHMARKS, BenchmarkConfig, BenchmarkExample, encode_example
from .report import SCORE_COLUMNS, benchmark_scores, write_benchmark_reports
from .runner import DecodeConfig, answer_prompt
from .units import RECORD_FIELDS, AnswerUnit, Answering, record_name, report_failures

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


@dataclass(frozen=True)
class BenchmarkItem(AnswerUnit):
    """One (policy, benchmark task, example)."""

    answering: Answering
    example: BenchmarkExample
    index: int
    split: str
    source: str  # kept in the record, not in the definition: the hub and a local copy hold the same examples
    max_length: int
    max_new_tokens: int

    def name(self) -> str:
        return record_name(self.answering.label, self.example.benchmark, self.example.task, self.index)

    def definition(self) -> dict[str, Any]:
        return {**self.answering.definition(), "benchmark": self.example.benchmark, "task": self.example.task,
                "split": self.split, "example_id": self.example.id, "index": self.index,
                "max_length": self.max_length, "max_new_tokens": self.max_new_tokens}

    def answer(self, workspace, model, tokenizer, config, stop: set[int]) -> dict[str, Any]:
        self.warn_once(workspace, model, self.max_length, self.max_new_tokens)
        prompt_ids = encode_example(tokenizer, self.example, self.max_length)
        decode = DecodeConfig(chunk_size=self.answering.chunk_size, max_new_tokens=self.max_new_tokens)
        example = self.example
        return {
            "benchmark": example.benchmark, "task": example.task, "split": self.split, "example_id": example.id,
            "index": self.index, "max_length": self.max_length, "max_new_tokens": self.max_new_tokens,
            "source": self.source, "metric": example.metric, "answers": list(example.answers),
            **answer_prompt(model, tokenizer, config, prompt_ids, decode, stop, example.score),
        }


def cmd_benchmark(args: argparse.Namespace) -> int:
    plan = answer_plan(args)  # policies, --set and --grid: validated before the model loads
    bench = BenchmarkConfig(args.benchmark, tuple(dict.fromkeys(args.tasks)), args.source, args.split, args.samples,
                            args.max_length, args.max_new_tokens)
    DecodeConfig(chunk_size=args.chunk_size)  # a bad --chunk-size fails now, not at the first example
    examples = {task: bench.load(task) for task in bench.tasks}  # a missing source fails before the model loads
    if not any(examples.values()):
        raise ValueError(f"{bench.resolved_source} holds no examples for {', '.join(bench.tasks)}")
    items = [
        BenchmarkItem(Answering(label, spec, args.model, args.dtype, args.device, args.chunk_size, cache_bytes, reference),
                      example, index, bench.resolved_split, bench.resolved_source, bench.max_length,
                      bench.new_tokens(example))
        for task_examples in examples.values() for index, example in enumerate(task_examples)
        for label, spec, cache_bytes, reference in plan
    ]

    def logged(item: BenchmarkItem, record: dict[str, Any]) -> None:
        log.info("%s %s #%d: score %.2f, expected %s, got %r", item.answering.label, item.example.task, item.index,
                 record["score"], record["answers"], record["prediction"])

    output_dir = Path(args.output_dir)
    executor = executor_from_args(args, LocalExecutor("benchmark", "example", keep_going=False))
    records, failures = run_units(items, record_store(output_dir / "records", RECORD_FIELDS), executor, force=args.force,
                                  progress=not args.quiet, on_ran=logged)
    if records:
        write_benchmark_reports(output_dir, records, _header(args, bench, records[0]["device"]))
        print(console_table(benchmark_scores(records), SCORE_COLUMNS))
        print(f"\nreport: {output_dir / 'results.md'}")
    return report_failures(failures)
