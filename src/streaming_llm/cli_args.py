"""Command-line arguments that several ``streaming-llm`` commands share, and their spelled-out form.

``add_run_arguments`` and ``add_answer_command`` have partners, ``run_words`` and ``answer_words``,
that write the same arguments back from the parsed namespace, defaults included, so a report can
quote the command that reproduces it.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterable

from .models import DEFAULT_MODEL, DTYPES
from .policies import list_policies

DEFAULT_POLICIES = ("full", "streaming:start_size=4,recent_size=508")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, how it runs, and the equal-memory target: ``eval``, ``tasks``, ``benchmark``."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in name, .gguf file, local dir or HF id (default {DEFAULT_MODEL})")
    parser.add_argument("--cache-bytes", type=int, default=None,
                        help="equal-memory mode: size every bounded policy to this many cache bytes (unbounded ones, e.g. full, stay so)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def run_words(args: argparse.Namespace) -> list[str]:
    words = ["--model", args.model, "--dtype", args.dtype, "--device", args.device]
    return words + (["--cache-bytes", str(args.cache_bytes)] if args.cache_bytes is not None else [])


def add_answer_command(subparsers, name: str, help: str, description: str, unit: str) -> argparse.ArgumentParser:
    """A command that answers prompts greedily with several policies, one resumable record per
    ``unit`` (``tasks``, ``benchmark``): its parser, with the run arguments and the shared ones."""
    parser = subparsers.add_parser(name, help=help, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--policies", nargs="+", default=list(DEFAULT_POLICIES), metavar="NAME[:K=V,...]",
                        help=f"policies to compare: {', '.join(list_policies())}")
    parser.add_argument("--chunk-size", type=int, default=256, help="prompt tokens per prefill forward (default 256)")
    parser.add_argument("--force", action="store_true", help=f"rerun {unit}s whose record already exists")
    parser.add_argument("--quiet", action="store_true", help="log only warnings")
    return parser


def answer_words(args: argparse.Namespace) -> list[str]:
    return ["--policies", *args.policies, "--chunk-size", str(args.chunk_size)]


def spelled_out(words: Iterable[str]) -> str:
    """``words`` as one shell command line, each quoted where the shell needs it."""
    return shlex.join(words)
