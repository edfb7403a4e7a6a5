"""Command-line arguments that several ``streaming-llm`` commands share, and their spelled-out form.

``add_run_arguments`` and ``add_answer_command`` have partners, ``run_words`` and ``answer_words``,
that write the same arguments back from the parsed namespace, defaults included, so a report can
quote the command that reproduces it.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterable

from .evaluation.runs import RunSpec
from .models import DEFAULT_MODEL, DTYPES
from .policies import canonical_name, get_policy_config_class, names_help

DEFAULT_POLICIES = ("full", "streaming:start_size=4,recent_size=508")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, how it runs, and the equal-memory target: ``eval``, ``tasks``, ``benchmark``."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in name, .gguf file, local dir or HF id (default {DEFAULT_MODEL})")
    parser.add_argument("--cache-bytes", default=None, metavar="N|POLICY[:K=V,...]",
                        help="equal-memory mode: size every bounded policy to N cache bytes, or to the bytes a "
                             "reference policy holds on this model and dtype (e.g. streaming:start_size=4,recent_size=252); "
                             "unbounded policies (full) stay so")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def memory_target(text: str | None) -> int | RunSpec | None:
    """``--cache-bytes``: a number of bytes, or a bounded reference policy whose bytes to match."""
    if text is None or isinstance(text, int):
        return text
    if text.strip().lstrip("-").isdigit():
        return int(text)
    spec = RunSpec.parse(text)
    if not spec.bounded:
        raise ValueError(f"--cache-bytes {text!r}: policy {spec.policy!r} is unbounded: it has no memory to match")
    return spec


def memory_for(spec: RunSpec, target: int | RunSpec | None) -> tuple[int | None, RunSpec | None]:
    """(cache_bytes, equal_memory_to) of ``spec`` under ``--cache-bytes``: unbounded policies and
    the reference itself are not sized."""
    if target is None or not spec.bounded:
        return None, None
    if isinstance(target, RunSpec):
        return None, (None if spec == target else target)
    return target, None


def run_words(args: argparse.Namespace) -> list[str]:
    words = ["--model", args.model, "--dtype", args.dtype, "--device", args.device]
    return words + (["--cache-bytes", str(args.cache_bytes)] if args.cache_bytes is not None else [])


def apply_set(items: list[str], specs: list[RunSpec]) -> list[RunSpec]:
    """Apply ``--set KEY=VALUE`` (every policy that has KEY) and ``--set POLICY.KEY=VALUE``."""
    names = {s.policy for s in specs}
    per_policy: dict[str, dict[str, str]] = {name: {} for name in names}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE or POLICY.KEY=VALUE; got {item!r}")
        target, dot, field = key.partition(".")
        target = canonical_name(target)
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


def add_executor_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """Where the units run: here one after another, or as Ray tasks (``sweep``, ``tasks``, ``benchmark``)."""
    parser.add_argument("--ray", action="store_true", help=f"run each {unit} as a Ray task (pip install 'streaming_llm[ray]')")
    parser.add_argument("--address", default=None, help="with --ray: an existing cluster (e.g. auto, ray://host:10001)")
    parser.add_argument("--ray-cpus", type=int, default=None, help="with --ray and no --address: CPUs of the local Ray")


def executor_from_args(args: argparse.Namespace, local):
    """The Ray executor when ``--ray`` is given, else ``local``."""
    if args.ray:
        from .sweep.ray_executor import RayExecutor

        return RayExecutor(address=args.address, num_cpus=args.ray_cpus)
    if args.address:
        raise ValueError("--address needs --ray")
    return local


def add_answer_command(subparsers, name: str, help: str, description: str, unit: str) -> argparse.ArgumentParser:
    """A command that answers prompts greedily with several policies, one resumable record per
    ``unit`` (``tasks``, ``benchmark``): its parser, with the run arguments and the shared ones."""
    parser = subparsers.add_parser(name, help=help, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--policies", nargs="+", default=list(DEFAULT_POLICIES), metavar="NAME[:K=V,...]",
                        help=f"policies to compare: {names_help()}")
    parser.add_argument("--set", action="append", metavar="[POLICY.]KEY=VALUE", help="a policy parameter (repeatable)")
    parser.add_argument("--grid", default=None, metavar="FILE",
                        help=f"take the policies (and their memory) from a sweep grid's profiles, and this command's "
                             f"settings from the grid's [{name}] table where the command line leaves their defaults")
    parser.add_argument("--profiles", nargs="+", metavar="NAME", help="with --grid: its profiles (default: the grid's)")
    parser.add_argument("--chunk-size", type=int, default=256, help="prompt tokens per prefill forward (default 256)")
    parser.add_argument("--force", action="store_true", help=f"rerun {unit}s whose record already exists")
    parser.add_argument("--quiet", action="store_true", help="log only warnings")
    add_executor_arguments(parser, unit)
    parser.set_defaults(parser=parser, command_name=name)
    return parser


#: options a grid's command table may not set: they choose the grid, the policies, or where things run
NOT_FROM_GRID = {"grid", "profiles", "policies", "set", "force", "quiet", "ray", "address", "ray_cpus", "output_dir",
                 "func", "parser", "command_name", "command", "argv"}


def apply_grid_settings(args: argparse.Namespace, table: dict, source: str) -> None:
    """Settings of the grid's command table, for every option the command line left at its default."""
    allowed = sorted(k for k in vars(args) if k not in NOT_FROM_GRID)
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest not in allowed:
            raise ValueError(f"grid {source} [{args.command_name}]: unknown key {key!r}; allowed: {', '.join(allowed)}")
        if getattr(args, dest) == args.parser.get_default(dest):
            setattr(args, dest, value)


