"""Where units of work run: one after another in this process, or as Ray tasks
(:class:`streaming_llm.sweep.ray_executor.RayExecutor`). Every command (eval jobs of a sweep,
task cells, benchmark examples) hands its pending units to one of them.

A unit is plain data (it pickles, so a Ray worker can rebuild everything from it) with a ``key``,
a ``sort_key()`` (units with equal model settings run back to back, each model loaded once) and
``execute(workspace, progress) -> record``. The driver stores each record as its unit ends.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tqdm.auto import tqdm

log = logging.getLogger("streaming_llm")


class Unit(Protocol):
    key: str

    def sort_key(self) -> tuple: ...

    def execute(self, workspace, progress: bool = True) -> dict[str, Any]: ...


OnRecord = Callable[[Any, dict[str, Any]], None]
OnFailure = Callable[[Any, str], None]


class Executor(Protocol):
    def run(self, jobs: Sequence[Unit], on_record: OnRecord, on_failure: OnFailure, progress: bool) -> None:
        """Execute ``jobs``; call ``on_record`` or ``on_failure`` once per unit as each ends."""


def describe_error(error: BaseException) -> str:
    return f"{error.__class__.__name__}: {error}"


class LocalExecutor:
    """Runs units one after another in this process, loading each model once."""

    def __init__(self, description: str = "sweep", unit: str = "run", keep_going: bool = True):
        # keep_going=False: the first error propagates (a command on one model stops, as a plain
        # script would, instead of failing every unit the same way)
        self.description, self.unit, self.keep_going = description, unit, keep_going

    def run(self, jobs: Sequence[Unit], on_record: OnRecord, on_failure: OnFailure, progress: bool) -> None:
        from ..evaluation.jobs import Workspace

        workspace = Workspace()
        for job in tqdm(sorted(jobs, key=lambda j: j.sort_key()), desc=self.description, unit=self.unit,
                        disable=not progress):
            try:
                record = job.execute(workspace, progress)
            except Exception as error:  # one failing unit (no hub, unsupported model) must not stop the rest
                if not self.keep_going:
                    raise
                log.debug("%s failed:\n%s", job.key, traceback.format_exc())
                on_failure(job, describe_error(error))
            else:
                on_record(job, record)


def run_units(units: Sequence[Unit], store, executor: Executor, *, force: bool = False, progress: bool = True,
              on_ran: OnRecord | None = None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The records of ``units`` in their order, and the errors of those that failed (by key).

    The resume rule of :class:`~streaming_llm.runs.RunStore`: a unit whose valid record exists is
    not run (unless ``force``); the rest run on ``executor``, each record stored as it arrives."""
    records: dict[str, dict[str, Any]] = {}
    pending: dict[str, Unit] = {}
    for unit in units:
        record = None if force else store.load(unit.key)
        if record is None:
            pending.setdefault(unit.key, unit)
        else:
            records[unit.key] = record
    failures: dict[str, str] = {}

    def on_record(unit: Unit, record: dict[str, Any]) -> None:
        store.save(unit.key, record)
        records[unit.key] = record
        if on_ran is not None:
            on_ran(unit, record)

    def on_failure(unit: Unit, error: str) -> None:
        log.error("%s failed: %s", unit.key, error)
        failures[unit.key] = error

    log.info("%d unit(s) to run, %d reused from %s", len(pending), len(records), store.folder)
    if pending:
        executor.run(list(pending.values()), on_record, on_failure, progress)
    return [records[u.key] for u in units if u.key in records], failures
