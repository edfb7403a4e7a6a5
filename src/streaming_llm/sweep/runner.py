"""Running a sweep: plan the jobs, skip finished ones, execute the rest, write every record as
soon as it exists, then the reports.

Layout under the output root::

    runs/<job key>.json               one record per run, shared by profiles that run the same job
    <scenario>/<profile>/summary.json  + readable.txt, results.md, plots (seed 000's per-run files)
    report.md, report.csv, report.json, plots/   the aggregate over everything run so far
    failures.json                      runs that raised, with the error (retried next time)

A record is written atomically the moment its run ends, so a killed sweep loses at most the
runs in flight; the next invocation skips every job whose record exists (``force`` reruns).
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from ..evaluation.jobs import Job, Workspace, execute_job
from ..report import write_json
from ..report.comparison import write_aggregate_report, write_pair_report
from .grid import Grid, Profile, Scenario, jobs_for

log = logging.getLogger("streaming_llm")

OnRecord = Callable[[Job, dict[str, Any]], None]
OnFailure = Callable[[Job, str], None]


class Executor(Protocol):
    def run(self, jobs: list[Job], on_record: OnRecord, on_failure: OnFailure, progress: bool) -> None:
        """Execute ``jobs``; call ``on_record`` or ``on_failure`` once per job as each ends."""


def describe_error(error: BaseException) -> str:
    return f"{error.__class__.__name__}: {error}"


class LocalExecutor:
    """Runs jobs one after another in this process, loading each model once."""

    def run(self, jobs: list[Job], on_record: OnRecord, on_failure: OnFailure, progress: bool) -> None:
        workspace = Workspace()
        ordered = sorted(jobs, key=lambda j: (j.source.model, j.settings.dtype, j.settings.device))
        for job in tqdm(ordered, desc="sweep", unit="run", disable=not progress):
            try:
                record = execute_job(job, workspace, progress=progress)
            except Exception as error:  # one failing run (no hub, unsupported model) must not stop the sweep
                log.debug("%s failed:\n%s", job.key, traceback.format_exc())
                on_failure(job, describe_error(error))
            else:
                on_record(job, record)


@dataclass
class PairPlan:
    scenario: Scenario
    profile: Profile
    jobs: list[Job]

    def directory(self, root: Path) -> Path:
        return root / self.scenario.name / self.profile.name


@dataclass
class SweepOutcome:
    ran: int = 0
    reused: int = 0
    skipped_pairs: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # job key -> error
    report: Path | None = None


def plan(scenarios: Iterable[Scenario], profiles: Iterable[Profile]) -> list[PairPlan]:
    profiles = list(profiles)
    return [PairPlan(s, p, jobs_for(s, p)) for s in scenarios for p in profiles]


def record_path(root: Path, job: Job) -> Path:
    return root / "runs" / f"{job.key}.json"


def _load_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # missing, or (should never happen with atomic writes) unreadable: run it again


def run_sweep(grid: Grid, output_root: str | Path, *, scenarios: list[str] | None = None,
              profiles: list[str] | None = None, extra_scenarios: list[Scenario] = (), force: bool = False,
              executor: Executor | None = None, progress: bool = True) -> SweepOutcome:
    """Run the selected scenarios x profiles of ``grid`` under ``output_root``."""
    root = Path(output_root)
    chosen_scenarios, chosen_profiles = grid.select(scenarios, profiles, list(extra_scenarios))
    pairs = plan(chosen_scenarios, chosen_profiles)
    outcome = SweepOutcome()
    records: dict[str, dict[str, Any]] = {}
    pending: dict[str, Job] = {}
    for pair in pairs:
        existing = {job.key: None if force else _load_record(record_path(root, job)) for job in pair.jobs}
        if not force and (pair.directory(root) / "summary.json").is_file() and all(existing.values()):
            outcome.skipped_pairs += 1
        for job in pair.jobs:
            if existing[job.key] is not None:
                records[job.key] = existing[job.key]
            else:
                pending.setdefault(job.key, job)  # a job shared by two profiles runs once
    outcome.reused = len(records)
    log.info("sweep: %d pair(s), %d run(s) to do, %d reused from %s", len(pairs), len(pending), len(records), root)

    def on_record(job: Job, record: dict[str, Any]) -> None:
        write_json(record_path(root, job), record)
        records[job.key] = record
        outcome.ran += 1

    def on_failure(job: Job, error: str) -> None:
        log.error("run %s (%s) failed: %s", job.key, dict(job.labels), error)
        outcome.failures[job.key] = error

    if pending:
        (executor or LocalExecutor()).run(list(pending.values()), on_record, on_failure, progress)
    _write_failures(root, pending, outcome.failures)
    for pair in pairs:
        done = [records[j.key] for j in pair.jobs if j.key in records]
        failed = {j.spec.policy: outcome.failures[j.key] for j in pair.jobs if j.key in outcome.failures}
        if done:
            write_pair_report(pair.directory(root), done, pair.scenario, pair.profile, failed)
    outcome.report = write_aggregate_report(root, _all_pair_records(root, pairs, records), outcome.failures)
    return outcome


def _write_failures(root: Path, jobs: dict[str, Job], failures: dict[str, str]) -> None:
    entries = [{"job_key": k, "labels": dict(jobs[k].labels), "job": jobs[k].definition(), "error": e}
               for k, e in failures.items()]
    path = root / "failures.json"
    if entries or path.exists():
        write_json(path, entries)


def _all_pair_records(root: Path, pairs: list[PairPlan], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Records for the aggregate: this sweep's pairs plus pairs of earlier sweeps under ``root``,
    each labelled with its scenario and profile (a shared job appears once per pair)."""
    rows = []
    seen = set()
    for pair in pairs:
        for job in pair.jobs:
            if job.key in records:
                rows.append({**records[job.key], "labels": dict(job.labels)})
        seen.add((pair.scenario.name, pair.profile.name))
    for summary in sorted(root.glob("*/*/summary.json")):
        scenario, profile = summary.parent.parent.name, summary.parent.name
        if (scenario, profile) in seen:
            continue
        for key in json.loads(summary.read_text()).get("job_keys", []):
            record = _load_record(root / "runs" / f"{key}.json")
            if record is not None:
                rows.append({**record, "labels": {"scenario": scenario, "profile": profile}})
    return rows
