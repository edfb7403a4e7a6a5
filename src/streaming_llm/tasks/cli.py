"""``streaming-llm tasks``: synthetic long-context tasks over policies x lengths x depths.

Every (policy, task, length, depth, sample) cell is one JSON record under
``<output-dir>/records/``, written atomically as soon as it is done; a rerun skips cells whose
record exists (``--force`` reruns them). The reports (``results.md``, ``results.csv``, one
heatmap per policy and task) are rebuilt from the records at the end.
"""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..checks import check_int
from ..cli_args import add_answer_command, answer_plan, answer_words, executor_from_args, run_words, spelled_out
from ..data import load_text
from ..evaluation.runs import record_store
from ..report import console_table
from ..runs.executors import LocalExecutor, run_units
from .prompting import PromptFormat
from .report import RESULT_COLUMNS, aggregate, write_reports
from .runner import DecodeConfig, answer_prompt
from .scoring import SYNTHETIC_SCORERS
from .synthetic import TASK_NAMES, SyntheticTaskConfig, build_sample
from .units import RECORD_FIELDS, AnswerUnit, Answering, record_name, report_failures

log = logging.getLogger("streaming_llm.tasks")


def add_tasks_parser(subparsers) -> argparse.ArgumentParser:
    parser = add_answer_command(
        subparsers, "tasks", help="needle / passkey / multi-key / variable-tracking accuracy over lengths and depths",
        description=__doc__, unit="cell",
    )
    parser.add_argument("--tasks", nargs="+", default=["passkey"], choices=TASK_NAMES, metavar="TASK",
                        help=f"synthetic tasks: {', '.join(TASK_NAMES)} (default passkey)")
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048], metavar="N",
                        help="prompt lengths in tokens, chat frame and question included (default 2048)")
    parser.add_argument("--depths", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0], metavar="D",
                        help="needle depths in [0, 1] of the context (default 0 0.25 0.5 0.75 1)")
    parser.add_argument("--samples", type=int, default=5, help="prompts per cell (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--haystack", default="builtin:pioneer-days", help="filler text: builtin:NAME or a file")
    parser.add_argument("--num-keys", type=int, default=SyntheticTaskConfig.num_keys,
                        help=f"multikey: needles in the context, one asked (default {SyntheticTaskConfig.num_keys})")
    parser.add_argument("--num-hops", type=int, default=SyntheticTaskConfig.num_hops,
                        help=f"vartrack: assignments after the first (default {SyntheticTaskConfig.num_hops})")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer tokens at most (default 32)")
    parser.add_argument("--output-dir", default="outputs/tasks", help="records/, results.md, results.csv, heatmaps")
    parser.set_defaults(func=cmd_tasks)
    return parser


def _check_grid(args: argparse.Namespace) -> None:
    if any(length < 1 for length in args.lengths):
        raise ValueError(f"--lengths must be integers >= 1; got {args.lengths}")
    if any(not 0.0 <= depth <= 1.0 for depth in args.depths):
        raise ValueError(f"--depths must be numbers in [0, 1]; got {args.depths}")
    check_int("--samples", args.samples, 1)


