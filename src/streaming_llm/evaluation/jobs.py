"""A job = one policy streamed over one token stream; the unit that ``eval``, ``sweep`` and the
seed's example script run, locally or as a Ray task.

A :class:`Job` is plain data (it pickles and hashes to a stable key), so a sweep can decide
which runs are done before loading any model, and a Ray worker can rebuild everything from it.
Running a job (:func:`execute_job`) loads the model and the stream through a
:class:`Workspace`, which keeps the last model and streams so consecutive jobs share them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checks import check_int
from ..data import DEFAULT_TEXT, tokenize_stream
from ..models import DEFAULT_MODEL, DTYPES, load_model
from ..runs import RunStore, job_key
from ..sizing import cache_bytes_of, size_for_comparison
from .runs import RunSpec, record_store, run_identity, run_perplexity

log = logging.getLogger("streaming_llm")


@dataclass(frozen=True)
class StreamSource:
    """Where the evaluated tokens come from: a model's tokenizer over a text or an HF dataset."""

    model: str = DEFAULT_MODEL
    text: str | None = None  # a file or builtin:NAME; DEFAULT_TEXT when no dataset is given
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "test"
    num_samples: int | None = None
    num_tokens: int = 4096
    concat_stream: bool = True

    def __post_init__(self) -> None:
        if self.text is not None and self.dataset is not None:
            raise ValueError(f"give text or dataset, not both; got text={self.text!r}, dataset={self.dataset!r}")
        check_int("num_tokens", self.num_tokens, 2)
        check_int("num_samples", self.num_samples, 1, optional=True)

    @property
    def label(self) -> str:
        if self.dataset is None:
            return self.text or DEFAULT_TEXT
        return f"hf:{self.dataset}/{self.dataset_config}/{self.split}"

    def token_ids(self, tokenizer) -> list[int]:
        return tokenize_stream(
            tokenizer,
            text=None if self.dataset else (self.text or DEFAULT_TEXT),
            dataset_name=self.dataset,
            dataset_config=self.dataset_config,
            split=self.split,
            num_samples=self.num_samples,
            num_tokens=self.num_tokens,
            concat_stream=self.concat_stream,
        )


@dataclass(frozen=True)
class RunSettings:
    """How a stream is run: tokens per forward, precision, device, torch seed."""

    chunk_size: int = 1
    dtype: str = "float32"
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("chunk_size", self.chunk_size, 1)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer; got {self.seed!r}")


@dataclass(frozen=True)
class Job:
    """One policy over one stream. Memory is the policy's own budget, a fixed ``cache_bytes``, or
    the bytes of ``equal_memory_to`` (another policy, e.g. StreamingLLM) on the job's model.

    ``labels`` (scenario, profile, ...) are carried into the record but do not change the run.
    """

    source: StreamSource
    spec: RunSpec
    settings: RunSettings = RunSettings()
    cache_bytes: int | None = None
    equal_memory_to: RunSpec | None = None
    labels: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        self.spec.config()  # validate the policy and its parameters before anything runs
        if self.equal_memory_to is not None:
            self.equal_memory_to.config()
        if self.cache_bytes is not None and self.equal_memory_to is not None:
            raise ValueError("give cache_bytes or equal_memory_to, not both")
        check_int("cache_bytes", self.cache_bytes, 1, optional=True)

    def definition(self) -> dict[str, Any]:
        """Everything that determines the run's results (labels excluded)."""
        return {
            "source": dataclasses.asdict(self.source),
            **self.spec.definition(),
            "settings": dataclasses.asdict(self.settings),
            "cache_bytes": self.cache_bytes,
            "equal_memory_to": None if self.equal_memory_to is None else self.equal_memory_to.definition(),
        }

    @property
    def key(self) -> str:
        """Stable file name of the job's record: ``POLICY-<hash of definition()>``."""
        return job_key(self.spec.policy, self.definition())

    def sort_key(self) -> tuple[str, str, str]:
        """Jobs sorted by this run one model after another (each loaded once)."""
        return (self.source.model, self.settings.dtype, self.settings.device)

    def execute(self, workspace: "Workspace", progress: bool = True) -> dict[str, Any]:
        return execute_job(self, workspace, progress=progress)


