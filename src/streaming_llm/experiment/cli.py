"""``streaming-llm experiment`` (also ``python -m streaming_llm.experiment``): seed 003's
``run_experiment.py``, with its flags, on our caches and harness.

Every method (a policy name, a seed 003 alias such as ``dynamic_kv``, optionally with
``:KEY=VALUE`` parameters) answers the same prompts at every context size:

- synthetic: our passkey / needle tasks (``streaming-llm tasks``), one prompt of exactly the
  context size per (task, depth, sample);
- LongBench and ZeroSCROLLS (``streaming-llm benchmark``): each example cut in the middle to the
  context size, from ``--source`` or the Hugging Face hub. A benchmark that cannot be loaded
  (no network, no ``datasets``, no local copy) is skipped and ``results.md`` says why.

**--context_sizes are context lengths** (prompt tokens), not cache budgets: the seed pairs them
with ``--max_seq_len 4096`` (the largest of its default sizes) and plots memory, time and
throughput, which only vary with the context when the context varies. Every bounded method holds
the same resident bytes, those of a sliding window of ``--cache_budget`` tokens, so the full
cache grows with the context while the others stay flat.

Each (method, benchmark, task, context size, sample) is one record under
``<output_dir>/records/``, written atomically when it is done; a rerun skips finished records
(``--force`` reruns them). ``results.md``, ``efficiency.csv``, ``accuracy.csv`` and the figures
(memory usage, inference time, throughput, accuracy) are rebuilt from the records at the end.
"""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checks import check_int
from ..cli_args import memory_for, spelled_out
from ..data import load_text
from ..evaluation.runs import RunSpec, record_store
from ..models import DEFAULT_MODEL
from ..policies import names_help
from ..report import console_table
from ..runs.executors import LocalExecutor, run_units
from ..tasks.benchmark_cli import BenchmarkItem
from ..tasks.cli import TaskCell
from ..tasks.longbench import BENCHMARKS, BenchmarkConfig
from ..tasks.runner import DecodeConfig
from ..tasks.synthetic import TASK_NAMES, SyntheticTaskConfig
from ..tasks.units import RECORD_FIELDS, Answering, report_failures
from .report import EFFICIENCY_COLUMNS, SYNTHETIC, efficiency, experiment_row, write_reports

log = logging.getLogger("streaming_llm.experiment")

