"""A sweep grid: scenarios (model + data + length) crossed with profiles (policies to compare).

A grid is a TOML or YAML file::

    [defaults]                       # run settings for every scenario (all optional)
    chunk_size = 32
    scenarios = ["smollm2_4k"]       # which scenarios run when none are named
    profiles = ["balanced", "quality"]

    [scenarios.smollm2_4k]           # seed 000's scenario keys: model, dataset, task (the
    model = "smollm2-135m"           # dataset config), split, samples, tokens, log_every;
    text = "builtin:pioneer-days"    # plus text, chunk_size, dtype, device, seed,
    tokens = 4096                    # concat_stream and set = {param = value}
    log_every = 512

    [profiles.balanced]
    equal_memory_to = "streaming"    # size bounded policies to this entry's bytes (optional;
                                     # or cache_bytes = N: every bounded policy to N bytes)
    policies = ["full", "streaming:start_size=4,recent_size=252", "adms:importance_ratio=1.0"]

    [tasks]                          # optional: `streaming-llm tasks --grid FILE` runs the
    tasks = ["passkey"]              # profiles' policies on these synthetic tasks (option names
    lengths = [2048, 4096]           # of the command); [benchmark] likewise for `benchmark`

A scenario can also be written on one line, as the seed's ``SCENARIOS`` variable does:
``name=llama3_8k model=meta-llama/Meta-Llama-3-8B-Instruct dataset=wikitext task=wikitext-103-raw-v1
split=test samples=64 tokens=8192 log_every=512``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..checks import check_int
from ..evaluation.jobs import Job, RunSettings, StreamSource
from ..evaluation.runs import RunSpec
from ..policies import is_bounded

BUILTIN_GRID_PREFIX = "builtin:"
SETTING_KEYS = {f.name for f in dataclasses.fields(RunSettings)}
#: seed 000's scenario keys -> StreamSource fields (the seed calls the dataset config "task").
SOURCE_KEYS = {"model": "model", "text": "text", "dataset": "dataset", "task": "dataset_config",
               "dataset_config": "dataset_config", "split": "split", "samples": "num_samples",
               "tokens": "num_tokens", "concat_stream": "concat_stream"}
#: commands whose settings a grid may hold in a table of their name (``[tasks]``, ``[benchmark]``)
GRID_COMMANDS = ("tasks", "benchmark")
SCENARIO_KEYS = {"name", "log_every", "set", "description", *SOURCE_KEYS, *SETTING_KEYS}


def _check_keys(where: str, given: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


@dataclass(frozen=True)
class Scenario:
    """A model over a stream, with its run settings and parameters applied to every policy."""

    name: str
    source: StreamSource
    settings: RunSettings
    overrides: tuple[tuple[str, Any], ...] = ()  # `set` and `log_every`: to every policy that has them
    description: str = ""

    @classmethod
    def from_dict(cls, name: str, values: dict[str, Any], defaults: dict[str, Any] | None = None) -> "Scenario":
        _check_keys(f"scenario {name!r}", values, SCENARIO_KEYS)
        merged = {**(defaults or {}), **values}
        source = StreamSource(**{SOURCE_KEYS[k]: v for k, v in merged.items() if k in SOURCE_KEYS})
        settings = RunSettings(**{k: v for k, v in merged.items() if k in SETTING_KEYS})
        overrides = dict(merged.get("set") or {})
        if "log_every" in merged:
            overrides["log_every"] = merged["log_every"]
        return cls(name, source, settings, tuple(sorted(overrides.items())), str(merged.get("description", "")))

    @property
    def uses_hub(self) -> bool:
        """Whether the scenario needs the Hugging Face hub (a hub model id or an HF dataset)."""
        from ..models import BUILTIN_MODELS

        model = self.source.model
        local = model in BUILTIN_MODELS or model.endswith(".gguf") or Path(model).exists()
        return self.source.dataset is not None or not local


def _scalar(text: str) -> Any:
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_scenario_line(line: str) -> dict[str, Any]:
    """``name=X model=Y ... tokens=N`` (seed 000's SCENARIOS entries) -> a scenario dict."""
    values: dict[str, Any] = {}
    for item in line.split():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"scenario {line!r}: expected KEY=VALUE items, got {item!r}")
        values[key] = _scalar(value)
    if "name" not in values:
        raise ValueError(f"scenario {line!r}: name=... is required")
    return values


