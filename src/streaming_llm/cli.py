"""``streaming-llm`` command line: ``eval`` compares policies on one stream; ``sweep`` runs a grid of
scenarios x profiles; ``tasks`` scores synthetic long-context tasks; ``benchmark`` scores LongBench
or ZeroSCROLLS tasks; ``experiment`` runs seed 003's methods x context sizes over all of them;
``train-relevance`` trains ATSKV's relevance predictor; ``policies`` lists the policies."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from .checks import check_int
from .cli_args import (add_executor_arguments, add_run_arguments, apply_set, executor_from_args, memory_for,
                       memory_target)
from .data import DEFAULT_TEXT, list_builtin_texts, load_text
from .experiment import add_experiment_parser
from .evaluation.jobs import Job, RunSettings, StreamSource, Workspace, eval_store, run_or_reuse
from .evaluation.runs import SUMMARY_COLUMNS, RunSpec
from .policies import ALIASES, get_policy_config_class, list_policies, names_help
from .policies.atskv.cli import add_train_relevance_parser
from .report import console_table, csv_text, markdown_table, write_atomic, write_json
from .report.comparison import shown_params
from .report.plots import markdown_images, write_standard_plots
from .tasks.benchmark_cli import add_benchmark_parser
from .tasks.cli import add_tasks_parser

log = logging.getLogger("streaming_llm")


def _summary_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {c: record.get(c) for c in SUMMARY_COLUMNS}
    row["params"] = shown_params(record["policy"], record["params"])
    return row


def _write_reports(output_dir: Path, records: list[dict[str, Any]], command: str) -> None:
    summaries = [{k: v for k, v in r.items() if k not in ("nll", "cache_tokens_per_step")} for r in records]
    write_json(output_dir / "results.json", summaries)
    rows = [_summary_row(r) for r in records]
    write_atomic(output_dir / "results.csv", csv_text(rows, SUMMARY_COLUMNS))
    first = records[0]
    header = (
        f"# streaming_llm eval\n\nCommand: `{command}`\n\n"
        f"Model `{first['model']}`, text `{first['text']}`, {first['tokens']} tokens, chunk size "
        f"{first['chunk_size']}, {first['dtype']} on {first['device']}.\n\n"
    )
    plots = write_standard_plots(records, output_dir)
    write_atomic(output_dir / "results.md", header + markdown_table(rows, SUMMARY_COLUMNS) + "\n"
                 + markdown_images(plots, output_dir))


def _eval_jobs(args: argparse.Namespace) -> list[Job]:
    specs = apply_set(args.set or [], [RunSpec.parse(p) for p in args.policy])
    check_int("--num-tokens", args.num_tokens, 2)
    check_int("--chunk-size", args.chunk_size, 1)
    source = StreamSource(model=args.model, text=None if args.dataset else (args.text or DEFAULT_TEXT),
                          dataset=args.dataset, dataset_config=args.dataset_config, split=args.split,
                          num_samples=args.num_samples, num_tokens=args.num_tokens,
                          concat_stream=not args.no_concat_stream)
    settings = RunSettings(chunk_size=args.chunk_size, dtype=args.dtype, device=args.device)
    if args.dataset is None:
        load_text(source.text)  # a missing file fails now, before the model loads
    # Job validates every policy before anything is loaded
    target = memory_target(args.cache_bytes)
    jobs = []
    for spec in specs:
        cache_bytes, reference = memory_for(spec, target)
        jobs.append(Job(source, spec, settings, cache_bytes=cache_bytes, equal_memory_to=reference))
    return jobs


def cmd_eval(args: argparse.Namespace) -> int:
    jobs = _eval_jobs(args)
    output_dir = Path(args.output_dir) if args.output_dir else None
    workspace = Workspace()
    store = eval_store(output_dir / "runs") if output_dir else None
    records = []
    for job in jobs:
        record = run_or_reuse(job, store, workspace, force=args.force, progress=not args.quiet)
        records.append(record)
        if args.json:
            print(json.dumps({k: v for k, v in record.items() if k not in ("nll", "cache_tokens_per_step")}), flush=True)
    if not args.json:
        print(console_table([_summary_row(r) for r in records], SUMMARY_COLUMNS))
    if output_dir is not None:
        _write_reports(output_dir, records, shlex.join(["streaming-llm", *args.argv]))
        if not args.json:
            print(f"\nreport: {output_dir / 'results.md'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import load_grid, run_sweep
    from .sweep.grid import split_scenario_lines

    grid = load_grid(args.grid)
    named, lines = [], []
    for item in args.scenarios or []:
        for part in split_scenario_lines(item):
            (lines if "=" in part else named).append(part)
    executor = executor_from_args(args, None)
    outcome = run_sweep(grid, args.output_root, scenarios=named or None, profiles=args.profiles or None,
                        extra_scenarios=[grid.scenario_from_line(line) for line in lines], force=args.force,
                        executor=executor, progress=not args.quiet)
    print(f"sweep: {outcome.ran} run(s) done, {outcome.reused} reused, {len(outcome.failures)} failed; "
          f"report: {outcome.report}")
    for key, error in outcome.failures.items():
        print(f"  failed {key}: {error}", file=sys.stderr)
    return 1 if outcome.failures else 0


def cmd_policies(args: argparse.Namespace) -> int:
    for name in list_policies():
        cls = get_policy_config_class(name)
        params = ", ".join(f"{n}: {t} = {d!r}" for n, t, d in cls.describe())
        print(f"{name}\n    {params}")
    for alias, name in ALIASES.items():
        print(f"{alias}\n    alias of {name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streaming-llm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="streaming perplexity of one or more policies on the same tokens")
    add_run_arguments(ev)
    ev.add_argument("--policy", nargs="+", default=["streaming"], metavar="NAME[:K=V,...]",
                    help=f"policies to compare: {names_help()}")
    source = ev.add_mutually_exclusive_group()
    source.add_argument("--text", help=f"a text file or one of {', '.join(list_builtin_texts())} (default {DEFAULT_TEXT})")
    source.add_argument("--dataset", help="a Hugging Face dataset name (needs the hub), e.g. wikitext or pg19")
    ev.add_argument("--dataset-config", default=None, help="dataset config, e.g. wikitext-2-raw-v1")
    ev.add_argument("--split", default="test")
    ev.add_argument("--num-samples", type=int, default=None, help="use at most this many dataset samples")
    ev.add_argument("--no-concat-stream", action="store_true",
                    help="use only the first dataset sample instead of joining samples up to --num-tokens")
    ev.add_argument("--num-tokens", type=int, default=4096)
    ev.add_argument("--chunk-size", type=int, default=1, help="tokens per forward (1 = StreamingLLM protocol)")
    ev.add_argument("--set", action="append", metavar="[POLICY.]KEY=VALUE", help="a policy parameter (repeatable)")
    ev.add_argument("--output-dir", help="write runs/*.json, results.json, results.csv and results.md here")
    ev.add_argument("--force", action="store_true", help="rerun runs whose record already exists in --output-dir")
    ev.add_argument("--json", action="store_true", help="print one JSON object per run instead of a table")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)

    sw = sub.add_parser("sweep", help="run a grid of scenarios x profiles (TOML/YAML), resumable, optionally on Ray")
    sw.add_argument("grid", nargs="?", default="builtin:adms_report",
                    help="a .toml/.yaml grid file or builtin:adms_report (default)")
    sw.add_argument("--output-root", default="outputs/auto_adms_runs", help="where runs and reports go")
    sw.add_argument("--scenarios", nargs="+", metavar="NAME|'name=X model=Y ...'",
                    help="scenario names of the grid ('all' = every one), or whole scenarios as seed 000 writes "
                         "them (default: the grid's default scenarios)")
    sw.add_argument("--profiles", nargs="+", metavar="NAME", help="profiles of the grid (default: the grid's)")
    sw.add_argument("--force", action="store_true", help="rerun runs whose records or summary.json exist")
    add_executor_arguments(sw, "run")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.set_defaults(func=cmd_sweep)

    add_tasks_parser(sub)
    add_benchmark_parser(sub)
    add_experiment_parser(sub)
    add_train_relevance_parser(sub)

    pol = sub.add_parser("policies", help="list policies and their parameters")
    pol.set_defaults(func=cmd_policies)
    return parser


def configure_console_logging(quiet: bool) -> None:
    """Log to stderr: INFO and up, or only warnings with ``--quiet``. The level sits on the
    handler, not only on the root logger, because a run lowers the ``streaming_llm`` logger to
    INFO to record the ADMS lines and records propagated from a child logger skip the root
    logger's own level."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=handler.level, handlers=[handler])


def disable_library_progress_bars() -> None:
    """``--quiet`` also silences transformers' and huggingface_hub's own bars (weight loading, downloads)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what reports quote as the command
    quiet = getattr(args, "quiet", False)
    configure_console_logging(quiet)
    if quiet:
        disable_library_progress_bars()
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError) as error:
        print(f"streaming-llm: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
