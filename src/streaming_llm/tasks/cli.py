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
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..checks import check_int
from ..cli_args import add_answer_command, answer_words, run_words, spelled_out
from ..data import load_text
from ..evaluation.runs import RunSpec
from ..models import load_model
from ..policies import PolicyConfig
from ..report import console_table
from ..sizing import size_for_comparison
from .prompting import PromptFormat
from .records import load_or_run, record_path
from .report import RESULT_COLUMNS, aggregate, slug, write_reports
from .runner import DecodeConfig, answer_prompt, stop_token_ids, warn_beyond_positions
from .scoring import SYNTHETIC_SCORERS
from .synthetic import TASK_NAMES, SyntheticTaskConfig, build_sample

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


def _record_name(identity: dict[str, Any]) -> str:
    return f"{slug(identity['label'])}-{identity['task']}-L{identity['length']}-d{identity['depth']:g}-s{identity['sample']}"


def _run_cell(model, tokenizer, config: PolicyConfig, sample, decode: DecodeConfig, stop: set[int]) -> dict[str, Any]:
    scorer = functools.partial(SYNTHETIC_SCORERS[sample.task], answers=sample.answers)
    return {
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
    specs = [RunSpec.parse(text) for text in args.policies]
    configs = [spec.config() for spec in specs]  # validate everything before loading the model
    task_configs = [SyntheticTaskConfig(task=task, haystack=args.haystack, num_keys=args.num_keys, num_hops=args.num_hops)
                    for task in dict.fromkeys(args.tasks)]
    decode = DecodeConfig(chunk_size=args.chunk_size, max_new_tokens=args.max_new_tokens)
    _check_grid(args)
    haystack_text = load_text(args.haystack)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    device = str(next(model.parameters()).device)
    warn_beyond_positions(model, max(args.lengths), args.max_new_tokens)
    configs = [size_for_comparison(config, model, args.cache_bytes) for config in configs]
    haystack_ids = tokenizer(haystack_text, add_special_tokens=False)["input_ids"]
    prompt_format, stop = PromptFormat(tokenizer), stop_token_ids(tokenizer)
    output_dir = Path(args.output_dir)
    records = []
    for task_config in task_configs:
        for length in args.lengths:
            for depth in args.depths:
                for index in range(args.samples):
                    sample = build_sample(task_config, tokenizer, haystack_ids, length=length, depth=depth,
                                          sample=index, seed=args.seed, prompt_format=prompt_format)
                    for text, config in zip(args.policies, configs):
                        identity = {
                            "label": text, "policy": config.name, "params": config.to_dict(),
                            "task": task_config.task, "task_config": asdict(task_config), "length": length,
                            "depth": depth, "sample": index, "seed": args.seed, "model": args.model,
                            "chunk_size": decode.chunk_size, "max_new_tokens": decode.max_new_tokens,
                            "dtype": args.dtype, "device": device, "cache_bytes_target": args.cache_bytes,
                        }
                        path = record_path(output_dir, identity, _record_name(identity))
                        record, ran = load_or_run(path, identity, lambda: _run_cell(
                            model, tokenizer, config, sample, decode, stop), force=args.force)
                        records.append(record)
                        if ran:
                            log.info("%s %s L=%d d=%g #%d: score %.2f, expected %s, got %r", text, task_config.task,
                                     length, depth, index, record["score"], record["answers"], record["prediction"])
    command = _command_line(args)
    header = (
        f"# streaming_llm tasks\n\nCommand: `{command}`\n\nModel `{args.model}`, haystack `{args.haystack}`, "
        f"seed {args.seed}, {args.samples} sample(s) per cell, chunk size {decode.chunk_size}, "
        f"at most {decode.max_new_tokens} new tokens, {args.dtype} on {device}. Accuracy = mean score "
        "(passkey/needle/multikey: the value appears in the answer; vartrack: share of the variables named).\n"
    )
    write_reports(output_dir, records, header)
    print(console_table(aggregate(records), RESULT_COLUMNS))
    print(f"\nreport: {output_dir / 'results.md'}")
    return 0