def split_scenario_lines(text: str) -> list[str]:
    """Split a SCENARIOS value into scenarios: each starts at a ``name=`` item.

    ``SCENARIOS=("name=a ..." "name=b ...") bash script`` reaches the script as one string with
    the parentheses and without the quotes, so item boundaries are all that is left to go by.
    """
    items = text.strip().removeprefix("(").removesuffix(")").replace('"', " ").replace("'", " ").split()
    lines: list[list[str]] = []
    for item in items:
        if item.startswith("name=") or not lines or "=" not in item:
            lines.append([item])
        else:
            lines[-1].append(item)
    return [" ".join(line) for line in lines]


@dataclass(frozen=True)
class Profile:
    """Policies compared in one scenario, optionally all at the memory of one of them or at a
    fixed number of cache bytes."""

    name: str
    specs: tuple[RunSpec, ...]
    equal_memory_to: RunSpec | None = None
    description: str = ""
    cache_bytes: int | None = None

    @classmethod
    def from_dict(cls, name: str, values: dict[str, Any]) -> "Profile":
        _check_keys(f"profile {name!r}", values, {"policies", "equal_memory_to", "cache_bytes", "description"})
        entries = values.get("policies")
        if not entries:
            raise ValueError(f"profile {name!r}: policies must be a non-empty list")
        specs = tuple(_spec(entry, f"profile {name!r}") for entry in entries)
        reference = values.get("equal_memory_to")
        matched = None
        if reference is not None:
            matched = next((s for s in specs if s.policy == reference), None)
            if matched is None:
                raise ValueError(f"profile {name!r}: equal_memory_to={reference!r} names no policy of the profile; "
                                 f"allowed: {', '.join(s.policy for s in specs)}")
        cache_bytes = values.get("cache_bytes")
        if cache_bytes is not None and matched is not None:
            raise ValueError(f"profile {name!r}: give cache_bytes or equal_memory_to, not both")
        try:
            check_int("cache_bytes", cache_bytes, 1, optional=True)
        except ValueError as error:
            raise ValueError(f"profile {name!r}: {error}") from None
        return cls(name, specs, matched, str(values.get("description", "")), cache_bytes)

    def memory_of(self, spec: RunSpec, reference: RunSpec | None = None) -> tuple[int | None, RunSpec | None]:
        """(cache_bytes, equal_memory_to) of ``spec`` in this profile; ``reference`` is the profile's
        (with a scenario's overrides applied). The reference and unbounded policies (the full
        cache) are not sized: leaving the reference out of their definition lets profiles that
        share them share the run."""
        reference = reference or self.equal_memory_to
        bounded = is_bounded(spec.policy)
        sized = reference is not None and spec != reference and bounded
        return (self.cache_bytes if bounded else None), (reference if sized else None)


def _spec(entry: Any, where: str) -> RunSpec:
    if isinstance(entry, str):
        spec = RunSpec.parse(entry)
    elif isinstance(entry, dict) and "policy" in entry:
        params = {k: v for k, v in entry.items() if k != "policy"}
        spec = RunSpec(entry["policy"], tuple(params.items()))
    else:
        raise ValueError(f"{where}: a policy is 'NAME:K=V,...' or a table with policy = NAME; got {entry!r}")
    spec.config()  # unknown policies and bad values fail here, before anything runs
    return spec