SEED_METHODS = ("full", "sliding_window", "dynamic_kv", "rocket_kv", "atskv")
BENCHMARK_NAMES = (SYNTHETIC, *BENCHMARKS)
DEFAULT_TASKS = {"longbench": ("hotpotqa", "qasper"), "zeroscrolls": ("qasper", "quality")}
API_MODEL = "claude-3-7-sonnet-20250219"


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """``--name_with_underscores`` as the seed spells it, and ``--name-with-dashes`` as our commands do."""
    parser.add_argument(f"--{name}", f"--{name.replace('_', '-')}", dest=name, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _flag(parser, "model_name", default=DEFAULT_MODEL,
          help=f"built-in name, .gguf file, local dir or HF id (default {DEFAULT_MODEL}, not the seed's "
               "meta-llama/Llama-2-7b-hf: that one is gated on the hub and too large for the CPUs this "
               "project is measured on; the shipped SmolLM2 runs anywhere, offline)")
    _flag(parser, "max_seq_len", type=int, default=4096,
          help="longest prompt, in tokens: every --context_sizes value must be at most this (default 4096)")
    _flag(parser, "use_fp16", action="store_true", help="float16 weights and cache (default float32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--methods", nargs="+", default=list(SEED_METHODS), metavar="NAME[:K=V,...]",
                        help=f"KV cache methods (default: {' '.join(SEED_METHODS)}). Names checked when the "
                             f"command runs, against: {names_help()}")
    _flag(parser, "context_sizes", nargs="+", type=int, default=[512, 1024, 2048, 4096], metavar="N",
          help="context LENGTHS: prompt tokens per answer (default 512 1024 2048 4096). Not cache budgets: the "
               "seed pairs them with --max_seq_len and plots memory and time against them, which only vary "
               "with the context; every bounded method gets the bytes of --cache_budget tokens at every size")
    _flag(parser, "cache_budget", type=int, default=256, metavar="TOKENS",
          help="equal memory: every bounded method holds the resident bytes of a sliding window of this "
               "many tokens (default 256); full is never bounded")
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARK_NAMES), choices=BENCHMARK_NAMES,
                        metavar="NAME", help=f"which benchmarks: {', '.join(BENCHMARK_NAMES)} (default all)")
    _flag(parser, "synthetic_tasks", nargs="+", default=["passkey", "needle"], choices=TASK_NAMES, metavar="TASK",
          help=f"synthetic tasks: {', '.join(TASK_NAMES)} (default passkey needle)")
    parser.add_argument("--depths", nargs="+", type=float, default=[0.25, 0.5, 0.75], metavar="D",
                        help="synthetic needle depths in [0, 1] (default 0.25 0.5 0.75)")
    for name, tasks in DEFAULT_TASKS.items():
        _flag(parser, f"{name}_tasks", nargs="+", default=list(tasks), metavar="TASK",
              help=f"{name} tasks: {', '.join(BENCHMARKS[name].tasks)} (default {' '.join(tasks)})")
    parser.add_argument("--source", nargs="+", default=None, metavar="DIR|NAME=PATH",
                        help="local LongBench / ZeroSCROLLS files instead of the hub: a folder holding longbench/ "
                             "and zeroscrolls/ (each as `streaming-llm benchmark --source` takes it), or "
                             "longbench=PATH zeroscrolls=PATH; with --source the hub is not used, and a benchmark "
                             "it lacks is skipped")
    parser.add_argument("--samples", type=int, default=2,
                        help="prompts per synthetic (task, depth) and examples per benchmark task (default 2)")
    parser.add_argument("--haystack", default="builtin:pioneer-days", help="synthetic filler text (builtin:NAME or a file)")
    _flag(parser, "max_new_tokens", type=int, default=16, help="answer tokens at most, every benchmark (default 16)")
    _flag(parser, "chunk_size", type=int, default=256, help="prompt tokens per prefill forward (default 256)")
    _flag(parser, "output_dir", default="./outputs", help="records/, results.md, CSV tables, figures (default ./outputs)")
    parser.add_argument("--seed", type=int, default=42, help="synthetic prompts and torch (default 42)")
    _flag(parser, "use_api", action="store_true",
          help="the seed's API-model mode; refused: an API model exposes no KV cache to manage")
    _flag(parser, "api_model", default=API_MODEL, help=f"with --use_api (default {API_MODEL})")
    parser.add_argument("--force", action="store_true", help="rerun records that already exist")
    parser.add_argument("--quiet", action="store_true", help="log only warnings")


def add_experiment_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("experiment", help="seed 003's experiment: methods x context sizes on synthetic "
                                   "tasks, LongBench, ZeroSCROLLS; memory, time, throughput, accuracy",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=cmd_experiment)
    return parser


def refuse_api(args: argparse.Namespace) -> None:
    if args.use_api:
        raise ValueError(
            f"--use_api: the API model {args.api_model!r} runs on its provider's servers and exposes no KV cache, "
            f"so none of the methods ({' '.join(args.methods)}) can be applied to it. Run a local model instead: "
            f"--model_name {DEFAULT_MODEL}, a Hugging Face id or a local path")


def check_arguments(args: argparse.Namespace) -> None:
    check_int("--max_seq_len", args.max_seq_len, 1)
    for size in args.context_sizes:
        check_int("--context_sizes", size, 1, args.max_seq_len)
    for name in ("cache_budget", "samples", "max_new_tokens", "chunk_size"):
        check_int(f"--{name}", getattr(args, name), 1)
    if any(not 0.0 <= depth <= 1.0 for depth in args.depths):
        raise ValueError(f"--depths must be numbers in [0, 1]; got {args.depths}")
    for name in DEFAULT_TASKS:
        unknown = [t for t in getattr(args, f"{name}_tasks") if t not in BENCHMARKS[name].tasks]
        if unknown:
            raise ValueError(f"--{name}_tasks: unknown {', '.join(unknown)}; allowed: {', '.join(BENCHMARKS[name].tasks)}")


