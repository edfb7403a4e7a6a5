"""One perplexity run = one self-describing record (policy, params, data, metrics, versions)."""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..api import cache_from_config
from ..policies import PolicyConfig, canonical_name, make_policy_config, non_default_params
from ..runs import RunStore, job_key
from .driver import stream

#: Columns of the summary tables, in order.
SUMMARY_COLUMNS = (
    "policy", "params", "tokens", "ppl", "tok_per_s", "cache_tokens_max", "cache_bytes_max", "peak_rss_bytes"
)


@dataclass(frozen=True)
class RunSpec:
    """A policy with its parameters, e.g. from ``--policy streaming:recent_size=252``."""

    policy: str
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        # an alias (seed 003's "dynamic_kv") names the same job, and the same record key, as its policy
        object.__setattr__(self, "policy", canonical_name(self.policy))

    @classmethod
    def parse(cls, text: str) -> "RunSpec":
        """``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE``."""
        name, _, rest = text.partition(":")
        params = []
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--policy {text!r}: parameters must be KEY=VALUE, got {item!r}")
            params.append((key.strip(), value.strip()))
        return cls(name.strip(), tuple(params))

    def with_params(self, extra: dict[str, Any]) -> "RunSpec":
        merged = dict(extra)
        merged.update(dict(self.params))  # inline parameters win over global --set ones
        return RunSpec(self.policy, tuple(merged.items()))

    def config(self) -> PolicyConfig:
        return make_policy_config(self.policy, **dict(self.params))

    def definition(self) -> dict[str, Any]:
        """The policy part of a job's definition: the name and the validated parameters (so "4"
        and 4, CLI and TOML, name the same run) that differ from the defaults (so a parameter added
        later, at its default, keeps every earlier record's key)."""
        return {"policy": self.policy, "params": non_default_params(self.policy, self.config().to_dict())}

    @property
    def bounded(self) -> bool:
        return self.config().bounded

    def text(self) -> str:
        """The ``NAME:KEY=VALUE,...`` form that :meth:`parse` reads."""
        return self.policy + (":" + ",".join(f"{k}={v}" for k, v in self.params) if self.params else "")


def compact_definition(definition: dict[str, Any]) -> dict[str, Any]:
    """A stored job definition in the current form: the parameters of its policy (and of its
    ``equal_memory_to``) without those at their defaults (records before the twelfth session
    hashed every parameter). Idempotent."""
    compact = _without_defaults(definition)
    if isinstance(compact.get("equal_memory_to"), dict):
        compact["equal_memory_to"] = _without_defaults(compact["equal_memory_to"])
    return compact


def _without_defaults(part: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``part`` (``{"policy": ..., "params": {...}, ...}``) with its default parameters left out."""
    if isinstance(part.get("params"), dict) and "policy" in part:
        return {**part, "params": non_default_params(part["policy"], part["params"])}
    return dict(part)


def current_key(record: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(key, record)`` under which this version files a stored eval, task or benchmark record
    (its ``job`` in :func:`compact_definition`'s form, its ``job_key`` recomputed), or ``None``
    without a stored definition. The key's name part is the old key's, up to its last ``-``."""
    job, key = record.get("job"), record.get("job_key")
    if not isinstance(job, dict) or not isinstance(key, str) or "-" not in key:
        return None
    definition = compact_definition(job)
    new_key = job_key(key.rsplit("-", 1)[0], definition)
    return new_key, {**record, "job_key": new_key, "job": definition}


def record_store(folder, required) -> RunStore:
    """The run store of eval, sweep, tasks, benchmark and experiment records: re-files the
    records of older key forms (:func:`current_key`) instead of running them again."""
    return RunStore(folder, required, rekey=current_key)


def library_versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {
        "streaming_llm": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def run_id(identity: dict[str, Any]) -> str:
    """Stable id of a run from everything that defines it (not its results)."""
    return job_key(identity["policy"], identity)


def run_identity(config: PolicyConfig, *, model: str, text: str, tokens: int, chunk_size: int, dtype: str,
                 device: str) -> dict[str, Any]:
    return {
        "policy": config.name,
        "params": config.to_dict(),
        "model": model,
        "text": text,
        "tokens": tokens,
        "chunk_size": chunk_size,
        "dtype": dtype,
        "device": device,
    }


class _LineCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def collect_policy_log() -> Iterator[list[str]]:
    """Collect what policies log during a run (e.g. ADMS's ``[ADMS Stats @ N]`` lines) so the
    record keeps them; the lines still reach whatever handlers logging is configured with."""
    logger = logging.getLogger("streaming_llm")
    collector = _LineCollector()
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)  # the lines are INFO; without this they would be dropped unseen
    logger.addHandler(collector)
    try:
        yield collector.lines
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous)


def run_perplexity(model, token_ids: list[int], config: PolicyConfig, identity: dict[str, Any],
                   progress: bool = True) -> dict[str, Any]:
    """Stream ``token_ids`` with a fresh cache built from ``config``; returns the run record."""
    with cache_from_config(model, config) as cache, collect_policy_log() as log_lines:  # restores attention after
        result = stream(model, cache, token_ids, chunk_size=identity["chunk_size"], progress=progress,
                        description=config.name)
    return {
        **identity,
        "id": run_id(identity),
        "tokens": result.tokens + 1,
        "predictions": result.tokens,
        "ppl": result.ppl(),
        "tok_per_s": result.tok_per_s,
        "seconds": result.seconds,
        "cache_tokens_max": max(result.cache_tokens),
        "cache_bytes_max": result.cache_bytes_max,
        "cache_bytes_max_by_layer_type": result.cache_bytes_max_by_layer_type,
        "cache_budget_tokens": cache.max_slots(),
        "policy_stats": cache.policy_stats(),
        "peak_rss_bytes": result.peak_rss_bytes,
        "peak_device_bytes": result.peak_device_bytes,
        "versions": library_versions(),
        "log": log_lines,
        "nll": result.nll,
        "cache_tokens_per_step": result.cache_tokens,
    }