@dataclass(frozen=True)
class Grid:
    scenarios: dict[str, Scenario]
    profiles: dict[str, Profile]
    default_scenarios: tuple[str, ...] = ()
    default_profiles: tuple[str, ...] = ()
    source: str = ""
    defaults: dict[str, Any] = field(default_factory=dict, repr=False)  # applied to scenarios given as lines
    #: settings of ``streaming-llm tasks`` / ``benchmark`` run with this grid's profiles (their
    #: option names, e.g. lengths = [2048, 4096]); the commands check the keys
    commands: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def select(self, scenarios: list[str] | None = None, profiles: list[str] | None = None,
               extra_scenarios: list[Scenario] = ()) -> tuple[list[Scenario], list[Profile]]:
        """Scenarios and profiles to run; names not in the grid raise ``ValueError``."""
        names = list(scenarios or ([] if extra_scenarios else self.default_scenarios or self.scenarios))
        if names == ["all"]:
            names = list(self.scenarios)
        chosen = [self._pick(self.scenarios, n, "scenario") for n in names] + list(extra_scenarios)
        return chosen, self.select_profiles(profiles)

    def select_profiles(self, profiles: list[str] | None = None) -> list[Profile]:
        """The named profiles (default: the grid's default ones, else all); unknown names raise ``ValueError``."""
        return [self._pick(self.profiles, n, "profile") for n in (profiles or self.default_profiles or self.profiles)]

    @staticmethod
    def _pick(table: dict[str, Any], name: str, kind: str):
        if name not in table:
            raise ValueError(f"unknown {kind} {name!r}; allowed: {', '.join(table)}")
        return table[name]

    def scenario_from_line(self, line: str) -> Scenario:
        values = parse_scenario_line(line)
        return Scenario.from_dict(values.pop("name"), values, self.defaults)


def jobs_for(scenario: Scenario, profile: Profile) -> list[Job]:
    """The runs of ``profile`` in ``scenario``: each policy with the scenario's overrides."""

    def with_overrides(spec: RunSpec) -> RunSpec:
        names = set(spec.config().parameter_names())
        return spec.with_params({k: v for k, v in scenario.overrides if k in names})

    reference = None if profile.equal_memory_to is None else with_overrides(profile.equal_memory_to)
    labels = (("scenario", scenario.name), ("profile", profile.name))
    jobs = []
    for spec in map(with_overrides, profile.specs):
        fixed, matched = profile.memory_of(spec, reference)
        jobs.append(Job(scenario.source, spec, scenario.settings, cache_bytes=fixed, equal_memory_to=matched,
                        labels=labels))
    return jobs


def _read_grid_file(path: str) -> tuple[dict[str, Any], str]:
    if path.startswith(BUILTIN_GRID_PREFIX):
        name = path[len(BUILTIN_GRID_PREFIX):]
        folder = resources.files("streaming_llm.sweep") / "grids"
        available = sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(".toml"))
        if name not in available:
            raise ValueError(f"grid must be a .toml/.yaml file or one of "
                             f"{', '.join(BUILTIN_GRID_PREFIX + a for a in available)}; got {path!r}")
        return _parse((folder / f"{name}.toml").read_text(encoding="utf-8"), ".toml"), path
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"grid file not found: {path!r} (a .toml/.yaml file or builtin:adms_report)")
    return _parse(file.read_text(encoding="utf-8"), file.suffix.lower()), str(file)


def _parse(text: str, suffix: str) -> dict[str, Any]:
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        return tomllib.loads(text)
    if suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError("a YAML grid must be a mapping with scenarios and profiles")
        return data
    raise ValueError(f"grid file must end in .toml, .yaml or .yml; got {suffix!r}")


def load_grid(path: str) -> Grid:
    """Read and validate a grid (a file path or ``builtin:NAME``)."""
    data, source = _read_grid_file(path)
    _check_keys(f"grid {source}", data, {"defaults", "scenarios", "profiles", "description", *GRID_COMMANDS})
    defaults = dict(data.get("defaults") or {})
    default_scenarios = tuple(defaults.pop("scenarios", ()))
    default_profiles = tuple(defaults.pop("profiles", ()))
    _check_keys(f"grid {source} [defaults]", defaults, SCENARIO_KEYS - {"name"})
    scenarios = {n: Scenario.from_dict(n, v, defaults) for n, v in (data.get("scenarios") or {}).items()}
    profiles = {n: Profile.from_dict(n, v) for n, v in (data.get("profiles") or {}).items()}
    if not profiles:
        raise ValueError(f"grid {source}: no [profiles]")
    for name in GRID_COMMANDS:
        if not isinstance(data.get(name, {}), dict):
            raise ValueError(f"grid {source}: [{name}] must be a table of {name} settings")
    commands = {name: dict(data[name]) for name in GRID_COMMANDS if name in data}
    grid = Grid(scenarios, profiles, default_scenarios, default_profiles, source, defaults, commands)
    for name in default_scenarios:
        grid._pick(scenarios, name, "scenario")
    for name in default_profiles:
        grid._pick(profiles, name, "profile")
    return grid
