"""ADMS and StreamingLLM head to head on the same tokens (seed 000's example script).

    python examples/eval_adms_vs_streaming.py \
        --model_name_or_path smollm2-135m --num_eval_tokens 4096 \
        --start_size 4 --recent_size 252 --compressed_budget 128 --importance_ratio 0.5 \
        --output_dir outputs/adms_vs_streaming/smollm2_4k

Offline it reads a shipped book with SmolLM2 (the defaults); ``--dataset_name wikitext --task
wikitext-2-raw-v1`` and hub model ids work where the Hugging Face hub is reachable. Every ADMS
parameter of seed 000 is a flag with the seed's name and default; ADM++ (seed 001) is on by default,
``--disable_dual_fidelity``, ``--disable_residual_replay``, ``--disable_position_calibration`` and
``--disable_adaptive_controller`` turn its parts off, ``--sketch_budget``, ``--replay_budget``,
``--energy_replay_threshold`` (and every other seed 001 name) set them. StreamingLLM gets the same
``--start_size``, ``--recent_size`` and sink settings. By default ADMS holds its mid-memory on
top of that (the seed's setting: more memory than StreamingLLM); ``--equal_memory`` shrinks
ADMS's recent window so it holds no more bytes than StreamingLLM.

Writes into ``--output_dir``: ``summary.json``, ``readable.txt`` (with the ``[ADMS Stats]``
lines), ``results.md`` with figures, and one record per run under ``runs/`` (a rerun reuses them;
``--force`` reruns).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

from streaming_llm.adms_cache import ADMSConfig
from streaming_llm.evaluation.jobs import Job, RunSettings, StreamSource, Workspace, eval_store, run_or_reuse
from streaming_llm.evaluation.runs import RunSpec
from streaming_llm.models import DEFAULT_MODEL, DTYPES
from streaming_llm.report.comparison import readable_text, write_pair_report

#: flags shared with StreamingLLM, so both policies see the same sinks and window
SHARED = ("start_size", "recent_size", "enable_dynamic_sink", "max_seq_length", "enable_pos_shift")
#: ADM++ switches: on in this script (seed 001: "Full ADM++ (default)"), off in the library
ADM_PLUS_SWITCHES = ("dual_fidelity", "residual_replay", "position_calibration", "adaptive_controller")
#: the seed's runs print the stats lines; the library's default is silence
SCRIPT_DEFAULTS = {"log_every": 512, **{f"enable_{name}": True for name in ADM_PLUS_SWITCHES}}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ADMSConfig field, named and defaulted as in seed 000."""
    hints = typing.get_type_hints(ADMSConfig)
    group = parser.add_argument_group(
        "ADMS (seed 000's parameters; " + ", ".join(SHARED) + " apply to StreamingLLM too)")
    for field in dataclasses.fields(ADMSConfig):
        default = SCRIPT_DEFAULTS.get(field.name, field.default)
        kind = hints[field.name]
        if kind is bool:
            action = "store_true" if default is False else argparse.BooleanOptionalAction
            group.add_argument(f"--{field.name}", action=action, default=default)
        else:
            choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
            convert = type(field.default) if choices is None else str
            group.add_argument(f"--{field.name}", type=convert, default=default, choices=choices)
    for name in ADM_PLUS_SWITCHES:  # seed 001's spelling
        group.add_argument(f"--disable_{name}", dest=f"enable_{name}", action="store_false",
                           help=f"turn ADM++ {name.replace('_', ' ')} off (on by default here)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=DEFAULT_MODEL,
                        help="built-in name, .gguf file, local dir or HF id (default %(default)s)")
    parser.add_argument("--dataset_name", default=None,
                        help="an HF dataset (e.g. wikitext; needs the hub), or builtin:NAME / a text file "
                             "(default: builtin:pioneer-days)")
    parser.add_argument("--task", default=None, help="the dataset's config, e.g. wikitext-2-raw-v1")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_samples", type=int, default=None, help="use at most this many dataset samples")
    parser.add_argument("--num_eval_tokens", type=int, default=4096)
    parser.add_argument("--concat_stream", action="store_true",
                        help="join dataset samples until --num_eval_tokens (otherwise only the first sample)")
    _add_config_flags(parser)
    parser.add_argument("--equal_memory", action="store_true",
                        help="size ADMS to StreamingLLM's cache bytes (shrinks ADMS's recent window)")
    parser.add_argument("--with_full", action="store_true", help="also run the full cache (for the gap closure)")
    parser.add_argument("--chunk_size", type=int, default=1, help="tokens per forward (1 = StreamingLLM protocol)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output_dir", default="outputs/adms_vs_streaming")
    parser.add_argument("--force", action="store_true", help="rerun runs whose records exist in --output_dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def jobs_from_args(args: argparse.Namespace) -> list[Job]:
    is_text = args.dataset_name is None or args.dataset_name.startswith("builtin:") or Path(args.dataset_name).is_file()
    source = StreamSource(model=args.model_name_or_path, text=args.dataset_name if is_text else None,
                          dataset=None if is_text else args.dataset_name, dataset_config=args.task, split=args.split,
                          num_samples=args.num_samples, num_tokens=args.num_eval_tokens,
                          concat_stream=args.concat_stream)
    settings = RunSettings(chunk_size=args.chunk_size, dtype=args.dtype, device=args.device)
    adms = RunSpec("adms", tuple((f.name, getattr(args, f.name)) for f in dataclasses.fields(ADMSConfig)))
    streaming = RunSpec("streaming", tuple((name, getattr(args, name)) for name in SHARED))
    jobs = [Job(source, streaming, settings), Job(source, adms, settings, equal_memory_to=streaming if args.equal_memory else None)]
    if args.with_full:
        jobs.insert(0, Job(source, RunSpec("full"), settings))
    return jobs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the [ADMS ...] lines are INFO
    try:
        jobs = jobs_from_args(args)
        output_dir = Path(args.output_dir)
        workspace = Workspace()
        store = eval_store(output_dir / "runs")
        records = [run_or_reuse(job, store, workspace, force=args.force, progress=not args.quiet)
                   for job in jobs]
    except (ValueError, OSError, ImportError) as error:
        print(f"eval_adms_vs_streaming: error: {error}", file=sys.stderr)
        return 2
    title = "ADMS vs StreamingLLM" + (" at equal memory" if args.equal_memory else " (seed setting: ADMS holds more)")
    write_pair_report(output_dir, records, title=title)
    print(readable_text(title, records, {}))
    print(f"written: {output_dir / 'summary.json'}, {output_dir / 'readable.txt'}, {output_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