def method_plan(args: argparse.Namespace) -> list[tuple[str, RunSpec, Any, Any]]:
    """(label, policy, cache_bytes, equal_memory_to) per method; unknown names fail here, before any model loads."""
    budget = RunSpec("sliding_window", (("window_size", args.cache_budget),))
    plan = []
    for text in dict.fromkeys(args.methods):
        try:
            spec = RunSpec.parse(text)
            spec.config()
        except ValueError as error:
            raise ValueError(f"--methods {text!r}: {error}") from None
        plan.append((text, spec, *memory_for(spec, budget)))
    return plan


def sources(args: argparse.Namespace) -> dict[str, str | None]:
    """Where each benchmark's examples come from: a local path, or None for the hub."""
    found: dict[str, str | None] = {name: None for name in BENCHMARKS}
    for item in args.source or []:
        name, sep, path = item.partition("=")
        if sep:
            if name not in BENCHMARKS:
                raise ValueError(f"--source {item!r}: {name!r} is not one of {', '.join(BENCHMARKS)}")
            found[name] = path
        elif not Path(item).is_dir():
            raise ValueError(f"--source {item!r}: no such folder (give a folder of longbench/ and zeroscrolls/, "
                             "or NAME=PATH)")
        else:
            found.update({name: str(Path(item) / name) for name in BENCHMARKS if (Path(item) / name).exists()})
            if not any((Path(item) / name).exists() for name in BENCHMARKS):
                raise ValueError(f"--source {item!r} holds neither {' nor '.join(f'{n}/' for n in BENCHMARKS)}")
    return found


@dataclass
class Loaded:
    """What a benchmark contributes: its examples per task, or why it was skipped."""

    name: str
    config: BenchmarkConfig | None
    examples: dict[str, list] | None = None
    skipped: str | None = None


def load_benchmarks(args: argparse.Namespace) -> list[Loaded]:
    """Examples of each selected benchmark; a hub that cannot be reached (or a local folder
    lacking a benchmark) skips it with a note. Malformed local files stay errors."""
    where = sources(args)
    loaded = []
    for name in (b for b in BENCHMARKS if b in args.benchmarks):
        local = args.source is not None
        if local and where[name] is None:
            loaded.append(Loaded(name, None, skipped=f"--source gives no {name} copy (with --source the hub is not used)"))
            continue
        config = BenchmarkConfig(name, tuple(getattr(args, f"{name}_tasks")), where[name], None, args.samples,
                                 max(args.context_sizes), args.max_new_tokens)
        try:
            loaded.append(Loaded(name, config, {task: config.load(task) for task in config.tasks}))
        except (OSError, ImportError) as error:
            loaded.append(Loaded(name, config, skipped=str(error)))
            log.warning("skipping %s: %s", name, error)
    return loaded