@dataclass(frozen=True)
class TaskCell(AnswerUnit):
    """One (policy, task, length, depth, sample) cell."""

    answering: Answering
    task: SyntheticTaskConfig
    length: int
    depth: float
    sample: int
    seed: int
    max_new_tokens: int

    def name(self) -> str:
        return record_name(self.answering.label, self.task.task, f"L{self.length}", f"d{self.depth:g}", f"s{self.sample}")

    def definition(self) -> dict[str, Any]:
        return {**self.answering.definition(), "task_config": asdict(self.task), "length": self.length,
                "depth": self.depth, "sample": self.sample, "seed": self.seed, "max_new_tokens": self.max_new_tokens}

    def answer(self, workspace, model, tokenizer, config, stop: set[int]) -> dict[str, Any]:
        haystack_ids = workspace.cached(("haystack", self.task.haystack), lambda: tokenizer(
            load_text(self.task.haystack), add_special_tokens=False)["input_ids"])
        prompt_format = workspace.cached("prompt_format", lambda: PromptFormat(tokenizer))
        self.warn_once(workspace, model, self.length, self.max_new_tokens)
        sample = build_sample(self.task, tokenizer, haystack_ids, length=self.length, depth=self.depth,
                              sample=self.sample, seed=self.seed, prompt_format=prompt_format)
        decode = DecodeConfig(chunk_size=self.answering.chunk_size, max_new_tokens=self.max_new_tokens)
        scorer = functools.partial(SYNTHETIC_SCORERS[sample.task], answers=sample.answers)
        return {
            "task": self.task.task, "task_config": asdict(self.task), "length": self.length, "depth": self.depth,
            "sample": self.sample, "seed": self.seed, "max_new_tokens": self.max_new_tokens,
            "answers": list(sample.answers),
            "context_start": sample.prompt.context_start,
            "context_tokens": sample.prompt.context_length,
            "needle_start": sample.needle_start,
            "needle_tokens": len(sample.needle.ids),
            **answer_prompt(model, tokenizer, config, sample.prompt_ids, decode, stop, scorer),
        }


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every setting spelled out (defaults included)."""
    return spelled_out([
        "streaming-llm", "tasks", *run_words(args), *answer_words(args), "--tasks", *args.tasks,
        "--lengths", *map(str, args.lengths), "--depths", *(f"{d:g}" for d in args.depths),
        "--samples", str(args.samples), "--seed", str(args.seed), "--haystack", args.haystack,
        "--num-keys", str(args.num_keys), "--num-hops", str(args.num_hops),
        "--max-new-tokens", str(args.max_new_tokens), "--output-dir", args.output_dir,
    ])


def cmd_tasks(args: argparse.Namespace) -> int:
    plan = answer_plan(args)  # policies, --set and --grid: validated before the model loads
    task_configs = [SyntheticTaskConfig(task=task, haystack=args.haystack, num_keys=args.num_keys, num_hops=args.num_hops)
                    for task in dict.fromkeys(args.tasks)]
    DecodeConfig(chunk_size=args.chunk_size, max_new_tokens=args.max_new_tokens)
    _check_grid(args)
    load_text(args.haystack)  # a missing haystack fails now
    cells = [
        TaskCell(Answering(label, spec, args.model, args.dtype, args.device, args.chunk_size, cache_bytes, reference),
                 task_config, length, depth, index, args.seed, args.max_new_tokens)
        for task_config in task_configs for length in args.lengths for depth in args.depths
        for index in range(args.samples) for label, spec, cache_bytes, reference in plan
    ]

    def logged(cell: TaskCell, record: dict[str, Any]) -> None:
        log.info("%s %s L=%d d=%g #%d: score %.2f, expected %s, got %r", cell.answering.label, cell.task.task,
                 cell.length, cell.depth, cell.sample, record["score"], record["answers"], record["prediction"])

    output_dir = Path(args.output_dir)
    executor = executor_from_args(args, LocalExecutor("tasks", "cell", keep_going=False))
    records, failures = run_units(cells, record_store(output_dir / "records", RECORD_FIELDS), executor, force=args.force,
                                  progress=not args.quiet, on_ran=logged)
    if records:
        device = records[0]["device"]
        header = (
            f"# streaming_llm tasks\n\nCommand: `{_command_line(args)}`\n\nModel `{args.model}`, haystack "
            f"`{args.haystack}`, seed {args.seed}, {args.samples} sample(s) per cell, chunk size {args.chunk_size}, "
            f"at most {args.max_new_tokens} new tokens, {args.dtype} on {device}. Accuracy = mean score "
            "(passkey/needle/multikey: the value appears in the answer; vartrack: share of the variables named).\n"
        )
        write_reports(output_dir, records, header)
        print(console_table(aggregate(records), RESULT_COLUMNS))
        print(f"\nreport: {output_dir / 'results.md'}")
    return report_failures(failures)