def answer_plan(args: argparse.Namespace) -> list[tuple[str, RunSpec, int | None, RunSpec | None]]:
    """(label, policy, cache_bytes, equal_memory_to) of each policy to run: ``--policies`` with
    ``--set`` and ``--cache-bytes``, or the profiles of ``--grid`` (which also set the command's
    settings from the grid's table). Everything is validated here, before any model loads."""
    if args.grid is None:
        if args.profiles:
            raise ValueError("--profiles needs --grid")
        specs = apply_set(args.set or [], [RunSpec.parse(text) for text in args.policies])
        labels = [text if RunSpec.parse(text) == spec else spec.text() for text, spec in zip(args.policies, specs)]
        for spec in specs:
            spec.config()  # unknown policies and bad values fail here
        target = memory_target(args.cache_bytes)
        return [(label, spec, *memory_for(spec, target)) for label, spec in zip(labels, specs)]
    from .sweep import load_grid

    grid = load_grid(args.grid)
    apply_grid_settings(args, grid.commands.get(args.command_name, {}), grid.source)
    profiles = grid.select_profiles(args.profiles)
    plan = []
    for profile in profiles:
        specs = apply_set(args.set or [], list(profile.specs))
        # the reference is one of the profile's policies: it gets the same --set values
        reference = None if profile.equal_memory_to is None else specs[profile.specs.index(profile.equal_memory_to)]
        for spec in specs:
            memory = profile.memory_of(spec, reference)
            if args.cache_bytes is not None:  # the command line's target wins over the profile's
                memory = memory_for(spec, memory_target(args.cache_bytes))
            label = spec.text() if len(profiles) == 1 else f"{profile.name}/{spec.text()}"
            plan.append((label, spec, *memory))
    return plan


def answer_words(args: argparse.Namespace) -> list[str]:
    words = ["--grid", args.grid, *(["--profiles", *args.profiles] if args.profiles else [])] if args.grid else \
        ["--policies", *args.policies]
    for item in args.set or []:
        words += ["--set", item]
    return words + ["--chunk-size", str(args.chunk_size)]


def spelled_out(words: Iterable[str]) -> str:
    """``words`` as one shell command line, each quoted where the shell needs it."""
    return shlex.join(words)