class Workspace:
    """Keeps the most recently loaded model and what was made with its tokenizer (token streams,
    tokenized haystacks), so consecutive units on one model share them."""

    def __init__(self) -> None:
        self._model_key: tuple[str, str, str] | None = None
        self._model = self._tokenizer = None
        self._streams: dict[Any, Any] = {}

    def cached(self, key: Any, make):
        """``make()`` once per key for the current model (forgotten when another model loads)."""
        if key not in self._streams:
            self._streams[key] = make()
        return self._streams[key]

    def model(self, name: str, dtype: str, device: str):
        key = (name, dtype, device)
        if key != self._model_key:
            self._model = self._tokenizer = None  # free the previous model before loading the next
            self._streams.clear()
            self._model, self._tokenizer = load_model(name, dtype=dtype, device=device)
            self._model_key = key
        return self._model, self._tokenizer

    def stream(self, source: StreamSource, settings: RunSettings) -> tuple[Any, list[int]]:
        model, tokenizer = self.model(source.model, settings.dtype, settings.device)

        def tokenize() -> list[int]:
            ids = source.token_ids(tokenizer)
            if len(ids) < source.num_tokens:  # a silently shorter stream would be reported as the longer one
                raise ValueError(f"{source.label} has only {len(ids)} tokens; --num-tokens asks for {source.num_tokens} "
                                 "(use a longer text or fewer tokens)")
            return ids

        return model, self.cached(source, tokenize)


def model_info(model: torch.nn.Module) -> dict[str, Any]:
    """Context metadata of a model for reports: family, context length, KV geometry."""
    config = model.config.get_text_config(decoder=True)
    return {
        "model_type": getattr(config, "model_type", None),
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "num_attention_heads": getattr(config, "num_attention_heads", None),
        "num_kv_heads": getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def resolve_config(job: Job, model: torch.nn.Module):
    """The job's policy config, sized to its memory target on ``model`` (full stays unbounded)."""
    config = job.spec.config()
    target = job.cache_bytes
    if job.equal_memory_to is not None:
        target = cache_bytes_of(job.equal_memory_to.config(), model)
    sized = size_for_comparison(config, model, target)
    if sized is config:
        return config, None
    log.info("%s sized to %d bytes: %s", config.name, target, sized)
    return sized, target


def execute_job(job: Job, workspace: Workspace | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``job`` and return its record (see :func:`streaming_llm.evaluation.runs.run_perplexity`)."""
    workspace = workspace or Workspace()
    model, token_ids = workspace.stream(job.source, job.settings)
    config, target = resolve_config(job, model)
    identity = run_identity(config, model=job.source.model, text=job.source.label, tokens=len(token_ids),
                            chunk_size=job.settings.chunk_size, dtype=job.settings.dtype,
                            device=str(next(model.parameters()).device))
    if target is not None:
        identity["cache_bytes_target"] = target
    torch.manual_seed(job.settings.seed)
    record = run_perplexity(model, token_ids, config, identity, progress=progress)
    record.update(job_key=job.key, job=job.definition(), labels=dict(job.labels), seed=job.settings.seed,
                  model_info=model_info(model))
    return record


#: fields every eval record has; a record without them is damaged and is run again
RECORD_FIELDS = ("policy", "params", "tokens", "ppl", "cache_bytes_max", "job_key")


def eval_store(runs_dir: str | Path) -> RunStore:
    """Where eval and sweep keep their records: ``runs_dir/<job key>.json``."""
    return record_store(runs_dir, RECORD_FIELDS)


def run_or_reuse(job: Job, store: RunStore | None, workspace: Workspace, *, force: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """The record of ``job``: read from ``store`` (:func:`eval_store`, one for all of a command's
    jobs: it scans its folder for old-form records once) when it is there (unless ``force``), else
    run it and write it there atomically before returning. ``store=None`` keeps nothing."""
    if store is None:
        return execute_job(job, workspace, progress=progress)
    return store.get_or_run(job.key, lambda: execute_job(job, workspace, progress=progress), force)[0]
