"""``streaming-llm`` command line: ``eval`` compares policies on one stream; ``policies`` lists them."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from .data import DEFAULT_TEXT, list_builtin_texts, tokenize_stream
from .evaluation.runs import SUMMARY_COLUMNS, RunSpec, run_identity, run_perplexity
from .models import DEFAULT_MODEL, DTYPES, load_model
from .policies import get_policy_config_class, list_policies
from .sizing import size_to_bytes
from .report import console_table, csv_text, markdown_table, write_atomic, write_json
from .tasks.cli import add_tasks_parser

log = logging.getLogger("streaming_llm")


def _parse_set(items: list[str], specs: list[RunSpec]) -> list[RunSpec]:
    """Apply ``--set KEY=VALUE`` (every policy that has KEY) and ``--set POLICY.KEY=VALUE``."""
    names = {s.policy for s in specs}
    per_policy: dict[str, dict[str, str]] = {name: {} for name in names}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE or POLICY.KEY=VALUE; got {item!r}")
        target, dot, field = key.partition(".")
        if dot:
            if target not in names:
                raise ValueError(f"--set {item!r}: policy {target!r} is not among --policy ({', '.join(sorted(names))})")
            per_policy[target][field] = value
            continue
        takers = [n for n in names if key in get_policy_config_class(n).parameter_names()]
        if not takers:
            allowed = sorted({p for n in names for p in get_policy_config_class(n).parameter_names()})
            raise ValueError(f"--set {item!r}: no selected policy has parameter {key!r}; allowed: {', '.join(allowed)}")
        for name in takers:
            per_policy[name][key] = value
    return [spec.with_params(per_policy[spec.policy]) for spec in specs]


def _summary_row(record: dict[str, Any]) -> dict[str, Any]:
    row = {c: record.get(c) for c in SUMMARY_COLUMNS}
    defaults = get_policy_config_class(record["policy"])()
    row["params"] = {k: v for k, v in record["params"].items() if getattr(defaults, k) != v or k in ("recent_size", "window_size", "start_size")}
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
    write_atomic(output_dir / "results.md", header + markdown_table(rows, SUMMARY_COLUMNS))


def _sized(config, model, cache_bytes: int):
    if config.name == "full":
        log.info("full: unbounded reference, not sized to --cache-bytes")
        return config
    sized = size_to_bytes(config, model, cache_bytes)
    log.info("%s sized to %d bytes: %s", config.name, cache_bytes, sized)
    return sized


def cmd_eval(args: argparse.Namespace) -> int:
    specs = _parse_set(args.set or [], [RunSpec.parse(p) for p in args.policy])
    configs = [spec.config() for spec in specs]  # validate everything before loading anything
    if args.num_tokens < 2:
        raise ValueError(f"--num-tokens must be an integer >= 2; got {args.num_tokens}")
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be an integer >= 1; got {args.chunk_size}")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    device = str(next(model.parameters()).device)
    text_label = args.text if args.dataset is None else f"hf:{args.dataset}/{args.dataset_config}/{args.split}"
    token_ids = tokenize_stream(
        tokenizer,
        text=None if args.dataset else (args.text or DEFAULT_TEXT),
        dataset_name=args.dataset,
        dataset_config=args.dataset_config,
        split=args.split,
        num_samples=args.num_samples,
        num_tokens=args.num_tokens,
        concat_stream=not args.no_concat_stream,
    )
    if len(token_ids) < args.num_tokens:
        log.warning("the text has only %d tokens (asked for %d)", len(token_ids), args.num_tokens)
    if args.cache_bytes is not None:
        configs = [_sized(config, model, args.cache_bytes) for config in configs]
    output_dir = Path(args.output_dir) if args.output_dir else None
    records = []
    for config in configs:
        identity = run_identity(config, model=args.model, text=text_label, tokens=len(token_ids),
                                chunk_size=args.chunk_size, dtype=args.dtype, device=device)
        if args.cache_bytes is not None:
            identity["cache_bytes_target"] = args.cache_bytes
        record = None
        if output_dir is not None and not args.force:
            from .evaluation.runs import run_id

            existing = output_dir / "runs" / f"{run_id(identity)}.json"
            if existing.is_file():
                record = json.loads(existing.read_text())
                log.info("%s: reusing %s (use --force to rerun)", config.name, existing)
        if record is None:
            record = run_perplexity(model, token_ids, config, identity, progress=not args.quiet)
            if output_dir is not None:
                write_json(output_dir / "runs" / f"{record['id']}.json", record)
        records.append(record)
        if args.json:
            print(json.dumps({k: v for k, v in record.items() if k not in ("nll", "cache_tokens_per_step")}), flush=True)
    if not args.json:
        print(console_table([_summary_row(r) for r in records], SUMMARY_COLUMNS))
    if output_dir is not None:
        _write_reports(output_dir, records, " ".join(map(shlex.quote, ["streaming-llm", *sys.argv[1:]])))
        if not args.json:
            print(f"\nreport: {output_dir / 'results.md'}")
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    for name in list_policies():
        cls = get_policy_config_class(name)
        params = ", ".join(f"{n}: {t} = {d!r}" for n, t, d in cls.describe())
        print(f"{name}\n    {params}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streaming-llm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="streaming perplexity of one or more policies on the same tokens")
    ev.add_argument("--model", default=DEFAULT_MODEL, help=f"built-in name, .gguf file, local dir or HF id (default {DEFAULT_MODEL})")
    ev.add_argument("--policy", nargs="+", default=["streaming"], metavar="NAME[:K=V,...]",
                    help=f"policies to compare: {', '.join(list_policies())}")
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
    ev.add_argument("--cache-bytes", type=int, default=None,
                    help="equal-memory mode: size every bounded policy to this many cache bytes (full stays unbounded)")
    ev.add_argument("--output-dir", help="write runs/*.json, results.json, results.csv and results.md here")
    ev.add_argument("--force", action="store_true", help="rerun runs whose record already exists in --output-dir")
    ev.add_argument("--json", action="store_true", help="print one JSON object per run instead of a table")
    ev.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ev.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)

    add_tasks_parser(sub)

    pol = sub.add_parser("policies", help="list policies and their parameters")
    pol.set_defaults(func=cmd_policies)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError) as error:
        print(f"streaming-llm: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
