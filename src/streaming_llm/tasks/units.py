"""A task cell or a benchmark example answered by one policy: a unit of the run store.

A unit is plain data (it pickles to a Ray worker) that knows its definition, hence its record's
key, and how to answer its prompt with a fresh cache on the workspace's model. Records keep the
fields the reports read (``label``, ``policy``, ``params`` as run, ``score``, ...) plus ``job_key``
and ``job`` (the definition), as eval records do.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from ..evaluation.jobs import resolve_config
from ..evaluation.runs import RunSpec, library_versions
from ..runs import job_key
from .report import slug
from .runner import stop_token_ids, warn_beyond_positions

#: fields every task or benchmark record has; a record without them is damaged and is run again
RECORD_FIELDS = ("label", "policy", "params", "score", "prediction", "job_key")


@dataclass(frozen=True)
class Answering:
    """What every answering unit shares: the policy (as labelled in reports), its memory target,
    the model and how it runs."""

    label: str
    spec: RunSpec
    model: str
    dtype: str = "float32"
    device: str = "auto"
    chunk_size: int = 256
    cache_bytes: int | None = None
    equal_memory_to: RunSpec | None = None

    def definition(self) -> dict[str, Any]:
        return {
            "label": self.label, **self.spec.definition(),
            "model": self.model, "dtype": self.dtype, "device": self.device, "chunk_size": self.chunk_size,
            "cache_bytes": self.cache_bytes,
            "equal_memory_to": None if self.equal_memory_to is None else self.equal_memory_to.definition(),
        }


class AnswerUnit:
    """Base of :class:`TaskCell` and :class:`BenchmarkItem` (dataclasses with an ``answering``
    field): the key, the order and the run shared by both."""

    answering: Answering

    def name(self) -> str:
        raise NotImplementedError

    def definition(self) -> dict[str, Any]:
        raise NotImplementedError

    def answer(self, workspace, model, tokenizer, config, stop: set[int]) -> dict[str, Any]:
        """The unit's own fields of the record and ``answer_prompt``'s, with ``config`` sized."""
        raise NotImplementedError

    @property
    def key(self) -> str:
        return job_key(self.name(), self.definition())

    def sort_key(self) -> tuple[str, str, str]:
        return (self.answering.model, self.answering.dtype, self.answering.device)

    # resolve_config reads these as it does on an eval job
    @property
    def spec(self) -> RunSpec:
        return self.answering.spec

    @property
    def cache_bytes(self) -> int | None:
        return self.answering.cache_bytes

    @property
    def equal_memory_to(self) -> RunSpec | None:
        return self.answering.equal_memory_to

    def execute(self, workspace, progress: bool = True) -> dict[str, Any]:
        run = self.answering
        model, tokenizer = workspace.model(run.model, run.dtype, run.device)
        config, target = resolve_config(self, model)
        stop = workspace.cached("stop_ids", lambda: stop_token_ids(tokenizer))
        fields = self.answer(workspace, model, tokenizer, config, stop)
        return {
            "label": run.label, "policy": config.name, "params": config.to_dict(), **fields,
            "model": run.model, "chunk_size": run.chunk_size, "dtype": run.dtype,
            "device": str(next(model.parameters()).device), "cache_bytes_target": target,
            "job_key": self.key, "job": self.definition(), "versions": library_versions(),
        }

    @staticmethod
    def warn_once(workspace, model, prompt_tokens: int, new_tokens: int) -> None:
        workspace.cached(("positions warned", prompt_tokens, new_tokens),
                         lambda: warn_beyond_positions(model, prompt_tokens, new_tokens))


def record_name(label: str, *parts: Any) -> str:
    """Readable start of a record's file name: the policy label and the unit's coordinates."""
    return "-".join([slug(label), *map(str, parts)])


def report_failures(failures: dict[str, str]) -> int:
    """Print the units that failed (they run again next time) and return the exit status."""
    for key, error in failures.items():
        print(f"  failed {key}: {error}", file=sys.stderr)
    return 1 if failures else 0