def build_units(args: argparse.Namespace, plan, benchmarks: list[Loaded]) -> list:
    """Every method on every prompt, ordered prompt by prompt with the methods back to back: on a
    machine whose load drifts during the run, every method is slowed alike (speed is compared as
    ratios between methods)."""
    dtype = "float16" if args.use_fp16 else "float32"
    runs = [Answering(label, spec, args.model_name, dtype, args.device, args.chunk_size, cache_bytes, reference)
            for label, spec, cache_bytes, reference in plan]
    prompts = []  # one unit maker per prompt, taking the method's Answering
    for size in args.context_sizes:
        if SYNTHETIC in args.benchmarks:
            prompts += [functools.partial(TaskCell, task=SyntheticTaskConfig(task=task, haystack=args.haystack),
                                          length=size, depth=depth, sample=sample, seed=args.seed,
                                          max_new_tokens=args.max_new_tokens)
                        for task in dict.fromkeys(args.synthetic_tasks) for depth in args.depths
                        for sample in range(args.samples)]
        for bench in (b for b in benchmarks if b.examples is not None):
            prompts += [functools.partial(BenchmarkItem, example=example, index=index, split=bench.config.resolved_split,
                                          source=bench.config.resolved_source, max_length=size,
                                          max_new_tokens=bench.config.new_tokens(example))
                        for examples in bench.examples.values() for index, example in enumerate(examples)]
    return [make(run) for make in prompts for run in runs]


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every setting spelled out (defaults included)."""
    words = ["streaming-llm", "experiment", "--model_name", args.model_name, "--max_seq_len", str(args.max_seq_len),
             *(["--use_fp16"] if args.use_fp16 else []), "--device", args.device, "--methods", *args.methods,
             "--context_sizes", *map(str, args.context_sizes), "--cache_budget", str(args.cache_budget),
             "--benchmarks", *args.benchmarks, "--synthetic_tasks", *args.synthetic_tasks,
             "--depths", *(f"{d:g}" for d in args.depths)]
    for name in DEFAULT_TASKS:
        words += [f"--{name}_tasks", *getattr(args, f"{name}_tasks")]
    words += ["--source", *args.source] if args.source else []
    words += ["--samples", str(args.samples), "--haystack", args.haystack, "--max_new_tokens",
              str(args.max_new_tokens), "--chunk_size", str(args.chunk_size), "--output_dir", args.output_dir,
              "--seed", str(args.seed)]
    return spelled_out(words)


def header(args: argparse.Namespace, benchmarks: list[Loaded], records: list[dict[str, Any]]) -> str:
    first = records[0]
    targets = sorted({r["cache_bytes_target"] for r in records if r.get("cache_bytes_target")})
    budget = (f"{targets[0]:,} bytes" if len(targets) == 1 else ", ".join(f"{t:,}" for t in targets) + " bytes")
    lines = [
        "# streaming_llm experiment (seed 003)\n",
        f"Command: `{command_line(args)}`\n",
        f"Model `{args.model_name}`, {first['dtype']} on {first['device']}, seed {args.seed}, prefill in chunks of "
        f"{args.chunk_size} tokens, greedy answers of at most {args.max_new_tokens} tokens.\n",
        "**Context size = prompt length in tokens** (not a cache budget): synthetic prompts are built to exactly that "
        "length, benchmark examples are cut in the middle to it. Every bounded method holds the same resident bytes, "
        f"those of a sliding window of {args.cache_budget} tokens ({budget if targets else 'no bounded method ran'}); "
        "`full` keeps every token. During prefill a bounded cache may hold its budget plus one chunk.\n",
        f"Synthetic: {', '.join(args.synthetic_tasks)} at depths {', '.join(f'{d:g}' for d in args.depths)}, "
        f"{args.samples} prompt(s) each, haystack `{args.haystack}`; score 1 when the value appears in the answer.\n",
    ]
    for bench in benchmarks:
        if bench.skipped is not None:
            lines.append(f"**{bench.name} skipped**: {bench.skipped}\n")
        else:
            lines.append(f"{bench.name}: tasks {', '.join(bench.config.tasks)} from `{bench.config.resolved_source}` "
                         f"(split `{bench.config.resolved_split}`), the first {args.samples} example(s) each, scored "
                         "with the task's official metric.\n")
    lines.append("Timings come from one process on a possibly shared machine: compare methods by the ratio "
                 "`speed_vs_full` (measured side by side), not by absolute tokens per second.\n")
    return "\n".join(lines)


def cmd_experiment(args: argparse.Namespace) -> int:
    refuse_api(args)  # before anything else: nothing to load for an API model
    check_arguments(args)
    plan = method_plan(args)
    DecodeConfig(chunk_size=args.chunk_size, max_new_tokens=args.max_new_tokens)
    if SYNTHETIC in args.benchmarks:
        load_text(args.haystack)  # a missing haystack fails now
    benchmarks = load_benchmarks(args)
    units = build_units(args, plan, benchmarks)
    if not units:
        raise ValueError("nothing to run: every selected benchmark was skipped "
                         + "; ".join(f"{b.name}: {b.skipped}" for b in benchmarks))
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    records, failures = run_units(units, record_store(output_dir / "records", RECORD_FIELDS),
                                  LocalExecutor("experiment", "answer", keep_going=False), force=args.force,
                                  progress=not args.quiet)
    if records:
        write_reports(output_dir, records, header(args, benchmarks, records))
        print(console_table(efficiency([experiment_row(r) for r in records]), EFFICIENCY_COLUMNS))
        print(f"\nreport: {output_dir / 'results.md'}")
    return report_failures(failures)

